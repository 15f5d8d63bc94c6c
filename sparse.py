"""
Sparse memory finetuning's own parts (Lin et al. 2025, arXiv:2510.15103): which rows of a
memory value table one step trains, and an optimizer that updates only those rows.

One step of the stream (finetune.py run_stream) is forward -> backward -> choose_rows ->
RowOptimizer.step. choose_rows ranks the slots the batch read against background statistics
(how many background units read each slot, from pretraining text) and keeps the top t:

    c(i)     = reads of slot i by the batch's text tokens (every head's top-k, every token)
    tf(i)    = c(i) / sum_j c(j)
    idf(i)   = log((|B| + 1) / (df(i) + 1))       df(i): background units that read slot i, of |B|
    rows     = the t read slots with the largest tf(i) * idf(i)
    V[rows] -= lr * grad V[rows]                   every other row stays bit-identical

The background statistics are counted once per model (background_stats) and cached beside
its checkpoint (load_or_compute_background).
"""

import hashlib
import math
import os
import sys

import torch
from tqdm import tqdm

from model import checkpoint_train_tokens, config_dict, save_checkpoint
from train import get_batch


# ----------------------------------------------------------------------------------------
# which slots a batch read

def memory_tables(model):
    """Value tables and the memory layers that read each: [(weight, [positions in model.memory_modules])]."""
    tables = {}
    for i, m in enumerate(model.memory_modules):
        tables.setdefault(id(m.values.weight), (m.values.weight, []))[1].append(i)
    return list(tables.values())


def table_reads(model, tables):
    """After a forward inside model.recording_slots(): per value table of memory_tables, the
    slots its layers read, (B, T, layers * heads, k), the layers side by side like more heads."""
    reads = model.slot_reads()
    return [torch.cat([reads[i] for i in layers], dim=2) for _, layers in tables]


def slot_counts(indices, n_slots):
    """Accesses per slot: indices holds every (token, head, kept slot) read."""
    return torch.bincount(indices.reshape(-1).cpu(), minlength=n_slots)


# ----------------------------------------------------------------------------------------
# which rows to train: counts -> scores -> mask -> top-t

def slot_scores(counts, ranking="tfidf", background=None):
    """Scores of every slot for one batch's read counts c. An unread slot scores 0, which a read
    one can too (or less, under kl): top_slots, not the score, keeps unread slots out.
      tf(i)    = c(i) / sum_j c(j)
      tfidf(i) = tf(i) * log((|B| + 1) / (df(i) + 1))       df: background units reading slot i;
                 0 for the slots background answers are read from, with --answer-df
      kl(i)    = tf(i) * log(tf(i) / q(i))                   q: the background's share of reads,
                 q(i) = (reads(i) + 1) / (sum_j reads(j) + N), add-one smoothed over N slots;
                 the slot's term of KL(batch reads || background reads)
    background: {"df", "reads", "units"} of one value table (background_stats), and with
    --answer-df "answer_rows", True on the slots background answers are read from
    (finetune.keep_clear_of_answers)."""
    tf = counts.double() / counts.sum()
    if ranking == "tf":
        return tf
    if ranking == "tfidf":
        idf = torch.log((background["units"] + 1) / (background["df"].double() + 1))
        if "answer_rows" in background:                            # --answer-df: ranked last
            idf = idf.masked_fill(background["answer_rows"], 0.0)
        return tf * idf
    reads = background["reads"].double()
    q = (reads + 1) / (reads.sum() + len(reads))
    return torch.special.xlogy(tf, tf / q)                         # 0 where tf = 0


def sequence_scores(indices, mask, n_slots, ranking, background):
    """Sequence-level ranking: score each row of the batch on its own reads, and give a slot
    the best score it gets in a row that reads it (kl scores can be negative, so a row that
    does not read a slot must not count as a 0). indices: (B, T, H, k) reads; mask: (B, T)
    tokens counted."""
    rows = []
    for b in range(indices.shape[0]):
        if mask[b].any():
            c = slot_counts(indices[b][mask[b]], n_slots)
            rows.append(slot_scores(c, ranking, background).masked_fill(c == 0, -math.inf))
    return torch.stack(rows).max(dim=0).values


def top_slots(scores, counts, t):
    """The t accessed slots with the highest scores (all accessed ones if fewer); sorted."""
    scores = scores.masked_fill(counts == 0, -math.inf)
    k = min(t, int((counts > 0).sum()))
    return scores.topk(k).indices.sort().values


def choose_rows(reads, count, n_slots, t, ranking="tfidf", rank_by="batch", max_df=1.0, background=None, blocked=None):
    """The rows of one value table that this step trains. reads: (B, T, H, k) slots read by
    each token; count: (B, T) True on the tokens whose reads count (make_batch in facts.py);
    background: the table's background_stats, {"df", "reads", "units" = |B|}, and with --answer-df
    "answer_rows" (slot_scores); blocked: (n_slots,) True on rows that must not be trained
    (--fresh-rows: the rows earlier facts trained; --answer-mask: the rows background answers
    are read from).

      1. counts  c(i) = reads of slot i by the counted tokens
      2. scores  tfidf(i) = c(i) / sum_j c(j) * log((|B| + 1) / (df(i) + 1)), 0 on answer_rows
                 (slot_scores; or tf, kl; rank_by "sequence": each row of the batch is scored
                 alone and a slot keeps its best row's score, sequence_scores)
      3. mask    max_df < 1: a slot read in more than max_df * |B| background units counts as unread;
                 so does a blocked one
      4. top-t   the t read slots with the highest scores (all read ones if fewer), sorted"""
    c = slot_counts(reads[count], n_slots)                                    # 1. counts
    if rank_by == "sequence":                                                  # 2. scores
        scores = sequence_scores(reads, count, n_slots, ranking, background)
    else:
        scores = slot_scores(c, ranking, background)
    if max_df < 1:                                                             # 3. mask
        c = c.masked_fill(background["df"] > max_df * background["units"], 0)
    if blocked is not None:
        c = c.masked_fill(blocked, 0)
    return top_slots(scores, c, t)                                             # 4. top-t


# ----------------------------------------------------------------------------------------
# background statistics: df and reads per slot

def pretraining_units(train_data, block_size, n_units, unit_windows, seed, per_batch=32):
    """Background units from pretraining, per_batch at a time: (x (U, W, L), None), U units of
    unit_windows = W random windows of block_size = L tokens each, every token counted."""
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, n_units, per_batch):
        windows = [get_batch(train_data, block_size, unit_windows, gen)[0] for _ in range(min(per_batch, n_units - start))]
        yield torch.stack(windows), None


@torch.no_grad()
def background_stats(model, units, device, quiet=False):
    """Per value table, over background units: df, the number of units in which each slot was
    read, and reads, its total reads. units yields batches (x, mask): x (U, W, L) holds U units
    of W rows each, read in one forward; mask (U, W, L) is True on the tokens whose reads count
    (None: every token). A unit's rows may be right-padded: causal attention keeps the padding
    out of the tokens before it."""
    tables = memory_tables(model)
    stats = [{"df": torch.zeros(w.shape[0], dtype=torch.long), "reads": torch.zeros(w.shape[0], dtype=torch.long),
              "units": 0} for w, _ in tables]
    with model.recording_slots():
        for x, mask in tqdm(units, desc="background", leave=False, disable=quiet):
            U, W, L = x.shape
            model(x.view(U * W, L).to(device))
            counted = torch.ones(U * W, L, dtype=torch.bool) if mask is None else mask.reshape(U * W, L)
            unit = torch.arange(U).repeat_interleave(W * L).view(U * W, L)[counted]     # (tokens,) each token's unit
            for st, (w, _), reads in zip(stats, tables, table_reads(model, tables)):
                n = w.shape[0]
                r = reads.cpu()[counted]                                                 # (tokens, H, k) slots read
                st["reads"] += slot_counts(r, n)
                read_in = (unit.view(-1, 1, 1) * n + r).unique()                         # each (unit, slot) once
                st["df"] += torch.bincount(read_in % n, minlength=n)
                st["units"] += U
    return stats


def fingerprint(model):
    """A hash of the model's weights: background statistics belong to one model."""
    h = hashlib.sha1()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_or_compute_background(cfg, model, ckpt, device):
    """Background statistics of each value table (background_stats), from pretraining
    windows, cached beside the checkpoint and reused while everything that changes the reads
    is the same: the weights, the model args (mem_topk, heads, ...), the corpus and the
    background settings. A cache that cannot be written is a warning: the run goes on."""
    path = os.path.splitext(cfg.checkpoint)[0] + ".background.pt"
    key = {"fingerprint": fingerprint(model), "model_args": config_dict(model.config), "data_dir": ckpt["data_dir"],
           "data_meta": ckpt["data_meta"], "units": cfg.background_batches,
           "unit_windows": cfg.background_batch_size, "seed": cfg.seed}
    if os.path.exists(path):
        try:
            cached = torch.load(path, weights_only=True)
            if cached.get("key") == key and "stats" in cached:
                return cached["stats"]
        except Exception:
            pass                                                        # recompute below
    train_data = checkpoint_train_tokens(ckpt)
    if not cfg.quiet:
        print(f"background: counting slot reads in {cfg.background_batches} units of "
              f"{cfg.background_batch_size} x {model.config.block_size} tokens -> {path}")
    units = pretraining_units(train_data, model.config.block_size, cfg.background_batches,
                              cfg.background_batch_size, cfg.seed)
    stats = background_stats(model, units, device, cfg.quiet)
    try:
        save_checkpoint(path, {"key": key, "stats": stats})
    except OSError as e:
        print(f"warning: could not cache the background statistics in {path} ({e.strerror or e}); "
              "they will be counted again next time", file=sys.stderr)
    return stats


# ----------------------------------------------------------------------------------------
# the update of the chosen rows

class RowOptimizer:
    """SGD or AdamW on chosen rows of one table; every other row stays bit-identical.

    AdamW keeps moments and a step count only for rows that have been selected at least once
    (stored compactly, in the order rows were first selected), so its state grows with the
    rows a stream touches, not with the table. A row not selected in this step is neither
    read nor written: its moments wait, frozen, until the row is selected again (lazily, as in
    torch.optim.SparseAdam), and its bias correction then continues from its own count of
    updates (SparseAdam keeps one count per table). Weight decay touches selected rows only."""

    def __init__(self, weight, kind, lr, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8):
        self.weight, self.kind, self.lr, self.wd, self.betas, self.eps = weight, kind, lr, weight_decay, betas, eps
        if kind == "adamw":
            self.where = torch.full((weight.shape[0],), -1, dtype=torch.long, device=weight.device)  # row -> state index
            self.exp_avg = weight.new_zeros(0, weight.shape[1])          # (rows selected so far, v_dim)
            self.exp_avg_sq = weight.new_zeros(0, weight.shape[1])
            self.steps = torch.zeros(0, dtype=torch.long, device=weight.device)

    def state_bytes(self):
        if self.kind == "sgd":
            return 0
        return sum(t.numel() * t.element_size() for t in (self.where, self.exp_avg, self.exp_avg_sq, self.steps))

    @torch.no_grad()
    def step(self, rows, scale=None):
        """Move the rows (t,) by their gradient; scale: (t,) a factor on each row's learning rate
        (finetune.py --answer-damp), None: the same rate for all."""
        w, g = self.weight, self.weight.grad[rows]                    # g: (t, v_dim)
        lr = self.lr if scale is None else self.lr * scale.to(w.device, w.dtype).unsqueeze(1)   # scalar or (t, 1)
        if self.kind == "sgd":
            w[rows] = w[rows] - lr * g
            return
        new = rows[self.where[rows] < 0]                               # 1. rows selected for the first
        if len(new):                                                   #    time get zero moments
            self.where[new] = torch.arange(len(self.steps), len(self.steps) + len(new), device=w.device)
            self.exp_avg = torch.cat([self.exp_avg, w.new_zeros(len(new), w.shape[1])])
            self.exp_avg_sq = torch.cat([self.exp_avg_sq, w.new_zeros(len(new), w.shape[1])])
            self.steps = torch.cat([self.steps, self.steps.new_zeros(len(new))])
        i = self.where[rows]                                           # (t,) positions in the state
        b1, b2 = self.betas
        self.steps[i] += 1                                             # 2. each row counts its own updates
        exact = torch.float32 if w.device.type == "mps" else torch.float64   # MPS has no float64
        n = self.steps[i].unsqueeze(1).to(exact)                       # (t, 1)
        m = self.exp_avg[i].mul(b1).add(g, alpha=1 - b1)               # 3. moments of the selected rows
        v = self.exp_avg_sq[i].mul(b2).addcmul(g, g, value=1 - b2)
        self.exp_avg[i], self.exp_avg_sq[i] = m, v
        denom = (v / (1 - b2 ** n)).sqrt().add(self.eps)               # 4. bias-corrected step, decoupled decay
        update = (m / (1 - b1 ** n)) / denom
        w[rows] = w[rows] * (1 - lr * self.wd) - lr * update.to(w.dtype)
