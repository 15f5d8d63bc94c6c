import os
import sys

import pytest
import torch

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
TINY_ARGS = [a for k, v in TINY_MODEL.items()        # TINY_MODEL on train.py's command line
             for a in ("--" + k.replace("_", "-"), ",".join(map(str, v)) if isinstance(v, tuple) else str(v))]


def one_line_error(cli, *args):
    """The message of the SystemExit that cli(args) ends with: one line, starting with error:."""
    with pytest.raises(SystemExit) as e:
        cli([str(a) for a in args])
    message = str(e.value)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def checkpoint_of(trained):
    return os.path.join(trained[0].out_dir, "ckpt.pt")


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


class Tables:
    """A stand-in model for sparse.sparse_step: one memory table of n_slots per (B, T, heads, k) tensor
    of reads, whose forward "reads" those slots and whose loss is the sum of every table's values,
    so that every row's gradient is 1 and SGD at lr 1 moves exactly the rows chosen, each by -1."""

    def __init__(self, reads, n_slots):
        self.memory_modules = [torch.nn.Module() for _ in reads]
        for m in self.memory_modules:
            m.values = torch.nn.EmbeddingBag(n_slots, 1)
            torch.nn.init.zeros_(m.values.weight)
        self.reads = reads

    def __call__(self, x, y=None):
        return None, sum(m.values.weight.sum() for m in self.memory_modules)

    def slot_reads(self):
        return self.reads


def chosen(reads, count, t, idf=None, recipe=None, n_slots=6, tables=1, at=None):
    """The rows one sparse.sparse_step trains in each of `tables` tables of n_slots, all read as
    reads (B, T, heads, k), counting the tokens count (B, T) marks, with idf (None: the same for
    every slot) and the recipe (None: the paper's); at: the batch's answer positions (B, T). One
    table: its rows; more: a list per table."""
    from facts import Batch
    from recipes import Recipe
    from sparse import RowOptimizer, memory_tables, sparse_step
    model = Tables([reads] * tables, n_slots)
    weights = [w for w, _ in memory_tables(model)]
    recipe = recipe or Recipe()
    recipe.start(memory_tables(model))
    idf = torch.ones(n_slots, dtype=torch.double) if idf is None else idf
    sparse_step(model, Batch(None, None, count, at), t, memory_tables(model), [RowOptimizer(w, "sgd", 1.0) for w in weights],
                [recipe.idf(i, idf) for i in range(tables)], recipe)
    rows = [(w[:, 0] != 0).nonzero().flatten().tolist() for w in weights]
    return rows[0] if tables == 1 else rows
