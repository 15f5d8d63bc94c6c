"""
LoRA (Hu et al. 2021, arXiv:2106.09685), written as plain functions over an unchanged model:
add_lora wraps chosen nn.Linear layers in low-rank adapters and returns their parameters,
merge_lora folds the adapters back into the weights.

    params = add_lora(model, rank=16, alpha=32)    # train only these
    ...
    merge_lora(model)                              # the plain model again, adapters folded in

finetune.py --mode lora uses it; the base weights are never touched until the merge.
"""

import math

import torch
import torch.nn as nn


class LoRALinear(nn.Module):
    """y = base(x) + (alpha / r) * x A^T B^T, with B = 0 at the start."""

    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base, self.scale = base, alpha / rank
        self.A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def forward(self, x):
        return self.base(x) + (x @ self.A.t() @ self.B.t()) * self.scale


LORA_TARGETS = ("attn.qkv", "attn.proj", "ffn.fc", "ffn.proj", "ffn.gate")


def lora_sites(model):
    """(parent module, attribute) of every place LORA_TARGETS names, in every block."""
    for block in model.blocks:
        for name in LORA_TARGETS:
            parent_name, attr = name.split(".")
            yield getattr(block, parent_name), attr


def add_lora(model, rank, alpha):
    """Wrap the attention and FFN matrices of every block (in a memory block: the gate W_1
    and the output W_2, not the query, whose change would move every lookup) in adapters.
    Returns the adapter parameters; every base weight is left as it is."""
    params = []
    for parent, attr in lora_sites(model):
        base = getattr(parent, attr, None)
        if isinstance(base, nn.Linear):
            wrapped = LoRALinear(base, rank, alpha)
            setattr(parent, attr, wrapped)
            params += [wrapped.A, wrapped.B]
    return params


@torch.no_grad()
def merge_lora(model):
    """Fold every adapter into its base weight and unwrap it: the plain model again."""
    for parent, attr in lora_sites(model):
        wrapped = getattr(parent, attr, None)
        if isinstance(wrapped, LoRALinear):
            wrapped.base.weight += wrapped.scale * (wrapped.B @ wrapped.A)
            setattr(parent, attr, wrapped.base)
