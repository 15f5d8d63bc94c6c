import torch

from conftest import TINY_MODEL
from lora import LoRALinear, add_lora, merge_lora
from model import GPT, GPTConfig


def test_lora_linear_forward_and_gradients_follow_the_formula():
    """y = x W^T + b + s x A^T B^T with s = alpha / r; for a loss L with dL/dy = G:
    dL/dB = s G^T (x A^T) and dL/dA = s B^T G^T x."""
    torch.manual_seed(0)
    lora = LoRALinear(torch.nn.Linear(5, 3), rank=2, alpha=6.0)
    assert lora.scale == 3.0 and lora.A.shape == (2, 5) and lora.B.shape == (3, 2) and not lora.B.any()
    with torch.no_grad():
        lora.B.normal_()
    W, b, A, B = (t.detach().clone() for t in (lora.base.weight, lora.base.bias, lora.A, lora.B))
    x, G = torch.randn(4, 5), torch.randn(4, 3)
    y = lora(x)
    torch.testing.assert_close(y, x @ W.T + b + 3.0 * (x @ A.T @ B.T))
    (y * G).sum().backward()
    torch.testing.assert_close(lora.B.grad, 3.0 * G.T @ (x @ A.T))
    torch.testing.assert_close(lora.A.grad, 3.0 * B.T @ G.T @ x)


def test_add_lora_scales_by_alpha_over_rank_and_merge_adds_scaled_BA():
    """add_lora(model, rank=4, alpha=8): every adapter has rank 4 and scale 2; merge_lora sets
    each base weight to W + (alpha / r) B A."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**TINY_MODEL, "vocab_size": 60}))
    add_lora(model, rank=4, alpha=8)
    expected = {}
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, LoRALinear):
                assert m.A.shape[0] == 4 and m.B.shape[1] == 4 and m.scale == 2.0
                m.B.normal_()
                expected[name] = m.base.weight + 2.0 * m.B @ m.A
    merge_lora(model)
    merged = dict(model.named_modules())
    assert len(expected) == 8
    for name, w in expected.items():
        torch.testing.assert_close(merged[name].weight, w)
