import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED_TINYSTORIES = os.path.join(ROOT, "..", "shared", "data", "tinystories")


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A small generated corpus, prepared once for the whole test session."""
    from data.prepare import DataConfig, prepare
    cfg = DataConfig(out_dir=str(tmp_path_factory.mktemp("corpus")), n_stories=1500, n_val_stories=100,
                     fact_repeats=8, vocab_size=1024)
    prepare(cfg)
    return cfg


TINY_MODEL = dict(block_size=32, n_layer=2, n_head=2, n_embd=32, memory_layers=(1,), mem_n_keys=16,
                  mem_heads=2, mem_topk=4, mem_k_dim=16)


@pytest.fixture(scope="session")
def trained(tiny_corpus, tmp_path_factory):
    """A tiny memory model trained 60 steps on the tiny corpus: (TrainConfig, model, enc, metrics)."""
    from model import GPTConfig
    from train import TrainConfig, train
    out = str(tmp_path_factory.mktemp("run"))
    cfg = TrainConfig(data_dir=tiny_corpus.out_dir, out_dir=out, batch_size=16, max_iters=60,
                      warmup_iters=5, eval_interval=60, lr=1e-2)
    model, enc, metrics = train(cfg, GPTConfig(**TINY_MODEL), quiet=True)
    return cfg, model, enc, metrics
