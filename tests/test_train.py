import os

import numpy as np
import pytest
import torch

from evaluate import qa_accuracy, qa_items, load_facts, validate
from model import GPTConfig
from train import TrainConfig, load_checkpoint, main, train

TINY_MODEL = dict(block_size=32, n_layer=2, n_head=2, n_embd=32, memory_layers=(1,), mem_n_keys=16,
                  mem_heads=2, mem_topk=4, mem_k_dim=16)


@pytest.fixture(scope="module")
def trained(tiny_corpus, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run"))
    cfg = TrainConfig(data_dir=tiny_corpus.out_dir, out_dir=out, batch_size=16, max_iters=60,
                      warmup_iters=5, eval_interval=60, lr=1e-2)
    model, enc, metrics = train(cfg, GPTConfig(**TINY_MODEL), quiet=True)
    return cfg, model, enc, metrics


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
    model.eval()
    kb = load_facts(tiny_corpus.out_dir)
    items = qa_items(kb["background"][:30], "first")
    acc = qa_accuracy(model, enc, items, "cpu")
    eot = enc.eot_token
    greedy = []
    for p, a in items:
        ids = [eot] + enc.encode(p)
        target = enc.encode(a)
        out = model.generate(torch.tensor([ids]), len(target), temperature=0)[0, len(ids):].tolist()
        greedy.append(out == target)
    assert acc == sum(greedy) / len(greedy)


def test_slot_usage_counts_reads():
    from model import GPT
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**TINY_MODEL, "vocab_size": 50})).eval()
    tokens = np.arange(200, dtype=np.uint16) % 50
    loss, usage = validate(model, tokens, 32, "cpu")
    # 6 windows x 32 tokens x 2 heads x 4 slots = 1,536 reads over 256 slots
    assert 0 < usage[0]["used"] <= 1 and 0 <= usage[0]["kl_uniform"] <= np.log(256)
    small = GPT(GPTConfig(**{**TINY_MODEL, "vocab_size": 50, "mem_n_keys": 4, "mem_topk": 4})).eval()
    _, full = validate(small, tokens, 32, "cpu")
    assert full[0]["used"] > 0.9                                   # 16 slots, every one read
    dense = GPT(GPTConfig(**{**TINY_MODEL, "vocab_size": 50, "memory_layers": ()}))
    loss_dense, none = validate(dense, tokens, 32, "cpu")
    assert none == [] and loss_dense > 0


def test_bad_input_gives_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--data-dir", str(tmp_path / "nowhere"), "--out-dir", str(tmp_path)])
    assert "holds no prepared corpus" in str(e.value)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="could not load checkpoint"):
        load_checkpoint(str(bad))
