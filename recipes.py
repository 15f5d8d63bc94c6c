"""
The steps beyond the paper, each a small class that plugs into the paper's method at the
points its spine names `recipe.` (sparse.sparse_step, finetune.run_stream). Recipe() with no
extensions is the paper's method itself; --recipe improved is the bundle that meets the demo's
targets (IMPROVED); every extension has an option of its own.

    python finetune.py --recipe improved                  # the paper's method + IMPROVED
    python finetune.py --grow-t 4096 --max-df 0.99        # any of them on their own

The points, in the order a stream reaches them. Every method of Extension changes nothing, so an
extension defines only the points it needs (docs/COURSE.md, exercise 11, writes one):

    once per stream (finetune.trainer, run_stream):
    start(tables)                  a stream begins; tables: sparse.memory_tables
    stream(facts)                  the facts, as the stream teaches them
    idf(i, idf)                    value table i's IDF, (n_slots,)
    at every step, per value table i (sparse.sparse_step):
    counted(batch)                 the tokens whose reads count, (B, T) bool (None: the text's)
    scores(i, reads, count, c, idf)  the slots' scores, (n_slots,) (None: the paper's tf * idf)
    blocked(i)                     (n_slots,) True on the rows table i may not train (None: none)
    damping(i, rows)               (t,) added to each chosen row's divisor: it moves by its step / (1 + sum)
                                   (Recipe.step_scale sums the extensions' terms)
    trained(i, rows)               the rows table i trained this step
    after each step and round of a fact (finetune.teach_fact), and after the fact:
    stop(model, batch)             end this fact's steps now (no more steps, no more rounds)?
    next_t(t, model, batch)        after a round of the fact's steps with t rows: another with this t (0: no)
    after_fact(model, batch)       the fact's steps are over
    finish()                       the stream is over

Each extension's docstring says what it does and what it was measured to do; the commands and
tables are in docs/RESULTS.md.
"""

import math
import sys
from dataclasses import dataclass, fields, replace

import torch

from evaluate import qa_batch, qa_items
from sparse import background_stats, slot_counts, slot_scores, table_reads


@dataclass
class RecipeConfig:
    """steps beyond the paper (recipes.py): each off unless asked for; --recipe improved turns on four"""
    grow_t: int = 0                       # sparse: a fact whose answer is still missed after its steps gets
                                          # them again with 4x t, up to this (0 = off)
    max_df: float = 1.0                   # sparse: never train a slot read in more than this share of the
                                          # background units (1 = off)
    spare_answer_slots: float = 1.0       # sparse, tfidf: IDF 0 (ranked last) for the slots read where more
                                          # than this share of the background answers are predicted (1 = off)
    block_answer_slots: bool = False      # sparse, tfidf: never train those slots, not only rank them last
    slow_answer_slots: float = 0.0        # sparse: each chosen row's step divided by 1 + n / this, n the
                                          # background answers read from it (0 = off)
    slow_taught_slots: float = 0.0        # sparse: each chosen row's step divided by 1 + m / this, m the facts
                                          # taught before in the stream whose answer is read from it (0 = off)
    fresh_rows: bool = False              # sparse: never train a row that an earlier fact of the stream trained
    count_reads: str = "all"              # sparse: reads counted: all (every text token, the paper) | answer
                                          # (where the answer is predicted)
    rank_by: str = "batch"                # sparse: batch (the paper) | sequence (score each row of the batch,
                                          # keep a slot's best)
    stop_early: bool = False              # any mode: end a fact's steps as soon as its answer is predicted
                                          # wherever its batch spells it
    passes: int = 1                       # any mode: times the whole stream is taught, in the same order


# The named recipes (--recipe NAME): the options each sets. improved: the four steps that meet the
# demo's targets on the default model (docs/RESULTS.md, "The improved recipe").
IMPROVED = dict(grow_t=4096, spare_answer_slots=0.01, max_df=0.99, slow_taught_slots=1.0)
RECIPES = {"paper": {}, "improved": IMPROVED}


def check_recipe(rcfg, top_t):
    """ValueError naming the first option of rcfg that is out of range or contradicts another."""
    if not (rcfg.grow_t == 0 or rcfg.grow_t >= top_t):
        raise ValueError(f"--grow-t {rcfg.grow_t} is below --top-t {top_t}: give a larger one, or 0 for a fixed t")
    for name in ("max_df", "spare_answer_slots"):
        value = getattr(rcfg, name)
        if not 0 < value <= 1:
            raise ValueError(f"--{name.replace('_', '-')} is a share: above 0 and at most 1, not {value:g}")
    for name in ("slow_answer_slots", "slow_taught_slots"):
        value = getattr(rcfg, name)
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"--{name.replace('_', '-')} must be 0 (off) or a positive number, not {value:g}")
    if rcfg.block_answer_slots and rcfg.spare_answer_slots == 1:
        raise ValueError("--block-answer-slots never trains the slots --spare-answer-slots marks: give "
                         "--spare-answer-slots below 1 (--recipe improved: 0.01)")
    if rcfg.passes < 1:
        raise ValueError(f"--passes must be at least 1, not {rcfg.passes}")
    if rcfg.fresh_rows and rcfg.passes > 1:
        raise ValueError("--fresh-rows keeps a fact off the rows it trained in an earlier pass: use it with --passes 1")
    if rcfg.count_reads not in ("all", "answer"):
        raise ValueError(f"unknown --count-reads {rcfg.count_reads!r}: use all or answer")
    if rcfg.rank_by not in ("batch", "sequence"):
        raise ValueError(f"unknown --rank-by {rcfg.rank_by!r}: use batch or sequence")


# ----------------------------------------------------------------------------------------
# the interface, and the recipe that combines extensions

class Extension:
    """A step beyond the paper: override the points it needs (the module's docstring lists them)."""

    def start(self, tables): pass
    def stream(self, facts): return facts
    def counted(self, batch): return None
    def idf(self, i, idf): return idf
    def scores(self, i, reads, count, c, idf): return None
    def blocked(self, i): return None
    def damping(self, i, rows): return None
    def trained(self, i, rows): pass
    def stop(self, model, batch): return False
    def next_t(self, t, model, batch): return 0
    def after_fact(self, model, batch): pass
    def finish(self): pass


class Recipe:
    """The paper's method with these extensions plugged in, in order; no extension: the paper's.
    Where several answer a point: the first counted mask and the last scores (build never gives
    two extensions either point), the IDF passed through each in turn, the union of the blocked
    rows, the damping terms summed, stop if any says so, the largest next t. name: the options
    it was built from (recipe_name)."""

    def __init__(self, extensions=(), name="paper"):
        self.extensions, self.name = list(extensions), name

    def start(self, tables):
        self.n_slots = [w.shape[0] for w, _ in tables]
        for e in self.extensions:
            e.start(tables)

    def stream(self, facts):
        for e in self.extensions:
            facts = e.stream(facts)
        return facts

    def counted(self, batch):
        for e in self.extensions:
            mask = e.counted(batch)
            if mask is not None:
                return mask
        return batch.count

    def idf(self, i, idf):
        for e in self.extensions:
            idf = e.idf(i, idf)
        return idf

    def scores(self, i, reads, count, c, idf):
        for e in reversed(self.extensions):
            scores = e.scores(i, reads, count, c, idf)
            if scores is not None:
                return scores
        return slot_scores(c, idf)

    def blocked(self, i):
        blocked = torch.zeros(self.n_slots[i], dtype=torch.bool)
        for e in self.extensions:
            mine = e.blocked(i)
            if mine is not None:
                blocked = blocked | mine
        return blocked

    def step_scale(self, i, rows):
        """The point damping's answers meet: (t,) 1 / (1 + the extensions' damping terms) of the
        chosen rows, each row's share of the learning rate; None (the same rate) without any."""
        terms = [e.damping(i, rows) for e in self.extensions]
        terms = [d for d in terms if d is not None]
        if not terms:
            return None
        divisor = torch.ones(len(rows))
        for d in terms:
            divisor += d
        return 1 / divisor

    def trained(self, i, rows):
        for e in self.extensions:
            e.trained(i, rows)

    def stop(self, model, batch):
        stops = [e.stop(model, batch) for e in self.extensions]          # each one asked
        return any(stops)

    def next_t(self, t, model, batch):
        return max((e.next_t(t, model, batch) for e in self.extensions), default=0)

    def after_fact(self, model, batch):
        for e in self.extensions:
            e.after_fact(model, batch)

    def finish(self):
        for e in self.extensions:
            e.finish()


# ----------------------------------------------------------------------------------------
# does the model predict the answer? (grow t, stop early)

@torch.no_grad()
def answers(model, batch):
    """Does the model predict the fact's answer wherever its batch spells it? batch.at: (B, L)
    True at the positions that predict the answer's tokens, in every line that holds " <answer>":
    the statements and the trained questions (the unseen question is not in the batch)."""
    logits, _ = model(batch.x)                                                       # (B, L, vocab)
    return bool((logits.argmax(-1) == batch.y)[batch.at].all())


class GrowT(Extension):
    """--grow-t T: after a fact's steps, while the model still misses its answer wherever its
    batch spells it (answers), the steps again with 4x the rows, up to T: t = 64, 256, 1,024,
    4,096 (about every slot a batch reads). A fact the top 64 rows can hold costs 64 rows; one
    they cannot gets the rows it needs. Measured, the demo's 100 facts at lr 50: alone 0.745 ->
    0.855 learned at a larger drop (7.3% -> 11.8%); with --spare-answer-slots 0.01, 0.905 at 3.4%
    (docs/RESULTS.md, "Grow t")."""

    def __init__(self, max_t):
        self.max_t = max_t

    def next_t(self, t, model, batch):
        return 0 if t >= self.max_t or answers(model, batch) else min(4 * t, self.max_t)


class StopEarly(Extension):
    """--stop-early (any mode): end a fact's steps as soon as its answer is predicted wherever its
    batch spells it. Measured: forgets less, carries less to the unseen phrasing (docs/RESULTS.md,
    "Stop once the answer is predicted")."""

    def stop(self, model, batch):
        return answers(model, batch)


class Passes(Extension):
    """--passes P (any mode): the whole stream taught P times over, in the same order. Measured:
    full finetuning and LoRA learn a 50-fact stream taught 10 times over, and forget most of the
    background (docs/RESULTS.md, "The stream taught again and again")."""

    def __init__(self, passes):
        self.passes = passes

    def stream(self, facts):
        return list(facts) * self.passes


class CountAnswer(Extension):
    """--count-reads answer: count only the reads at the positions that predict the answer's tokens
    (with the memory in the last block, the reads that can carry the fact). Measured: learns less
    at the same t (docs/RESULTS.md, "Count only where the answer is predicted")."""

    def counted(self, batch):
        return batch.at


# ----------------------------------------------------------------------------------------
# other rankings

def kl_scores(c, background):
    """kl(i) = tf(i) * log(tf(i) / q(i)), the slot's term of KL(batch reads || background reads),
    q(i) = (reads(i) + 1) / (sum_j reads(j) + N), add-one smoothed over the N slots."""
    tf = c.double() / c.sum()
    reads = background["reads"].double()
    q = (reads + 1) / (reads.sum() + len(reads))
    return torch.special.xlogy(tf, tf / q)                         # 0 where tf = 0


class KLRanking(Extension):
    """--ranking kl: rank by each slot's term of the KL divergence of the batch's reads from the
    background's (proposed in later work, arXiv:2604.05248). Measured against TF-IDF over the
    same t's: docs/RESULTS.md, "Top-t and the ranking"."""

    def __init__(self, stats):
        self.stats = stats

    def scores(self, i, reads, count, c, idf):
        return kl_scores(c, self.stats[i])


class RankBySequence(Extension):
    """--rank-by sequence: score each row of the batch on its own reads (TF-IDF, or KL with kl),
    and give a slot the best score it gets in a row that reads it (a row that does not read it
    must not count as a 0: KL scores can be negative). Measured: docs/RESULTS.md, "Sequence-level
    ranking"."""

    def __init__(self, kl=None):
        self.kl = kl

    def scores(self, i, reads, count, c, idf):
        rows = []
        for b in range(reads.shape[0]):                            # reads: (B, T, H, k)
            if count[b].any():
                cb = slot_counts(reads[b][count[b]], len(idf))
                s = self.kl.scores(i, None, None, cb, idf) if self.kl else slot_scores(cb, idf)
                rows.append(s.masked_fill(cb == 0, -math.inf))
        return torch.stack(rows).max(dim=0).values


# ----------------------------------------------------------------------------------------
# rows that may not be trained

class MaxDF(Extension):
    """--max-df D: a slot read in more than a share D of the background units counts as unread,
    so no step trains it. Keeps grown rounds (t = 4,096: about every slot a batch reads) off the
    slots all text reads: at D = 0.99, val loss +1.1% -> +0.3% on the demo (docs/RESULTS.md,
    "Keep growing t off the slots all text reads")."""

    def __init__(self, share, stats):
        self.over = [st["df"] > share * st["units"] for st in stats]

    def blocked(self, i):
        return self.over[i]


class FreshRows(Extension):
    """--fresh-rows: never train a row an earlier fact of the stream trained. Measured: forgets
    less of the stream, runs out of rows on a long one (docs/RESULTS.md, "Fresh rows")."""

    def start(self, tables):
        self.taken = [torch.zeros(w.shape[0], dtype=torch.bool) for w, _ in tables]   # by earlier facts
        self.this_fact = [torch.zeros_like(tk) for tk in self.taken]

    def blocked(self, i):
        return self.taken[i]

    def trained(self, i, rows):
        self.this_fact[i][rows] = True

    def after_fact(self, model, batch):
        for taken, mine in zip(self.taken, self.this_fact):
            taken |= mine
            mine.zero_()


# ----------------------------------------------------------------------------------------
# the slots background answers are read from

def answer_units(enc, facts, per_batch=128):
    """One unit per question of each fact (facts.json entries): the question and its answer,
    counting only the reads at the positions that predict the answer's tokens; per_batch units
    in one forward (sparse.background_stats)."""
    items = qa_items(facts)
    for i in range(0, len(items), per_batch):
        x, y, _ = qa_batch(enc, items[i:i + per_batch])               # (U, L); y -1 where no answer token is
        yield x.unsqueeze(1), (y >= 0).unsqueeze(1)                   # (U, 1, L): a unit is one row


def answer_readers(model, enc, facts, device):
    """Per value table: {"df": for each slot, how many of the facts' questions read it where their
    answer is predicted, "units": how many questions}."""
    return background_stats(model, answer_units(enc, facts), device, quiet=True)


class SpareAnswerSlots(Extension):
    """--spare-answer-slots S: IDF 0 for every slot read where more than a share S of the
    background facts' answers are predicted (answer_readers): it ranks last, trained only when a
    batch reads fewer than t other slots. Measured: at S = 0.01, lr 50 and growing t, the demo's
    background drop 11.8% -> 3.4%, 0.855 -> 0.905 learned (docs/RESULTS.md, "Grow t", "Spare the
    slots background answers are read from")."""

    def __init__(self, share, readers):
        self.marked = [a["df"] > share * a["units"] for a in readers]

    def idf(self, i, idf):
        return idf.masked_fill(self.marked[i], 0.0)


class BlockAnswerSlots(Extension):
    """--block-answer-slots (with --spare-answer-slots S): never train the slots S marks, in any
    round, not only rank them last. Measured: forgets less over a long stream, leaves hand-written
    facts fewer rows (docs/RESULTS.md, "Never train the rows background answers are read from")."""

    def __init__(self, marked):
        self.marked = marked

    def blocked(self, i):
        return self.marked[i]


class SlowAnswerSlots(Extension):
    """--slow-answer-slots K: each chosen row's step divided by 1 + n / K, n the background
    questions that read the row where their answer is predicted (answer_readers). Measured: about
    half the forgetting at the same learning, and much less over 1,000 facts (docs/RESULTS.md,
    "Slow the rows background answers are read from")."""

    def __init__(self, k, readers):
        self.k, self.readers = k, [a["df"] for a in readers]

    def damping(self, i, rows):
        return self.readers[i][rows].float() / self.k


class SlowTaughtSlots(Extension):
    """--slow-taught-slots K: after each fact, every slot read where its answer is predicted, in
    its batch, counts one more taught fact m; later steps divide a row's step by 1 + m / K, so a
    later fact is stored mostly in other rows and overwrites fewer earlier ones. Measured: the
    demo 0.905 -> 0.925 learned, background drop 3.4% -> 2.8% (docs/RESULTS.md, "Slow the rows
    the stream's own answers are read from")."""

    def __init__(self, k):
        self.k = k

    def start(self, tables):
        self.tables, self.m = tables, [torch.zeros(w.shape[0]) for w, _ in tables]

    def damping(self, i, rows):
        return self.m[i][rows] / self.k

    @torch.no_grad()
    def after_fact(self, model, batch):
        model(batch.x)                                                 # records the reads
        for m, reads in zip(self.m, table_reads(model, self.tables)):
            m[reads[batch.at].unique().cpu()] += 1                    # reads[at]: (answer positions, heads, k)


class WarnWhenBlocked(Extension):
    """Counts the steps in which a table had no row left to train (every slot its batch read was
    blocked), and says so once at the end of the stream: limits, (option, its fix) of each
    extension that blocks rows."""

    def __init__(self, limits):
        self.limits = limits

    def start(self, tables):
        self.empty, self.steps = 0, 0

    def trained(self, i, rows):
        self.steps += 1
        self.empty += len(rows) == 0

    def finish(self):
        if self.empty:
            print(f"warning: {' and '.join(flag for flag, _ in self.limits)} left no trainable slot in {self.empty} "
                  f"of {self.steps} steps, which trained nothing; {' or '.join(fix for _, fix in self.limits)}",
                  file=sys.stderr)


# ----------------------------------------------------------------------------------------
# the recipe the options ask for

def needs_background(rcfg, ranking):
    """Does this recipe (or the ranking) read the background statistics of pretraining text?"""
    return ranking != "tf" or rcfg.max_df < 1


def needs_answers(rcfg, ranking):
    """Does it read which slots the background answers are read from (answer_readers)?"""
    return (ranking == "tfidf" and rcfg.spare_answer_slots < 1) or rcfg.slow_answer_slots > 0


def options(rcfg):
    """The options of rcfg beyond the paper, as a command line gives them (--grow-t 4096 ...)."""
    changed = [(f.name.replace("_", "-"), getattr(rcfg, f.name)) for f in fields(RecipeConfig)
               if getattr(rcfg, f.name) != f.default]
    return " ".join(f"--{n}" if v is True else f"--{n} {v:g}" if isinstance(v, (int, float)) else f"--{n} {v}"
                    for n, v in changed)


def recipe_name(rcfg):
    """paper or improved where rcfg is one of RECIPES, else the options beyond the paper it sets."""
    for name, settings in RECIPES.items():
        if rcfg == RecipeConfig(**settings):
            return name
    return options(rcfg)


def build(rcfg, mode, ranking, stats=None, readers=None):
    """The Recipe of the options: stats, the pretraining background's background_stats (where
    needs_background), readers, answer_readers (where needs_answers). Full finetuning and LoRA
    take only --stop-early and --passes: the rest choose memory rows. --spare-answer-slots and
    --block-answer-slots set an IDF, which the tf and kl rankings have not: they are off there."""
    ext = [Passes(rcfg.passes)] if rcfg.passes > 1 else []
    if mode == "sparse":
        answers_too = ranking == "tfidf" and rcfg.spare_answer_slots < 1
        kl = KLRanking(stats) if ranking == "kl" else None
        ext += [CountAnswer()] if rcfg.count_reads == "answer" else []
        if rcfg.rank_by == "sequence":
            ext.append(RankBySequence(kl))                     # each row of the batch scored alone, by kl too
        elif kl:
            ext.append(kl)
        if answers_too:
            spare = SpareAnswerSlots(rcfg.spare_answer_slots, readers)
            ext += [spare] + ([BlockAnswerSlots(spare.marked)] if rcfg.block_answer_slots else [])
        ext += [MaxDF(rcfg.max_df, stats)] if rcfg.max_df < 1 else []
        ext += [FreshRows()] if rcfg.fresh_rows else []
        ext += [SlowAnswerSlots(rcfg.slow_answer_slots, readers)] if rcfg.slow_answer_slots else []
        ext += [SlowTaughtSlots(rcfg.slow_taught_slots)] if rcfg.slow_taught_slots else []
        ext += [GrowT(rcfg.grow_t)] if rcfg.grow_t else []
        limits = [(on, flag, fix) for on, flag, fix in (
            (rcfg.max_df < 1, f"--max-df {rcfg.max_df:g}", "raise --max-df"),
            (answers_too and rcfg.block_answer_slots, "--block-answer-slots",
             "raise --spare-answer-slots or drop --block-answer-slots"),
            (rcfg.fresh_rows, "--fresh-rows", "stream fewer facts"))]
        limits = [(flag, fix) for on, flag, fix in limits if on]
        ext += [WarnWhenBlocked(limits)] if limits else []
    ext += [StopEarly()] if rcfg.stop_early else []
    taken = rcfg if mode == "sparse" else RecipeConfig(stop_early=rcfg.stop_early, passes=rcfg.passes)
    if ranking != "tfidf":
        taken = replace(taken, spare_answer_slots=1.0, block_answer_slots=False)
    return Recipe(ext, recipe_name(taken))                     # named by the options it took
