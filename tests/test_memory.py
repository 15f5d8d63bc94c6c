import math

import pytest
import torch

from memory import ProductKeyMemory


def exhaustive_topk(mem, x):
    """Score every one of the n_keys^2 full keys [K1[a]; K2[b]] and take the top-k."""
    N, H, half = x.shape[0], mem.heads, mem.k_dim // 2
    q = mem.query_norm(mem.query(x).view(N, H, 2, half))           # layernorm variant
    k1, k2 = mem.keys[:, 0], mem.keys[:, 1]                        # (H, n_keys, half)
    full = torch.cat([k1.unsqueeze(2).expand(-1, -1, mem.n_keys, -1),
                      k2.unsqueeze(1).expand(-1, mem.n_keys, -1, -1)], dim=-1)  # (H, a, b, k_dim)
    full = full.reshape(H, mem.n_slots, mem.k_dim)                 # slot a * n_keys + b
    scores = torch.einsum("nhd,hsd->nhs", q.reshape(N, H, mem.k_dim), full)
    return scores.topk(mem.topk, dim=-1)


@pytest.mark.parametrize("n_keys,topk", [(16, 4), (32, 8), (64, 16)])
def test_product_keys_equal_exhaustive_topk(n_keys, topk):
    torch.manual_seed(n_keys)
    mem = ProductKeyMemory(24, n_keys=n_keys, heads=3, topk=topk, k_dim=16)
    x = torch.randn(50, 24)
    with torch.no_grad():
        scores, idx = mem.lookup(x)
        ref_scores, ref_idx = exhaustive_topk(mem, x)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(scores, ref_scores, rtol=1e-5, atol=1e-5)


def test_output_is_the_gated_softmax_weighted_sum_of_the_kept_values():
    """out = W_2(y * silu(W_1 x)), y = sum over heads and kept slots of w_i V[i], w = softmax of
    the head's kept scores: written out as a loop over the kept slots."""
    torch.manual_seed(0)
    mem = ProductKeyMemory(8, n_keys=8, heads=2, topk=3, k_dim=4)
    x = torch.randn(2, 3, 8)
    with torch.no_grad():
        out = mem(x).view(6, 8)
        scores, idx = mem.lookup(x.view(6, 8))                    # checked above against all 64 keys
    V, W1, W2 = mem.values.weight.detach(), mem.gate.weight.detach(), mem.proj.weight.detach()
    for n in range(6):
        y = torch.zeros(8)
        for h in range(2):
            e = [math.exp(s) for s in scores[n, h].tolist()]
            for j in range(3):
                y += e[j] / sum(e) * V[idx[n, h, j]]
        z = W1 @ x.view(6, 8)[n]
        silu = z / (1 + torch.exp(-z))
        torch.testing.assert_close(out[n], W2 @ (y * silu), rtol=1e-5, atol=1e-6)


def test_init_follows_the_references():
    """Sub-keys U(-1/sqrt(k_dim), 1/sqrt(k_dim)); values N(0, 1/v_dim); W_q, W_1, W_2 N(0, 1/d); query bias 0."""
    torch.manual_seed(0)
    mem = ProductKeyMemory(64, n_keys=64, heads=4, topk=4, k_dim=32, v_dim=16)
    bound = 32 ** -0.5
    assert 0.99 * bound < mem.keys.abs().max() <= bound        # 16,384 draws fill the interval
    for w, std in [(mem.values.weight, 16 ** -0.5), (mem.query.weight, 64 ** -0.5),
                   (mem.gate.weight, 64 ** -0.5), (mem.proj.weight, 64 ** -0.5)]:
        assert w.std().item() == pytest.approx(std, rel=0.05)   # at least 1,024 draws each
    assert not mem.query.bias.any()


@pytest.mark.parametrize("sparse", [True, False])
def test_only_accessed_rows_get_gradient(sparse):
    torch.manual_seed(0)
    mem = ProductKeyMemory(16, n_keys=32, heads=2, topk=4, k_dim=8, sparse_grad=sparse)
    mem.record_indices = True
    x = torch.randn(2, 5, 16)
    mem(x).pow(2).sum().backward()
    grad = mem.values.weight.grad
    grad = grad.to_dense() if sparse else grad
    touched = torch.zeros(mem.n_slots, dtype=torch.bool)
    touched[mem.last_indices.flatten()] = True
    nonzero = grad.abs().sum(1) > 0
    assert nonzero.any()
    assert torch.equal(nonzero, touched)                            # every read row, nothing else


def test_shapes_dtypes_and_recorded_indices():
    mem = ProductKeyMemory(32, n_keys=16, heads=4, topk=8, k_dim=8)
    x = torch.randn(3, 7, 32)
    assert mem(x).shape == (3, 7, 32) and mem(x).dtype == torch.float32
    assert mem.last_indices is None                                # off by default
    mem.record_indices = True
    mem(x)
    idx = mem.last_indices
    assert idx.shape == (3, 7, 4, 8) and idx.dtype == torch.int64
    assert int(idx.min()) >= 0 and int(idx.max()) < 16 * 16
    scores, _ = mem.lookup(x.view(-1, 32))
    assert scores.dtype == torch.float32
    assert (scores[..., :-1] >= scores[..., 1:]).all()             # best first
    assert mem.values.weight.shape == (256, 32)


def test_batchnorm_and_no_norm_variants_run_and_differ():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 16)
    outs = []
    for norm in ("batchnorm", "layernorm", "none"):
        torch.manual_seed(1)
        outs.append(ProductKeyMemory(16, n_keys=8, heads=2, topk=2, k_dim=8, query_norm=norm)(x))
    assert not torch.allclose(outs[0], outs[2]) and not torch.allclose(outs[1], outs[2])
    with pytest.raises(ValueError):
        ProductKeyMemory(16, query_norm="rms")


def test_scores_stay_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    mem = ProductKeyMemory(16, n_keys=16, heads=2, topk=4, k_dim=8)
    mem.record_indices = True
    x = torch.randn(1, 30, 16)
    mem(x)
    ref = mem.last_indices.clone()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mem(x)
    assert torch.equal(mem.last_indices, ref)                      # same slots as in fp32


def test_bad_memory_shapes_are_refused():
    with pytest.raises(ValueError, match="even k_dim"):
        ProductKeyMemory(16, k_dim=7)
    with pytest.raises(ValueError, match="topk <= n_keys"):
        ProductKeyMemory(16, n_keys=4, topk=8)
