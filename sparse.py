"""
Sparse memory finetuning, the paper's method (Lin et al. 2025, arXiv:2510.15103): one step
of it, sparse_step, and its parts.

One step on a batch, per memory value table V:

    forward, recording the slots every token read; backward
    c(i)     = reads of slot i by the batch's text tokens (every head's top-k, every token)
    tf(i)    = c(i) / sum_j c(j)
    idf(i)   = log((|B| + 1) / (df(i) + 1))       df(i): background units that read slot i, of |B|
    rows     = the t read slots with the largest tf(i) * idf(i)
    V[rows] -= lr * grad V[rows]                   every other row, every other weight, stays put

finetune.py runs it over a stream of facts (run_stream) and counts the background statistics
once per model (background_stats, over pretraining windows). The steps beyond the paper plug in
where sparse_step says `recipe.`: recipes.py; with recipes.Recipe() they change nothing.
"""

import math

import torch
from tqdm import tqdm


# ----------------------------------------------------------------------------------------
# one step

def sparse_step(model, batch, t, tables, optimizers, idfs, recipe):
    """One step of the paper's method on a fact's batch (facts.Batch, from finetune.fact_batch:
    x, y, and count, True on the text's tokens), inside model.recording_slots(): train t rows of
    each value table of memory_tables, with its RowOptimizer and its IDF, (n_slots,). Returns (the
    loss, the trained rows' new values): a loss that is not finite trains nothing, and the caller
    stops. The row indices stay on the CPU, where the counts are; they index the table wherever
    it is."""
    _, loss = model(batch.x, batch.y)                          # 1. forward, recording the slots read
    if not torch.isfinite(loss):
        return loss, []
    loss.backward()                                            # 2. backward: a gradient on every row read
    count = recipe.counted(batch)                              # (B, T) the tokens whose reads count
    updated = []
    all_reads = table_reads(model, tables)                     # per table: (B, T, layers * heads, k) slots read
    for i, (w, _) in enumerate(tables):
        reads, opt = all_reads[i], optimizers[i]
        c = slot_counts(reads[count], w.shape[0])              # 3. c(i): reads of slot i by those tokens, (n_slots,)
        scores = recipe.scores(i, reads, count, c, idfs[i])    # 4. tf(i) * idf(i), tf(i) = c(i) / sum_j c(j)
        c = c.masked_fill(recipe.blocked(i), 0)                #    a row that may not be trained counts as unread
        rows = top_slots(scores, c, t)                         # 5. the t read slots with the largest scores, (t,)
        opt.step(rows.to(w.device), recipe.step_scale(i, rows))   # 6. V[rows] -= lr * grad V[rows]
        recipe.trained(i, rows)
        w.grad = None
        updated.append(w[rows])
    return loss, updated


# ----------------------------------------------------------------------------------------
# which slots a batch read, and which of them to train

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


def inverse_document_frequency(background):
    """idf(i) = log((|B| + 1) / (df(i) + 1)), (n_slots,) in float64, from one value table's
    background_stats: {"df": units that read slot i, "units": |B|}."""
    return torch.log((background["units"] + 1) / (background["df"].double() + 1))


def slot_scores(counts, idf):
    """tf(i) * idf(i) of every slot for one batch's read counts c, tf(i) = c(i) / sum_j c(j); an
    unread slot scores 0, as a read one can: top_slots, not the score, keeps unread slots out.
    The paper's TF ablation (--ranking tf) is an idf of ones."""
    tf = counts.double() / counts.sum()
    return tf * idf


def top_slots(scores, counts, t):
    """The t read slots (counts > 0) with the highest scores (all read ones if fewer); sorted."""
    scores = scores.masked_fill(counts == 0, -math.inf)
    k = min(t, int((counts > 0).sum()))
    return scores.topk(k).indices.sort().values


# ----------------------------------------------------------------------------------------
# background statistics: df and reads per slot

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
            self.where = torch.full((weight.shape[0],), -1, dtype=torch.long, device=weight.device)  # row -> state
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
        (a recipe's step_scale), None: the same rate for all."""
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
