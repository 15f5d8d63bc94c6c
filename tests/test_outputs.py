"""Every output lands where it was asked to, or says in one line why not: devices, FIFOs, symlinks
and long names."""
import json
import os
import stat
import subprocess
import sys
import threading

import pytest
import torch

import finetune
from checkpoint import save_checkpoint
from common import check_writable, write_json
from conftest import ROOT


@pytest.fixture
def quick(monkeypatch):
    """Runs that measure nothing (finetune's measure): these tests look at what is written and
    said, not at the numbers, and measuring takes most of a tiny run's time."""
    numbers = {"learned_acc": 0.5, "unseen_acc": None, "background_acc": 1.0, "background_correct": [True],
               "skill_acc": 1.0, "val_loss": 2.0, "slots": []}
    monkeypatch.setattr(finetune, "measure", lambda *args: dict(numbers))


def checkpoint_of(trained):
    return os.path.join(trained[0].out_dir, "ckpt.pt")


def finetune_args(trained, *more):
    return ["--checkpoint", checkpoint_of(trained), "--mode", "full", "--lr", "1e-3", "--facts", "1",
            "--steps-per-fact", "1", "--set-facts", "0", "--device", "cpu", "--quiet", *map(str, more)]


def device(name, tmp_path):
    """/dev/<name> (null or full), or as root a copy of it in tmp_path: as root a wrong write would
    replace the device itself, the very bug these tests look for."""
    real = f"/dev/{name}"
    if os.geteuid() != 0:
        if not os.access(real, os.W_OK):
            pytest.skip(f"{real} is not writable here")
        return real
    copy = str(tmp_path / name)
    os.mknod(copy, stat.S_IFCHR | 0o666, os.stat(real).st_rdev)
    try:
        open(copy, "wb").close()
    except OSError:
        pytest.skip(f"a device cannot be opened in {tmp_path} (mounted nodev)")
    return copy


def standard_output(tmp_path):
    """/dev/stdout, or as root a link in tmp_path to what it links to (as device above)."""
    if os.geteuid() != 0:
        return "/dev/stdout"
    link = tmp_path / "stdout"
    link.symlink_to("/proc/self/fd/1")
    return str(link)


# ----------------------------------------------------------------------------------------
# where an output goes

def test_a_device_is_written_into_not_replaced(trained, tmp_path, quick):
    null = device("null", tmp_path)
    check_writable(null, "--json")
    assert os.listdir(tmp_path) == ([] if null.startswith("/dev/") else ["null"])   # no temporary file beside it
    finetune.main(finetune_args(trained, "--json", null))
    assert stat.S_ISCHR(os.stat(null).st_mode)


def test_a_fifo_is_written_into_and_its_reader_gets_everything(tmp_path):
    fifo, got = str(tmp_path / "fifo"), []
    os.mkfifo(fifo)
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()), daemon=True)
    reader.start()
    check_writable(fifo, "--json")                               # does not open it: the reader would see an end
    write_json(fifo, {"a": 1})
    reader.join(timeout=10)
    assert not reader.is_alive() and json.loads(got[0]) == {"a": 1}
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and os.listdir(tmp_path) == ["fifo"]


def test_standard_output_is_written_in_order_with_what_was_printed(tmp_path, capfd):
    out = standard_output(tmp_path)
    print("before")
    check_writable(out, "--json")
    write_json(out, {"a": 1})
    print("after")
    assert capfd.readouterr().out == 'before\n{\n "a": 1\n}after\n'
    assert os.listdir(tmp_path) == ([] if out.startswith("/dev/") else ["stdout"])


def test_a_symlink_writes_its_target_and_stays_a_link(tmp_path):
    (tmp_path / "runs").mkdir()
    target, link = tmp_path / "runs" / "r.json", tmp_path / "r.json"
    target.write_text("old")
    link.symlink_to(target)
    check_writable(str(link), "--json")
    write_json(str(link), {"a": 1})
    save_checkpoint(str(tmp_path / "ckpt.pt"), {"x": torch.arange(2)})
    (tmp_path / "model.pt").symlink_to(tmp_path / "runs" / "model.pt")   # a link whose target is not there yet
    save_checkpoint(str(tmp_path / "model.pt"), {"x": torch.arange(3)})
    assert link.is_symlink() and json.loads(target.read_text()) == {"a": 1}
    assert (tmp_path / "model.pt").is_symlink() and (tmp_path / "runs" / "model.pt").is_file()
    assert sorted(os.listdir(tmp_path / "runs")) == ["model.pt", "r.json"]


def test_a_long_file_name_is_written_and_its_stale_temporaries_removed(tmp_path):
    path = str(tmp_path / ("r" * 240 + ".json"))                 # 245 characters: a valid name
    check_writable(path, "--json")
    killed = (f"import os, sys\nsys.path.insert(0, {ROOT!r})\nfrom common import write_atomic\n"
              "def dies(f):\n    f.write(b'half a file')\n    os.kill(os.getpid(), 9)\n"
              f"write_atomic({path!r}, dies)\n")
    assert subprocess.run([sys.executable, "-c", killed]).returncode == -9
    assert len(os.listdir(tmp_path)) == 1                        # the killed write's temporary file
    write_json(path, {"a": 1})
    assert os.listdir(tmp_path) == [os.path.basename(path)]
    save_checkpoint(path, {"x": torch.arange(2)})
    assert torch.load(path, weights_only=True)["x"].tolist() == [0, 1]
