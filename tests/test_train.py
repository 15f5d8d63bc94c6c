import math
import os

import numpy as np
import pytest
import torch

from checkpoint import load_checkpoint
from data.prepare import load_facts
from evaluate import qa_accuracy, qa_correct, qa_items, usage_stats, validate
from model import GPTConfig
from train import TrainConfig, lr_at, main, make_optimizers, train

from conftest import TINY_MODEL

def test_training_lowers_val_loss_and_saves_loadable_checkpoint(trained):
    cfg, model, enc, metrics = trained
    assert metrics["val_loss"] < np.log(enc.n_vocab) - 1.0          # well below a uniform guess
    assert 0.0 < metrics["slots"][0]["used"] <= 1.0
    m2, enc2, ckpt = load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"))
    assert ckpt["step"] == 60 and enc2.encode("Lily") == enc.encode("Lily")
    x = torch.randint(0, enc.n_vocab, (2, 32))
    model.eval()
    assert torch.equal(model(x)[0], m2(x)[0])


def test_teacher_forced_accuracy_equals_greedy_decoding(trained, tiny_corpus):
    _, model, enc, _ = trained
    kb = load_facts(tiny_corpus.out_dir)
    items = qa_items(kb["background"][:12], "first")
    # teach the model the first four answers, so some items are right and some wrong
    eot = enc.eot_token
    seqs = [[eot] + enc.encode(p + a) for p, a in items[:4]]
    L = max(map(len, seqs))
    x = torch.tensor([s + [eot] * (L - len(s)) for s in seqs])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        _, loss = model(x[:, :-1], x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    fast = qa_correct(model, enc, items, "cpu")
    greedy = []
    for p, a in items:
        ids = [eot] + enc.encode(p)
        target = enc.encode(a)
        out = model.generate(torch.tensor([ids]), len(target), temperature=0)[0, len(ids):].tolist()
        greedy.append(out == target)
    assert fast == greedy
    assert any(greedy[:4]) and not all(greedy)
    assert qa_accuracy(model, enc, items, "cpu") == sum(greedy) / len(greedy)


def test_usage_stats_on_hand_computed_counts():
    u = usage_stats(torch.tensor([3, 1, 0, 0]))
    # p = (3/4, 1/4, 0, 0): KL to uniform = 3/4 log 3 + 1/4 log 1 = 0.824
    assert u["used"] == 0.5 and abs(u["kl_uniform"] - 0.75 * np.log(3)) < 1e-12
    assert usage_stats(torch.tensor([2, 2, 2, 2])) == {"used": 1.0, "kl_uniform": 0.0}
    assert abs(usage_stats(torch.tensor([5, 0, 0, 0]))["kl_uniform"] - np.log(4)) < 1e-12


def test_validate_counts_every_read():
    from model import GPT
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**TINY_MODEL, "vocab_size": 50})).eval()
    tokens = np.arange(200, dtype=np.uint16) % 50
    mem = model.memory_modules[0]
    seen = torch.zeros(mem.n_slots, dtype=torch.bool)
    mem.record_indices = True
    for r in range(6):                                             # the 6 windows validate reads
        model(torch.from_numpy(tokens[r * 32:(r + 1) * 32].astype(np.int64))[None])
        seen[mem.last_indices.flatten()] = True
    mem.record_indices = False
    loss, usage = validate(model, tokens, 32, "cpu")
    assert usage[0]["used"] == seen.double().mean().item()
    assert mem.record_indices is False and mem.last_indices is None   # switched off again
    dense = GPT(GPTConfig(**{**TINY_MODEL, "vocab_size": 50, "memory_layers": ()}))
    loss_dense, none = validate(dense, tokens, 32, "cpu")
    assert none == [] and loss_dense > 0
    with pytest.raises(ValueError, match="fewer than one window"):
        validate(dense, tokens[:20], 32, "cpu")
    with pytest.raises(ValueError, match="fewer than one window"):
        validate(model, tokens[:20], 32, "cpu")
    assert mem.record_indices is False                             # a refused call leaves it off


def test_bad_input_gives_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--data-dir", str(tmp_path / "nowhere"), "--out-dir", str(tmp_path)])
    assert "holds no prepared corpus" in str(e.value)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="could not load checkpoint"):
        load_checkpoint(str(bad))
    torch.save({"weights": torch.zeros(2)}, str(bad))               # loads, but is not ours
    with pytest.raises(RuntimeError, match="not a checkpoint written by train.py"):
        load_checkpoint(str(bad))
    with pytest.raises(SystemExit) as e:
        main(["--n-head", "3", "--out-dir", str(tmp_path)])
    assert "not divisible" in str(e.value)


def test_resume_of_a_finished_run_is_refused(trained):
    cfg, _, _, _ = trained
    from dataclasses import replace
    with pytest.raises(ValueError, match="already at step 60"):
        train(replace(cfg, resume=True), GPTConfig(**TINY_MODEL), quiet=True)


def test_lr_schedule_warms_up_then_decays_to_min():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_iters=10, max_iters=110)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(4, cfg) == pytest.approx(0.5)                     # linear warmup: lr (it + 1) / warmup
    assert lr_at(10, cfg) == pytest.approx(1.0) and lr_at(60, cfg) == pytest.approx(0.55)
    # cosine, not linear, decay: a quarter of the way, min + (1 + cos(pi / 4)) / 2 (lr - min), not 0.775
    assert lr_at(35, cfg) == pytest.approx(0.1 + 0.5 * (1 + math.cos(math.pi / 4)) * 0.9)
    assert lr_at(110, cfg) == pytest.approx(0.1) and lr_at(500, cfg) == pytest.approx(0.1)


def test_optimizer_groups():
    from model import GPT
    model = GPT(GPTConfig(**{**TINY_MODEL, "vocab_size": 50}))
    cfg = TrainConfig(value_lr=0.5, weight_decay=0.1)
    opts = make_optimizers(model, cfg)
    values = model.value_params()
    assert len(opts) == 2 and opts[1].param_groups[0]["params"] == values
    assert opts[1].param_groups[0]["lr"] == 0.5
    decayed, plain = opts[0].param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decayed["params"])
    assert any(p is model.memory_modules[0].keys for p in plain["params"])
    n_dense = sum(len(g["params"]) for g in opts[0].param_groups)
    assert n_dense + len(values) == len(list(model.parameters()))


def test_command_line_options_come_from_the_dataclasses():
    from common import config_parser
    p = config_parser("", TrainConfig, GPTConfig, skip=("vocab_size",))
    a = p.parse_args(["--dense", "--memory-layers", "1,3", "--lr", "0.01", "--no-compile"])
    assert a.dense is True and a.memory_layers == (1, 3) and a.lr == 0.01 and a.compile is False
    assert p.parse_args(["--memory-layers", ""]).memory_layers == ()
    assert "peak learning rate" in p.format_help() and "--vocab-size" not in p.format_help()
