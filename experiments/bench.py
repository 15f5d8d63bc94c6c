"""
Benchmarks that print figures for this machine (not tests; nothing here asserts a speed).

    python -m experiments.bench                  # all sections, about 3 minutes on 2 CPU cores
    python -m experiments.bench --quick          # fewer repeats
    python -m experiments.bench --glibc-default  # without common.keep_freed_memory, to see what it gains

1. float32 matmul peak of this machine (the yardstick for everything else)
2. memory layer forward+backward vs the dense FFN it replaces, same width and tokens,
   up to a 1M-slot layer at d = 512, with the peak memory (RSS) of this process
3. product-key lookup vs exhaustive scoring of all N keys, N = 64^2, 256^2, 1024^2
4. memory value updates: dense Adam vs sparse gradients + SparseAdam, 64k and 1M slots
5. training tokens/s and achieved GFLOP/s of the default model (memory and dense)
6. one finetuning step on the pretrained default checkpoint (out/ckpt.pt): full, LoRA and
   sparse, with the optimizer state each keeps

    python -m experiments.bench --large --device cuda [--batch-size 128] [--compile]

7. instead of 1-6: a d = 768, 12-layer model with a 1M-slot memory layer in block 6 (4 heads
   x top-32, the references' shape) in bf16 autocast, with dense and with sparse value
   gradients: training tokens/s, MFU against the bf16 matmul peak measured on the same
   device, the step split into forward, backward and optimizers, the peak GPU memory, and
   the value gather's memory bandwidth

    python -m experiments.bench --classroom

8. instead of 1-7: the classroom demo, python finetune.py --mode sparse --preset classroom, as a
   user runs it (a fresh Python process), in a copy of the project's code in a temporary folder:
   once from scratch (corpus, pretraining, background statistics, the three streams) and once
   more with all of that cached (the streams only); wall time of each, and the table it printed

Every time in sections 1-5 and 7 is the median of single calls after a warm-up call: this
shared CPU's speed varies from minute to minute, and the median ignores the slow outliers.
Section 6 is the mean step of a whole 100-step stream, setup included, as a user sees it;
section 8 one run of each, as a user sees it (on a shared CPU, run it twice).
"""

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

import finetune as ft
from checkpoint import checkpoint_corpus
from common import ROOT, keep_freed_memory, pick_device
from evaluate import corpus_facts
from memory import ProductKeyMemory
from model import GPT, GPTConfig, MLP
from train import TrainConfig, make_optimizers


def sync(device):
    if str(device).startswith("cuda"):                     # GPU work is asynchronous: wait for it
        torch.cuda.synchronize()
    elif str(device) == "mps":
        torch.mps.synchronize()


def timeit(fn, repeats, device="cpu"):
    fn()                                                   # warm-up
    sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_peak(r, device="cpu", dtype=torch.float32, n=1024):
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / timeit(lambda: a @ b, 10 * r, device) / 1e9


def layer_vs_ffn(d, tokens, r, n_keys=GPTConfig.mem_n_keys, sparse=False):
    """Forward+backward of the FFN and of a memory layer (default heads and top-k) at width d."""
    x = torch.randn(tokens // 128, 128, d, requires_grad=True)
    cfg = GPTConfig(n_embd=d)
    heads, topk = cfg.mem_heads, cfg.mem_topk
    grads = "sparse" if sparse else "dense"
    out = {}
    for name, make in (("FFN (4d hidden)", lambda: MLP(cfg)),
                       (f"memory {n_keys}^2 slots ({grads} value grads)",
                        lambda: ProductKeyMemory(d, n_keys=n_keys, heads=heads, topk=topk, sparse_grad=sparse))):
        layer = make()
        def step():
            layer(x).sum().backward()
            layer.zero_grad(set_to_none=True)
        out[name] = timeit(step, r)
        del layer
    return out


def peak_rss_gib():
    """Peak resident memory of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 30 if os.uname().sysname == "Darwin" else peak / 2 ** 20


def lookup_vs_exhaustive(n_keys, tokens, r, heads=4, k_dim=64, topk=16):
    mem = ProductKeyMemory(128, n_keys=n_keys, heads=heads, topk=topk, k_dim=k_dim)
    x = torch.randn(tokens, 128)
    half = k_dim // 2
    with torch.no_grad():
        pk = timeit(lambda: mem.lookup(x), r)
        def exhaustive():
            q = mem.query_norm(mem.query(x).view(tokens, heads, 2, half))
            s1 = torch.einsum("nhd,hkd->nhk", q[:, :, 0], mem.keys[:, 0])   # (N, H, n_keys)
            s2 = torch.einsum("nhd,hkd->nhk", q[:, :, 1], mem.keys[:, 1])
            # the full score of slot a*n_keys+b is s1[a] + s2[b]: build all N of them
            full = (s1.unsqueeze(-1) + s2.unsqueeze(-2)).view(tokens, heads, -1)
            return full.topk(topk, dim=-1)
        ex = timeit(exhaustive, max(1, r // 2))
    return pk, ex


def value_updates(n_slots, r, lookups=4096 * 64, v_dim=128):
    idx = torch.randint(0, n_slots, (4096, lookups // 4096))
    w = torch.rand(idx.shape)
    g = torch.randn(4096, v_dim)
    out = {}
    for sparse in (False, True):
        table = torch.nn.Parameter(torch.randn(n_slots, v_dim) * 0.1)
        opt = torch.optim.SparseAdam([table], lr=1e-3) if sparse else torch.optim.Adam([table], lr=1e-3)
        def step():
            y = F.embedding_bag(idx, table, per_sample_weights=w, mode="sum", sparse=sparse)
            (y * g).sum().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        out["sparse grad + SparseAdam" if sparse else "dense grad + Adam"] = timeit(step, r)
    return out


def flops_per_token(model, T):
    """Matmul FLOPs of forward + backward (3x forward) for one token at context T."""
    cfg = model.config
    fwd = 0
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            fwd += 2 * m.in_features * m.out_features
    fwd += 2 * cfg.vocab_size * cfg.n_embd                         # tied output head
    fwd += cfg.n_layer * 2 * 2 * T * cfg.n_embd                    # q k^T and attention @ v
    for mem in model.memory_modules:
        fwd += 2 * mem.heads * mem.n_keys * mem.k_dim              # sub-key scores, both halves
        fwd += 2 * mem.heads * mem.topk * mem.v_dim                # weighted gather
    return 3 * fwd


def train_throughput(dense, r, batch=16):
    """(tokens/s, GFLOP/s, fraction of the matmul peak). The peak is measured again right
    before every step and the fraction is the median over steps, so a CPU that changes
    speed during the benchmark does not skew it."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=2560, memory_layers=() if dense else GPTConfig.memory_layers)   # default corpus vocabulary
    model = GPT(cfg)
    opts = make_optimizers(model, TrainConfig())                           # as train.py does
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size))
    def step():
        _, loss = model(x, x)
        loss.backward()
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)
    step()                                                                  # warm-up
    flops = batch * cfg.block_size * flops_per_token(model, cfg.block_size)
    times, fractions = [], []
    for _ in range(3 * r):
        peak = matmul_peak(1)
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        fractions.append(flops / times[-1] / 1e9 / peak)
    dt = statistics.median(times)
    return batch * cfg.block_size / dt, flops / dt / 1e9, statistics.median(fractions)


def finetune_steps(path, n_facts=10):
    """ms per step and optimizer-state bytes of each finetuning method on a real fact stream
    (run_stream itself: batch, forward, backward, slot ranking, update)."""
    out = {}
    for mode, opt in (("full", "adamw"), ("lora", "adamw"), ("sparse", "sgd"), ("sparse", "adamw")):
        cfg = ft.FinetuneConfig(checkpoint=path, mode=mode, optimizer=opt, device="cpu")   # the paper's method
        model, enc, ckpt = ft.load_base(cfg, "cpu")
        cfg = ft.resolve(cfg, model)
        facts = corpus_facts(checkpoint_corpus(ckpt)[1]["new"][:n_facts])
        bg = ft.load_or_compute_background(cfg, model, ckpt, "cpu") if mode == "sparse" else None
        t = time.perf_counter()
        state, _ = ft.run_stream(cfg, model, enc, facts, bg, quiet=True)
        out[f"{mode} {opt}"] = ((time.perf_counter() - t) / (n_facts * cfg.steps_per_fact), state)
    return out


LARGE = dict(vocab_size=2560, n_layer=12, n_head=12, n_embd=768, memory_layers=(6,), mem_n_keys=1024,
             mem_heads=4, mem_topk=32)


def large_model(device, r, batch, sparse_grad=False, use_compile=False):
    """Section 7 on one value-update variant: tokens/s, GFLOP/s, MFU (against the bf16 matmul
    peak on CUDA, float32 elsewhere), the step split into forward, backward and optimizers (ms),
    and the peak GPU memory (GiB)."""
    torch.manual_seed(0)
    cfg = GPTConfig(**LARGE, mem_sparse_grad=sparse_grad)
    model = GPT(cfg).to(device)
    opts = make_optimizers(model, TrainConfig())                          # as train.py does
    run = torch.compile(model) if use_compile else model
    T, cuda = cfg.block_size, str(device).startswith("cuda")
    x = torch.randint(0, cfg.vocab_size, (batch, T), device=device)
    def forward():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):  # as train.py does
            return run(x, x)[1]
    def forward_backward():
        forward().backward()
        model.zero_grad(set_to_none=True)
    def step():
        forward().backward()
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    # the split is by differences of separately measured medians (step, forward, forward +
    # backward): the extra cost of each phase, not a trace of one step. No gradient clipping,
    # which train.py adds (over the whole dense value gradient when value grads are dense).
    dt = timeit(step, r, device)
    fwd, fb = timeit(forward, r, device), timeit(forward_backward, r, device)
    peak = matmul_peak(r, device, torch.bfloat16 if cuda else torch.float32, n=8192 if cuda else 1024)
    flops = batch * T * flops_per_token(model, T) / dt / 1e9
    mem_gib = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else float("nan")
    return dict(tok_s=batch * T / dt, gflops=flops, mfu=flops / peak, forward=fwd * 1e3,
                backward=(fb - fwd) * 1e3, optimizers=(dt - fb) * 1e3, gib=mem_gib)


def gather_bandwidth(device, r, batch):
    """GB/s of the value gather alone: every token reads heads x top-k rows of the fp32 table."""
    cfg = GPTConfig(**LARGE)
    table = torch.nn.EmbeddingBag(cfg.mem_n_keys ** 2, cfg.mem_v_dim, mode="sum").to(device)
    n, reads = batch * cfg.block_size, cfg.mem_heads * cfg.mem_topk
    idx = torch.randint(0, cfg.mem_n_keys ** 2, (n, reads), device=device)
    w = torch.rand(n, reads, device=device)
    with torch.no_grad():
        t = timeit(lambda: table(idx, per_sample_weights=w), 4 * r, device)
    moved = idx.numel() * (cfg.mem_v_dim * 4 + 8 + 4) + n * cfg.mem_v_dim * 4  # rows, indices, weights read; output written
    return moved / t / 1e9


def classroom_demo():
    """Section 8: (seconds from scratch, seconds cached, the cold run's output) of the classroom
    demo, run as a user runs it in a copy of the project's code (no corpus, no checkpoint)."""
    command = [sys.executable, "finetune.py", "--mode", "sparse", "--preset", "classroom"]
    skip = shutil.ignore_patterns(".*", "__pycache__", "out", "generated", "classroom", "tinystories", "docs", "tests")
    with tempfile.TemporaryDirectory(prefix="classroom-") as tmp:
        copy = os.path.join(tmp, "project")
        shutil.copytree(ROOT, copy, ignore=skip)
        times, outputs = [], []
        for _ in range(2):
            t = time.perf_counter()
            run = subprocess.run(command, cwd=copy, capture_output=True, text=True)
            times.append(time.perf_counter() - t)
            if run.returncode:
                raise RuntimeError(f"the classroom demo failed: {(run.stderr.strip().splitlines() or [''])[-1]}")
            outputs.append(run.stdout)
    return times[0], times[1], outputs[0]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m experiments.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats")
    p.add_argument("--glibc-default", action="store_true", help="leave glibc's malloc settings as they are")
    p.add_argument("--checkpoint", default=os.path.join(ROOT, "out", "ckpt.pt"), help="pretrained model for section 6")
    p.add_argument("--large", action="store_true", help="only section 7, the d=768 12-layer 1M-slot model")
    p.add_argument("--device", default="auto", help="with --large: auto | cpu | cuda | mps")
    p.add_argument("--batch-size", type=int, default=32, help="with --large: sequences of 128 tokens per step")
    p.add_argument("--compile", action="store_true", help="with --large: torch.compile the model")
    p.add_argument("--classroom", action="store_true", help="only section 8, the classroom demo from scratch and cached")
    args = p.parse_args(argv)
    r = 2 if args.quick else 5
    if not args.glibc_default:
        keep_freed_memory()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads"
          + (", glibc's default malloc settings" if args.glibc_default else ", freed memory kept (common.keep_freed_memory)"))
    if args.classroom:
        print(f"\n8. the classroom demo: python finetune.py --mode sparse --preset classroom, in a fresh copy of the code")
        try:
            cold, cached, output = classroom_demo()
        except (OSError, RuntimeError) as e:
            sys.exit(f"error: {e}")
        print(f"   from scratch (corpus, pretraining, background statistics, streams): {cold:.0f} s")
        print(f"   again, corpus and checkpoint cached: {cached:.0f} s")
        print("   its table:\n" + "\n".join("   " + line for line in output.splitlines()
                                            if line.startswith(("stream ", "new ", "step "))))
        return
    if args.large:
        try:
            device = pick_device(args.device)
        except ValueError as e:
            sys.exit(f"error: {e}")
        name = torch.cuda.get_device_name() if device == "cuda" else device
        print(f"\n7. d=768, 12 layers, 1M-slot memory (4 heads x top-32) in block 6, {args.batch_size} x 128 tokens, "
              f"on {name}{', torch.compile' if args.compile else ''}")
        peak = "bf16" if device == "cuda" else "float32"
        for sparse in (False, True):
            m = large_model(device, r, args.batch_size, sparse, args.compile)
            print(f"   {'sparse value grads + SparseAdam' if sparse else 'dense value grads + Adam':<31}: "
                  f"{m['tok_s']:>9,.0f} tokens/s, {m['gflops']:,.0f} GFLOP/s, MFU {m['mfu']:.0%} of the measured {peak} "
                  f"matmul peak | forward {m['forward']:.1f} ms, backward {m['backward']:.1f}, optimizers "
                  f"{m['optimizers']:.1f}" + (f" | peak GPU memory {m['gib']:.1f} GiB" if device == "cuda" else ""))
            if device == "cuda":
                torch.cuda.empty_cache()
        print(f"   value gather alone: {gather_bandwidth(device, r, args.batch_size):,.0f} GB/s")
        return
    peak = matmul_peak(r)
    print(f"\n1. float32 matmul 1024^3: {peak:.1f} GFLOP/s")

    print(f"\n2. forward+backward, 4096 tokens, {GPTConfig.mem_heads} heads x top-{GPTConfig.mem_topk} (ms)")
    for d, n_keys, sparse in ((128, 256, False), (512, 256, False), (512, 1024, True)):
        t = layer_vs_ffn(d, 4096, r, n_keys, sparse)
        (ffn, a), (mem, b) = t.items()
        print(f"   d={d}: {ffn} {a * 1e3:.1f} | {mem} {b * 1e3:.1f} | {b / a:.2f}x the FFN")
    print(f"   peak RSS so far {peak_rss_gib():.2f} GiB (the 1024^2 x 512 float32 value table alone is 2 GiB)")

    print("\n3. top-16 of N keys, 4 heads, k_dim 64, 256 tokens (ms)")
    for n_keys in (64, 256, 1024):
        pk, ex = lookup_vs_exhaustive(n_keys, 256, r)
        print(f"   N = {n_keys}^2 = {n_keys ** 2:>9,}: product keys {pk * 1e3:7.1f} | exhaustive {ex * 1e3:8.1f} | {ex / pk:6.1f}x")

    print("\n4. memory value update, 4096 tokens x 64 reads, v_dim 128 (ms per step)")
    for n in (256 ** 2, 1024 ** 2):
        t = value_updates(n, r)
        print(f"   {n:>9,} slots: " + " | ".join(f"{k} {v * 1e3:.0f}" for k, v in t.items()))

    print("\n5. training step, default model, 16 x 128 tokens, optimizers as in train.py")
    for dense in (False, True):
        tok_s, gflops, fraction = train_throughput(dense, r)
        print(f"   {'dense ' if dense else 'memory'}: {tok_s:,.0f} tokens/s, {gflops:.1f} GFLOP/s "
              f"({fraction:.0%} of the matmul peak measured beside each step)")

    print(f"\n6. finetuning, the paper's method for sparse, 10 facts x {ft.FinetuneConfig.steps_per_fact} steps on {args.checkpoint}")
    if not os.path.exists(args.checkpoint):
        print("   skipped: no checkpoint there (python train.py makes one)")
        return
    for name, (sec, state) in finetune_steps(args.checkpoint).items():
        print(f"   {name:<13} {sec * 1e3:6.1f} ms/step | optimizer state {state / 2 ** 20:7.2f} MiB")


if __name__ == "__main__":
    main()
