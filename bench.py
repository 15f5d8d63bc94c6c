"""
Benchmarks that print figures for this machine (not tests; nothing here asserts a speed).

    python bench.py              # all sections, about 2 minutes on 2 CPU cores
    python bench.py --quick      # fewer repeats

1. float32 matmul peak of this machine (the yardstick for everything else)
2. memory layer forward+backward vs the dense FFN it replaces, same width and tokens
3. product-key lookup vs exhaustive scoring of all N keys, N = 64^2, 256^2, 1024^2
4. memory value updates: dense Adam vs sparse gradients + SparseAdam, 64k and 1M slots
5. training tokens/s and achieved GFLOP/s of the default model (memory and dense)
"""

import argparse
import time

import torch
import torch.nn.functional as F

from memory import ProductKeyMemory
from model import GPT, GPTConfig, MLP
from train import TrainConfig, make_optimizers


def timeit(fn, repeats):
    fn()                                                   # warm-up
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def matmul_peak(r):
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    return 2 * 1024 ** 3 / timeit(lambda: a @ b, 10 * r) / 1e9


def layer_vs_ffn(d, tokens, r):
    x = torch.randn(tokens // 128, 128, d, requires_grad=True)
    cfg = GPTConfig(n_embd=d)                              # default memory shape
    n_keys, heads, topk = cfg.mem_n_keys, cfg.mem_heads, cfg.mem_topk
    out = {}
    for name, layer in (("FFN (4d hidden)", MLP(cfg)),
                        (f"memory {n_keys}^2 slots, {heads} heads x top-{topk}", ProductKeyMemory(d, n_keys=n_keys, heads=heads, topk=topk, sparse_grad=False))):
        def step():
            layer(x).sum().backward()
            layer.zero_grad(set_to_none=True)
        out[name] = timeit(step, r)
    return out


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
    dt = timeit(step, 3 * r)
    tok_s = batch * cfg.block_size / dt
    return tok_s, tok_s * flops_per_token(model, cfg.block_size) / 1e9


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats")
    r = 2 if p.parse_args(argv).quick else 5
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    peak = matmul_peak(r)
    print(f"\n1. float32 matmul 1024^3: {peak:.1f} GFLOP/s")

    print("\n2. forward+backward, 4096 tokens (ms)")
    for d in (128, 512):
        t = layer_vs_ffn(d, 4096, r)
        print(f"   d={d}: " + " | ".join(f"{k} {v * 1e3:.1f}" for k, v in t.items()))

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
        tok_s, gflops = train_throughput(dense, r)
        print(f"   {'dense ' if dense else 'memory'}: {tok_s:,.0f} tokens/s, {gflops:.1f} GFLOP/s "
              f"({gflops / peak:.0%} of the matmul peak)")


if __name__ == "__main__":
    main()
