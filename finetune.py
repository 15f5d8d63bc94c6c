"""
Teach a pretrained memory model new facts in a stream, and measure what it learns and
what it forgets (sparse memory finetuning: Lin et al. 2025, arXiv:2510.15103).

    python finetune.py --mode sparse                 # the demo (pretrains first if out/ckpt.pt is missing)
    python finetune.py --mode sparse --preset classroom   # the same on a small model, about 1 minute (docs/COURSE.md)
    python finetune.py --mode full --optimizer adamw --lr 1e-4
    python finetune.py --mode lora --lora-rank 16
    python finetune.py --facts-file my_facts.jsonl   # teach your own facts
    python finetune.py --help                        # every option

It prints a table, a row per stream: the new facts, then (without --facts-file) --set-facts
facts of each generalisation set, new answers and new relations, each taught from the same
pretrained model (learned: the taught questions answered exactly; unseen: each fact's held-out
question; background facts: what the model knew before, and how much of it it lost, the drop;
skill: the story-ending probe; val loss), then a few taught questions with the model's greedy
answer before -> after (with --facts-file: each of your facts, up to 20, and its held-out
question), and a few background questions the stream broke. --quiet prints the table only.

The stream: one fact at a time, in a fixed order, never revisited. Each step's batch is
that fact's paraphrases (its statements and its question/answer lines), repeated for
--steps-per-fact steps. Modes:
  full    every parameter is trained
  lora    low-rank adapters on the attention, FFN and memory gate/output matrices
          (lora.py); merged into the weights before evaluation
  sparse  only memory value rows: per batch, the top-t slots by TF-IDF of their access
          counts against background document frequencies (choose_rows in sparse.py).
          Four defaults go beyond the paper (docs/RESULTS.md; --max-t 0 --answer-df 1
          --max-df 1 --taught-damp 0 is the paper's method): --max-t 4096 gives a fact whose answer the model
          still does not predict, wherever its batch spells it, its steps again with 4x the
          rows (t = 64, 256, 1,024, 4,096); --answer-df 0.01 ranks last the slots read where
          more than 1% of the background facts' answers are predicted, which forgets less;
          --max-df 0.99 never trains a slot read in more than 99% of the background units,
          which keeps the large rounds off the slots all text reads (val loss);
          --taught-damp 1 divides each chosen row's step by 1 + m, m the facts taught before
          in the stream whose answer is read from the row, so that later facts overwrite
          fewer of the earlier ones;
          --answer-mask never trains the slots --answer-df ranks last, in any round, which
          forgets less over a long stream and carries less to the unseen phrasing;
          --answer-damp K divides each chosen row's step by 1 + n / K, n the background
          questions that read it where their answer is predicted, which forgets much less
          (with a larger --lr: 8 and 100, or 1 and 300).
          Other choices: --ranking tf (no IDF) and kl (the slot's term of the KL divergence
          from the background's reads), --rank-by sequence (each row scored on its own),
          --count answer (only the reads where the answer is predicted); --max-df 0.2 never
          trains a slot read in more than 20% of the background units, --fresh-rows never a
          row an earlier fact of the stream trained (both beyond the paper).
  Any mode: --stop-early ends a fact's steps as soon as its answer is predicted wherever
  its batch spells it, which forgets less and carries less to the unseen phrasing (beyond the paper)

Facts file (--facts-file): JSON Lines, one fact per line, UTF-8:
  {"paraphrases": ["Mira lives in Oakton.", "Mira has a house in Oakton."],
   "question": "Where does Mira live?", "answer": "Oakton.",
   "heldout_question": "What town is Mira from?"}
"heldout_question" is optional: it is never trained on and scores unseen_acc.
Each batch holds the paraphrases plus the line "Q: <question> A: <answer>". Scoring is greedy
exact match of " <answer>" after "Q: <question> A:".
"""

import copy
import math
import os
import sys
import time
from dataclasses import dataclass, replace

import torch
from tqdm import tqdm

from common import (Diverged, check_range, check_writable, config_parser, keep_freed_memory, parse_args, pick_device,
                    split, write_json)
from evaluate import corpus_facts, greedy_answer, measure, qa_batch, qa_items, qa_pair, story_endings
from facts import batch_texts, check_lengths, make_batch, stream_facts, warn_unseen_tokens
from lora import add_lora, merge_lora
from model import CLASSROOM_MODEL, LARGE_MODEL, GPTConfig, checkpoint_corpus, checkpoint_train_tokens, load_checkpoint, save_checkpoint
from sparse import RowOptimizer, background_stats, choose_rows, load_or_compute_background, memory_tables, table_reads
from train import CLASSROOM_TRAIN, LARGE_TRAIN, TrainConfig, train

DEFAULT_CHECKPOINT = os.path.join(TrainConfig.out_dir, "ckpt.pt")
# Learning rates from python experiments.py pareto and optimizer (docs/RESULTS.md), on a stream
# of 50 facts: sparse (the paper's fixed t = 64), the largest swept rate that costs at most 5% of
# the background facts (the paper's target); with the default's growing t the same rate is the
# smallest swept one that learns 0.90 of the demo's 100 facts (experiments.py max-t --facts 100
# --answer-df 0.01: lr 20 0.895 at a 2.9% drop, lr 50 0.905 at 3.4%, lr 100 0.925 at 4.3%; lr 100
# forgets twice as much of the hand-written short facts, docs/RESULTS.md "Grow t").
# Full and LoRA, which learn almost nothing at any rate that spares the background: the largest
# that costs at most a quarter of it. Other pairs were not swept, so they have no default and
# need --lr.
DEFAULT_LR = {("sparse", "sgd"): 50.0, ("sparse", "adamw"): 0.03,
              ("full", "adamw"): 1e-5, ("lora", "adamw"): 3e-5}


# The classroom preset (python finetune.py --preset classroom; docs/COURSE.md): the demo on the
# classroom model (train.py's CLASSROOM_TRAIN, pretrained first if missing), 30 new facts and 15
# of each generalisation set, with learning rates of its own (CLASSROOM_LR: sparse from the
# sweep of docs/COURSE.md, exercise 1; full and LoRA 1e-4, where full finetuning starts to learn
# at all). Every field is named, so a later change of the defaults does not move it.
CLASSROOM_FINETUNE = dict(checkpoint=os.path.join(CLASSROOM_TRAIN["out_dir"], "ckpt.pt"), mode="sparse", optimizer="",
                          lr=0.0, facts=30, facts_file="", steps_per_fact=10, passes=1, top_t=64, max_t=0, ranking="tfidf",
                          rank_by="batch", max_df=1.0, count="all", fresh_rows=False, stop_early=False, answer_df=1.0, answer_mask=False,
                          answer_damp=0.0, taught_damp=0.0, background_batches=200,
                          background_batch_size=1, lora_rank=16, lora_alpha=32.0, weight_decay=0.0, seed=1337,
                          device="auto", json="", out="", quiet=False, set_facts=15)
CLASSROOM_LR = {("sparse", "sgd"): 100.0, ("full", "adamw"): 1e-4, ("lora", "adamw"): 1e-4}

# The large preset (python finetune.py --preset large): the default demo on the large model
# (train.py's LARGE_TRAIN: 262,144 memory slots, pretrained first if missing); every other
# setting is the default's.
LARGE_FINETUNE = dict(checkpoint=os.path.join(LARGE_TRAIN["out_dir"], "ckpt.pt"))


@dataclass
class FinetuneConfig:
    checkpoint: str = DEFAULT_CHECKPOINT   # pretrained model; the default one is trained first if missing
    mode: str = "sparse"                   # full | lora | sparse
    optimizer: str = ""                    # sgd | adamw; empty = sgd for sparse (paper), adamw otherwise
    lr: float = 0.0                        # 0 = the sweep's choice for this mode and optimizer (DEFAULT_LR; --preset classroom: CLASSROOM_LR)
    facts: int = 100                       # new facts from the corpus's facts.json to stream (up to 1000)
    facts_file: str = ""                   # JSON Lines file of your own facts instead (format above)
    steps_per_fact: int = 10               # optimizer steps on each fact's batch (paper: 1, at 1.3B params)
    passes: int = 1                        # times the whole stream is taught, in the same order (paper: 1; beyond it)
    top_t: int = 64                        # sparse: value rows trained per step in each memory table (paper: 500)
    max_t: int = 4096                      # sparse: a fact whose answer is still missed after its steps gets them again with 4x t, up to this (0 = a fixed t, the paper; beyond it)
    ranking: str = "tfidf"                 # sparse: tfidf | tf (raw access counts, the paper's ablation) | kl (docs/METHOD.md)
    rank_by: str = "batch"                 # sparse: batch (the paper) | sequence (score each row, keep a slot's best)
    max_df: float = 0.99                   # sparse: train no slot read in more than this share of background units (1 = off, the paper; beyond it)
    count: str = "all"                     # sparse: reads counted: all (every text token, the paper) | answer (where the answer is predicted)
    fresh_rows: bool = False               # sparse: never train a row that an earlier fact trained (beyond the paper)
    stop_early: bool = False               # end a fact's steps as soon as its answer is predicted wherever its batch spells it (beyond the paper)
    answer_df: float = 0.01                # sparse, tfidf: IDF 0 for slots read where more than this share of the background answers are predicted (1 = off, the paper; beyond it)
    answer_mask: bool = False              # sparse, tfidf: never train those slots, not only rank them last (beyond the paper)
    answer_damp: float = 0.0               # sparse: each chosen row's step divided by 1 + n / this, n the background questions that read it where their answer is predicted (0 = off, the paper; beyond it)
    taught_damp: float = 1.0               # sparse: each chosen row's step divided by 1 + m / this, m the facts taught before in the stream whose answer is read from the row (0 = off, the paper; beyond it)
    background_batches: int = 1000         # sparse: background units for document frequencies (paper: 1000)
    background_batch_size: int = 1         # sparse: windows of block_size tokens per background unit (docs/DESIGN.md)
    lora_rank: int = 16                    # lora: rank r of each adapter
    lora_alpha: float = 32.0               # lora: the adapter's output is scaled by alpha / r
    weight_decay: float = 0.0              # AdamW decoupled decay of the trained weights (sparse: selected rows only)
    seed: int = 1337                       # background sampling and LoRA init
    device: str = "auto"                   # auto | cpu | cuda | mps
    json: str = ""                         # write the results to this JSON file
    out: str = ""                          # save the finetuned model here (a checkpoint evaluate.py reads)
    quiet: bool = False                    # print the table only: no progress bars, no example answers
    set_facts: int = 50                    # facts of each generalisation set (new answers, new relations) also taught, each from the base model; 0 = none


# ----------------------------------------------------------------------------------------
# the stream

def resolve(cfg, model, lrs=DEFAULT_LR):
    """Check the options against the model; fill in the defaults that depend on the mode (the
    learning rate from lrs: DEFAULT_LR, or a preset's)."""
    if cfg.mode not in ("full", "lora", "sparse"):
        raise ValueError(f"unknown --mode {cfg.mode!r}: use full, lora or sparse")
    cfg.optimizer = cfg.optimizer or ("sgd" if cfg.mode == "sparse" else "adamw")
    if cfg.optimizer not in ("sgd", "adamw"):
        raise ValueError(f"unknown --optimizer {cfg.optimizer!r}: use sgd or adamw")
    if not cfg.lr and (cfg.mode, cfg.optimizer) not in lrs:
        raise ValueError(f"no measured default learning rate for {cfg.mode} with {cfg.optimizer}; pass --lr")
    cfg.lr = cfg.lr or lrs[(cfg.mode, cfg.optimizer)]
    check_range(cfg, positive=("lr",), not_negative=("weight_decay",))
    if cfg.steps_per_fact < 1 or cfg.facts < 1 or cfg.passes < 1 or cfg.set_facts < 0:
        raise ValueError("--steps-per-fact, --facts and --passes must be at least 1, --set-facts at least 0")
    if cfg.fresh_rows and cfg.passes > 1:
        raise ValueError("--fresh-rows keeps a fact off the rows it trained in an earlier pass: use it with --passes 1")
    if cfg.mode == "sparse":
        if not model.memory_modules:
            raise ValueError("--mode sparse needs a model with memory layers; this one is dense")
        if cfg.top_t < 1:                              # more than the batch read trains every slot it read
            raise ValueError(f"--top-t must be at least 1, not {cfg.top_t}")
        if cfg.max_t < 0 or 0 < cfg.max_t < cfg.top_t:
            raise ValueError(f"--max-t {cfg.max_t} is below --top-t {cfg.top_t}: give a larger one, or 0 for a fixed t")
        if cfg.ranking not in ("tfidf", "tf", "kl"):
            raise ValueError(f"unknown --ranking {cfg.ranking!r}: use tfidf, tf or kl")
        if cfg.rank_by not in ("batch", "sequence"):
            raise ValueError(f"unknown --rank-by {cfg.rank_by!r}: use batch or sequence")
        if cfg.count not in ("all", "answer"):
            raise ValueError(f"unknown --count {cfg.count!r}: use all or answer")
        if not 0 < cfg.max_df <= 1:
            raise ValueError(f"--max-df is a share of the background units: between 0 (exclusive) and 1, not {cfg.max_df}")
        if not 0 < cfg.answer_df <= 1:
            raise ValueError(f"--answer-df is a share of the background answers: between 0 (exclusive) and 1, not {cfg.answer_df}")
        if cfg.answer_mask and cfg.answer_df == 1:
            raise ValueError("--answer-mask never trains the slots --answer-df counts: give --answer-df below 1 (finetune.py's default is 0.01)")
        if cfg.ranking != "tfidf":
            cfg.answer_df, cfg.answer_mask = 1.0, False    # it sets an IDF: the tf and kl rankings have none
        if cfg.answer_damp < 0 or cfg.taught_damp < 0:
            raise ValueError(f"--answer-damp and --taught-damp must be 0 (off) or positive, not {cfg.answer_damp} "
                             f"and {cfg.taught_damp}")
        if cfg.background_batches < 1 or cfg.background_batch_size < 1:
            raise ValueError("--background-batches and --background-batch-size must be at least 1")
    if cfg.mode == "lora":
        if cfg.lora_rank < 1:
            raise ValueError("--lora-rank must be at least 1")
        check_range(cfg, positive=("lora_alpha",))
    return cfg


def check_outputs(cfg):
    """Before any work: every output can be written at the end, and none would overwrite an input."""
    inputs = {os.path.realpath(p) for p in (cfg.checkpoint, cfg.facts_file) if p}
    outputs = [(flag, path) for flag, path in (("--out", cfg.out), ("--json", cfg.json)) if path]
    for flag, path in outputs:
        if os.path.realpath(path) in inputs:
            raise ValueError(f"{flag} {path} is an input of this run; write to another file")
        check_writable(path, flag)
    if len(outputs) == 2 and os.path.realpath(cfg.out) == os.path.realpath(cfg.json):
        raise ValueError("--out and --json name the same file; give each its own")


def trainable(cfg, model):
    """What cfg.mode trains: (opt, params, tables, row_opts). full and lora: a torch optimizer
    over params (every weight, or the adapters lora wraps into the model) and no tables.
    sparse: no optimizer; the value tables and a RowOptimizer for each. Only the trained
    weights require gradients."""
    for p in model.parameters():
        p.requires_grad_(cfg.mode == "full")
    if cfg.mode == "sparse":
        tables = memory_tables(model)
        for w, _ in tables:
            w.requires_grad_(True)
        return None, [], tables, [RowOptimizer(w, cfg.optimizer, cfg.lr, cfg.weight_decay) for w, _ in tables]
    if cfg.mode == "lora":
        torch.manual_seed(cfg.seed)
        params = add_lora(model, cfg.lora_rank, cfg.lora_alpha)
    else:
        params = list(model.parameters())
    opt = (torch.optim.SGD(params, lr=cfg.lr) if cfg.optimizer == "sgd"
           else torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay))
    return opt, params, [], []


def state_bytes(opt, row_opts):
    """The bytes of optimizer state kept: the RowOptimizers', or the torch optimizer's tensors."""
    if opt is None:
        return sum(ro.state_bytes() for ro in row_opts)
    return sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))


def run_stream(cfg, model, enc, facts, background=None, quiet=False, on_fact=None):
    """Finetune model in place on the stream of facts (in sparse mode with tfidf or kl ranking,
    or with max_df < 1, background holds each value table's background_stats); with --passes P the
    stream is taught P times over, in the same order. on_fact(n), if given, is called after the
    n-th fact's last step, n counting on through the passes (analyses.py measures learning curves with it).
    Returns (the bytes of optimizer state kept, each fact's t in its last round: None but in sparse mode)."""
    if cfg.mode == "sparse" and cfg.max_df < 1 and background is None:
        raise ValueError("--max-df needs the background statistics")
    if cfg.mode == "sparse" and cfg.answer_mask and not (background and all("answer_rows" in bg for bg in background)):
        raise ValueError("--answer-mask needs the slots background answers are read from: rank against --answer-df's statistics")
    if cfg.mode == "sparse" and cfg.answer_damp and not (background and all("answer_readers" in bg for bg in background)):
        raise ValueError("--answer-damp needs how many background answers read each slot: rank against --answer-df's statistics")
    device = next(model.parameters()).device
    model.eval()                           # no dropout; BatchNorm keeps its pretrained statistics
    sparse_grad = [m.values.sparse for m in model.memory_modules]
    for m in model.memory_modules:         # dense value gradients, whatever pretraining used:
        m.values.sparse = False            # row selection and torch's optimizers need them
    opt, params, tables, row_opts = trainable(cfg, model)
    backgrounds = background or [None] * len(tables)
    taught = list(facts) * cfg.passes      # --passes: the whole stream again, in the same order
    bar = tqdm(total=len(taught) * cfg.steps_per_fact, desc=f"{cfg.mode} stream", disable=quiet)
    steps, starved = 0, 0                  # steps run; steps of a value table in which --max-df, --answer-mask or --fresh-rows left no slot to train
    taken = [torch.zeros(w.shape[0], dtype=torch.bool) for w, _ in tables] if cfg.fresh_rows else None
    taught_readers = [torch.zeros(w.shape[0]) for w, _ in tables] if cfg.taught_damp else None   # --taught-damp: m per row
    grow = cfg.mode == "sparse" and cfg.max_t > 0     # --max-t: rounds with 4x the rows until the answer is predicted
    t_per_fact = []                        # sparse: the t of each fact's last round
    try:
        with model.recording_slots():
            for n, fact in enumerate(taught, 1):
                x, y, count, at = fact_batch(cfg, enc, fact, model.config.block_size, device)
                trained = [torch.zeros_like(tk) for tk in taken] if taken else None     # --fresh-rows: this fact's rows
                t, step = cfg.top_t, 0
                while True:                                                # one round: steps_per_fact steps with t rows
                    learned = False                                        # --stop-early: answered after a step of this round
                    for i in range(cfg.steps_per_fact):
                        step += 1
                        _, loss = model(x, y)                              # 1. forward (records the slots read)
                        if not torch.isfinite(loss):
                            raise stream_diverged(f"the loss became {loss.item()}", n, step, cfg)
                        loss.backward()                                    # 2. backward
                        if opt is not None:                                # full and lora: a plain optimizer step
                            opt.step()
                            opt.zero_grad(set_to_none=True)
                            updated = params
                        else:                                              # sparse: 3. choose rows, 4. update them
                            updated, none = update_rows(cfg, model, tables, row_opts, backgrounds, count, t, taken, trained,
                                                        taught_readers)
                            starved += none
                        if not all(torch.isfinite(u).all() for u in updated):  # 5. only what this step changed: cheap
                            raise stream_diverged("the weights became inf or nan", n, step, cfg)
                        steps += 1
                        bar.update(1)
                        bar.set_postfix(loss=f"{loss.item():.3f}")
                        if cfg.stop_early and answers(model, x, y, at):    # --stop-early: learned, no more steps
                            learned = True
                            bar.total -= cfg.steps_per_fact - i - 1
                            break
                    if learned or not grow or t >= cfg.max_t or answers(model, x, y, at):
                        break
                    t = min(4 * t, cfg.max_t)                              # --max-t: answer still missed, 4x the rows
                    bar.total += cfg.steps_per_fact
                t_per_fact.append(t if tables else None)
                for tk, tr in zip(taken or [], trained or []):
                    tk |= tr
                if taught_readers:                                         # --taught-damp: the rows this fact's answer is read from
                    with torch.no_grad():
                        model(x)
                    for m, reads in zip(taught_readers, table_reads(model, tables)):
                        m[reads[at].unique().cpu()] += 1                  # reads[at]: (answer positions, heads, k)
                if on_fact is not None:
                    on_fact(n)
    finally:
        bar.close()
        for m, was in zip(model.memory_modules, sparse_grad):
            m.values.sparse = was
        for p in model.parameters():
            p.requires_grad_(False)
    if starved:
        limits = [(flag, fix) for on, flag, fix in ((cfg.max_df < 1, f"--max-df {cfg.max_df:g}", "raise --max-df"),
                                                    (cfg.answer_mask, "--answer-mask", "raise --answer-df or drop --answer-mask"),
                                                    (cfg.fresh_rows, "--fresh-rows", "stream fewer facts")) if on]
        print(f"warning: {' and '.join(flag for flag, _ in limits)} left no trainable slot in {starved} of "
              f"{steps * len(tables)} steps, which trained nothing; {' or '.join(fix for _, fix in limits)}", file=sys.stderr)
    if cfg.mode == "lora":
        merge_lora(model)
    return state_bytes(opt, row_opts), t_per_fact


def fact_batch(cfg, enc, fact, block_size, device):
    """A fact's batch (make_batch) as the stream trains on it: x, y, count (the tokens whose reads
    are counted: every text token, or with --count answer only those that predict the answer),
    and at (the positions that predict the answer, where --max-t checks that it is predicted)."""
    texts = batch_texts(fact)
    x, y, at = (b.to(device) for b in make_batch(enc, texts, block_size, fact["answer"]))
    count = at if cfg.count == "answer" else make_batch(enc, texts, block_size)[2].to(device)
    return x, y, count, at


def update_rows(cfg, model, tables, row_opts, backgrounds, count, t, taken=None, trained=None, taught_readers=None):
    """Sparse mode's update, after the backward: in each value table, choose t rows among the
    slots this step read (sparse.choose_rows; none of `taken` with --fresh-rows, and those
    chosen are marked in `trained`; none of the background answers' rows with --answer-mask)
    and move those rows only, each by its step divided by 1 + n / --answer-damp + m /
    --taught-damp, each term only with its option on (n: the background questions that read the
    row where their answer is predicted; m, taught_readers: the facts taught before in the
    stream whose answer is read from the row). Returns (the chosen rows' new values, the number
    of tables left with no row to train)."""
    updated, starved = [], 0
    for i, ((w, _), reads, bg, ro) in enumerate(zip(tables, table_reads(model, tables), backgrounds, row_opts)):
        blocked = taken[i] if taken else None
        if cfg.answer_mask:
            blocked = bg["answer_rows"] if blocked is None else blocked | bg["answer_rows"]
        rows = choose_rows(reads, count, w.shape[0], t, cfg.ranking, cfg.rank_by, cfg.max_df, bg, blocked)
        if taken:
            trained[i][rows] = True
        damp = torch.ones(len(rows))                                                  # (t,)
        if cfg.answer_damp:
            damp += bg["answer_readers"][rows].float() / cfg.answer_damp
        if taught_readers:
            damp += taught_readers[i][rows] / cfg.taught_damp
        scale = 1 / damp if cfg.answer_damp or taught_readers else None
        rows = rows.to(w.device)
        ro.step(rows, scale)
        w.grad = None
        starved += len(rows) == 0
        updated.append(w[rows])
    return updated, starved


@torch.no_grad()
def answers(model, x, y, at):
    """Does the model predict the fact's answer wherever its batch spells it? x, y: the fact's
    batch (make_batch); at: (B, L) True at the positions that predict the answer's tokens, in
    every line that holds " <answer>": the statements and the trained questions (--max-t grows
    t until each is predicted, greedily; the unseen question is not in the batch)."""
    logits, _ = model(x)                                                             # (B, L, vocab)
    return bool((logits.argmax(-1) == y)[at].all())


def stream_diverged(what, fact, step, cfg):
    """The error a diverging stream ends with (train.pretraining_diverged: pretraining's)."""
    return Diverged(f"{what} at fact {fact}, step {step}: the stream diverged; lower --lr ({cfg.lr:g})")


def answer_units(enc, facts, per_batch=128):
    """One unit per question of each fact (facts.json entries): the question and its answer,
    counting only the reads at the positions that predict the answer's tokens; per_batch units
    in one forward (sparse.background_stats)."""
    items = qa_items(facts)
    for i in range(0, len(items), per_batch):
        x, y, _ = qa_batch(enc, items[i:i + per_batch])               # (U, L): -1 in y where no answer token is predicted
        yield x.unsqueeze(1), (y >= 0).unsqueeze(1)                   # (U, 1, L): a unit is one row


def keep_clear_of_answers(stats, model, enc, facts, share, device):
    """--answer-df: the background statistics with "answer_rows", True on every slot read where
    the answers of more than `share` of the facts' questions are predicted. Such a slot gets IDF
    0 (sparse.slot_scores): it ranks last and is trained only when a batch reads fewer than t
    other slots, or never with --answer-mask (beyond the paper: docs/RESULTS.md, answer-df).
    And "answer_readers": for each slot, how many of those questions read it there (--answer-damp)."""
    answers = background_stats(model, answer_units(enc, facts), device, quiet=True)
    return [{**st, "answer_rows": a["df"] > share * a["units"], "answer_readers": a["df"]} for st, a in zip(stats, answers)]


def ranking_stats(cfg, model, enc, ckpt, device):
    """The background statistics a sparse stream ranks against (None where it needs none): the
    pretraining windows' (load_or_compute_background), with --answer-df's cap (and the counts
    --answer-damp divides by) counted on the background facts of the checkpoint's corpus."""
    if cfg.mode != "sparse" or (cfg.ranking == "tf" and cfg.max_df == 1 and not cfg.answer_damp):
        return None
    stats = load_or_compute_background(cfg, model, ckpt, device)
    if cfg.answer_df < 1 or cfg.answer_damp:
        stats = keep_clear_of_answers(stats, model, enc, checkpoint_corpus(ckpt)[1]["background"], cfg.answer_df, device)
    return stats


def finetune(cfg, model, enc, ckpt, facts, before=None, quiet=False, stats=None, stream="new facts"):
    """Measure, stream, measure again. Returns (results with the --json keys, the measurements
    before, the measurements after). Pass the measurements before back as `before` to reuse
    them for another run from the same model (the results take only what does not depend on
    the facts from them: background facts, skill, val loss). stats: background statistics to
    rank against instead of ranking_stats's. stream: the name the results give the facts."""
    device = next(model.parameters()).device
    val, kb = checkpoint_corpus(ckpt)
    background, skill = kb["background"], story_endings(val, enc)
    before = before or measure(model, enc, facts, background, val, device, skill)
    stats = stats or ranking_stats(cfg, model, enc, ckpt, device)
    t0 = time.time()
    _, t_per_fact = run_stream(cfg, model, enc, facts, stats, quiet)
    seconds = time.time() - t0
    after = measure(model, enc, facts, background, val, device, skill)
    if not math.isfinite(after["val_loss"]):
        raise stream_diverged(f"val loss is {after['val_loss']} after the last step", len(facts),
                              cfg.steps_per_fact, cfg)
    sparse = cfg.mode == "sparse"
    return {"stream": stream, "mode": cfg.mode, "optimizer": cfg.optimizer, "lr": cfg.lr,
            "top_t": cfg.top_t if sparse else None, "ranking": cfg.ranking if sparse else None,
            "max_t": cfg.max_t if sparse else None,
            "t_used": {str(t): t_per_fact.count(t) for t in sorted(set(t_per_fact))} if sparse else None,
            "facts": len(facts), "steps_per_fact": cfg.steps_per_fact, "passes": cfg.passes, "stop_early": cfg.stop_early,
            "learned_acc": after["learned_acc"], "unseen_acc": after["unseen_acc"],
            "background_acc_before": before["background_acc"], "background_acc_after": after["background_acc"],
            "background_drop": (before["background_acc"] - after["background_acc"]) / before["background_acc"] if before["background_acc"] else 0.0,
            "skill_acc_before": before["skill_acc"], "skill_acc_after": after["skill_acc"],
            "skill_drop": (before["skill_acc"] - after["skill_acc"]) / before["skill_acc"],
            "val_loss_before": before["val_loss"], "val_loss_after": after["val_loss"],
            "seconds": seconds}, before, after


def format_table(results):
    """One row per stream. learned: its taught questions answered exactly; unseen: each fact's
    unseen phrasing; background facts and skill: accuracy before -> after and its drop,
    (before - after) / before, so a positive drop is forgetting; val loss: after / before - 1."""
    def change(r, key):
        return f"{r[key + '_before']:.3f} -> {r[key + '_after']:.3f} ({r[key.replace('_acc', '_drop')]:.1%} drop)"
    w = max([14] + [len(r["stream"]) for r in results])               # a facts file's name may be longer
    lines = [f"{'stream':<{w}} {'facts':>5} {'learned':>7} {'unseen':>6}   {'background facts':<27} "
             f"{'skill (story endings)':<27} val loss"]
    for r in results:
        unseen = "-" if r["unseen_acc"] is None else f"{r['unseen_acc']:.3f}"
        lines.append(f"{r['stream']:<{w}} {r['facts']:>5} {r['learned_acc']:>7.3f} {unseen:>6}   "
                     f"{change(r, 'background_acc'):<27} {change(r, 'skill_acc'):<27} "
                     f"{r['val_loss_before']:.4f} -> {r['val_loss_after']:.4f} ({r['val_loss_after'] / r['val_loss_before'] - 1:+.1%})")
    return "\n".join(lines)


def show_examples(base, model, enc, facts, background, before, after, device, n=3, taught=3, unseen=False):
    """What learned and forgotten mean, in answers: the greedy answers of the model before the
    stream (base) and after it (model) to the first `taught` facts' questions (with unseen, each
    one's held-out question too), and to n background questions the stream broke (answered right
    before, wrong after)."""
    def show(prompt, answer, note=""):
        print(f"  {prompt}{answer}{note}   before: \"{greedy_answer(base, enc, prompt, device)}\" -> "
              f"after: \"{greedy_answer(model, enc, prompt, device)}\"")
    print(f"\ntaught questions, with the right answer, and the model's answer before -> after:")
    for f in facts[:taught]:
        show(*qa_pair(f["questions"][0], f["answer"]))
        if unseen and f["heldout_question"]:
            show(*qa_pair(f["heldout_question"], f["answer"]), "  (held out)")
    broken = [item for item, b, a in zip(qa_items(background), before["background_correct"],
                                         after["background_correct"]) if b and not a]
    print(f"\nbackground questions the stream broke: {len(broken)} of the {sum(before['background_correct'])} "
          f"answered right before" + (f"; the first {min(n, len(broken))}:" if broken else ""))
    for prompt, answer in broken[:n]:
        show(prompt, answer)


def load_base(cfg, device):
    """The pretrained model: cfg.checkpoint, or, if it is missing and is the default's or a
    preset's checkpoint, that model trained now."""
    recipes = {os.path.abspath(DEFAULT_CHECKPOINT): ("the default model (python train.py, ~7 min on 2 CPU cores)",
                                                     TrainConfig(), GPTConfig()),
               os.path.abspath(CLASSROOM_FINETUNE["checkpoint"]): ("the classroom model (python train.py --preset "
                                                                   "classroom, ~1 min on 2 CPU cores)",
                                                                   TrainConfig(**CLASSROOM_TRAIN), GPTConfig(**CLASSROOM_MODEL)),
               os.path.abspath(LARGE_FINETUNE["checkpoint"]): ("the large model (python train.py --preset large, "
                                                               "~10 min on 2 CPU cores)",
                                                               TrainConfig(**LARGE_TRAIN), GPTConfig(**LARGE_MODEL))}
    if not os.path.exists(cfg.checkpoint) and os.path.abspath(cfg.checkpoint) in recipes:
        name, tcfg, mcfg = recipes[os.path.abspath(cfg.checkpoint)]
        if not cfg.quiet:
            print(f"no checkpoint at {cfg.checkpoint}: pretraining {name} first")
        train(replace(tcfg, device=cfg.device), mcfg, quiet=cfg.quiet)
    model, enc, ckpt = load_checkpoint(cfg.checkpoint, device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, enc, ckpt


def write_outputs(cfg, ckpt, model, facts, results):
    """Write --out (the model) and --json (the first stream's results, the generalisation sets
    nested under their names, and under "settings" every option of the run, to rerun it), each on
    its own: one failing write never loses the other. Returns what could not be written, or None."""
    result = {**results[0], **{r["stream"].replace(" ", "_"): r for r in results[1:]}, "settings": vars(cfg)}
    writes = [("--out", cfg.out, lambda: save_checkpoint(cfg.out, {**ckpt, "model": model.state_dict(), "optimizers": [],
                                                                    "finetune": {**vars(cfg), "facts_taught": facts}})),
              ("--json", cfg.json, lambda: write_json(cfg.json, result))]
    written, failed = [], []
    for flag, path, write in writes:
        if path:
            try:
                write()
                written.append(f"{flag} {path}")
            except (OSError, ValueError) as e:
                failed.append(f"{flag} {path} ({getattr(e, 'strerror', None) or e})")
    if failed:
        return f"could not write {' or '.join(failed)}" + "".join(f"; {w} was written" for w in written)
    return None


def main(argv=None):
    presets = {"classroom": CLASSROOM_FINETUNE, "large": LARGE_FINETUNE}
    args = parse_args(config_parser(__doc__, FinetuneConfig, presets=presets), argv, presets)
    cfg = split(args, FinetuneConfig)
    keep_freed_memory()
    try:
        check_outputs(cfg)                                          # before any work, pretraining included
        device = pick_device(cfg.device)
        model, enc, ckpt = load_base(cfg, device)
        resolve(cfg, model, CLASSROOM_LR if args.preset == "classroom" else DEFAULT_LR)
        if cfg.optimizer == "sgd" and cfg.weight_decay:
            print("note: --weight-decay is AdamW's; SGD ignores it", file=sys.stderr)
        facts = stream_facts(ckpt, cfg.facts, cfg.facts_file)
        check_lengths(enc, facts, model.config.block_size)
        warn_unseen_tokens(enc, facts, checkpoint_train_tokens(ckpt))
        damping = ([f"(background answers read from it) / {cfg.answer_damp:g}"] if cfg.answer_damp else []) + \
                  ([f"(facts taught before whose answer is read from it) / {cfg.taught_damp:g}"] if cfg.taught_damp else [])
        if not cfg.quiet:
            print(f"{cfg.mode} finetuning with {cfg.optimizer} at lr {cfg.lr:g} on {len(facts)} facts, "
                  + ("at most " if cfg.stop_early else "") + f"{cfg.steps_per_fact} step(s) each"
                  + (" (ending once its answer is predicted)" if cfg.stop_early else "")
                  + (f", the whole stream {cfg.passes} times" if cfg.passes > 1 else "")
                  + (f", top-{cfg.top_t} slots by {cfg.ranking}" if cfg.mode == "sparse" else "")
                  + (f" (4x more, up to {cfg.max_t}, while the model misses a fact's answer)" if cfg.mode == "sparse" and cfg.max_t else "")
                  + (f", none read in more than {cfg.max_df:.0%} of the background units" if cfg.mode == "sparse" and cfg.max_df < 1 else "")
                  + (f", the slots read where more than {cfg.answer_df:.0%} of the background answers are predicted "
                     + ("never trained" if cfg.answer_mask else "ranked last") if cfg.mode == "sparse" and cfg.answer_df < 1 else "")
                  + (f", each row's step divided by 1 + {' + '.join(damping)}" if cfg.mode == "sparse" and damping else ""))
        base = copy.deepcopy(model)                                 # the model before: every stream starts from it
        name = os.path.basename(cfg.facts_file) if cfg.facts_file else "new facts"
        stats = ranking_stats(cfg, model, enc, ckpt, device)        # once: every stream starts from the same model
        result, before, after = finetune(cfg, model, enc, ckpt, facts, quiet=cfg.quiet, stats=stats, stream=name)
        results, taught = [result], copy.deepcopy(model.state_dict())   # the model --out saves
        for key in ("new_answers", "new_relations") if cfg.set_facts and not cfg.facts_file else ():
            model.load_state_dict(base.state_dict())                # each generalisation set on its own
            extra = corpus_facts(checkpoint_corpus(ckpt)[1][key][:cfg.set_facts])
            results.append(finetune(cfg, model, enc, ckpt, extra, before, cfg.quiet, stats, stream=key.replace("_", " "))[0])
        model.load_state_dict(taught)
    except (ValueError, OSError, RuntimeError) as e:
        sys.exit(f"error: {e}")
    failed = write_outputs(cfg, ckpt, model, facts, results)      # first: printing cannot lose them
    print(format_table(results))
    if not cfg.quiet:
        print(f"stream took {result['seconds']:.1f}s")
        show_examples(base, model, enc, facts, checkpoint_corpus(ckpt)[1]["background"], before, after, device,
                      taught=20 if cfg.facts_file else 3, unseen=bool(cfg.facts_file))   # your facts: up to 20, each phrasing
    if failed:
        sys.exit(f"error: {failed}")


if __name__ == "__main__":
    main()
