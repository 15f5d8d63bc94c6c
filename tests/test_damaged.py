"""Damaged or moved input files: a moved project still finds its corpus, another corpus is refused by its
content, and a damaged checkpoint, background cache or corpus file is one line naming the file and the fix
(a damaged cache is counted again, with a warning). Every case damages a copy in tmp_path, never a fixture."""
import os
import shutil

import numpy as np
import pytest
import torch

import checkpoint
import evaluate
import finetune
import train as train_module
from checkpoint import checkpoint_corpus, checkpoint_train_tokens, load_checkpoint, save_checkpoint
from conftest import TINY_ARGS, TINY_MODEL, checkpoint_of, one_line_error
from finetune import FinetuneConfig, load_or_compute_background
from model import GPTConfig
from train import TrainConfig, train


def corpus_copy(tiny_corpus, folder):
    """A copy of the tiny corpus in folder (made), to damage or move."""
    shutil.copytree(tiny_corpus.out_dir, folder)
    return str(folder)


def checkpoint_on(trained, data_dir, path):
    """A copy of the trained checkpoint at path that names data_dir (a copy of its corpus) as its corpus."""
    save_checkpoint(str(path), {**torch.load(checkpoint_of(trained), weights_only=True), "data_dir": str(data_dir)})
    return str(path)


# ----------------------------------------------------------------------------------------
# a moved project, a copied checkpoint, another corpus

def test_a_moved_project_finds_its_corpus_and_another_corpus_is_refused_by_content(tiny_corpus, tmp_path,
                                                                                    monkeypatch):
    old, new, other = tmp_path / "project", tmp_path / "renamed", tmp_path / "clone"
    monkeypatch.setattr(checkpoint, "ROOT", str(old))                   # the project train.py runs in
    cfg = TrainConfig(data_dir=corpus_copy(tiny_corpus, old / "data" / "tiny"), out_dir=str(old / "out"),
                      batch_size=4, max_iters=2, eval_interval=2, warmup_iters=1, device="cpu")
    train(cfg, GPTConfig(**TINY_MODEL), quiet=True)
    assert torch.load(old / "out" / "ckpt.pt", weights_only=True)["data_dir"] == os.path.join("data", "tiny")

    os.rename(old, new)                                                  # the project folder renamed
    monkeypatch.setattr(checkpoint, "ROOT", str(new))
    _, _, ckpt = load_checkpoint(str(new / "out" / "ckpt.pt"))
    val, kb = checkpoint_corpus(ckpt)
    assert len(val) == os.path.getsize(new / "data" / "tiny" / "val.bin") // 2 and kb["new"]
    assert len(checkpoint_train_tokens(ckpt)) > 0
    evaluate.main(["--checkpoint", str(new / "out" / "ckpt.pt"), "--facts", "1", "--device", "cpu"])

    shutil.copytree(new, other)                                          # the checkpoint in another clone ...
    monkeypatch.setattr(checkpoint, "ROOT", str(other))
    val_bin = other / "data" / "tiny" / "val.bin"
    tokens = np.fromfile(val_bin, dtype=np.uint16)
    tokens[::-1].tofile(val_bin)                                         # ... whose corpus differs, sizes alike
    message = one_line_error(evaluate.main, "--checkpoint", other / "out" / "ckpt.pt", "--device", "cpu")
    assert "does not match the one this checkpoint was trained on" in message and str(other / "data") in message
    message = one_line_error(finetune.main, "--checkpoint", other / "out" / "ckpt.pt", "--mode", "full", "--lr", 1e-3,
                             "--facts", 1, "--steps-per-fact", 1, "--device", "cpu", "--quiet")
    assert "does not match the one this checkpoint was trained on" in message


def test_an_older_checkpoint_with_an_absolute_corpus_path_still_loads(trained, tiny_corpus, tmp_path, monkeypatch):
    ckpt = torch.load(checkpoint_of(trained), weights_only=True)
    older = {k: v for k, v in ckpt.items() if k != "corpus_fingerprint"}       # as written before fingerprints
    older["data_dir"] = os.path.abspath(tiny_corpus.out_dir)
    assert len(checkpoint_corpus(older)[0]) > 0
    project = tmp_path / "project"                                       # the project moved, and its corpus
    name = os.path.basename(tiny_corpus.out_dir)                         # with it, to the same name in data/
    corpus_copy(tiny_corpus, project / "data" / name)
    monkeypatch.setattr(checkpoint, "ROOT", str(project))
    older["data_dir"] = str(tmp_path / "old place" / "data" / name)
    assert checkpoint.corpus_dir(older) == str(project / "data" / name)
    assert len(checkpoint_train_tokens(older)) == len(checkpoint_train_tokens(ckpt))


# ----------------------------------------------------------------------------------------
# damaged checkpoints

def with_weight(value):
    """A damage: the first floating-point weight gets value in one place."""
    def damage(c):
        model = dict(c["model"])
        name = next(k for k, v in model.items() if v.is_floating_point())
        model[name] = model[name].clone()
        model[name].view(-1)[0] = value
        return {**c, "model": model}
    return damage


DAMAGED_CHECKPOINTS = {
    "n_head 0": lambda c: {**c, "model_args": {**c["model_args"], "n_head": 0}},
    "n_head -1": lambda c: {**c, "model_args": {**c["model_args"], "n_head": -1}},
    "n_embd not divisible by n_head": lambda c: {**c, "model_args": {**c["model_args"], "n_embd": 31}},
    "a nan weight": with_weight(float("nan")),
    "an inf weight": with_weight(float("inf")),
}


@pytest.mark.parametrize("case", sorted(DAMAGED_CHECKPOINTS))
def test_a_damaged_checkpoint_is_refused_when_loaded_in_one_line(trained, tmp_path, case):
    bad = str(tmp_path / "bad.pt")
    save_checkpoint(bad, DAMAGED_CHECKPOINTS[case](torch.load(checkpoint_of(trained), weights_only=True)))
    for cli, more in ((evaluate.main, []), (finetune.main, ["--mode", "full", "--lr", 1e-3, "--facts", 1, "--quiet"])):
        message = one_line_error(cli, "--checkpoint", bad, "--device", "cpu", *more)
        assert bad in message and "damaged" in message


def test_a_checkpoint_path_that_is_a_folder_says_so(trained, tmp_path):
    for cli in (evaluate.main, finetune.main):
        message = one_line_error(cli, "--checkpoint", tmp_path, "--device", "cpu")
        assert f"{tmp_path} is a folder" in message and os.path.join(str(tmp_path), "ckpt.pt") in message


# ----------------------------------------------------------------------------------------
# damaged background caches: counted again, with a warning

def cached_background(trained, tmp_path):
    """(config, model, checkpoint, statistics, cache path) after a first count has written the cache."""
    model, _, ckpt = load_checkpoint(checkpoint_of(trained))
    fc = FinetuneConfig(checkpoint=str(tmp_path / "ckpt.pt"), background_batches=3, quiet=True)
    stats = load_or_compute_background(fc, model, ckpt, "cpu")
    return fc, model, ckpt, stats, str(tmp_path / "ckpt.background.pt")


def counted_again(fc, model, ckpt, stats, path, capsys, monkeypatch):
    """The damaged cache at path gives the first count's statistics with one warning naming it, and is
    replaced: the next run reads it without counting."""
    capsys.readouterr()
    again = load_or_compute_background(fc, model, ckpt, "cpu")
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and path in err and err.count("\n") == 1, err
    for a, b in zip(again, stats):
        assert a["units"] == b["units"] and torch.equal(a["df"], b["df"]) and torch.equal(a["reads"], b["reads"])
    monkeypatch.setattr(finetune, "background_stats", lambda *a, **k: pytest.fail("counted again"))
    assert torch.equal(load_or_compute_background(fc, model, ckpt, "cpu")[0]["df"], stats[0]["df"])
    assert capsys.readouterr().err == ""


DAMAGED_CACHES = {
    "a count of the wrong shape": lambda st: [{**st[0], "df": st[0]["df"][:-1]}] + st[1:],
    "a count of the wrong type": lambda st: [{**st[0], "reads": st[0]["reads"].double()}] + st[1:],
    "a table's statistics not a dict": lambda st: [[st[0]["df"]]] + st[1:],
    "statistics not a list": lambda st: "stats",
}


@pytest.mark.parametrize("case", sorted(DAMAGED_CACHES))
def test_a_background_cache_of_the_right_key_but_wrong_form_is_counted_again(trained, tmp_path, capsys, monkeypatch,
                                                                             case):
    fc, model, ckpt, stats, path = cached_background(trained, tmp_path)
    cached = torch.load(path, weights_only=True)
    torch.save({**cached, "stats": DAMAGED_CACHES[case](cached["stats"])}, path)
    counted_again(fc, model, ckpt, stats, path, capsys, monkeypatch)


def test_a_background_cache_with_a_flipped_byte_is_counted_again(trained, tmp_path, capsys, monkeypatch):
    fc, model, ckpt, stats, path = cached_background(trained, tmp_path)
    data = bytearray(open(path, "rb").read())
    at = data.find(stats[0]["reads"].numpy().tobytes())                  # the stored counts, byte for byte
    assert at >= 0
    data[at] ^= 0x04                                                     # one slot's count off by 4
    open(path, "wb").write(bytes(data))
    counted_again(fc, model, ckpt, stats, path, capsys, monkeypatch)


def test_a_background_cache_of_another_model_is_counted_again_with_a_warning(trained, tmp_path, capsys, monkeypatch):
    fc, model, ckpt, stats, path = cached_background(trained, tmp_path)
    cached = torch.load(path, weights_only=True)
    torch.save({**cached, "key": {**cached["key"], "fingerprint": "another model"}}, path)
    counted_again(fc, model, ckpt, stats, path, capsys, monkeypatch)


# ----------------------------------------------------------------------------------------
# damaged corpus files: one line naming the file and python -m data.prepare

TOKENIZER = "bpe1024.tiktoken"                       # the tiny corpus's (conftest: vocab_size 1024)
DAMAGED_CORPORA = {                                   # the file, and its damaged bytes made from its bytes
    "facts.json truncated": ("facts.json", lambda b: b[:500]),
    "facts.json an empty object": ("facts.json", lambda b: b"{}"),
    "train.bin empty": ("train.bin", lambda b: b""),
    "val.bin of odd size": ("val.bin", lambda b: b[:-1]),
    "tokenizer empty": (TOKENIZER, lambda b: b""),
    "tokenizer with a damaged line": (TOKENIZER, lambda b: b[:-9] + b"\n"),
    "tokenizer not UTF-8": (TOKENIZER, lambda b: b"\xff\xfe" + b),
}


@pytest.mark.parametrize("case", sorted(DAMAGED_CORPORA))
def test_a_damaged_corpus_file_gives_one_line_naming_it_and_the_fix(trained, tiny_corpus, tmp_path, case):
    name, damage = DAMAGED_CORPORA[case]
    data_dir = corpus_copy(tiny_corpus, tmp_path / "corpus")
    ckpt = checkpoint_on(trained, data_dir, tmp_path / "ckpt.pt")       # before the damage: the same corpus
    path = os.path.join(data_dir, name)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(damage(data))
    for cli, args in ((train_module.main, ["--data-dir", data_dir, "--out-dir", tmp_path / "run", *TINY_ARGS,
                                           "--max-iters", 1]),
                      (evaluate.main, ["--checkpoint", ckpt])):
        message = one_line_error(cli, *args, "--device", "cpu")
        assert name in message and data_dir in message and "python -m data.prepare" in message, message
    assert not (tmp_path / "run" / "ckpt.pt").exists()
