"""torchrun with 2 CPU processes (gloo) trains the same model as one process on the same global batch."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY_MODEL
from model import GPTConfig
from train import TrainConfig, get_batch, train

STEPS = 6


def model_flags():
    flags = []
    for k, v in TINY_MODEL.items():
        flags += ["--" + k.replace("_", "-"), ",".join(map(str, v)) if isinstance(v, tuple) else str(v)]
    return flags


def test_two_gloo_processes_match_one_process(tiny_corpus, tmp_path):
    cfg = TrainConfig(data_dir=tiny_corpus.out_dir, out_dir=str(tmp_path / "one"), batch_size=8, max_iters=STEPS,
                      warmup_iters=2, eval_interval=STEPS, lr=1e-2, device="cpu")
    train(cfg, GPTConfig(**TINY_MODEL), quiet=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
         "--data-dir", cfg.data_dir, "--out-dir", str(tmp_path / "two"), "--batch-size", "8", "--max-iters", str(STEPS),
         "--warmup-iters", "2", "--eval-interval", str(STEPS), "--lr", "1e-2", "--device", "cpu"] + model_flags(),
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "x 2 processes" in run.stdout and run.stdout.count("done in") == 1      # only rank 0 reports
    assert sorted(os.listdir(tmp_path / "two")) == ["ckpt.pt"]
    one = torch.load(tmp_path / "one" / "ckpt.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "ckpt.pt", weights_only=True)
    assert one["step"] == two["step"] == STEPS
    assert two["metrics"]["train_loss"] == pytest.approx(one["metrics"]["train_loss"], rel=1e-5)
    assert two["metrics"]["val_loss"] == pytest.approx(one["metrics"]["val_loss"], rel=1e-5)
    for k, w in one["model"].items():
        torch.testing.assert_close(two["model"][k], w, rtol=1e-4, atol=1e-5, msg=k)


def test_each_process_reads_its_own_share_of_the_batch():
    data = torch.arange(1000).numpy()
    whole = get_batch(data, 8, 6, torch.Generator().manual_seed(0))
    shares = [get_batch(data, 8, 6, torch.Generator().manual_seed(0), rank, 3) for rank in range(3)]
    assert all(x.shape == (2, 8) for x, _ in shares)
    assert torch.equal(torch.cat([x for x, _ in shares]), whole[0]) and torch.equal(torch.cat([y for _, y in shares]), whole[1])
