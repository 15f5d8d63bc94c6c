"""The CUDA path against the CPU one. Skipped where no CUDA device is present (CI has none;
run these on a GPU machine with `python -m pytest -q tests/test_cuda.py`)."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

from checkpoint import load_checkpoint
from conftest import TINY_MODEL
from evaluate import validate
from finetune import main as finetune_main
from memory import ProductKeyMemory
from model import GPTConfig
from sparse import RowOptimizer
from train import TrainConfig, train

DEVICE = "cuda"
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_memory_layer_reads_the_same_slots_and_gives_the_same_output():
    torch.manual_seed(0)
    mem = ProductKeyMemory(64, n_keys=32, heads=2, topk=8, k_dim=32)
    x = torch.randn(4, 16, 64)
    with torch.no_grad():
        s_cpu, i_cpu = mem.lookup(x.view(-1, 64))
        y_cpu = mem(x)
        mem.cuda()
        s_gpu, i_gpu = mem.lookup(x.view(-1, 64).cuda())
        y_gpu = mem(x.cuda())
    assert torch.equal(i_gpu.sort(-1).values.cpu(), i_cpu.sort(-1).values)   # the exact top-k picks the same slots
    assert torch.allclose(s_gpu.cpu(), s_cpu, atol=1e-5)
    assert torch.allclose(y_gpu.cpu(), y_cpu, atol=1e-5)


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_rows_outside_the_selection_stay_bit_identical_on_cuda(kind):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(10, 4, device="cuda"))
    ref = torch.nn.Parameter(w.detach().cpu().clone())
    opt, ref_opt = RowOptimizer(w, kind, lr=0.1, weight_decay=0.5), RowOptimizer(ref, kind, lr=0.1, weight_decay=0.5)
    for rows in ([1, 3], [5], [1, 7], [2]):
        before = w.detach().clone()
        g = torch.randn(10, 4)
        w.grad, ref.grad = g.cuda(), g.clone()
        opt.step(torch.tensor(rows, device="cuda"))
        ref_opt.step(torch.tensor(rows))
        others = [r for r in range(10) if r not in rows]
        assert torch.equal(w[others], before[others])        # bit-exact, not approximately
        assert torch.allclose(w.detach().cpu(), ref, atol=1e-6)


def test_bf16_training_on_cuda_tracks_float32_on_cpu(tiny_corpus, tmp_path):
    """train.py autocasts to bf16 on CUDA: the final val loss stays within 5% of the CPU
    float32 one, and the checkpoint written on the GPU, loaded on the CPU, gives the same
    val loss in float32 as the GPU measured."""
    losses = {}
    for device in ("cpu", DEVICE):
        cfg = TrainConfig(data_dir=tiny_corpus.out_dir, out_dir=str(tmp_path / device), batch_size=16, max_iters=40,
                          warmup_iters=5, eval_interval=40, lr=1e-2, device=device)
        _, _, metrics = train(cfg, GPTConfig(**TINY_MODEL), quiet=True)
        losses[device] = metrics["val_loss"]
    assert torch.isfinite(torch.tensor(losses[DEVICE]))
    assert abs(losses[DEVICE] - losses["cpu"]) < 0.05 * losses["cpu"]
    model, _, ckpt = load_checkpoint(str(tmp_path / DEVICE / "ckpt.pt"), "cpu")
    val = np.memmap(os.path.join(tiny_corpus.out_dir, "val.bin"), dtype=ckpt["data_meta"]["dtype"], mode="r")
    loss, _ = validate(model, val, model.config.block_size, "cpu")   # train.py evaluates outside autocast
    assert abs(loss - losses[DEVICE]) < 1e-4 * losses[DEVICE]


def test_sparse_finetuning_on_cuda_is_repeatable_and_agrees_with_cpu(trained, tmp_path):
    """Two GPU runs and a CPU run, each from its own copy of the checkpoint (so each counts its
    own background statistics): the GPU repeats itself exactly and trains nearly the same
    value rows to nearly the same values as the CPU."""
    cfg = trained[0]
    tables, results = [], []
    for i, device in enumerate((DEVICE, DEVICE, "cpu")):
        ckpt = str(tmp_path / f"base{i}.pt")
        shutil.copyfile(os.path.join(cfg.out_dir, "ckpt.pt"), ckpt)
        out, js = str(tmp_path / f"tuned{i}.pt"), tmp_path / f"r{i}.json"
        finetune_main(["--checkpoint", ckpt, "--mode", "sparse", "--facts", "3", "--steps-per-fact", "5",
                       "--top-t", "8", "--lr", "100", "--background-batches", "20", "--json", str(js),
                       "--out", out, "--device", device])
        model = load_checkpoint(out, "cpu")[0]
        tables.append(model.memory_modules[0].values.weight.detach())
        results.append(json.loads(js.read_text()))
    base = load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"), "cpu")[0].memory_modules[0].values.weight
    changed = [set((t != base).any(dim=1).nonzero().flatten().tolist()) for t in tables]
    assert changed[0], "the stream changed no value row"
    assert torch.equal(tables[0], tables[1])                          # same seed, same GPU: same weights
    assert all(results[0][k] == results[1][k] for k in results[0] if k != "seconds")
    gpu, cpu = changed[0], changed[2]
    assert len(gpu & cpu) >= 0.9 * len(gpu | cpu)                     # near-ties may pick a different row
    same = sorted(gpu & cpu)
    assert torch.allclose(tables[0][same], tables[2][same], rtol=1e-3, atol=1e-3)
    for k in ("val_loss_before", "val_loss_after"):
        assert abs(results[0][k] - results[2][k]) <= 1e-3 * results[2][k], k
