"""Never lose work, never run untrusted code, one clear line for bad input, same seed same numbers."""
import inspect
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

import data.prepare as prepare_module
import evaluate
from experiments import sweeps
import finetune
import model as model_module
import train as train_module
from checkpoint import load_checkpoint, save_checkpoint
from common import Diverged, config_parser
from conftest import TINY_ARGS, TINY_MODEL, checkpoint_of, one_line_error
from facts import read_facts_file
from model import GPTConfig
from train import TrainConfig, train


def tiny_run(corpus, out, **kw):
    cfg = TrainConfig(**{"data_dir": corpus.out_dir, "out_dir": str(out), "batch_size": 8, "max_iters": 20,
                         "warmup_iters": 3, "eval_interval": 10, "lr": 1e-2, "device": "cpu", **kw})
    return cfg, train(cfg, GPTConfig(**TINY_MODEL), quiet=True)


def weights(out):
    return torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_continues_exactly(tiny_corpus, tmp_path):
    _, (_, _, whole) = tiny_run(tiny_corpus, tmp_path / "whole")
    tiny_run(tiny_corpus, tmp_path / "halves", stop_at=7)           # off the evaluation steps (10, 20)
    assert weights(tmp_path / "halves")["step"] == 7
    _, (_, _, resumed) = tiny_run(tiny_corpus, tmp_path / "halves", resume=True)
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "halves")
    assert a["step"] == b["step"] == 20
    assert_same_state(a["model"], b["model"])
    for oa, ob in zip(a["optimizers"], b["optimizers"]):            # Adam moments and step counts too
        for sa, sb in zip(oa["state"].values(), ob["state"].values()):
            assert all(torch.equal(sa[k], sb[k]) for k in sa)
    for k in ("train_loss", "val_loss", "fact_acc"):
        assert whole[k] == resumed[k], k


def test_resume_takes_the_recipe_from_the_checkpoint(tiny_corpus, tmp_path):
    _, (_, _, whole) = tiny_run(tiny_corpus, tmp_path / "whole", lr=5e-3, warmup_iters=4)
    tiny_run(tiny_corpus, tmp_path / "halves", stop_at=7, lr=5e-3, warmup_iters=4)
    _, (_, _, resumed) = tiny_run(tiny_corpus, tmp_path / "halves", resume=True)   # the default lr and warmup
    assert_same_state(weights(tmp_path / "whole")["model"], weights(tmp_path / "halves")["model"])
    assert whole["val_loss"] == resumed["val_loss"]


def test_same_seed_same_numbers(tiny_corpus, tmp_path, trained):
    _, (_, _, m1) = tiny_run(tiny_corpus, tmp_path / "a")
    _, (_, _, m2) = tiny_run(tiny_corpus, tmp_path / "b")
    assert_same_state(weights(tmp_path / "a")["model"], weights(tmp_path / "b")["model"])
    assert [m1[k] for k in ("train_loss", "val_loss", "fact_acc")] == [m2[k] for k in ("train_loss", "val_loss", "fact_acc")]
    cfg = trained[0]
    results = []
    for name in ("r1.json", "r2.json"):
        finetune.main(["--checkpoint", os.path.join(cfg.out_dir, "ckpt.pt"), "--facts", "3", "--steps-per-fact", "3",
                       "--top-t", "8", "--background-batches", "20", "--device", "cpu", "--json", str(tmp_path / name)])
        r = json.loads((tmp_path / name).read_text())
        for stream in (r, r["new_answers"], r["new_relations"]):     # every number but the time taken
            stream.pop("seconds")
        assert r["settings"].pop("json") == str(tmp_path / name)     # the settings differ in the output's name only
        results.append(r)
    assert results[0] == results[1]


class RunsCode:
    """Unpickling this would create a folder: the kind of side effect a hostile checkpoint could have."""
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_a_checkpoint_carrying_a_pickled_object_is_refused(trained, tmp_path):
    marker = str(tmp_path / "code_ran")
    ckpt = weights(trained[0].out_dir)
    evil = str(tmp_path / "evil.pt")
    torch.save({**ckpt, "extra": RunsCode(marker)}, evil)
    with pytest.raises(RuntimeError, match="holds pickled Python objects"):
        load_checkpoint(evil)
    for cli in (finetune.main, evaluate.main):
        with pytest.raises(SystemExit) as e:
            cli(["--checkpoint", evil, "--device", "cpu"])
        assert "refused to load" in str(e.value)
    assert not os.path.exists(marker)


def test_a_write_killed_midway_leaves_the_last_good_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(path, {"x": torch.arange(3)})

    def dies_midway(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt                                   # the user presses Ctrl-C
    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"x": torch.arange(5)})
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.arange(3))
    assert os.listdir(tmp_path) == ["ckpt.pt"]                     # no half-written temporary file left


def test_a_nan_loss_stops_with_its_step_and_keeps_the_last_checkpoint(tiny_corpus, tmp_path, monkeypatch):
    forward, calls = model_module.GPT.forward, []

    def poisoned(self, idx, targets=None, at=None):
        logits, loss = forward(self, idx, targets, at)
        if self.training:
            calls.append(1)
            if len(calls) == 15:                                   # training step 15
                loss = loss * float("nan")
        return logits, loss
    monkeypatch.setattr(model_module.GPT, "forward", poisoned)
    with pytest.raises(Diverged, match="loss became nan at step 15: training diverged"):   # not SystemExit: a
        tiny_run(tiny_corpus, tmp_path)                                                     # library function
    ckpt = weights(tmp_path)
    assert ckpt["step"] == 10 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_corrupt_checkpoint_gives_one_line(tmp_path):
    bad = str(tmp_path / "ckpt.pt")
    with open(bad, "wb") as f:
        f.write(b"\x80\x02 not a checkpoint")
    for cli in (finetune.main, evaluate.main):
        with pytest.raises(SystemExit) as e:
            cli(["--checkpoint", bad, "--device", "cpu"])
        assert "is corrupt or not a PyTorch checkpoint" in str(e.value)


def test_a_corpus_with_another_tokenizer_is_refused(trained, tiny_corpus, tmp_path):
    other = str(tmp_path / "other")
    shutil.copytree(tiny_corpus.out_dir, other)
    meta = json.loads(open(os.path.join(other, "meta.json")).read())
    tok = os.path.join(other, meta["tokenizer"])
    lines = open(tok).read().splitlines()
    open(tok, "w").write("\n".join(lines[:-1]) + "\n")               # one merge fewer: another tokenizer
    meta["vocab_size"] -= 1
    open(os.path.join(other, "meta.json"), "w").write(json.dumps(meta))
    cfg = trained[0]
    with pytest.raises(ValueError, match="does not match the corpus"):
        train(replace(cfg, data_dir=other, resume=True, max_iters=100), GPTConfig(**TINY_MODEL), quiet=True)
    moved = str(tmp_path / "moved.pt")
    save_checkpoint(moved, {**weights(cfg.out_dir), "data_dir": other})
    for cli in (finetune.main, evaluate.main):
        with pytest.raises(SystemExit) as e:
            cli(["--checkpoint", moved, "--device", "cpu"])
        assert "does not match the corpus" in str(e.value)


def test_sparse_finetuning_of_a_dense_checkpoint_gives_one_line(tiny_corpus, tmp_path):
    cfg = TrainConfig(data_dir=tiny_corpus.out_dir, out_dir=str(tmp_path), batch_size=4, max_iters=2,
                      eval_interval=2, dense=True, device="cpu")
    train(cfg, GPTConfig(**TINY_MODEL), quiet=True)
    with pytest.raises(SystemExit) as e:
        finetune.main(["--checkpoint", str(tmp_path / "ckpt.pt"), "--mode", "sparse", "--device", "cpu"])
    assert "needs a model with memory layers" in str(e.value)


@pytest.mark.parametrize("device, message", [("tpu", "unknown device 'tpu'"), ("cuda", "no CUDA device"),
                                             ("mps", "MPS is not available")])
def test_a_device_that_is_not_there_gives_one_line(trained, tmp_path, device, message):
    if device == "cuda" and torch.cuda.is_available() or device == "mps" and torch.backends.mps.is_available():
        pytest.skip(f"this machine has {device}")
    ckpt = os.path.join(trained[0].out_dir, "ckpt.pt")
    for cli, args in ((train_module.main, ["--out-dir", str(tmp_path), "--data-dir", trained[0].data_dir]),
                      (finetune.main, ["--checkpoint", ckpt]), (evaluate.main, ["--checkpoint", ckpt])):
        with pytest.raises(SystemExit) as e:
            cli(args + ["--device", device])
        assert message in str(e.value) and "\n" not in str(e.value)


def test_stop_at_out_of_range_is_refused(tiny_corpus, tmp_path):
    with pytest.raises(ValueError, match="--stop-at 30 must be between 1 and --max-iters 20"):
        tiny_run(tiny_corpus, tmp_path, stop_at=30)


# ----------------------------------------------------------------------------------------
# nothing lost, nothing silent: each case below once lost work or gave a wrong result quietly

GOOD = json.dumps({"paraphrases": ["Tom lives in Oakton."], "question": "Where does Tom live?", "answer": "Oakton."})


def interrupted_after_text(corpus, tmp_path):
    """A copy of the corpus as a data.prepare stopped after its text stage leaves it."""
    cfg = replace(corpus, out_dir=str(tmp_path / "corpus"))
    shutil.copytree(corpus.out_dir, cfg.out_dir)
    for name in ("meta.json", "train.bin", "val.bin"):
        os.remove(os.path.join(cfg.out_dir, name))
    return cfg


@pytest.mark.parametrize("option, value, recorded", [("--seed", 7, 1337), ("--n-stories", 500, 1500)])
def test_prepare_refuses_to_go_on_from_a_stage_written_with_other_settings(tiny_corpus, tmp_path, option, value,
                                                                           recorded):
    cfg = interrupted_after_text(tiny_corpus, tmp_path)
    text = (tmp_path / "corpus" / "train.txt").read_bytes()
    tiny = ["--n-stories", cfg.n_stories, "--n-val-stories", cfg.n_val_stories, "--fact-repeats", cfg.fact_repeats,
            "--vocab-size", cfg.vocab_size]
    message = one_line_error(prepare_module.main, "--out-dir", cfg.out_dir, *tiny, option, value)
    assert f"{option} {recorded} there, {value} here" in message and "--out-dir" in message
    assert (tmp_path / "corpus" / "train.txt").read_bytes() == text and not (tmp_path / "corpus" / "train.bin").exists()


def test_prepare_redoes_a_stage_it_has_no_record_of(tiny_corpus, tmp_path):
    cfg = interrupted_after_text(tiny_corpus, tmp_path)
    records = os.path.join(cfg.out_dir, "stages.json")
    if os.path.exists(records):                                  # as a run killed before it recorded its stages
        os.remove(records)
    prepare_module.prepare(replace(cfg, seed=7))
    kb = prepare_module.load_facts(cfg.out_dir)
    text = (tmp_path / "corpus" / "train.txt").read_text(encoding="utf-8")
    assert kb["seed"] == 7
    assert all(f["subject"] in text for f in kb["background"])   # text and facts of one seed


def test_a_diverging_pretraining_saves_nothing_and_names_the_step(tiny_corpus, tmp_path):
    for iters in (3, 1):                                         # 1: the last step is the one that diverges
        out = tmp_path / str(iters)
        message = one_line_error(train_module.main, "--data-dir", tiny_corpus.out_dir, "--out-dir", out, *TINY_ARGS,
                                 "--batch-size", 4, "--lr", 1e30, "--warmup-iters", 1, "--eval-interval", 1,
                                 "--max-iters", iters, "--device", "cpu")
        assert re.search(r"at step 1\b", message) and "lower --lr" in message
        assert not (out / "ckpt.pt").exists()


def test_a_diverging_finetune_writes_neither_model_nor_results(trained, tmp_path):
    out, result = tmp_path / "ft.pt", tmp_path / "r.json"
    message = one_line_error(finetune.main, "--checkpoint", checkpoint_of(trained), "--mode", "full", "--lr", 1e30,
                             "--facts", 1, "--steps-per-fact", 1, "--out", out, "--json", result, "--device", "cpu",
                             "--quiet")
    assert "fact 1" in message and "lower --lr" in message
    assert not out.exists() and not result.exists()


@pytest.mark.parametrize("option, value", [("--lr", "inf"), ("--lr", "nan"), ("--lr", "-1"), ("--weight-decay", "-0.1")])
def test_learning_rate_and_decay_must_be_finite_and_not_negative(trained, tiny_corpus, tmp_path, option, value):
    message = one_line_error(finetune.main, "--checkpoint", checkpoint_of(trained), "--mode", "full", "--facts", 1,
                             "--steps-per-fact", 1, option, value, "--device", "cpu", "--quiet")
    assert f"{option} must be" in message
    message = one_line_error(train_module.main, "--data-dir", tiny_corpus.out_dir, "--out-dir", tmp_path, *TINY_ARGS,
                             "--max-iters", 2, option, value, "--device", "cpu")
    assert f"{option} must be" in message and not (tmp_path / "ckpt.pt").exists()


@pytest.mark.parametrize("flag", ["--out", "--json"])
def test_no_output_may_overwrite_the_checkpoint_it_reads(trained, tmp_path, flag):
    ckpt = str(tmp_path / "ckpt.pt")
    shutil.copy(checkpoint_of(trained), ckpt)
    before = open(ckpt, "rb").read()
    message = one_line_error(finetune.main, "--checkpoint", ckpt, flag, os.path.join(str(tmp_path), ".", "ckpt.pt"),
                             "--mode", "full", "--facts", 1, "--steps-per-fact", 1, "--device", "cpu", "--quiet")
    assert flag in message and "input" in message
    assert open(ckpt, "rb").read() == before


def test_every_output_path_is_checked_before_any_work(trained, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setattr(finetune, "load_checkpoint", lambda *a, **k: pytest.fail("the checkpoint was loaded"))
    for flag, path in (("--json", tmp_path), ("--out", tmp_path), ("--out", tmp_path / "file" / "ft.pt"),
                       ("--json", tmp_path / "file" / "r.json")):
        message = one_line_error(finetune.main, "--checkpoint", checkpoint_of(trained), flag, path, "--mode", "full",
                                 "--facts", 1, "--device", "cpu")
        assert f"{flag} {path}" in message
    monkeypatch.setattr(train_module, "read_corpus_meta", lambda *a: pytest.fail("training started"))
    monkeypatch.setattr(sweeps, "sweep", lambda *a: pytest.fail("the experiment ran"))
    for out in (tmp_path / "file", tmp_path / "file" / "run"):
        message = one_line_error(train_module.main, "--data-dir", trained[0].data_dir, "--out-dir", out, "--device", "cpu")
        assert f"--out-dir {out}" in message
        message = one_line_error(sweeps.main, "compare", "--out-dir", out, "--checkpoint", checkpoint_of(trained))
        assert f"--out-dir {out}" in message


def test_experiment_results_are_written_atomically_and_only_as_valid_json(tmp_path, monkeypatch):
    monkeypatch.setattr(sweeps, "sweep", lambda *a: {"results": [], "val_loss": float("nan")})
    message = one_line_error(sweeps.main, "compare", "--out-dir", tmp_path, "--device", "cpu")
    assert f"could not write {tmp_path / 'compare'}.json" in message and "not JSON compliant" in message
    assert os.listdir(tmp_path) == []                            # no half file, no temporary file


@pytest.mark.parametrize("blocked", ["--json", "--out"])
def test_one_failing_write_loses_neither_the_model_nor_the_results(trained, tmp_path, monkeypatch, blocked):
    paths = {"--out": tmp_path / "models" / "ft.pt", "--json": tmp_path / "results" / "r.json"}   # folders not there yet
    stream = finetune.finetune

    def then_block(*args, **kw):                                 # the path turns into a folder during the run
        out = stream(*args, **kw)
        os.makedirs(paths[blocked], exist_ok=True)
        return out
    monkeypatch.setattr(finetune, "finetune", then_block)
    message = one_line_error(finetune.main, "--checkpoint", checkpoint_of(trained), "--mode", "full", "--lr", 1e-3,
                             "--facts", 1, "--steps-per-fact", 1, "--out", paths["--out"], "--json", paths["--json"],
                             "--device", "cpu", "--quiet")
    assert f"{blocked} {paths[blocked]}" in message
    if blocked == "--json":
        assert load_checkpoint(str(paths["--out"]))[2]["finetune"]["facts"] == 1
    else:
        assert json.loads(paths["--json"].read_text())["facts"] == 1


def test_the_model_and_results_are_written_before_the_examples_are_printed(trained, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):                            # Ctrl-C, or a console that cannot print a fact
        raise KeyboardInterrupt
    monkeypatch.setattr(finetune, "show_examples", interrupted)
    out, result = tmp_path / "ft.pt", tmp_path / "r.json"
    with pytest.raises(SystemExit):                              # exit status 130 (tests/test_outputs.py)
        finetune.main(["--checkpoint", checkpoint_of(trained), "--mode", "full", "--lr", "1e-3", "--facts", "2",
                       "--steps-per-fact", "1", "--set-facts", "1", "--out", str(out), "--json", str(result),
                       "--device", "cpu"])
    r = json.loads(result.read_text())
    assert (r["facts"], r["new_answers"]["facts"], r["new_relations"]["facts"]) == (2, 1, 1)
    assert len(load_checkpoint(str(out))[2]["finetune"]["facts_taught"]) == 2


def test_background_statistics_that_cannot_be_cached_warn_and_go_on(trained, tmp_path, monkeypatch, capsys):
    ckpt = str(tmp_path / "ckpt.pt")                              # its folder as if read-only
    shutil.copy(checkpoint_of(trained), ckpt)

    def read_only(path, obj):
        raise PermissionError(13, "Permission denied", path)
    monkeypatch.setattr("finetune.save_checkpoint", read_only)
    result = tmp_path / "elsewhere" / "r.json"
    finetune.main(["--checkpoint", ckpt, "--facts", "1", "--steps-per-fact", "1", "--background-batches", "5",
                   "--json", str(result), "--device", "cpu", "--quiet"])
    assert json.loads(result.read_text())["mode"] == "sparse"
    err = capsys.readouterr().err
    assert "warning" in err and "Permission denied" in err and "background" in err


def test_background_statistics_are_cached_per_model_args_too(trained, tmp_path):
    from finetune import FinetuneConfig, load_or_compute_background
    model, _, ckpt = load_checkpoint(checkpoint_of(trained))
    fc = FinetuneConfig(checkpoint=str(tmp_path / "ckpt.pt"), background_batches=3)
    load_or_compute_background(fc, model, ckpt, "cpu")
    fewer = model_module.GPT(GPTConfig(**{**ckpt["model_args"], "mem_topk": 2})).eval()
    fewer.load_state_dict(model.state_dict())                    # the same weights, fewer slots kept per head
    reads = load_or_compute_background(fc, fewer, ckpt, "cpu")[0]["reads"]
    assert reads.sum() == 3 * 1 * 32 * 2 * 2                      # units x windows x tokens x heads x kept


MALFORMED = {
    "unknown model arg": lambda c: {**c, "model_args": {**c["model_args"], "mem_gate": True}},
    "model_args None": lambda c: {**c, "model_args": None},
    "tokenizer not text": lambda c: {**c, "tokenizer": 5},
    "model not a dict": lambda c: {**c, "model": [torch.zeros(1)]},
    "no data_meta": lambda c: {k: v for k, v in c.items() if k != "data_meta"},
    "weights of another shape": lambda c: {**c, "model_args": {**c["model_args"], "n_embd": 64}},
    "train_config not a dict": lambda c: {**c, "train_config": 5},
    "finetune record not a dict": lambda c: {**c, "finetune": ["full"]},
    "facts taught without questions": lambda c: {**c, "finetune": {"facts_taught": [{"answer": "Tom."}]}},
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_checkpoint_gives_one_line(trained, tmp_path, case):
    bad = str(tmp_path / "bad.pt")
    save_checkpoint(bad, MALFORMED[case](weights(trained[0].out_dir)))
    for cli in (finetune.main, evaluate.main):
        assert bad in one_line_error(cli, "--checkpoint", bad, "--device", "cpu")


def test_a_corpus_meta_without_dtype_gives_one_line(tiny_corpus, tmp_path):
    other = str(tmp_path / "corpus")
    shutil.copytree(tiny_corpus.out_dir, other)
    meta = json.loads(open(os.path.join(other, "meta.json")).read())
    del meta["dtype"]
    open(os.path.join(other, "meta.json"), "w").write(json.dumps(meta))
    message = one_line_error(train_module.main, "--data-dir", other, "--out-dir", tmp_path / "run", *TINY_ARGS,
                             "--max-iters", 1, "--device", "cpu")
    assert "meta.json" in message and "dtype" in message


def test_facts_file_text_problems_give_one_line_naming_file_and_line(trained, tmp_path):
    eot = json.dumps({"paraphrases": ["Tom ran."], "question": "Who ran?", "answer": "Tom.<|endoftext|>"})
    (tmp_path / "eot.jsonl").write_text(GOOD + "\n" + eot + "\n", encoding="utf-8")
    (tmp_path / "latin.jsonl").write_bytes((GOOD + "\n" + GOOD.replace("Tom", "Zoë") + "\n").encode("latin-1"))
    for name, problem in (("eot.jsonl", "<|endoftext|>"), ("latin.jsonl", "UTF-8")):
        message = one_line_error(finetune.main, "--checkpoint", checkpoint_of(trained), "--facts-file",
                                 tmp_path / name, "--device", "cpu")
        assert f"{tmp_path / name} line 2" in message and problem in message
    (tmp_path / "bom.jsonl").write_text(GOOD + "\n", encoding="utf-8-sig")   # as Windows Notepad saves it
    assert read_facts_file(str(tmp_path / "bom.jsonl"))[0]["answer"] == "Oakton."


def test_the_next_save_removes_what_a_killed_save_left(tmp_path):
    from conftest import ROOT
    path = str(tmp_path / "ckpt.pt")
    killed = (f"import os, sys, torch\nsys.path.insert(0, {ROOT!r})\nfrom checkpoint import save_checkpoint\n"
              "def dies(obj, f):\n    f.write(b'half a checkpoint')\n    os.kill(os.getpid(), 9)\n"
              f"torch.save = dies\nsave_checkpoint({path!r}, {{}})\n")
    assert subprocess.run([sys.executable, "-c", killed]).returncode == -9
    assert len(os.listdir(tmp_path)) == 1                        # the killed save's temporary file
    others = ["notes.tmp", "ckpt.pt.tmp", "other.pt.abcdefgh.tmp",     # not ours to delete, and a save
              f"ckpt.pt.{os.getpid()}.abcdefgh.tmp"]                    # still running (this process)
    for name in others:
        (tmp_path / name).write_text("keep")
    save_checkpoint(path, {"x": torch.arange(2)})
    assert sorted(os.listdir(tmp_path)) == sorted(["ckpt.pt"] + others)


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX's")
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_get_the_mode_open_would_give_them(tmp_path, umask):
    from common import write_json
    old = os.umask(umask)
    try:
        write_json(str(tmp_path / "r.json"), {"a": 1})
        save_checkpoint(str(tmp_path / "ckpt.pt"), {"x": torch.arange(2)})
    finally:
        os.umask(old)
    for name in ("r.json", "ckpt.pt"):                           # not mkstemp's private 0600 under umask 022
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o666 & ~umask


def test_an_output_path_through_a_file_is_refused_with_what_is_wrong(trained, tmp_path):
    (tmp_path / "facts.jsonl").write_text("")
    bad = str(tmp_path / "facts.jsonl" / "sub" / "r.json")
    with pytest.raises(SystemExit, match="facts.jsonl is a file, not a folder"):
        finetune.main(["--checkpoint", os.path.join(trained[0].out_dir, "ckpt.pt"), "--json", bad, "--device", "cpu"])


def test_default_paths_are_the_projects_whatever_the_working_directory(tmp_path, monkeypatch):
    from conftest import ROOT
    monkeypatch.chdir(tmp_path)
    default = os.path.join(ROOT, "out", "ckpt.pt")
    assert os.path.abspath(os.path.join(TrainConfig().out_dir, "ckpt.pt")) == default
    assert os.path.abspath(finetune.FinetuneConfig().checkpoint) == default
    loaded = []

    def load(path, device="cpu"):
        loaded.append(os.path.abspath(path))
        raise RuntimeError("stop here")
    monkeypatch.setattr(evaluate, "load_checkpoint", load)
    one_line_error(evaluate.main, "--device", "cpu")
    assert loaded == [default]


def test_facts_spelled_in_tokens_pretraining_never_had_are_warned_about(trained, tmp_path, capsys):
    odd = json.dumps({"paraphrases": ["Zoë lives in 北京."], "question": "Where does Zoë live?", "answer": "北京."})
    (tmp_path / "f.jsonl").write_text(GOOD + "\n" + odd + "\n", encoding="utf-8")
    finetune.main(["--checkpoint", checkpoint_of(trained), "--facts-file", str(tmp_path / "f.jsonl"), "--mode", "full",
                   "--lr", "1e-3", "--steps-per-fact", "1", "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert "line 2" in err and "'ë'" in err and "北京" in err and "line 1" not in err


def test_a_max_df_that_leaves_no_slot_trainable_says_so(trained, capsys):
    from finetune import FinetuneConfig, resolve, run_stream
    from recipes import RecipeConfig, build
    model, enc, _ = load_checkpoint(checkpoint_of(trained))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    every = torch.full((model.memory_modules[0].n_slots,), 1000)   # every slot read in every background unit
    facts = [{"paraphrases": ["Tom ran."], "questions": ["Who ran?"], "heldout_question": None, "answer": "Tom."}]
    fc = resolve(FinetuneConfig(mode="sparse", lr=1.0, top_t=8, steps_per_fact=2), model)
    stats = [{"df": every, "reads": every, "units": 1000}]
    run_stream(fc, model, enc, facts, stats, build(RecipeConfig(grow_t=4096, max_df=0.5), "sparse", "tfidf", stats), quiet=True)
    assert_same_state(before, model.state_dict())                   # nothing trained ...
    # ... and it says so, counting every step: unanswered, t = 8 grows 4x to 4,096, 6 rounds of 2 steps
    assert "--max-df 0.5 left no trainable slot in 12 of 12 steps" in capsys.readouterr().err


def test_weight_decay_that_sgd_would_ignore_is_refused(trained):
    with pytest.raises(SystemExit) as e:
        finetune.main(["--checkpoint", checkpoint_of(trained), "--mode", "full", "--optimizer", "sgd", "--lr", "1e-3",
                       "--weight-decay", "0.1", "--facts", "1", "--steps-per-fact", "1", "--device", "cpu", "--quiet"])
    assert "SGD has no weight decay: it would ignore --weight-decay; leave it out" in str(e.value)


def test_resuming_a_finetuned_checkpoint_says_its_optimizers_start_afresh(trained, tiny_corpus, tmp_path, capsys):
    finetune.main(["--checkpoint", checkpoint_of(trained), "--mode", "full", "--lr", "1e-3", "--facts", "1",
                   "--steps-per-fact", "1", "--out", str(tmp_path / "ckpt.pt"), "--device", "cpu", "--quiet"])
    capsys.readouterr()
    tiny_run(tiny_corpus, tmp_path, resume=True, max_iters=61, eval_interval=61)
    assert "fresh optimizers" in capsys.readouterr().err
    save_checkpoint(str(tmp_path / "ckpt.pt"), {k: v for k, v in weights(tmp_path).items() if k != "data_rng"})
    with pytest.raises(ValueError, match="cannot resume from .* it has no data_rng"):
        tiny_run(tiny_corpus, tmp_path, resume=True, max_iters=62)


@pytest.mark.parametrize("n", [0, -1, 5000])
def test_evaluate_scores_only_as_many_new_facts_as_there_are(trained, n):
    assert "--facts" in one_line_error(evaluate.main, "--checkpoint", checkpoint_of(trained), "--facts", n,
                                       "--device", "cpu")


def test_every_option_has_its_whole_help_text():
    """--help takes an option's text from the comment on its line and the comment lines right below it."""
    from data.prepare import DataConfig
    from recipes import RecipeConfig
    for dc in (TrainConfig, GPTConfig, DataConfig, finetune.FinetuneConfig, RecipeConfig):
        lines = inspect.getsource(dc).splitlines()
        helps = {a.dest: a.help for a in config_parser("", dc)._actions}
        for n, line in enumerate(lines):
            field = re.match(r"\s+(\w+): .*?#\s*(.*)$", line)
            if not field:
                continue
            more = [m.group(1) for m in itertools.takewhile(bool, (re.match(r"\s+#\s*(.*)$", l) for l in lines[n + 1:]))]
            tail = (more or [field.group(2)])[-1]
            assert tail.replace("%", "%%") in helps[field.group(1)], f"{dc.__name__}.{field.group(1)}: {tail!r}"


def test_a_first_run_stopped_midway_goes_on_pretraining_before_it_finetunes(tiny_corpus, tmp_path, monkeypatch,
                                                                             capsys):
    """A Ctrl-C in the first run's pretraining leaves the default model half trained: the next run must
    not finetune it as if it were done (its numbers would be a half model's)."""
    cfg = TrainConfig(data_dir=tiny_corpus.out_dir, out_dir=str(tmp_path), batch_size=8, max_iters=10, stop_at=5,
                      warmup_iters=2, eval_interval=5, lr=1e-2, device="cpu")
    train(cfg, GPTConfig(**TINY_MODEL), quiet=True)
    path, calls = str(tmp_path / "ckpt.pt"), []
    monkeypatch.setattr(finetune, "DEFAULT_CHECKPOINT", path)
    def resume(tcfg, mcfg, quiet):                     # the default model's training, on the tiny one
        calls.append(tcfg)
        train(replace(cfg, resume=tcfg.resume, stop_at=0, max_iters=tcfg.max_iters), GPTConfig(**TINY_MODEL), True)
    monkeypatch.setattr(finetune, "train", resume)
    fcfg = finetune.FinetuneConfig(checkpoint=path, quiet=True, device="cpu")
    _, _, ckpt = finetune.load_base(fcfg, "cpu")
    assert [(c.resume, c.max_iters) for c in calls] == [(True, 10)] and ckpt["step"] == 10
    assert "pretrained to step 5 of 10; going on from it first" in capsys.readouterr().err
    finetune.load_base(fcfg, "cpu")                    # finished: loaded as it is
    assert len(calls) == 1
