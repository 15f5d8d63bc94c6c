"""
Product-key memory layer ("memory+"), the drop-in replacement for a transformer FFN.

The memory layer of Lin et al. 2025 (arXiv:2510.15103), after Lample et al. 2019
(arXiv:1907.05242) and Berges et al. 2024 (arXiv:2412.09764), in their equations:

    q      = norm(W_q x)                      one query per head, split in halves q1, q2
    s1, s2 = K1 q1, K2 q2                     two sub-key tables of n_keys rows per head
    top-k of s1 and of s2, the k*k sums s1[a] + s2[b] for slot a * n_keys + b, top-k again
    w      = softmax(kept scores)             per head, in fp32
    y      = sum_heads sum_kept w_i V[i]      one value table V (n_keys^2 x v_dim)
    out    = W_2(y * silu(W_1 x))

The k*k candidates provably contain the exact top-k over all n_keys^2 full keys [K1[a]; K2[b]]
(tests/test_memory.py checks it), at cost O((n_keys + k^2) * k_dim) per head and token.

For sparse memory finetuning the layer exposes
  - `values.weight`: the whole value table as one (n_keys^2, v_dim) parameter, and
  - `record_indices`: set it True and each forward stores the slots every token read in
    `last_indices` (B, T, heads, k), detached. Off by default; it only keeps a reference.
    The model switches it on and hands the reads out (model.py, recording_slots / slot_reads).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class ProductKeyMemory(nn.Module):
    def __init__(self, d_model, n_keys=128, heads=4, topk=16, k_dim=64, v_dim=None,
                 query_norm="layernorm", sparse_grad=False, values=None):
        super().__init__()
        if k_dim % 2 or not 0 < topk <= n_keys:
            raise ValueError(f"memory needs an even k_dim and 0 < topk <= n_keys (got k_dim={k_dim}, "
                             f"topk={topk}, n_keys={n_keys})")
        v_dim = v_dim or d_model
        self.n_keys, self.heads, self.topk, self.k_dim, self.v_dim = n_keys, heads, topk, k_dim, v_dim
        self.n_slots = n_keys * n_keys
        half = k_dim // 2

        self.query = nn.Linear(d_model, heads * k_dim, bias=True)
        # Query normalization spreads reads over many slots (Lample et al.: slot usage at 1M
        # slots 25.8% -> 80.3% with BatchNorm). LayerNorm on each half does the same job
        # without batch statistics, so train and eval compute the same function.
        if query_norm == "batchnorm":
            self.query_norm = nn.BatchNorm1d(heads * k_dim)
        elif query_norm == "layernorm":
            self.query_norm = nn.LayerNorm(half)
        elif query_norm == "none":
            self.query_norm = nn.Identity()
        else:
            raise ValueError(f"query_norm must be batchnorm, layernorm or none, not {query_norm!r}")
        self.query_norm_kind = query_norm

        self.keys = nn.Parameter(torch.empty(heads, 2, n_keys, half))   # (heads, 2 halves, n_keys, k_dim/2)
        # One value table, possibly shared between several memory layers (pass `values`).
        # mode="sum" with per-sample weights is the weighted gather-and-sum in one kernel;
        # sparse=True makes its gradient touch only the rows read in this batch.
        if values is None:
            values = nn.EmbeddingBag(self.n_slots, v_dim, mode="sum", sparse=sparse_grad)
        if values.weight.shape != (self.n_slots, v_dim):
            raise ValueError(f"shared value table is {tuple(values.weight.shape)}, expected {(self.n_slots, v_dim)}")
        self.values = values
        self.gate = nn.Linear(d_model, v_dim, bias=False)   # W_1
        self.proj = nn.Linear(v_dim, d_model, bias=False)   # W_2
        self.reset_parameters()

        self.record_indices = False
        self.last_indices = None

    def reset_parameters(self):
        """Init of Lample et al. 2019 and Berges et al. 2024: sub-keys uniform in +-1/sqrt(k_dim),
        values N(0, 1/v_dim), the query, gate and output matrices N(0, 1/d), the query bias 0."""
        bound = 1 / math.sqrt(self.k_dim)
        nn.init.uniform_(self.keys, -bound, bound)
        nn.init.normal_(self.values.weight, std=self.v_dim ** -0.5)
        d_model = self.gate.in_features
        nn.init.normal_(self.gate.weight, std=d_model ** -0.5)
        nn.init.normal_(self.proj.weight, std=d_model ** -0.5)
        nn.init.normal_(self.query.weight, std=d_model ** -0.5)
        nn.init.zeros_(self.query.bias)

    def lookup(self, x):
        """Top-k slots and their scores for each token and head. x: (N, d) ->
        scores (N, heads, k) float32, indices (N, heads, k) int64, best first."""
        N, H, k, half = x.shape[0], self.heads, self.topk, self.k_dim // 2
        q = self.query(x)                                              # (N, H*k_dim)
        if self.query_norm_kind == "batchnorm":
            q = self.query_norm(q)
        q = q.view(N, H, 2, half)
        if self.query_norm_kind == "layernorm":
            q = self.query_norm(q)
        q = q.float()
        keys = self.keys.float()
        s1 = torch.einsum("nhd,hkd->nhk", q[:, :, 0], keys[:, 0])       # (N, H, n_keys)
        s2 = torch.einsum("nhd,hkd->nhk", q[:, :, 1], keys[:, 1])       # (N, H, n_keys)
        v1, i1 = s1.topk(k, dim=-1)                                    # (N, H, k)
        v2, i2 = s2.topk(k, dim=-1)                                    # (N, H, k)
        cand = v1.unsqueeze(-1) + v2.unsqueeze(-2)                     # (N, H, k, k)
        scores, flat = cand.view(N, H, k * k).topk(k, dim=-1)          # (N, H, k)
        a = i1.gather(-1, flat // k)                                   # row in K1
        b = i2.gather(-1, flat % k)                                    # row in K2
        return scores, a * self.n_keys + b

    def forward(self, x):
        B, T, C = x.shape
        flat_x = x.reshape(B * T, C)
        with torch.autocast(x.device.type, enabled=False):           # exact top-k needs fp32 scores
            scores, idx = self.lookup(flat_x.float())                  # (BT, H, k) each
        w = F.softmax(scores, dim=-1)                                  # fp32, per head
        if self.record_indices:
            self.last_indices = idx.view(B, T, self.heads, self.topk).detach()
        weight = self.values.weight
        y = self.values(idx.view(B * T, -1),                           # (BT, H*k) slots per token
                        per_sample_weights=w.view(B * T, -1).to(weight.dtype))
        y = y.to(x.dtype)                                              # (BT, v_dim)
        out = self.proj(y * F.silu(self.gate(flat_x)))                 # (BT, d)
        return out.view(B, T, C)
