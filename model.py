"""
A small GPT whose FFNs can be replaced by product-key memory layers (memory.py).

Pre-LN blocks, causal attention through scaled_dot_product_attention, learned positions,
tied input/output embeddings. `GPTConfig.memory_layers` names the blocks that use a memory
layer instead of the FFN; an empty tuple gives the dense model with exactly the same code,
so the two compare fairly. Its checkpoints are saved and loaded in checkpoint.py.
"""

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from memory import ProductKeyMemory


@dataclass
class GPTConfig:
    vocab_size: int = 2560        # set from the prepared corpus's meta.json by train.py
    block_size: int = 128         # context length in tokens; stories and facts fit in it
    n_layer: int = 4              # transformer blocks
    n_head: int = 4               # attention heads
    n_embd: int = 128             # model width d
    dropout: float = 0.0          # no dropout: runs are short and the data is large
    bias: bool = False            # biases in Linear and LayerNorm of the dense parts
    memory_layers: tuple = (3,)   # blocks whose FFN is a memory layer; () = dense model (docs/DESIGN.md: why the last)
    shared_values: bool = False   # one value table for all memory layers (Berges et al.)
    mem_n_keys: int = 256         # sub-keys per half; slots = mem_n_keys**2 = 65,536
    mem_heads: int = 4            # memory heads (paper: 4); python -m experiments layouts compares 2, 4 and 8
    mem_topk: int = 16            # slots kept per head (paper: 32)
    mem_k_dim: int = 64           # query/key width per head, split in two halves
    mem_v_dim: int = 0            # value width; 0 means n_embd (paper: v_dim = d)
    mem_query_norm: str = "layernorm"  # batchnorm | layernorm | none (see memory.py)
    mem_sparse_grad: bool = False # sparse value gradients + SparseAdam; pays off only for big tables

    def __post_init__(self):
        """Refuse args that make no model, before any work (train.py builds this from the command line
        first, checkpoint.py from a file): ValueError naming the arg and its option."""
        self.memory_layers = tuple(int(i) for i in self.memory_layers)
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "mem_n_keys", "mem_heads",
                     "mem_topk", "mem_k_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} (--{name.replace('_', '-')}) must be at least 1, not {getattr(self, name)}")
        bad = [i for i in self.memory_layers if not 0 <= i < self.n_layer]
        if bad:
            raise ValueError(f"memory_layers {bad} out of range for n_layer={self.n_layer}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if not (0 <= self.dropout < 1 and self.mem_v_dim >= 0):
            raise ValueError(f"dropout must be in [0, 1) and mem_v_dim 0 or more, not {self.dropout}, {self.mem_v_dim}")
        if self.mem_k_dim % 2 or self.mem_topk > self.mem_n_keys:
            raise ValueError(f"memory needs an even mem_k_dim and mem_topk <= mem_n_keys (got {self.mem_k_dim}, "
                             f"{self.mem_topk}, {self.mem_n_keys})")
        if self.mem_query_norm not in ("batchnorm", "layernorm", "none"):
            raise ValueError(f"mem_query_norm must be batchnorm, layernorm or none, not {self.mem_query_norm!r}")
        self.mem_v_dim = self.mem_v_dim or self.n_embd


# The classroom preset's model (--preset classroom; docs/COURSE.md): 2 blocks of width 96, the
# second one's FFN a memory layer of 256^2 = 65,536 slots read top-16 by 4 heads (the default's
# table; 16,384 slots or top-8 forget more per fact learned: python -m experiments classroom),
# 64-token windows. Every field is named, so a later change of the defaults does not move it.
CLASSROOM_MODEL = dict(vocab_size=1024, block_size=64, n_layer=2, n_head=4, n_embd=96, dropout=0.0, bias=False,
                       memory_layers=(1,), shared_values=False, mem_n_keys=256, mem_heads=4, mem_topk=16,
                       mem_k_dim=64, mem_v_dim=0, mem_query_norm="layernorm", mem_sparse_grad=False)


# The large preset's model (--preset large): the default model with a memory table 4x as large,
# 512^2 = 262,144 slots. It pretrains in about 10 min on 2 CPU cores against the default's 7, and
# forgets less of the background per fact taught (docs/RESULTS.md, "A larger memory table").
LARGE_MODEL = dict(mem_n_keys=512)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)               # (B, T, C)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, cfg, memory_values=None, use_memory=False):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        if use_memory:
            self.ffn = ProductKeyMemory(cfg.n_embd, n_keys=cfg.mem_n_keys, heads=cfg.mem_heads,
                                        topk=cfg.mem_topk, k_dim=cfg.mem_k_dim,
                                        v_dim=cfg.mem_v_dim,
                                        query_norm=cfg.mem_query_norm,
                                        sparse_grad=cfg.mem_sparse_grad, values=memory_values)
        else:
            self.ffn = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, at=None):
        """(B, T, C) -> (B, T, C). With at (B, T) bool: (n, C), the marked positions only. The FFN
        acts on each position alone, so where nothing after the block reads the other positions
        (the last block, scoring) they need no FFN, nor a memory lookup."""
        x = x + self.drop(self.attn(self.ln_1(x)))
        if at is not None:
            x = x[at].unsqueeze(0)                                     # (1, n, C)
        x = x + self.drop(self.ffn(self.ln_2(x)))
        return x if at is None else x[0]


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        shared = None
        if cfg.shared_values and cfg.memory_layers:
            shared = nn.EmbeddingBag(cfg.mem_n_keys ** 2, cfg.mem_v_dim,
                                     mode="sum", sparse=cfg.mem_sparse_grad)
        self.blocks = nn.ModuleList(Block(cfg, shared, i in cfg.memory_layers) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)
        # GPT-2 init for the dense parts, scaled init for residual projections, then the
        # memory layers' own init (memory.py) over whatever the first two touched.
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))
        for mem in self.memory_modules:
            mem.reset_parameters()

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    @property
    def memory_modules(self):
        return [b.ffn for b in self.blocks if isinstance(b.ffn, ProductKeyMemory)]

    @contextmanager
    def recording_slots(self):
        """Inside the block every forward records the slots each token read in each memory
        layer, for slot_reads(); switched off again on the way out."""
        mems = self.memory_modules
        for m in mems:
            m.record_indices = True
        try:
            yield
        finally:
            for m in mems:
                m.record_indices, m.last_indices = False, None

    def slot_reads(self):
        """The slots every token read in the latest forward inside recording_slots(): one
        (B, T, heads, k) tensor per memory layer, in memory_modules order (after a forward with
        at=, a memory layer in the last block read the marked positions only: (1, n, heads, k))."""
        reads = [m.last_indices for m in self.memory_modules]
        if any(r is None for r in reads):
            raise RuntimeError("slot_reads() needs a forward inside model.recording_slots()")
        return reads

    def value_params(self):
        """The memory value tables (one per memory layer, or one if shared)."""
        seen, out = set(), []
        for mem in self.memory_modules:
            if id(mem.values.weight) not in seen:
                seen.add(id(mem.values.weight))
                out.append(mem.values.weight)
        return out

    def num_params(self):
        """(dense, memory values) parameter counts; positions and tied embeddings included in dense."""
        values = {id(p) for p in self.value_params()}
        dense = sum(p.numel() for p in self.parameters() if id(p) not in values)
        memory = sum(p.numel() for p in self.value_params())
        return dense, memory

    def forward(self, idx, targets=None, at=None):
        """Logits (B, T, vocab) and, given targets (B, T; -1 = none), the mean next-token loss.
        at (B, T) bool, for scoring: the logits of those positions only, (n, vocab) in row order,
        which skips the last block's FFN (or memory lookup) and the vocabulary-wide product
        everywhere else (nanoGPT skips the product at inference for all but the last position)."""
        B, T = idx.shape
        assert T <= self.config.block_size, f"sequence of {T} tokens exceeds block_size {self.config.block_size}"
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))                    # (B, T, C)
        assert at is None or targets is None, "at= gives the logits of some positions only: no loss"
        for block in self.blocks[:-1]:
            x = block(x)
        x = self.ln_f(self.blocks[-1](x, at))                          # (B, T, C), or (n, C) with at
        logits = F.linear(x, self.wte.weight)                          # tied: (B, T, vocab), or (n, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, stop_token=None):
        """Sample continuations of idx (B, T); temperature 0 means greedy."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.config.block_size:])
            logits = logits[:, -1, :].float()
            if temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float("inf")
                nxt = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
            idx = torch.cat((idx, nxt), dim=1)
            if stop_token is not None and (nxt == stop_token).all():
                break
        return idx
