"""The presets. classroom: it names every setting, reaches the configs of data/prepare.py,
train.py and finetune.py, loses to an option given on the command line, and keeps its corpus
and checkpoint in folders of its own. large: the default run with 4x the memory slots, in a
folder of its own. No pretraining here: the work each script would do is replaced by a
stand-in that records its configs."""

import json
import os
from dataclasses import fields

import pytest

import finetune
import train
from data import prepare
from data.prepare import CLASSROOM_DATA, DataConfig
from finetune import CLASSROOM_FINETUNE, CLASSROOM_LR, LARGE_FINETUNE, FinetuneConfig
from model import CLASSROOM_MODEL, LARGE_MODEL, GPTConfig
from train import CLASSROOM_TRAIN, LARGE_TRAIN, TrainConfig


class Stop(Exception):
    """Raised by the stand-ins once they have recorded what they were given."""


def recorder(calls):
    def record(*args, **kwargs):
        calls.append(args)
        raise Stop
    return record


@pytest.mark.parametrize("preset, dc", [(CLASSROOM_DATA, DataConfig), (CLASSROOM_MODEL, GPTConfig),
                                        (CLASSROOM_TRAIN, TrainConfig), (CLASSROOM_FINETUNE, FinetuneConfig)])
def test_the_classroom_preset_names_every_setting(preset, dc):
    """Every field, so that a later change of a default cannot move the preset."""
    assert set(preset) == {f.name for f in fields(dc)}
    dc(**preset)                                             # and each value is one the config takes


def test_train_takes_the_preset_and_an_explicit_option_wins(monkeypatch):
    calls = []
    monkeypatch.setattr(train, "train", recorder(calls))
    with pytest.raises(Stop):
        train.main(["--preset", "classroom"])
    cfg, mcfg = calls[0]
    assert cfg == TrainConfig(**CLASSROOM_TRAIN)
    assert mcfg == GPTConfig(**{**CLASSROOM_MODEL, "vocab_size": GPTConfig.vocab_size})   # the corpus sets it
    with pytest.raises(Stop):
        train.main(["--max-iters", "7", "--preset", "classroom", "--n-embd", "48", "--memory-layers", "0"])
    cfg, mcfg = calls[1]
    assert (cfg.max_iters, mcfg.n_embd, mcfg.memory_layers) == (7, 48, (0,))
    assert cfg.batch_size == CLASSROOM_TRAIN["batch_size"] != TrainConfig.batch_size      # the rest: the preset's
    assert mcfg.n_layer == CLASSROOM_MODEL["n_layer"] != GPTConfig.n_layer
    with pytest.raises(Stop):
        train.main(["--max-iters", "7"])                     # no preset: the defaults
    assert calls[2][0] == TrainConfig(max_iters=7) and calls[2][1] == GPTConfig()


def test_prepare_and_finetune_take_the_preset_and_an_explicit_option_wins(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(prepare, "prepare", recorder(calls))
    with pytest.raises(Stop):
        prepare.main(["--preset", "classroom", "--n-stories", "50"])
    assert calls[0][0] == DataConfig(**{**CLASSROOM_DATA, "n_stories": 50})
    monkeypatch.setattr(finetune, "load_base", recorder(calls))
    with pytest.raises(Stop):
        finetune.main(["--preset", "classroom", "--mode", "full", "--facts", "5"])
    cfg = calls[1][0]
    assert cfg == FinetuneConfig(**{**CLASSROOM_FINETUNE, "mode": "full", "facts": 5, "optimizer": "adamw",
                                    "lr": CLASSROOM_LR[("full", "adamw")]})       # checked and filled in before any work


def test_the_documents_preset_is_the_default_run_on_the_documents_at_their_t(monkeypatch):
    calls = []
    monkeypatch.setattr(finetune, "load_base", recorder(calls))
    for argv in (["--preset", "documents"], ["--preset", "documents", "--top-t", "64", "--rewrites", "0"]):
        with pytest.raises(Stop):
            finetune.main(argv)
    assert calls[0][0] == FinetuneConfig(task="documents", top_t=500, optimizer="sgd", lr=50.0)
    assert calls[1][0] == FinetuneConfig(task="documents", top_t=64, rewrites=0, optimizer="sgd", lr=50.0)


def test_the_preset_learning_rates_are_its_own_and_an_explicit_lr_wins(trained, tmp_path, monkeypatch):
    checkpoint = os.path.join(trained[0].out_dir, "ckpt.pt")
    monkeypatch.setitem(CLASSROOM_LR, ("full", "adamw"), 3.3e-6)       # a rate no default has
    runs = {"preset": [], "explicit": ["--lr", "7e-6"]}
    for name, extra in runs.items():
        out = str(tmp_path / f"{name}.json")
        finetune.main(["--preset", "classroom", "--checkpoint", checkpoint, "--mode", "full", "--facts", "2",
                       "--set-facts", "0", "--steps-per-fact", "1", "--quiet", "--device", "cpu", "--json", out, *extra])
        with open(out, "r", encoding="utf-8") as f:
            runs[name] = json.load(f)
    assert runs["preset"]["lr"] == 3.3e-6 and runs["explicit"]["lr"] == 7e-6
    assert runs["preset"]["facts"] == 2 and runs["preset"]["steps_per_fact"] == 1


def test_the_classroom_corpus_and_checkpoint_are_their_own(monkeypatch, tmp_path):
    data, out = str(tmp_path / "data"), str(tmp_path / "out")
    assert os.path.abspath(CLASSROOM_DATA["out_dir"]) != os.path.abspath(DataConfig.out_dir)
    assert CLASSROOM_TRAIN["data_dir"] == CLASSROOM_DATA["out_dir"]
    assert os.path.abspath(CLASSROOM_TRAIN["out_dir"]) != os.path.abspath(TrainConfig.out_dir)
    assert CLASSROOM_FINETUNE["checkpoint"] == os.path.join(CLASSROOM_TRAIN["out_dir"], "ckpt.pt")
    # a missing classroom checkpoint is pretrained with the classroom's settings, into its own folder
    calls = []
    monkeypatch.setitem(CLASSROOM_FINETUNE, "checkpoint", os.path.join(out, "ckpt.pt"))
    monkeypatch.setattr(finetune, "train", recorder(calls))
    cfg = FinetuneConfig(**{**CLASSROOM_FINETUNE, "device": "cpu"})
    with pytest.raises(Stop):
        finetune.load_base(cfg, "cpu")
    assert calls[0] == (TrainConfig(**{**CLASSROOM_TRAIN, "device": "cpu"}), GPTConfig(**CLASSROOM_MODEL))
    # and a missing classroom corpus is prepared with the classroom's settings
    monkeypatch.setitem(CLASSROOM_DATA, "out_dir", data)
    monkeypatch.setattr(train, "prepare", recorder(calls))
    with pytest.raises(Stop):
        train.train(TrainConfig(**{**CLASSROOM_TRAIN, "data_dir": data, "out_dir": out}), GPTConfig(**CLASSROOM_MODEL))
    assert calls[1] == (DataConfig(**CLASSROOM_DATA),)
    # another missing folder is not prepared: one line says how
    with pytest.raises(FileNotFoundError, match="python -m data.prepare --out-dir"):
        train.train(TrainConfig(**{**CLASSROOM_TRAIN, "data_dir": str(tmp_path / "other"), "out_dir": out}),
                    GPTConfig(**CLASSROOM_MODEL))


def test_the_course_runs_are_settings_the_classroom_preset_takes(trained):
    """python -m experiments course runs each of COURSE_RUNS with the preset's settings: every key
    must be a FinetuneConfig or RecipeConfig field, and each mode must have a classroom learning rate."""
    from experiments.sweeps import COURSE_RUNS
    from checkpoint import load_checkpoint
    model = load_checkpoint(os.path.join(trained[0].out_dir, "ckpt.pt"))[0]
    assert len({name for name, _ in COURSE_RUNS}) == len(COURSE_RUNS)
    for _, run in COURSE_RUNS:
        cfg, rcfg = finetune.configs({**CLASSROOM_FINETUNE, **run})
        assert set(run) <= set(vars(cfg)) | set(vars(rcfg))
        cfg = finetune.resolve(cfg, model, CLASSROOM_LR)
        assert cfg.lr == run.get("lr", CLASSROOM_LR[(cfg.mode, cfg.optimizer)])


def test_the_large_preset_is_the_default_run_with_4x_the_slots_in_its_own_folder(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(train, "train", recorder(calls))
    with pytest.raises(Stop):
        train.main(["--preset", "large"])
    cfg, mcfg = calls[0]
    assert cfg == TrainConfig(out_dir=LARGE_TRAIN["out_dir"])              # the default run but its folder
    assert os.path.abspath(cfg.out_dir) != os.path.abspath(TrainConfig.out_dir)
    assert mcfg == GPTConfig(mem_n_keys=512) and 512 ** 2 == 4 * GPTConfig.mem_n_keys ** 2
    monkeypatch.setattr(finetune, "load_base", recorder(calls))
    with pytest.raises(Stop):
        finetune.main(["--preset", "large", "--facts", "20"])
    assert calls[1][0] == FinetuneConfig(checkpoint=os.path.join(LARGE_TRAIN["out_dir"], "ckpt.pt"), facts=20,
                                         optimizer="sgd", lr=50.0)   # the default's rate, filled in before any work
    # a missing large checkpoint is pretrained with the large preset's settings
    monkeypatch.undo()
    monkeypatch.setitem(LARGE_FINETUNE, "checkpoint", str(tmp_path / "ckpt.pt"))
    monkeypatch.setattr(finetune, "train", recorder(calls))
    with pytest.raises(Stop):
        finetune.load_base(FinetuneConfig(**{**LARGE_FINETUNE, "device": "cpu", "quiet": True}), "cpu")
    assert calls[2] == (TrainConfig(**{**LARGE_TRAIN, "device": "cpu"}), GPTConfig(**LARGE_MODEL))
