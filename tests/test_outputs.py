"""Every output lands where it was asked to, or says in one line why not: devices, FIFOs, symlinks
and long names; a full disk; Ctrl-C."""
import errno
import json
import os
import signal
import stat
import subprocess
import sys
import threading

import pytest
import torch

import data.prepare as prepare_module
import evaluate
import finetune
import train as train_module
from checkpoint import load_checkpoint, save_checkpoint
from common import check_writable, write_json
from conftest import ROOT, TINY_ARGS, TINY_MODEL, checkpoint_of, one_line_error
from experiments import sweeps


def full_disk(obj, f):
    """torch.save on a full disk: the write's OSError, and while it is handled, its zip writer's RuntimeError."""
    f.write(b"PK half a checkpoint")
    try:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")


@pytest.fixture
def quick(monkeypatch):
    """Runs that measure nothing (finetune's measure, train's evaluate_all): these tests look at what
    is written and said, not at the numbers, and measuring takes most of a tiny run's time."""
    numbers = {"learned_acc": 0.5, "unseen_acc": None, "background_acc": 1.0, "background_correct": [True],
               "skill_acc": 1.0, "val_loss": 2.0, "slots": []}
    monkeypatch.setattr(finetune, "measure", lambda *args: dict(numbers))
    monkeypatch.setattr(train_module, "evaluate_all", lambda *args: {"val_loss": 2.0, "slots": [], "fact_acc": 0.5})


def interrupted(cli, *args):
    """The exit status cli(args) ends with (the test makes it see a Ctrl-C)."""
    try:
        cli([str(a) for a in args])
    except SystemExit as e:
        return e.code
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C came out as a KeyboardInterrupt traceback")
    pytest.fail("no Ctrl-C")


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


def test_a_full_device_is_one_line_and_the_model_is_kept(trained, tmp_path, quick, capsys):
    full, out = device("full", tmp_path), tmp_path / "ft.pt"
    message = one_line_error(finetune.main, *finetune_args(trained, "--json", full, "--out", out))
    assert f"--json {full} (No space left on device); free space or choose another path" in message
    assert f"--out {out} was written" in message and load_checkpoint(str(out))[2]["finetune"]["facts"] == 1
    assert "learned" in capsys.readouterr().out                  # the table is printed all the same
    assert stat.S_ISCHR(os.stat(full).st_mode)


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


# ----------------------------------------------------------------------------------------
# a full disk

def test_a_full_disk_under_the_model_keeps_the_results_and_prints_the_table(trained, tmp_path, quick, monkeypatch,
                                                                            capsys):
    monkeypatch.setattr(torch, "save", full_disk)
    out, result = tmp_path / "ft.pt", tmp_path / "r.json"
    message = one_line_error(finetune.main, *finetune_args(trained, "--out", out, "--json", result))
    assert f"could not write --out {out}" in message and "free space or choose another path" in message
    assert f"--json {result} was written" in message and "enforce fail" not in message
    assert json.loads(result.read_text())["facts"] == 1 and os.listdir(tmp_path) == ["r.json"]
    assert "learned" in capsys.readouterr().out


def test_a_failed_write_inside_torch_save_is_the_oserror_of_the_write(tmp_path):
    path = str(tmp_path / "ckpt.pt")                             # a real failing write: files past 100 kB refused
    script = (f"import resource, signal, sys\nsys.path.insert(0, {ROOT!r})\nimport torch\n"
              "from checkpoint import save_checkpoint\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (100000, 100000))\n"
              f"try:\n    save_checkpoint({path!r}, {{'x': torch.zeros(100000)}})\n"
              "except OSError as e:\n    print(e.errno)\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.stdout.strip() == str(errno.EFBIG), run.stderr
    assert os.listdir(tmp_path) == []


def test_a_full_disk_under_the_results_keeps_the_model(trained, tmp_path, quick, monkeypatch):
    def disk_full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(finetune, "write_json", disk_full)
    out, result = tmp_path / "ft.pt", tmp_path / "r.json"
    message = one_line_error(finetune.main, *finetune_args(trained, "--out", out, "--json", result))
    assert f"could not write --json {result} (No space left on device); free space" in message
    assert load_checkpoint(str(out))[2]["finetune"]["facts"] == 1


def test_a_full_disk_under_a_checkpoint_is_one_line_and_leaves_no_file(trained, tmp_path, quick, monkeypatch):
    monkeypatch.setattr(torch, "save", full_disk)
    message = one_line_error(train_module.main, "--data-dir", trained[0].data_dir, "--out-dir", tmp_path, *TINY_ARGS,
                             "--batch-size", 4, "--max-iters", 2, "--eval-interval", 2, "--device", "cpu")
    assert f"could not write the checkpoint {tmp_path / 'ckpt.pt'}" in message and "choose another path" in message
    assert os.listdir(tmp_path) == []


def test_a_background_cache_on_a_full_disk_warns_and_the_run_goes_on(trained, tmp_path, quick, monkeypatch, capsys):
    import shutil
    ckpt = str(tmp_path / "ckpt.pt")
    shutil.copy(checkpoint_of(trained), ckpt)

    monkeypatch.setattr(torch, "save", full_disk)
    result = tmp_path / "r.json"
    finetune.main(["--checkpoint", ckpt, "--facts", "1", "--steps-per-fact", "1", "--set-facts", "0",
                   "--background-batches", "5", "--json", str(result), "--device", "cpu", "--quiet"])
    assert json.loads(result.read_text())["mode"] == "sparse"
    err = capsys.readouterr().err
    assert "warning: could not cache the background statistics" in err and "enforce fail" not in err


# ----------------------------------------------------------------------------------------
# Ctrl-C

def ctrl_c(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_in_training_names_the_last_checkpoint(tiny_corpus, tmp_path, quick, monkeypatch, capsys):
    calls, get_batch = [], train_module.get_batch

    def then_ctrl_c(*args):
        calls.append(1)
        if len(calls) == 4:                                        # in step 4: the checkpoint of step 2 is saved
            raise KeyboardInterrupt
        return get_batch(*args)
    monkeypatch.setattr(train_module, "get_batch", then_ctrl_c)
    args = ["--data-dir", tiny_corpus.out_dir, "--out-dir", tmp_path, *TINY_ARGS, "--batch-size", 4,
            "--max-iters", 6, "--eval-interval", 2, "--device", "cpu"]
    assert interrupted(train_module.main, *args) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"interrupted; the checkpoint of step 2 is in {tmp_path / 'ckpt.pt'} (python train.py " \
                      "--resume goes on from it)"
    monkeypatch.setattr(train_module, "get_batch", ctrl_c)        # again: the checkpoint there is not this run's
    assert interrupted(train_module.main, *args) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "interrupted; nothing was saved"


@pytest.mark.parametrize("cli, where", [(finetune.main, "run_stream"), (evaluate.main, "measure"),
                                        (prepare_module.main, "prepare"), (sweeps.main, "sweep")])
def test_ctrl_c_is_one_line_and_exit_status_130(trained, tmp_path, quick, monkeypatch, capsys, cli, where):
    monkeypatch.setattr(sys.modules[cli.__module__], where, ctrl_c)
    args = {finetune.main: finetune_args(trained, "--json", tmp_path / "r.json"),
            evaluate.main: ["--checkpoint", checkpoint_of(trained), "--device", "cpu"],
            prepare_module.main: ["--out-dir", tmp_path / "corpus"],
            sweeps.main: ["compare", "--checkpoint", checkpoint_of(trained), "--out-dir", tmp_path, "--device", "cpu"]}
    assert interrupted(cli, *args[cli]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    saved = f"the stages it finished are kept in {tmp_path / 'corpus'}; run it again to go on"
    assert err[-1] == "interrupted; " + (saved if cli is prepare_module.main else "nothing was saved")
    assert "Traceback" not in "\n".join(err) and os.listdir(tmp_path) == []


def test_ctrl_c_after_the_outputs_says_they_were_written(trained, tmp_path, quick, monkeypatch, capsys):
    monkeypatch.setattr(finetune, "format_table", ctrl_c)
    out, result = tmp_path / "ft.pt", tmp_path / "r.json"
    assert interrupted(finetune.main, *finetune_args(trained, "--out", out, "--json", result)) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"interrupted; --json {result} and --out {out} written"


def test_a_real_ctrl_c_exits_130_with_one_line(trained):
    script = (f"import os, signal, sys, time\nsys.path.insert(0, {ROOT!r})\nimport evaluate\n"
              "def ctrl_c(*args, **kwargs):\n    os.kill(os.getpid(), signal.SIGINT)\n"
              "    time.sleep(60)\n"                  # the handler runs at the next bytecode, not in os.kill
              f"evaluate.load_checkpoint = ctrl_c\nevaluate.main(['--checkpoint', {checkpoint_of(trained)!r}])\n")
    # The child starts with Ctrl-C at its default, as from a terminal: a shell's background job (a test
    # run started with &) ignores SIGINT, the child would inherit that, and Python would never raise.
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert (run.returncode, run.stderr) == (128 + signal.SIGINT, "interrupted; nothing was saved\n"), run.stderr
