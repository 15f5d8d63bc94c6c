"""Every option of every script is checked before any file is read or any work starts: a value
out of range, or an option the run would ignore, is one line naming it; nothing is written."""
import os
from dataclasses import replace

import pytest

import data.prepare as prepare_module
import evaluate
import finetune
import train as train_module
from conftest import TINY_MODEL
from model import GPTConfig
from train import TrainConfig, train


def no_work(monkeypatch, module, *names):
    for name in names:
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail(f"{name} ran before the options were checked"))


@pytest.mark.parametrize("args, message", [
    (["--mode", "bogus"], "unknown --mode"), (["--top-t", "-3"], "--top-t must be"),
    (["--grow-t", "5"], "--grow-t 5 is below"), (["--slow-taught-slots", "nan"], "--slow-taught-slots must be"),
    (["--facts-file", "missing.jsonl"], "does not exist"),
    (["--block-answer-slots", "--spare-answer-slots", "0.01", "--ranking", "tf"],
     "--ranking tf has no IDF: it would ignore --spare-answer-slots, --block-answer-slots"),
    (["--mode", "full", "--top-t", "8"], "--mode full trains no memory rows alone: it would ignore --top-t"),
    (["--mode", "lora", "--grow-t", "4096"], "it would ignore --grow-t"),
    (["--lora-rank", "4"], "only --mode lora has adapters: it would ignore --lora-rank"),
    (["--weight-decay", "0.1"], "SGD has no weight decay: it would ignore --weight-decay"),
    (["--slow-answer-slots", "nan"], "--slow-answer-slots must be"),
    (["--max-df", "nan"], "--max-df is a share"),
    (["--background-batch-size", "1000000"], "--background-batch-size is at most 256"),
    (["--lora-alpha", "inf"], "--lora-alpha must be a finite number"),
    (["--task", "essay"], "unknown --task 'essay'"),
    (["--task", "documents", "--rewrites", "-1"], "--rewrites must be"),
    (["--rewrites", "3"], "--task facts teaches facts: it would ignore --rewrites"),
    (["--task", "documents", "--set-facts", "5"], "--task documents teaches documents, not facts: it would ignore "
                                                  "--set-facts"),
    (["--text", "t.txt"], "--text and --questions go together"),
    (["--text", "t.txt", "--questions", "q.jsonl", "--documents", "3"], "it would ignore --documents"),
    (["--text", "missing.txt", "--questions", "q.jsonl"], "text file missing.txt does not exist")])
def test_finetune_refuses_bad_options_and_contradictions_before_pretraining(tmp_path, monkeypatch, args, message):
    """On a fresh clone the first run pretrains the default model (minutes): a typo must not cost them."""
    missing = str(tmp_path / "out" / "ckpt.pt")
    monkeypatch.setattr(finetune, "DEFAULT_CHECKPOINT", missing)          # as on a fresh clone
    no_work(monkeypatch, finetune, "train", "load_checkpoint")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        finetune.main(["--checkpoint", missing, *args])
    assert message in str(e.value)


def test_a_recipe_presets_options_the_mode_ignores_are_noted_not_refused(trained, tmp_path, capsys):
    cfg = trained[0]
    finetune.main(["--checkpoint", os.path.join(cfg.out_dir, "ckpt.pt"), "--mode", "full", "--recipe", "improved",
                   "--facts", "2", "--set-facts", "0", "--steps-per-fact", "1", "--quiet", "--device", "cpu"])
    assert "note: --mode full trains no memory rows alone: it ignores --grow-t" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [(["--n-head", "0"], "n_head (--n-head) must be at least 1, not 0"),
                                           (["--n-embd", "0"], "n_embd (--n-embd) must be at least 1"),
                                           (["--mem-heads", "0"], "mem_heads (--mem-heads) must be at least 1"),
                                           (["--block-size", "0"], "block_size (--block-size) must be at least 1"),
                                           (["--mem-topk", "999"], "mem_topk <= mem_n_keys"),
                                           (["--dropout", "nan"], "dropout must be in [0, 1)"),
                                           (["--mem-query-norm", "rms"], "mem_query_norm must be"),
                                           (["--lr", "nan"], "--lr must be a finite number"),
                                           (["--stop-at", "-1"], "--stop-at -1 must be between")])
def test_train_refuses_bad_settings_before_the_corpus_is_read(tmp_path, monkeypatch, args, message):
    no_work(monkeypatch, train_module, "prepare", "read_corpus_meta", "load_checkpoint")
    with pytest.raises(SystemExit) as e:
        train_module.main(["--out-dir", str(tmp_path / "out"), "--data-dir", str(tmp_path / "corpus"), *args])
    assert message in str(e.value)
    assert not os.path.exists(tmp_path / "out")


def test_a_resume_says_which_options_it_ignores(tiny_corpus, tmp_path, capsys):
    cfg = TrainConfig(data_dir=tiny_corpus.out_dir, out_dir=str(tmp_path), batch_size=8, max_iters=10, stop_at=5,
                      warmup_iters=2, eval_interval=5, lr=1e-2, device="cpu")
    train(cfg, GPTConfig(**TINY_MODEL), quiet=True)
    capsys.readouterr()
    train(replace(cfg, resume=True, stop_at=0, lr=0.5), GPTConfig(**{**TINY_MODEL, "n_layer": 3}), quiet=True)
    err = capsys.readouterr().err
    assert "--resume goes on with" in err and "--lr 0.5 (it has 0.01)" in err and "--n-layer 3 (it has 2)" in err
    train(replace(cfg, resume=True, stop_at=0, max_iters=12), GPTConfig(**TINY_MODEL), quiet=True)
    assert "ignores" not in capsys.readouterr().err                  # the same settings: nothing to say


@pytest.mark.parametrize("args, message", [(["--n-stories", "0"], "--n-stories must be at least 1, not 0"),
                                           (["--n-people", "0"], "--n-people must be at least 1"),
                                           (["--fact-repeats", "-1"], "--fact-repeats must be at least 1, not -1"),
                                           (["--world", "flat"], "unknown --world 'flat'"),
                                           (["--tokenizer", "bytes"], "unknown --tokenizer 'bytes'"),
                                           (["--vocab-size", "100"], "--vocab-size must be at least 257"),
                                           (["--source", "tinystories", "--tinystories-file", "none.txt"],
                                            "--tinystories-file none.txt is not a file")])
def test_prepare_checks_its_settings_before_writing_any_stage(tmp_path, args, message):
    out = tmp_path / "corpus"
    with pytest.raises(SystemExit) as e:
        prepare_module.main(["--out-dir", str(out), *args])
    assert message in str(e.value)
    assert not os.path.exists(out)                                      # so the corrected rerun starts clean


def test_evaluate_checks_facts_before_reading_the_checkpoint(monkeypatch):
    no_work(monkeypatch, evaluate, "load_checkpoint")
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--facts", "0"])
    assert "--facts must be at least 1, not 0" in str(e.value)
