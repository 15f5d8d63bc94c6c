"""
Teach a pretrained memory model new facts in a stream, and measure what it learns and what it
forgets (sparse memory finetuning: Lin et al. 2025, arXiv:2510.15103).

    python finetune.py --mode sparse                      # the paper's method (pretrains out/ckpt.pt first)
    python finetune.py --recipe improved                  # + the steps beyond the paper that meet the demo's targets
    python finetune.py --preset classroom                 # the paper's method on a small model, ~4 min the first time (docs/COURSE.md)
    python finetune.py --mode full                        # the baselines: full finetuning, --mode lora
    python finetune.py --facts-file my_facts.jsonl        # teach your own facts
    python finetune.py --preset documents                 # the paper's second task: documents, chunk by chunk
    python finetune.py --preset documents --text data/examples/my_text.txt --questions data/examples/my_questions.jsonl
    python finetune.py --help                             # every option

It prints a table, a row per stream: the new facts, then (without --facts-file) --set-facts
facts of each generalisation set, new answers and new relations, each taught from the same
pretrained model (learned: the taught questions answered exactly; unseen: each fact's held-out
question; background facts: what the model knew before, and how much of it it lost, the drop;
skill: the story-ending probe; val loss), then a few taught questions with the model's greedy
answer before -> after (with --facts-file: each of your facts, up to 20, and its held-out
question), and a few background questions the stream broke. --quiet prints the table only.

The stream (run_stream): one fact at a time, in a fixed order, never revisited; each step's
batch is that fact's statements and its question/answer lines, for --steps-per-fact steps.
  full    every parameter is trained (AdamW)
  lora    low-rank adapters on the attention, FFN and memory gate/output matrices (lora.py),
          merged into the weights before evaluation
  sparse  the paper's method (sparse.sparse_step): only memory value rows, per step the top-t
          slots the batch read by TF-IDF against background document frequencies (SGD)
The options under "steps beyond the paper" below are recipes.py's, each off unless asked for;
--recipe improved turns on the four that meet the demo's targets.

Facts file (--facts-file): JSON Lines, one fact per line, UTF-8:
  {"paraphrases": ["Mira lives in Oakton.", "Mira has a house in Oakton."],
   "question": "Where does Mira live?", "answer": "Oakton.",
   "heldout_question": "What town is Mira from?"}
"heldout_question" is optional: it is never trained on and scores unseen_acc.
Each batch holds the paraphrases plus the line "Q: <question> A: <answer>". Scoring is greedy
exact match of " <answer>" after "Q: <question> A:".

Documents (--task documents; --preset documents sets the t they need): the corpus's documents
(data/documents.py) cut into chunks of a few sentences, one chunk per batch, in order, never
revisited; the batch is the chunk and --rewrites rewrites of it, nothing question-shaped. Their
questions are asked only after the stream (learned: the first phrasing; unseen: the second).
Your own text (--text, a plain UTF-8 file) is taught two sentences to a chunk, without rewrites;
its questions (--questions) are JSON Lines, each answer spelled in the text, "second" optional:
  {"question": "Where does Lina live?", "answer": "Pebbleton.", "second": "What town is Lina from?"}
"""

import copy
import hashlib
import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace

import torch
from tqdm import tqdm

from checkpoint import checkpoint_corpus, checkpoint_train_tokens, config_dict, load_checkpoint, save_checkpoint
from common import (Diverged, Interrupted, check_range, check_writable, config_parser, given_options, interruptible,
                    keep_freed_memory, parse_args, pick_device, split, write_error, write_json)
from evaluate import corpus_facts, greedy_answer, measure, qa_items, qa_pair, story_endings
from facts import (Batch, batch_texts, check_lengths, corpus_documents, document_stream, make_batch, read_facts_file,
                   read_questions, read_text, stream_facts, text_stream, warn_unseen_tokens)
from lora import add_lora, merge_lora
from model import CLASSROOM_MODEL, LARGE_MODEL, GPTConfig
from recipes import (RECIPES, Recipe, RecipeConfig, answer_readers, build, check_recipe, needs_answers,
                     needs_background, options)
from sparse import RowOptimizer, background_stats, inverse_document_frequency, memory_tables, sparse_step
from train import CLASSROOM_TRAIN, LARGE_TRAIN, TrainConfig, get_batch, interrupted, train

DEFAULT_CHECKPOINT = os.path.join(TrainConfig.out_dir, "ckpt.pt")
# Learning rates from python -m experiments pareto and optimizer (docs/RESULTS.md), on a stream
# of 50 facts: sparse (the paper's fixed t = 64), the largest swept rate that costs at most 5% of
# the background facts (the paper's target); with --recipe improved the same rate is the smallest
# swept one that learns 0.90 of the demo's 100 facts (docs/RESULTS.md, "Grow t").
# Full and LoRA, which learn almost nothing at any rate that spares the background: the largest
# that costs at most a quarter of it. Other pairs were not swept, so they have no default and
# need --lr.
DEFAULT_LR = {("sparse", "sgd"): 50.0, ("sparse", "adamw"): 0.03,
              ("full", "adamw"): 1e-5, ("lora", "adamw"): 3e-5}


# The classroom preset (python finetune.py --preset classroom; docs/COURSE.md): the demo on the
# classroom model (train.py's CLASSROOM_TRAIN, pretrained first if missing), 30 new facts and 15
# of each generalisation set, at t = 300 and |B| = 1,000 background units (the paper's t = 500
# learns a little more but raises val loss past 1%; t = 64 learns 0.12 of the facts: python -m
# experiments classroom), with learning rates of its own (CLASSROOM_LR: sparse from the sweep of
# docs/COURSE.md, exercise 1; full and LoRA 1e-4, where full finetuning starts to learn at all).
# Every field of FinetuneConfig is named, so a later change of the defaults does not move it; it
# sets no step beyond the paper (RecipeConfig's): --recipe improved adds them to it.
CLASSROOM_FINETUNE = dict(checkpoint=os.path.join(CLASSROOM_TRAIN["out_dir"], "ckpt.pt"), mode="sparse", optimizer="",
                          lr=0.0, facts=30, facts_file="", steps_per_fact=10, top_t=300, ranking="tfidf",
                          background_batches=1000, background_batch_size=1, lora_rank=16, lora_alpha=32.0,
                          weight_decay=0.0, seed=1337, device="auto", json="", out="", quiet=False, set_facts=15,
                          task="facts", documents=20, rewrites=7, text="", questions="")
CLASSROOM_LR = {("sparse", "sgd"): 100.0, ("full", "adamw"): 1e-4, ("lora", "adamw"): 1e-4}

# The large preset (python finetune.py --preset large): the default demo on the large model
# (train.py's LARGE_TRAIN: 262,144 memory slots, pretrained first if missing); every other
# setting is the default's.
LARGE_FINETUNE = dict(checkpoint=os.path.join(LARGE_TRAIN["out_dir"], "ckpt.pt"))
# The documents preset (python finetune.py --preset documents): the paper's second task on the
# default model: the corpus's 20 documents taught chunk by chunk (--task documents), at the t the
# paper's method needs there, 500, the largest swept t within a 5% background drop (python -m
# experiments documents-t; the paper: 10,000 for documents against 500 for facts).
DOCUMENTS_FINETUNE = dict(task="documents", top_t=500)
PRESETS = {"default": {}, "classroom": CLASSROOM_FINETUNE, "large": LARGE_FINETUNE, "documents": DOCUMENTS_FINETUNE}


@dataclass
class FinetuneConfig:
    """the run, and the paper's method"""
    checkpoint: str = DEFAULT_CHECKPOINT   # pretrained model; the default one is trained first if missing
    mode: str = "sparse"                   # full | lora | sparse
    optimizer: str = ""                    # sgd | adamw; empty = sgd for sparse (paper), adamw otherwise
    lr: float = 0.0                        # 0 = the sweep's choice for this mode and optimizer
                                           # (DEFAULT_LR; --preset classroom: CLASSROOM_LR)
    facts: int = 100                       # new facts from the corpus's facts.json to stream (up to 1000)
    facts_file: str = ""                   # JSON Lines file of your own facts instead (format above)
    steps_per_fact: int = 10               # optimizer steps on each fact's (or chunk's) batch (paper: 1, at 1.3B)
    top_t: int = 64                        # sparse: value rows trained per step in each memory table (paper: 500)
    ranking: str = "tfidf"                 # sparse: tfidf (the paper) | tf (raw access counts, the paper's
                                           # ablation) | kl (recipes.py)
    background_batches: int = 1000         # sparse: background units for document frequencies (paper: 1000)
    background_batch_size: int = 1         # sparse: windows of block_size tokens per background unit, at most
                                           # 256 (docs/DESIGN.md)
    lora_rank: int = 16                    # lora: rank r of each adapter
    lora_alpha: float = 32.0               # lora: the adapter's output is scaled by alpha / r
    weight_decay: float = 0.0              # AdamW decoupled decay of the trained weights (sparse: selected rows only)
    seed: int = 1337                       # background sampling and LoRA init
    device: str = "auto"                   # auto | cpu | cuda | mps
    json: str = ""                         # write the results to this JSON file
    out: str = ""                          # save the finetuned model here (a checkpoint evaluate.py reads)
    quiet: bool = False                    # print the table only: no progress bars, no example answers
    set_facts: int = 50                    # facts of each generalisation set (new answers, new relations)
                                           # also taught, each from the base model; 0 = none
    task: str = "facts"                    # facts | documents: the corpus's documents, chunk by chunk, asked
                                           # about only after the stream (the paper's second task)
    documents: int = 20                    # documents: how many of the corpus's documents to stream (up to 20)
    rewrites: int = 7                      # documents: rewrites of each chunk beside it in its batch (0 = the
                                           # chunk alone)
    text: str = ""                         # a plain text file of your own to teach chunk by chunk instead
                                           # (--task documents, with --questions)
    questions: str = ""                    # --text: JSON Lines questions about it, scored after the stream


def configs(settings):
    """(FinetuneConfig, RecipeConfig) of one flat dict of their fields (as --json's settings holds them)."""
    return tuple(dc(**{f.name: settings[f.name] for f in fields(dc) if f.name in settings})
                 for dc in (FinetuneConfig, RecipeConfig))


# ----------------------------------------------------------------------------------------
# the options, checked before any work

def resolve(cfg, model=None, lrs=DEFAULT_LR):
    """Check the options, and fill in the defaults that depend on the mode (the learning rate
    from lrs: DEFAULT_LR, or a preset's); with the model, check it can be finetuned so."""
    if cfg.mode not in ("full", "lora", "sparse"):
        raise ValueError(f"unknown --mode {cfg.mode!r}: use full, lora or sparse")
    cfg.optimizer = cfg.optimizer or ("sgd" if cfg.mode == "sparse" else "adamw")
    if cfg.optimizer not in ("sgd", "adamw"):
        raise ValueError(f"unknown --optimizer {cfg.optimizer!r}: use sgd or adamw")
    if not cfg.lr and (cfg.mode, cfg.optimizer) not in lrs:
        raise ValueError(f"no measured default learning rate for {cfg.mode} with {cfg.optimizer}; pass --lr")
    cfg.lr = cfg.lr or lrs[(cfg.mode, cfg.optimizer)]
    check_range(cfg, positive=("lr", "lora_alpha"), not_negative=("weight_decay",))
    for name, least in (("steps_per_fact", 1), ("facts", 1), ("set_facts", 0), ("top_t", 1), ("lora_rank", 1),
                        ("background_batches", 1), ("background_batch_size", 1)):
        if getattr(cfg, name) < least:
            raise ValueError(f"--{name.replace('_', '-')} must be at least {least}, not {getattr(cfg, name)}")
    if cfg.background_batch_size > 256:                  # 32 units of it go through one forward
        raise ValueError(f"--background-batch-size is at most 256 windows a unit, not {cfg.background_batch_size}; "
                         "for more background text raise --background-batches")
    if cfg.ranking not in ("tfidf", "tf", "kl"):
        raise ValueError(f"unknown --ranking {cfg.ranking!r}: use tfidf, tf or kl")
    if cfg.task not in ("facts", "documents"):
        raise ValueError(f"unknown --task {cfg.task!r}: use facts or documents")
    for name, least in (("documents", 1), ("rewrites", 0)):
        if getattr(cfg, name) < least:
            raise ValueError(f"--{name} must be at least {least}, not {getattr(cfg, name)}")
    if bool(cfg.text) != bool(cfg.questions):
        raise ValueError("--text and --questions go together: the text to teach, and the questions asked after it")
    if cfg.text and cfg.facts_file:
        raise ValueError("--text teaches a text and --facts-file facts: give one of them")
    cfg.task = "documents" if cfg.text else cfg.task
    if model is not None and cfg.mode == "sparse" and not model.memory_modules:
        raise ValueError("--mode sparse needs a model with memory layers; this one is dense")
    return cfg


def check_outputs(cfg):
    """Before any work: every output can be written at the end, and none would overwrite an input."""
    inputs = {os.path.realpath(p) for p in (cfg.checkpoint, cfg.facts_file, cfg.text, cfg.questions) if p}
    outputs = [(flag, path) for flag, path in (("--out", cfg.out), ("--json", cfg.json)) if path]
    for flag, path in outputs:
        if os.path.realpath(path) in inputs:
            raise ValueError(f"{flag} {path} is an input of this run; write to another file")
        check_writable(path, flag)
    if len(outputs) == 2 and os.path.realpath(cfg.out) == os.path.realpath(cfg.json):
        raise ValueError("--out and --json name the same file; give each its own")


# ----------------------------------------------------------------------------------------
# the stream

def run_stream(cfg, model, enc, facts, stats=None, recipe=None, quiet=False, on_fact=None):
    """Teach the facts one at a time, in order, never revisited: cfg.steps_per_fact steps on each
    fact's batch, by cfg.mode. stats: each value table's background_stats (sparse; None with
    --ranking tf); recipe: the steps beyond the paper (recipes.build), None for the paper's
    method. on_fact(n), if given, is called after the n-th fact's last step. Returns (the bytes
    of optimizer state kept, each fact's t in its last round: None but in sparse mode)."""
    recipe = recipe or Recipe()
    device = next(model.parameters()).device
    t_per_fact = []
    with model.recording_slots(), trainer(cfg, model, stats, recipe) as (train_step, state_bytes):
        facts = recipe.stream(facts)                                # the paper: each fact once, in order
        for n, fact in enumerate(tqdm(facts, desc=f"{cfg.mode} stream", disable=quiet), 1):
            batch = fact_batch(enc, fact, model.config.block_size, device)
            t = teach_fact(cfg, model, batch, train_step, recipe, n)
            t_per_fact.append(t if cfg.mode == "sparse" else None)
            recipe.after_fact(model, batch)
            if on_fact is not None:
                on_fact(n)
        recipe.finish()
    if cfg.mode == "lora":
        merge_lora(model)
    return state_bytes(), t_per_fact


def teach_fact(cfg, model, batch, train_step, recipe, n):
    """The n-th fact's steps: a round of cfg.steps_per_fact steps with t = cfg.top_t rows, and
    another round while recipe.next_t asks for one (the paper: one round), unless recipe.stop ends
    the fact's steps. Returns the t of its last round."""
    t, steps = cfg.top_t, 0
    while True:
        for _ in range(cfg.steps_per_fact):
            steps += 1
            loss, changed = train_step(batch, t)                    # forward, backward, update
            check_finite(loss, changed, n, steps, cfg)
            if recipe.stop(model, batch):                           # no more steps, no more rounds
                return t
        next_t = recipe.next_t(t, model, batch)
        if not next_t:
            return t
        t = next_t


@contextmanager
def trainer(cfg, model, stats, recipe):
    """with trainer(...) as (train_step, state_bytes): train_step(batch, t) trains the model on the
    batch by cfg.mode and returns (the loss, the weights it changed): full and lora take a torch optimizer
    step over every weight or the adapters (lora.add_lora), sparse a sparse_step with a
    RowOptimizer per value table. Only the trained weights require gradients, and value gradients
    are dense (row choice and torch's optimizers need them); on the way out every weight is frozen
    again and the value tables' gradient kind restored."""
    model.eval()                                                    # no dropout; BatchNorm keeps its statistics
    sparse_grad = [m.values.sparse for m in model.memory_modules]
    try:
        for m in model.memory_modules:
            m.values.sparse = False
        for p in model.parameters():
            p.requires_grad_(cfg.mode == "full")
        tables = memory_tables(model)
        recipe.start(tables)
        if cfg.mode == "sparse":
            opts, idfs = [], []
            for i, (w, _) in enumerate(tables):                     # the value tables alone are trained
                w.requires_grad_(True)
                opts.append(RowOptimizer(w, cfg.optimizer, cfg.lr, cfg.weight_decay))
                ones = torch.ones(w.shape[0], dtype=torch.float64)  # --ranking tf: the paper's ablation, no IDF
                idf = ones if cfg.ranking == "tf" else inverse_document_frequency(stats[i])
                idfs.append(recipe.idf(i, idf))
            yield (lambda batch, t: sparse_step(model, batch, t, tables, opts, idfs, recipe),
                   lambda: sum(o.state_bytes() for o in opts))
            return
        if cfg.mode == "lora":
            torch.manual_seed(cfg.seed)
            params = add_lora(model, cfg.lora_rank, cfg.lora_alpha)
        else:
            params = list(model.parameters())
        opt = (torch.optim.SGD(params, lr=cfg.lr) if cfg.optimizer == "sgd"
               else torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay))
        state = lambda: [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
        yield (lambda batch, t: dense_step(model, batch, opt, params),
               lambda: sum(t.numel() * t.element_size() for t in state()))
    finally:
        for m, was in zip(model.memory_modules, sparse_grad):
            m.values.sparse = was
        for p in model.parameters():
            p.requires_grad_(False)


def dense_step(model, batch, opt, params):
    """Full finetuning's or LoRA's step: (the loss, params). A loss that is not finite trains nothing."""
    _, loss = model(batch.x, batch.y)
    if torch.isfinite(loss):
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return loss, params


def fact_batch(enc, fact, block_size, device):
    """A fact's batch (facts.Batch) as the stream trains on it: its lines (batch_texts), the text's
    tokens counted, and the positions that predict the answer marked (make_batch; a document's
    chunk: each answer it tells)."""
    texts = batch_texts(fact)
    answers = fact["answers"] if "answers" in fact else [fact["answer"]]
    x, y, count = make_batch(enc, texts, block_size)                   # count: every text token
    at = make_batch(enc, texts, block_size, answers)[2]               # only where an answer is predicted
    return Batch(x.to(device), y.to(device), count.to(device), at.to(device))


def check_finite(loss, changed, fact, step, cfg):
    """Diverged, naming the fact and step, if the loss or a weight this step changed is not finite."""
    if not torch.isfinite(loss):
        raise stream_diverged(f"the loss became {loss.item()}", fact, step, cfg)
    if not all(torch.isfinite(c).all() for c in changed):                   # only what the step changed: cheap
        raise stream_diverged("the weights became inf or nan", fact, step, cfg)


def stream_diverged(what, fact, step, cfg):
    """The error a diverging stream ends with (train.pretraining_diverged: pretraining's)."""
    return Diverged(f"{what} at fact {fact}, step {step}: the stream diverged; lower --lr ({cfg.lr:g})")


# ----------------------------------------------------------------------------------------
# background statistics, and the recipe

def pretraining_units(train_data, block_size, n_units, unit_windows, seed, per_batch=32):
    """Background units from pretraining, per_batch at a time: (x (U, W, L), None), U units of
    unit_windows = W random windows of block_size = L tokens each, every token counted."""
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, n_units, per_batch):
        units = min(per_batch, n_units - start)
        windows = [get_batch(train_data, block_size, unit_windows, gen)[0] for _ in range(units)]
        yield torch.stack(windows), None


def fingerprint(model):
    """A hash of the model's weights: background statistics belong to one model."""
    h = hashlib.sha1()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_or_compute_background(cfg, model, ckpt, device):
    """Background statistics of each value table (sparse.background_stats), from pretraining
    windows, cached beside the checkpoint and reused while everything that changes the reads
    is the same: the weights, the model args (mem_topk, heads, ...), the corpus and the
    background settings. A cache that cannot be used is counted again with a warning, and one that
    cannot be written is a warning too: the run goes on."""
    path = os.path.splitext(cfg.checkpoint)[0] + ".background.pt"
    key = {"fingerprint": fingerprint(model), "model_args": config_dict(model.config), "data_dir": ckpt["data_dir"],
           "data_meta": ckpt["data_meta"], "units": cfg.background_batches,
           "unit_windows": cfg.background_batch_size, "seed": cfg.seed}
    if os.path.exists(path):
        stats, problem = read_background_cache(path, key, model)
        if problem is None:
            return stats
        print(f"warning: the background cache {path} {problem}; counting the statistics again, and replacing it",
              file=sys.stderr)
    train_data = checkpoint_train_tokens(ckpt)
    if not cfg.quiet:
        print(f"background: counting slot reads in {cfg.background_batches} units of "
              f"{cfg.background_batch_size} x {model.config.block_size} tokens -> {path}")
    units = pretraining_units(train_data, model.config.block_size, cfg.background_batches,
                              cfg.background_batch_size, cfg.seed)
    stats = background_stats(model, units, device, cfg.quiet)
    try:
        save_checkpoint(path, {"key": key, "stats": stats, "sha256": stats_checksum(stats)})
    except OSError as e:
        print(f"warning: could not cache the background statistics in {path} ({e.strerror or e}); "
              "they will be counted again next time", file=sys.stderr)
    return stats


def read_background_cache(path, key, model):
    """(statistics, None) of a background cache counted for this key (model and settings), whole and
    unchanged since it was written; else (None, what is wrong with it). A cache is never trusted
    blindly: a wrong shape would fail deep in the stream, a changed byte would rank the wrong slots."""
    try:
        cached = torch.load(path, weights_only=True)
    except Exception as e:
        return None, f"cannot be read ({type(e).__name__})"
    if not isinstance(cached, dict) or cached.get("key") != key:
        return None, "was counted for another model or other settings"
    stats = cached.get("stats")
    if not stats_fit(stats, model):
        return None, "holds statistics of the wrong shape or type for this model"
    if cached.get("sha256") != stats_checksum(stats):
        return None, "fails its checksum (it is damaged, or older than checksums)"
    return stats, None


def stats_fit(stats, model):
    """Whether stats has the form background_stats gives the model: per value table, a dict of a whole
    number of units and two counts (df, reads) of one integer per slot."""
    sizes = [w.shape[0] for w, _ in memory_tables(model)]
    if not (isinstance(stats, list) and len(stats) == len(sizes)):
        return False
    for st, n in zip(stats, sizes):
        if not (isinstance(st, dict) and type(st.get("units")) is int):
            return False
        for k in ("df", "reads"):
            if not (torch.is_tensor(st.get(k)) and st[k].dtype == torch.long and st[k].shape == (n,)):
                return False
    return True


def stats_checksum(stats):
    """A sha256 of background statistics' numbers, stored beside them in the cache."""
    h = hashlib.sha256()
    for st in stats:
        h.update(str(st["units"]).encode())
        for k in ("df", "reads"):
            h.update(st[k].contiguous().numpy().tobytes())
    return h.hexdigest()


def make_recipe(cfg, rcfg, model, enc, ckpt):
    """(background statistics, Recipe) of a run: the pretraining background's statistics where
    the ranking or the recipe reads them (None for full, LoRA and the tf ranking alone), and the
    recipe of rcfg (recipes.build), with the slots the checkpoint's background answers are read
    from where it needs them."""
    device = next(model.parameters()).device
    sparse = cfg.mode == "sparse"
    stats = None
    if sparse and needs_background(rcfg, cfg.ranking):
        stats = load_or_compute_background(cfg, model, ckpt, device)
    answers = checkpoint_corpus(ckpt)[1]["background"]
    readers = answer_readers(model, enc, answers, device) if sparse and needs_answers(rcfg, cfg.ranking) else None
    return stats, build(rcfg, cfg.mode, cfg.ranking, stats, readers)


def finetune(cfg, model, enc, ckpt, facts, stats=None, recipe=None, before=None, quiet=False, stream="new facts",
             taught=None):
    """Measure, stream, measure again. stats and recipe: make_recipe's (None, None: the paper's
    method with no background, as for full finetuning, LoRA or --ranking tf). Returns (results with
    the --json keys, the measurements before, the measurements after). Pass the measurements
    before back as `before` to reuse them for another run from the same model (the results take
    only what does not depend on the facts from them: background facts, skill, val loss). stream:
    the name the results give the facts. taught: what the stream teaches, if not the facts scored
    (a document's chunks: what_to_teach)."""
    device = next(model.parameters()).device
    val, kb = checkpoint_corpus(ckpt)
    background, skill = kb["background"], story_endings(val, enc)
    before = before or measure(model, enc, facts, background, val, device, skill)
    t0 = time.time()
    _, t_per_fact = run_stream(cfg, model, enc, taught or facts, stats, recipe, quiet)
    seconds = time.time() - t0
    after = measure(model, enc, facts, background, val, device, skill)
    if not math.isfinite(after["val_loss"]):
        raise stream_diverged(f"val loss is {after['val_loss']} after the last step", len(facts),
                              cfg.steps_per_fact, cfg)
    sparse = cfg.mode == "sparse"
    drop = lambda key: (before[key] - after[key]) / before[key] if before[key] else 0.0
    return {"stream": stream, "mode": cfg.mode, "optimizer": cfg.optimizer, "lr": cfg.lr,
            "recipe": (recipe or Recipe()).name, "top_t": cfg.top_t if sparse else None,
            "ranking": cfg.ranking if sparse else None,
            "t_used": {str(t): t_per_fact.count(t) for t in sorted(set(t_per_fact))} if sparse else None,
            "facts": len(facts), "batches": len(taught or facts), "steps_per_fact": cfg.steps_per_fact,
            "learned_acc": after["learned_acc"], "unseen_acc": after["unseen_acc"],
            "background_acc_before": before["background_acc"], "background_acc_after": after["background_acc"],
            "background_drop": drop("background_acc"),
            "skill_acc_before": before["skill_acc"], "skill_acc_after": after["skill_acc"],
            "skill_drop": drop("skill_acc"), "val_loss_before": before["val_loss"], "val_loss_after": after["val_loss"],
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
        change_loss = r["val_loss_after"] / r["val_loss_before"] - 1
        loss = f"{r['val_loss_before']:.4f} -> {r['val_loss_after']:.4f} ({change_loss:+.1%})"
        lines.append(f"{r['stream']:<{w}} {r['facts']:>5} {r['learned_acc']:>7.3f} {unseen:>6}   "
                     f"{change(r, 'background_acc'):<27} {change(r, 'skill_acc'):<27} {loss}")
    return "\n".join(lines)


def show_examples(base, model, enc, facts, background, before, after, device, n=3, taught=3, unseen=False,
                  asked=False):
    """What learned and forgotten mean, in answers: the greedy answers of the model before the
    stream (base) and after it (model) to the first `taught` facts' questions (with unseen, each
    one's held-out question too; asked: questions never trained, a document's, asked after the
    stream), and to n background questions the stream broke (answered right before, wrong after)."""
    def show(prompt, answer, note=""):
        print(f"  {prompt}{answer}{note}   before: \"{greedy_answer(base, enc, prompt, device)}\" -> "
              f"after: \"{greedy_answer(model, enc, prompt, device)}\"")
    what = "questions asked after the stream" if asked else "taught questions"
    print(f"\n{what}, with the right answer, and the model's answer before -> after:")
    for f in facts[:taught]:
        show(*qa_pair(f["questions"][0], f["answer"]))
        if unseen and f["heldout_question"]:
            show(*qa_pair(f["heldout_question"], f["answer"]), "  (second phrasing)" if asked else "  (held out)")
    broken = [item for item, b, a in zip(qa_items(background), before["background_correct"],
                                         after["background_correct"]) if b and not a]
    print(f"\nbackground questions the stream broke: {len(broken)} of the {sum(before['background_correct'])} "
          f"answered right before" + (f"; the first {min(n, len(broken))}:" if broken else ""))
    for prompt, answer in broken[:n]:
        show(prompt, answer)


def load_base(cfg, device):
    """The pretrained model: cfg.checkpoint, or, if it is missing and is the default's or a
    preset's checkpoint, that model trained now."""
    known = {DEFAULT_CHECKPOINT: ("the default model (python train.py, ~7 min on 2 CPU cores)", TrainConfig(),
                                  GPTConfig()),
             CLASSROOM_FINETUNE["checkpoint"]: ("the classroom model (python train.py --preset classroom, ~4 min on "
                                                "2 CPU cores)", TrainConfig(**CLASSROOM_TRAIN),
                                                GPTConfig(**CLASSROOM_MODEL)),
             LARGE_FINETUNE["checkpoint"]: ("the large model (python train.py --preset large, ~10 min on 2 CPU cores)",
                                            TrainConfig(**LARGE_TRAIN), GPTConfig(**LARGE_MODEL))}
    known = {os.path.abspath(path): how for path, how in known.items()}
    path = os.path.abspath(cfg.checkpoint)
    stopped = unfinished(cfg.checkpoint) if path in known else None
    if path in known and (stopped or not os.path.exists(cfg.checkpoint)):
        name, tcfg, mcfg = known[path]
        if stopped:                                   # an interrupted first run: its numbers would be a half model's
            step, max_iters = stopped
            print(f"note: {cfg.checkpoint} is pretrained to step {step} of {max_iters}; going on from it first "
                  "(python train.py --resume)", file=sys.stderr)
            tcfg = replace(tcfg, resume=True, max_iters=max_iters)
        elif not cfg.quiet:
            print(f"no checkpoint at {cfg.checkpoint}: pretraining {name} first")
        try:
            train(replace(tcfg, device=cfg.device), mcfg, quiet=cfg.quiet)
        except KeyboardInterrupt:
            raise interrupted(cfg.checkpoint, None) from None
    model, enc, ckpt = load_checkpoint(cfg.checkpoint, device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, enc, ckpt


def unfinished(path):
    """(step, max_iters) of a pretraining checkpoint saved before its last step (a first run stopped
    by Ctrl-C); None for a finished one, a finetuned one, or a file load_checkpoint will refuse."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        step, max_iters = ckpt["step"], ckpt["train_config"]["max_iters"]
    except Exception:                                 # missing, damaged, or not train.py's
        return None
    return (step, max_iters) if "finetune" not in ckpt and step < max_iters else None


def write_outputs(cfg, settings, ckpt, model, facts, results, written):
    """Write --json (the first stream's results, the generalisation sets nested under their names,
    and under "settings" every option of the run, to rerun it), then --out (the model): the small
    file first, and each on its own, so one failing write never loses the other. Each written is
    added to the list written as it is (a Ctrl-C says which were). Returns what could not be."""
    result = {**results[0], **{r["stream"].replace(" ", "_"): r for r in results[1:]}, "settings": settings}
    finetuned = {**ckpt, "model": model.state_dict(), "optimizers": [], "finetune": {**settings, "facts_taught": facts}}
    writes = [("--json", cfg.json, lambda: write_json(cfg.json, result)),
              ("--out", cfg.out, lambda: save_checkpoint(cfg.out, finetuned))]
    failed = []
    for flag, path, write in writes:
        if path:
            try:
                write()
                written.append(f"{flag} {path}")
            except (OSError, ValueError) as e:
                failed.append(write_error(f"{flag} {path}", e))
    return failed


def ignored_options(cfg, rcfg):
    """(what ignores them, the option names) for each set of options this run would leave out: the
    memory-row steps under full finetuning and LoRA, the IDF's under the tf and kl rankings
    (recipes.build), the sparse method's elsewhere, LoRA's elsewhere, AdamW's decay under SGD."""
    changed = lambda config: [f.name for f in fields(config) if getattr(config, f.name) != f.default]
    recipe, run = changed(rcfg), changed(cfg)
    ignored = []
    if cfg.mode != "sparse":
        ignored.append((f"--mode {cfg.mode} trains no memory rows alone", [n for n in recipe if n not in
                        ("stop_early", "passes")] + [n for n in run if n in ("top_t", "ranking")]))
    elif cfg.ranking != "tfidf":
        ignored.append((f"--ranking {cfg.ranking} has no IDF", [n for n in recipe if n in ("spare_answer_slots",
                        "block_answer_slots")]))
    if cfg.mode != "lora":
        ignored.append(("only --mode lora has adapters", [n for n in run if n.startswith("lora_")]))
    if cfg.optimizer == "sgd":
        ignored.append(("SGD has no weight decay", [n for n in run if n == "weight_decay"]))
    if cfg.text:
        ignored.append(("--text teaches your text, which has no generated documents or rewrites",
                        [n for n in run if n in ("documents", "rewrites")]))
    if cfg.task == "documents":
        ignored.append(("--task documents teaches documents, not facts",
                        [n for n in run if n in ("facts", "facts_file", "set_facts")]))
    else:
        ignored.append(("--task facts teaches facts", [n for n in run if n in ("documents", "rewrites")]))
    return [(why, names) for why, names in ignored if names]


def check_options(cfg, rcfg, given=(), lrs=DEFAULT_LR):
    """The validation step main() runs first, before any file is read: every option in range
    (resolve, recipes.check_recipe), no option given on the command line that the run would
    ignore (a contradiction), every output writable. Returns notes on what a preset set that the
    run ignores."""
    resolve(cfg, lrs=lrs)
    check_recipe(rcfg, cfg.top_t)
    flags = lambda names: ", ".join("--" + n.replace("_", "-") for n in names)
    notes = []
    for why, names in ignored_options(cfg, rcfg):
        typed = [n for n in names if n in given]
        if typed:
            raise ValueError(f"{why}: it would ignore {flags(typed)}; leave {'it' if len(typed) == 1 else 'them'} out")
        notes.append(f"{why}: it ignores {flags(names)}")
    check_outputs(cfg)
    return notes


def what_to_teach(cfg, ckpt, enc, block_size, mine=None, text=None, asked=None):
    """(the stream, the facts scored, the name of its row): the facts of --facts-file (mine) or the
    corpus's new facts, each taught and scored; or, with --task documents, the corpus's documents
    or your --text (text, and asked: its --questions, read_questions), taught chunk by chunk and
    asked about only after the stream (facts.document_stream, facts.text_stream)."""
    if cfg.text:
        return text_stream(text, asked, enc, block_size, cfg.text), asked, os.path.basename(cfg.text)
    if cfg.task == "documents":
        stream, questions = document_stream(corpus_documents(ckpt, cfg.documents), cfg.rewrites, cfg.seed)
        return stream, questions, "documents" if cfg.rewrites else "documents, no rewrites"
    facts = mine or stream_facts(ckpt, cfg.facts)
    return facts, facts, os.path.basename(cfg.facts_file) if cfg.facts_file else "new facts"


def describe(cfg, rcfg, recipe, facts, taught=None):
    """The line a run starts with: the method, and the steps beyond the paper the recipe took
    (taught: the stream, if not the facts: a document's chunks)."""
    method = f", top-{cfg.top_t} slots by {cfg.ranking}" if cfg.mode == "sparse" else ""
    if recipe.name == "paper":
        steps = "; the paper's method" if cfg.mode == "sparse" else ""
    else:
        steps = f"; beyond the paper: {recipe.name}" + (f" ({options(rcfg)})" if recipe.name == "improved" else "")
    what = (f"{len(facts)} facts" if taught is None or taught is facts
            else f"{len(taught)} chunks ({len(facts)} questions asked after)")
    return (f"{cfg.mode} finetuning with {cfg.optimizer} at lr {cfg.lr:g} on {what}, {cfg.steps_per_fact} "
            f"step(s) each{method}{steps}")


@interruptible
def main(argv=None):
    presets = {"preset": PRESETS, "recipe": RECIPES}
    parser = config_parser(__doc__, FinetuneConfig, RecipeConfig, presets=presets)
    args = parse_args(parser, argv, presets)
    cfg, rcfg = split(args, FinetuneConfig), split(args, RecipeConfig)
    keep_freed_memory()
    try:
        given = given_options(parser, argv, presets)                 # before any work, pretraining included
        notes = check_options(cfg, rcfg, given, CLASSROOM_LR if args.preset == "classroom" else DEFAULT_LR)
        mine = read_facts_file(cfg.facts_file) if cfg.facts_file else None
        text = read_text(cfg.text) if cfg.text else None
        asked = read_questions(cfg.questions, text) if cfg.text else None
        device = pick_device(cfg.device)
        model, enc, ckpt = load_base(cfg, device)
        resolve(cfg, model)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        stream, facts, name = what_to_teach(cfg, ckpt, enc, model.config.block_size, mine, text, asked)
        read = stream if stream is facts else stream + facts                # every line the model reads
        check_lengths(enc, read, model.config.block_size)
        warn_unseen_tokens(enc, read, checkpoint_train_tokens(ckpt),
                           "facts" if read is facts else "chunks and questions")
        stats, recipe = make_recipe(cfg, rcfg, model, enc, ckpt)    # once: every stream starts from the base
        if not cfg.quiet:
            print(describe(cfg, rcfg, recipe, facts, stream))
        base = copy.deepcopy(model)                                 # the model before: every stream starts from it
        result, before, after = finetune(cfg, model, enc, ckpt, facts, stats, recipe, quiet=cfg.quiet, stream=name,
                                         taught=stream)
        results, taught = [result], copy.deepcopy(model.state_dict())   # the model --out saves
        sets = cfg.set_facts and not cfg.facts_file and cfg.task == "facts"
        for key in ("new_answers", "new_relations") if sets else ():
            model.load_state_dict(base.state_dict())                # each generalisation set on its own
            extra = corpus_facts(checkpoint_corpus(ckpt)[1][key][:cfg.set_facts])
            results.append(finetune(cfg, model, enc, ckpt, extra, stats, recipe, before, cfg.quiet,
                                    stream=key.replace("_", " "))[0])
        model.load_state_dict(taught)
    except (ValueError, OSError, RuntimeError) as e:
        sys.exit(f"error: {e}")
    settings = {**vars(cfg), "recipe": args.recipe, **vars(rcfg)}
    written = []                                                    # what was written, for a Ctrl-C to say
    try:
        failed = write_outputs(cfg, settings, ckpt, model, facts, results, written)   # before printing
        print(format_table(results))
        if not cfg.quiet:
            print(f"stream took {result['seconds']:.1f}s")
            yours = cfg.facts_file or cfg.text                          # yours: up to 20, and their unseen phrasing
            show_examples(base, model, enc, facts, checkpoint_corpus(ckpt)[1]["background"], before, after, device,
                          taught=20 if yours else 3, unseen=bool(yours) or cfg.task == "documents",
                          asked=cfg.task == "documents")
    except KeyboardInterrupt:
        if written:
            raise Interrupted(" and ".join(written) + " written") from None
        raise
    if failed:
        sys.exit("error: " + "; ".join(failed + [f"{w} was written" for w in written]))


if __name__ == "__main__":
    main()
