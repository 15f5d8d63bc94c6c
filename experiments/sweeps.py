"""
The paper's experiments at small scale, each one command that prints a table and writes
out/experiments/<name>.json (every number) and <name>.png (the figure).

    python -m experiments compare       # full vs LoRA vs sparse, each at finetune.py's default learning rate
    python -m experiments pareto        # learning-rate sweep of full, LoRA and sparse (paper Figure 5)
    python -m experiments topt          # top-t sweep, TF-IDF vs TF vs KL ranking (paper Figure 6)
    python -m experiments optimizer     # SGD vs AdamW for sparse, full and LoRA
    python -m experiments background    # IDF from pretraining text vs from the new facts (Figure 7)
    python -m experiments all-slots     # train every slot the batch read vs the top-t
    python -m experiments curves        # learned and forgotten after every 10 facts, per method
    python -m experiments slots         # which slots a fact selects, and which tokens read them
    python -m experiments forgetting    # which background answers a sparse stream breaks, and what they become
    python -m experiments grow-t        # grow t 4x while the model misses a fact's answer (beyond the paper)
    python -m experiments count         # rank the reads of every token vs only where the answer is predicted
    python -m experiments sequence      # batch-level vs sequence-level ranking over the same t's
    python -m experiments max-df        # never train slots that many background units read (beyond the paper)
    python -m experiments frontier      # sparse: larger t at smaller learning rates
    python -m experiments fresh-rows    # never train a row an earlier fact trained (beyond the paper)
    python -m experiments spare-answer-slots   # rank last the slots background answers are read from (beyond the paper)
    python -m experiments block-answer-slots   # rank those slots last or never train them, as fewer answers mark a slot
    python -m experiments slow-answer-slots    # divide each row's step by how many background answers read it
    python -m experiments long          # sparse: a stream of 500 facts, then 500 more (--facts 1000: 1000 + 1000)
    python -m experiments one-fact      # each fact taught alone by full, LoRA and sparse: forgetting at matched learning
    python -m experiments passes        # the stream taught 10 times over: full and LoRA learn it too, at a cost
    python -m experiments documents     # the paper's second task: documents chunk by chunk, with rewrites and without
    python -m experiments documents-pareto   # learning-rate sweep of each method on the documents
    python -m experiments documents-t   # the paper's method on the documents: the t they need
    python -m experiments documents-chunks   # chunks of one fact or two, one sentence per line or prose
    python -m experiments statements    # the fact stream taught its statements alone, scored on questions never trained
    python -m experiments answer-reads  # which slots the answers are read from, and how many two questions share
    python -m experiments unseen        # why a new relation's unseen phrasing is missed: which part of the read falls short
    python -m experiments kept          # which taught facts the stream itself undoes, and by a fact of which subject
    python -m experiments real-text     # pretrain on real TinyStories text, then full vs LoRA vs sparse
    python -m experiments layouts       # pretrain other memory layouts (heads x top-k, placement), then sparse
    python -m experiments worlds        # pretrain on other knowledge worlds (closed answers, more people), then sparse
    python -m experiments dense         # the memory model against dense ones trained for the same time and steps
    python -m experiments classroom     # pretrain variants of the classroom preset (table, top-k, stories, world, depth, steps)
    python -m experiments course        # the course's exercises on the classroom model, pretrained with 3 seeds
    python -m experiments topt --facts 1000 --steps-per-fact 1   # the paper-sized stream

Every run starts from the same pretrained checkpoint (out/ckpt.pt; made first if missing),
streams the same facts, and is scored like finetune.py: learned = exact-match accuracy on
the taught facts' questions; forgotten = the relative drop in background-fact accuracy;
val loss before and after. Unless a run says otherwise it is the paper's method: sparse SGD at
finetune.py's default learning rate and t = 64, a fixed t and the paper's IDF, as finetune.py
runs by default. The steps beyond the paper are options here too (recipes.py): --recipe improved
adds the four of finetune.py --recipe improved, --grow-t 4096 any one of them.
The sweeps are here; curves, slots, forgetting, long, one-fact, answer-reads, unseen and kept,
which look inside streams and the memory, are in experiments/analyses.py.
"""

import copy
import os
import sys
import time
from dataclasses import replace

import finetune as ft
from experiments.analyses import ANALYSES, ONE_FACT_LRS, one_fact, setup
from checkpoint import checkpoint_corpus, checkpoint_train_tokens, load_checkpoint
from common import (ROOT, Diverged, check_writable, config_parser, interruptible, keep_freed_memory, parse_args, split,
                    write_atomic, write_error, write_json)
from data.documents import FACTS_PER_CHUNK, LINE
from data.prepare import CLASSROOM_DATA, DataConfig, prepare
from evaluate import corpus_facts
from facts import batch_texts, corpus_documents, document_stream, make_batch, read_facts_file
from model import CLASSROOM_MODEL, GPTConfig
from recipes import RECIPES, RecipeConfig, SlowAnswerSlots, answer_readers, build, check_recipe
from sparse import background_stats
from train import CLASSROOM_TRAIN, TrainConfig, train

T_SWEEP = (25, 50, 100, 200, 500, 1000)
# The documents' methods (python -m experiments documents): each at the rate and t of its best point within a
# 5% background drop in documents-pareto and documents-t (docs/RESULTS.md, "Teach a document").
DOCUMENT_METHODS = {"full": {"mode": "full"}, "lora": {"mode": "lora"},
                    "sparse, the paper's method (t = 500)": {"top_t": 500, "lr": 50},
                    "improved": {"recipe": "improved", "lr": 200}}
DOCUMENT_LRS = {"full": (1e-5, 1e-4, 1e-3), "lora": (3e-5, 3e-4, 3e-3),
                "sparse, the paper's method (t = 500)": (20, 50, 100), "improved": (100, 200, 400)}
LRS = {"full": (3e-6, 1e-5, 3e-5, 1e-4), "lora": (3e-5, 1e-4, 3e-4, 1e-3), "sparse": (10, 20, 50, 100, 200)}


# Each sweep: (its runs, the field that names a line in the figure, the field that labels a point).
# A run overrides FinetuneConfig and RecipeConfig fields; "background": "facts" takes IDF from the
# new facts, "pretraining + known facts" from the pretraining windows and the texts of every other
# background fact; "spare_answer_slots": S ranks last (IDF 0) every slot read where the answers of
# more than a share S of every other background fact's questions are predicted (counted on half,
# so that the other half's drop is measured on facts it never read), and with "block_answer_slots"
# never trains it; "slow_answer_slots" divides each row's step by 1 + (those questions that read it)
# / K, or with "damp_by": "text" by 1 + (the pretraining units that read it) / K (the ablation: any
# reads, not the answers'); "top_t": 0 trains every slot the batch read; "recipe": a named recipe's
# options, as finetune.py --recipe sets them; "task": "documents" streams the corpus's documents,
# "statements_only" the facts' statements alone (stream_of); "name" names the run's line.
RUN_KEYS = ("background", "damp_by", "recipe", "task", "statements_only", "facts_per_chunk", "mid_line", "name")
SWEEPS = {
    "compare": (lambda: [{"mode": m} for m in ("full", "lora", "sparse")], "mode", "mode"),
    "pareto": (lambda: [{"mode": m, "lr": lr} for m in ("full", "lora", "sparse") for lr in LRS[m]], "mode", "lr"),
    "topt": (lambda: [{"ranking": r, "top_t": t} for r in ("tfidf", "tf", "kl") for t in T_SWEEP], "ranking", "top_t"),
    "optimizer": (lambda: [{"mode": m, "optimizer": o, "lr": lr} for m, o, lrs in (
        ("sparse", "sgd", (20, 50, 100)), ("sparse", "adamw", (0.01, 0.03, 0.1)),
        ("full", "sgd", (1e-3, 1e-2)), ("full", "adamw", (1e-5, 3e-5)),
        ("lora", "sgd", (1e-2, 1e-1)), ("lora", "adamw", (1e-4, 3e-4))) for lr in lrs], "method", "lr"),
    "background": (lambda: [{"top_t": t, "background": b} for b in ("pretraining", "facts", "pretraining + known facts")
                            for t in (64, 500)], "background", "top_t"),
    "all-slots": (lambda: [{"top_t": t} for t in (64, 500, 0)], None, "top_t"),
    "grow-t": (lambda: [{"grow_t": m, "lr": lr} for m in (0, 1024, 4096) for lr in (20, 50, 100)], "grow_t", "lr"),
    "count": (lambda: [{"count_reads": c, "top_t": t} for c in ("all", "answer") for t in (64, 200, 500, 0)],
              "count_reads", "top_t"),
    "sequence": (lambda: [{"rank_by": b, "top_t": t} for b in ("batch", "sequence") for t in T_SWEEP], "rank_by", "top_t"),
    "max-df": (lambda: [{"max_df": d, "lr": lr} for d in (1.0, 0.3, 0.2, 0.1) for lr in (20, 50, 100)], "max_df", "lr"),
    "frontier": (lambda: [{"top_t": t, "lr": lr} for t in (100, 200, 500) for lr in (10, 20, 50)], "top_t", "lr"),
    "fresh-rows": (lambda: [{"fresh_rows": f, "lr": lr} for f in (False, True) for lr in (20, 50, 100)], "fresh_rows", "lr"),
    "spare-answer-slots": (lambda: [{"spare_answer_slots": d, "lr": lr} for d in (1.0, 0.05, 0.01) for lr in (50, 100, 200)],
                           "spare_answer_slots", "lr"),
    "block-answer-slots": (lambda: [{"block_answer_slots": m, "spare_answer_slots": d} for m in (False, True)
                                    for d in (0.01, 0.003, 0.0003)], "block_answer_slots", "spare_answer_slots"),
    "slow-answer-slots": (lambda: [{"slow_answer_slots": k, "spare_answer_slots": 0.01, "lr": lr}
                                   for k, lrs in ((0.0, (25, 50)), (8.0, (50, 100, 200)), (1.0, (100, 300))) for lr in lrs]
                          + [{"slow_answer_slots": 25.0, "damp_by": "text", "spare_answer_slots": 0.01, "lr": lr}
                             for lr in (100, 200)], "slow_answer_slots", "lr"),
    "documents": (lambda: [{**run, "name": name, "task": "documents", "rewrites": n}
                           for name, run in DOCUMENT_METHODS.items() for n in (7, 0)], "name", "rewrites"),
    "documents-pareto": (lambda: [{**run, "name": name, "task": "documents", "lr": lr} for name, run in
                                  DOCUMENT_METHODS.items() for lr in DOCUMENT_LRS[name]], "name", "lr"),
    "documents-t": (lambda: [{"task": "documents", "top_t": t, "lr": lr}
                             for lr in (50, 100) for t in (64, 500, 1000, 2000)], "lr", "top_t"),
    "documents-chunks": (lambda: [{"task": "documents", "top_t": 500, "facts_per_chunk": n, "mid_line": m}
                                  for n in (2, 1) for m in (False, True)], "facts_per_chunk", "mid_line"),
    "statements": (lambda: [{**run, "name": name, "statements_only": only} for name, run in DOCUMENT_METHODS.items()
                            for only in (False, True)], "name", "statements_only"),
    "passes": (lambda: [{"mode": m, "lr": lr, "passes": p} for m, p, lrs in (
        ("full", 10, (1e-5, 3e-5)), ("lora", 10, (1e-4, 3e-4)), ("sparse", 10, (10, 50)), ("sparse", 1, (50,))) for lr in lrs],
               "passes", "lr"),
}


def group(run, key):
    if key == "method":
        return f"{run['mode']} {run['optimizer']}"
    if key == "max_df":
        return f"max-df {run['max_df']:g}"
    if key == "spare_answer_slots":
        return f"spare {run['spare_answer_slots']:g}"
    if key == "grow_t":
        return f"grows up to t = {run['grow_t']}" if run["grow_t"] else "fixed t (the paper)"
    if key == "count_reads":
        return "answer positions" if run["count_reads"] == "answer" else "every token (the paper)"
    if key == "block_answer_slots":
        return "never trained" if run["block_answer_slots"] else "ranked last"
    if key == "slow_answer_slots":
        if run.get("damp_by") == "text":
            return f"slowed by text df, K {run['slow_answer_slots']:g}"
        return f"slow {run['slow_answer_slots']:g}" if run["slow_answer_slots"] else "not slowed"
    if key == "passes":
        return f"{run['mode']}, the stream {run['passes']}x" if run["passes"] > 1 else f"{run['mode']}, once"
    if key == "name":
        return run["name"]
    if key == "facts_per_chunk":
        return f"{run['facts_per_chunk']} fact(s) per chunk"
    if key == "fresh_rows":
        return "fresh rows" if run["fresh_rows"] else "rows shared (the paper)"
    return run.get(key, "sparse") if key else "sparse"


def point(run, field):
    v = run.get(field)
    if field == "top_t" and v == 0:
        return "all read"
    if v is None:                                                       # the run keeps finetune.py's default
        return "default"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def line(name, r):
    unseen = r["unseen_acc"]
    return (f"{name:<26} learned {r['learned_acc']:.3f}  unseen phrasing {'-' if unseen is None else f'{unseen:.3f}'}  "
            f"background {r['background_acc_before']:.3f} -> {r['background_acc_after']:.3f} (drop {r['background_drop']:.1%})  "
            f"skill drop {r['skill_drop']:.1%}  val loss {r['val_loss_before']:.4f} -> {r['val_loss_after']:.4f}  "
            f"[{r['seconds']:.0f}s]")


def fact_units(enc, facts, block_size):
    """Background units from the new facts themselves (the paper's Figure 7 ablation): one per fact batch."""
    for fact in facts:
        x, _, count = make_batch(enc, batch_texts(fact), block_size)
        yield x.unsqueeze(0), count.unsqueeze(0)                       # (1, B, L): one unit of B rows


def known_units(enc, ckpt, cfg, block_size):
    """Background units from pretraining windows (as finetune.py counts them), then one per
    even-numbered background fact, its statements and questions: a background that holds the
    model's knowledge, not only a sample of its text. The odd-numbered facts stay out of it, so
    that the drop on them (other_half_drop) is measured on facts the IDF never read."""
    yield from ft.pretraining_units(checkpoint_train_tokens(ckpt), block_size, cfg.background_batches,
                                 cfg.background_batch_size, cfg.seed)
    yield from fact_units(enc, corpus_facts(checkpoint_corpus(ckpt)[1]["background"][0::2]), block_size)


def other_half_drop(ckpt, before, after):
    """The background drop on the odd-numbered background facts' questions only."""
    odd = [i % 2 == 1 for i, f in enumerate(checkpoint_corpus(ckpt)[1]["background"]) for _ in f["questions"]]
    b = sum(c for c, o in zip(before["background_correct"], odd) if o)
    a = sum(c for c, o in zip(after["background_correct"], odd) if o)
    return (b - a) / b if b else 0.0


def run_recipe(run, cfg, rcfg, model, enc, ckpt, facts, device):
    """(background statistics, recipe) of a run: finetune.make_recipe's, but where the run sets its
    own background ("background") or marks the answers' slots ("spare_answer_slots" below 1:
    counted on every other background fact)."""
    block = model.config.block_size
    if run.get("background") in ("facts", "pretraining + known facts"):
        units = fact_units(enc, facts, block) if run["background"] == "facts" else known_units(enc, ckpt, cfg, block)
        stats = background_stats(model, units, device, quiet=True)
        return stats, build(rcfg, cfg.mode, cfg.ranking, stats)
    if run.get("spare_answer_slots", 1.0) < 1:
        stats = ft.load_or_compute_background(cfg, model, ckpt, device)
        readers = answer_readers(model, enc, checkpoint_corpus(ckpt)[1]["background"][0::2], device)
        recipe = build(rcfg, cfg.mode, cfg.ranking, stats, readers)
        for e in recipe.extensions:
            if isinstance(e, SlowAnswerSlots) and run.get("damp_by") == "text":   # any reads, not the answers'
                e.readers = [st["df"] for st in stats]
        return stats, recipe
    return ft.make_recipe(cfg, rcfg, model, enc, ckpt)


def stream_of(run, cfg, ckpt, facts):
    """(what a run teaches, what it scores): the facts, each taught and scored ("statements_only": taught
    their statements alone, scored on questions never trained), or with "task": "documents" the
    corpus's documents, chunk by chunk (finetune.what_to_teach; "facts_per_chunk": chunks of that many
    facts, "mid_line": each text's sentences on one line)."""
    if cfg.task == "documents":
        docs = corpus_documents(ckpt, cfg.documents)
        stream, questions = document_stream(docs, cfg.rewrites, cfg.seed, run.get("facts_per_chunk", FACTS_PER_CHUNK))
        if run.get("mid_line"):                                         # a chunk's sentences on one line, as prose
            stream = [{**item, "paraphrases": [t.replace(LINE, " ") for t in item["paraphrases"]]} for item in stream]
        return stream, questions
    if run.get("statements_only"):
        return [{**f, "questions": []} for f in facts], facts
    return facts, facts


def sweep(args, runs, key, field, lrs=ft.DEFAULT_LR):
    """Finetune a fresh copy of the base model for each run; one result dict per run. A run that
    sets no lr (nor --lr) takes its mode's rate from lrs (finetune.resolve)."""
    sparse = [run.get("mode", "sparse") == "sparse" for run in runs]
    if any("background" in run for run in runs) and (args.spare_answer_slots < 1 or args.slow_answer_slots):
        raise ValueError("this experiment's runs set their own background, and the answer-slot options read the "
                         "pretraining background's answers: run it without --spare-answer-slots and --slow-answer-slots")
    if args.block_answer_slots and any("spare_answer_slots" in run for run in runs):
        raise ValueError("--block-answer-slots needs the slots --spare-answer-slots marks, and this experiment's runs "
                         "set their own: run it without --block-answer-slots")
    model, enc, ckpt, facts, base_cfg, base_rcfg, device = setup(args, needs_memory=all(sparse))
    base = {k: v.clone() for k, v in model.state_dict().items()}
    n_slots = model.memory_modules[0].n_slots if model.memory_modules else 0
    planned = []                                                       # every run's configs, checked before any runs
    for run, needs_memory in zip(runs, sparse):
        name = group(run, key) if field == key else f"{group(run, key)} {field.replace('top_', '')}={point(run, field)}"
        settings = {**RECIPES.get(run.get("recipe"), {}),                 # "recipe": a named one's options
                    **{k: v for k, v in run.items() if k not in ("background", "damp_by")}}  # run_recipe's
        if needs_memory and not n_slots:                                # full and LoRA run on a dense model
            print(f"{name:<26} skipped: the model has no memory layer")
            continue
        if settings.get("top_t", 0) > n_slots:
            print(f"{name:<26} skipped: t is larger than the {n_slots} slots")
            continue
        if settings.get("top_t") == 0:                                  # 0: every slot read, so nothing to grow
            settings.update(top_t=n_slots, grow_t=0)
        cfg, rcfg = ft.configs({**vars(base_cfg), **vars(base_rcfg), **settings})
        ft.resolve(cfg, model, lrs)
        check_recipe(rcfg, cfg.top_t)
        planned.append((run, name, cfg, rcfg))
    results, diverged, before = [], [], None
    for run, name, cfg, rcfg in planned:
        model.load_state_dict(base)
        try:
            stats, recipe = run_recipe(run, cfg, rcfg, model, enc, ckpt, facts, device)
            taught, scored = stream_of(run, cfg, ckpt, facts)
            r, before, after = ft.finetune(cfg, model, enc, ckpt, scored, stats, recipe, before, quiet=True,
                                           taught=taught)
        except Diverged as e:                                           # record it, go on
            print(f"{name:<26} diverged: {e}", flush=True)
            diverged.append({"run": run, "error": str(e)})
            model = ft.load_base(base_cfg, device)[0]                   # LoRA adapters may still be wrapped in
            continue
        r["run"] = run
        if "background" in run or "spare_answer_slots" in run:
            r["other_half_drop"] = other_half_drop(ckpt, before, after)
        results.append(r)
        print(line(name, r) + (f"  other half's drop {r['other_half_drop']:.1%}" if "other_half_drop" in r else ""), flush=True)
    return {"results": results, "diverged": diverged}


SHARED_TINYSTORIES = os.path.join(ROOT, "..", "shared", "data", "tinystories", "tinystories_v1_train_head_2MiB.txt")
SPARSE_LRS = [{"lr": 20}, {"lr": 50}]

# The classroom preset's levers (python -m experiments classroom; docs/RESULTS.md, "The classroom preset"): its
# corpus, model and pretraining changed one or two at a time, each pretrained into out/variants/<folder>/ and
# taught the demo's new facts by the paper's method at t = 64, the preset's t = 300 and the paper's 500. The
# first is the preset.
OLD_TABLE = {"mem_n_keys": 128, "mem_topk": 8}                     # 16,384 slots read top-8, as the preset had
SHORT = {"max_iters": 600}                                         # half the preset's pretraining
CLASSROOM_VARIANTS = [
    ("classroom", "the preset: 65,536 slots top-16, 1,200 steps", {}, {}, {}),
    ("cls-k256t16s900", "900 steps", {}, {}, {"max_iters": 900}),
    ("cls-k256t16", "600 steps", {}, {}, SHORT),
    ("cls-k256t16s450", "450 steps", {}, {}, {"max_iters": 450}),
    ("cls-base", "16,384 slots top-8, 600 steps", {}, OLD_TABLE, SHORT),
    ("cls-k128t16", "16,384 slots top-16, 600 steps", {}, {"mem_n_keys": 128}, SHORT),
    ("cls-k256", "65,536 slots top-8, 600 steps", {}, {"mem_topk": 8}, SHORT),
    ("cls-k256h2t16", "2 memory heads, 600 steps", {}, {"mem_heads": 2}, SHORT),
    ("cls-vlr01s600", "value rate 0.1, 600 steps", {}, {}, {**SHORT, "value_lr": 0.1}),
    ("cls-v512", "vocabulary 512", {"vocab_size": 512}, {}, {}),
    ("cls-v2048", "vocabulary 2,048", {"vocab_size": 2048}, {}, {}),
    ("cls-k256t16s2000x1200", "2,000 stories", {"n_stories": 2000}, {}, {}),
    ("cls-s2000", "2,000 stories, 16,384 slots top-8, 600 steps", {"n_stories": 2000}, OLD_TABLE, SHORT),
    ("cls-w30s2000", "30 people, 2,000 stories, 16,384 slots top-8, 600 steps",
     {"n_people": 30, "n_towns": 6, "n_animals": 6, "n_stories": 2000}, OLD_TABLE, SHORT),
    ("cls-w120", "120 people, 16,384 slots top-8, 600 steps",
     {"n_people": 120, "n_towns": 20, "n_animals": 20, "fact_repeats": 60}, OLD_TABLE, SHORT),
    ("cls-w120x1200", "120 people", {"n_people": 120, "n_towns": 20, "n_animals": 20, "fact_repeats": 60}, {}, {}),
    ("cls-b16", "batch 16 x 1,100 steps, 16,384 slots top-8", {}, OLD_TABLE,
     {"batch_size": 16, "max_iters": 1100, "warmup_iters": 50}),
    ("cls-L3", "3 blocks, 16,384 slots top-8, 450 steps", {}, {**OLD_TABLE, "n_layer": 3, "memory_layers": (2,)},
     {"max_iters": 450}),
    ("cls-L4e64", "4 blocks of width 64, 16,384 slots top-8, 450 steps", {},
     {**OLD_TABLE, "n_layer": 4, "n_embd": 64, "memory_layers": (3,)}, {"max_iters": 450}),
]

# Experiments that pretrain their own models: per variant (its folder, a label, and the corpus,
# model and training settings that differ from the defaults), then the same runs on each.
# dense: the default memory model against the dense one (an FFN in block 3 too) trained for as
# many steps as run in the memory model's pretraining time (experiments/bench.py: 13,450 tokens/s against
# 8,315 here, so 1,700 x 1.62 = 2,750 steps), and for the same 1,700 steps.
VARIANTS = {
    "layouts": ([("h2k16", "2 heads x top-16", {}, {"mem_heads": 2, "mem_topk": 16}, {}),
                 ("h4k8", "4 heads x top-8", {}, {"mem_heads": 4, "mem_topk": 8}, {}),
                 ("h4k16", "4 heads x top-16 (default)", {}, {}, {}),
                 ("block2", "memory in block 2 of 4", {}, {"memory_layers": (2,)}, {})], SPARSE_LRS, "default"),
    "worlds": ([("open", "open answers (default)", {}, {}, {}),
                ("closed", "closed: 15 answers a relation", {"world": "closed"}, {}, {}),
                ("people500", "500 people, 60 documents each", {"n_people": 500, "n_towns": 60, "n_animals": 60,
                                                                 "fact_repeats": 60}, {}, {})], SPARSE_LRS, "default"),
    "real-text": ([("tinystories", "TinyStories text", {"source": "tinystories"}, {}, {})],
                  [{"mode": m} for m in ("full", "lora", "sparse")], "default"),
    "dense": ([("h4k16", "memory, 1,700 steps (default)", {}, {}, {}),
               ("dense2750", "dense, 2,750 steps (same time)", {}, {}, {"dense": True, "max_iters": 2750}),
               ("dense1700", "dense, 1,700 steps", {}, {}, {"dense": True})],
              [{"mode": "full"}, {"mode": "full", "lr": 1e-4}, {"mode": "lora"}, {"mode": "lora", "lr": 3e-4},
               {"mode": "sparse"}], "default"),
    "classroom": (CLASSROOM_VARIANTS, [{"name": f"t = {t}, lr {lr}", "top_t": t, "lr": lr}
                                       for t, lr in ((64, 100), (300, 100), (500, 100), (500, 200))], "classroom"),
}


# What a variant differs from: the defaults, or the classroom preset's corpus, model and training.
BASES = {"default": ({}, {}, {}), "classroom": (CLASSROOM_DATA, CLASSROOM_MODEL, CLASSROOM_TRAIN)}


def pretrained(folder, data, model, training, args, base="default"):
    """The checkpoint of the `base` training run (BASES) on a corpus, model and training settings
    that differ from it by `data`, `model` and `training`; the corpus is prepared and the model
    trained if missing. With no difference it is the base's own checkpoint (pretrained first by
    setup if missing)."""
    base_data, base_model, base_training = BASES[base]
    if not data and not model and not training:
        return ft.DEFAULT_CHECKPOINT if base == "default" else ft.CLASSROOM_FINETUNE["checkpoint"]
    ckpt = os.path.join(ROOT, "out", "variants", folder, "ckpt.pt")
    if not os.path.exists(ckpt):
        corpus = DataConfig(**{**base_data, **data})
        if data:                                                        # its own corpus beside the base's
            corpus.out_dir = os.path.join(ROOT, "data", "variants", folder)
        if corpus.source == "tinystories":
            corpus.tinystories_file = args.tinystories_file
        prepare(corpus)
        tc = TrainConfig(**{**base_training, **training, "data_dir": corpus.out_dir, "out_dir": os.path.dirname(ckpt),
                            "device": args.device})
        print(f"pretraining {folder} on {corpus.out_dir} -> {ckpt} ({tc.max_iters} steps)", flush=True)
        train(tc, GPTConfig(**{**base_model, **model}))
    return ckpt


def classroom_runs(args, runs):
    """Runs with the classroom preset's stream settings (finetune.CLASSROOM_FINETUNE), set in args too."""
    preset = {k: ft.CLASSROOM_FINETUNE[k] for k in ("facts", "steps_per_fact", "top_t", "background_batches")}
    args.facts, args.steps_per_fact = preset["facts"], preset["steps_per_fact"]
    return [{**preset, **run} for run in runs]


def variants(args, name):
    """Pretrain each variant (or reuse its checkpoint), then run the same runs on each (on the
    classroom's variants, with the classroom preset's stream and rates)."""
    out = {}
    variants_, runs, base = VARIANTS[name]
    lrs = ft.CLASSROOM_LR if base == "classroom" else ft.DEFAULT_LR
    if base == "classroom":
        runs = classroom_runs(args, runs)
    for folder, label, data, model, training in variants_:
        args.checkpoint = pretrained(folder, data, model, training, args, base)
        ckpt = load_checkpoint(args.checkpoint)[2]
        m, tc = ckpt["metrics"], ckpt["train_config"]
        seconds = ckpt["step"] * tc["batch_size"] * ckpt["model_args"]["block_size"] / m["tokens_per_s"]
        print(f"{label}: background facts {m['fact_acc']:.3f}, val loss {m['val_loss']:.4f}, "
              f"{ckpt['step']} steps in {seconds:.0f} s of training steps", flush=True)
        key, field = ("name", "name") if base == "classroom" else ("mode", "lr" if name != "real-text" else "mode")
        out[label] = sweep(args, runs, key, field, lrs)
        if base == "classroom" and out[label]["results"]:
            print(f"  skill probe before finetuning {out[label]['results'][0]['skill_acc_before']:.3f}", flush=True)
        out[label]["pretraining"] = {**m, "steps": ckpt["step"], "step_seconds": seconds}
    return {"variants": out}


# The course's exercises (docs/COURSE.md) as runs of finetune.py --preset classroom, on the
# classroom model pretrained with three seeds, so that the course gives each result as a range.
COURSE_SEEDS = (1337, 1, 2)
COURSE_ONE_FACT = 10                                                    # facts each taught alone (exercise 2)
COURSE_ONE_FACT_LRS = {"full": (3e-4, 1e-3, 3e-3), "lora": (1e-3, 3e-3, 1e-2)}   # up to where they learn most facts
COURSE_RUNS = [("the demo", {}), ("lr 50", {"lr": 50.0}), ("lr 200", {"lr": 200.0}),
               ("full", {"mode": "full"}), ("lora", {"mode": "lora"}), ("tf ranking", {"ranking": "tf"}),
               ("t=64", {"top_t": 64}), ("t=500", {"top_t": 500}),
               ("t=2000", {"top_t": 2000}), ("max-df 0.1", {"max_df": 0.1})]


def course(args):
    """Each of COURSE_RUNS with the classroom preset's settings, on each seed's classroom model
    (the preset's own checkpoint for its seed, out/classroom-seed<N>/ for the others; each
    pretrained if missing, about 4 min), and each of the first COURSE_ONE_FACT facts taught alone
    by full finetuning, LoRA and sparse (analyses.one_fact); then the range of each result over the seeds."""
    runs = classroom_runs(args, [run for _, run in COURSE_RUNS])
    out, names = {}, [name for name, _ in COURSE_RUNS]
    for seed in COURSE_SEEDS:
        folder = "classroom" if seed == CLASSROOM_TRAIN["seed"] else f"classroom-seed{seed}"
        tcfg = TrainConfig(**{**CLASSROOM_TRAIN, "seed": seed, "out_dir": os.path.join(ROOT, "out", folder),
                              "device": args.device})
        args.checkpoint = os.path.join(tcfg.out_dir, "ckpt.pt")
        if not os.path.exists(args.checkpoint) or ft.unfinished(args.checkpoint):   # missing, or stopped half-way
            train(replace(tcfg, resume=os.path.exists(args.checkpoint)), GPTConfig(**CLASSROOM_MODEL), quiet=True)
        print(f"pretraining seed {seed}:", flush=True)
        out[f"seed {seed}"] = sweep(args, runs, "mode", "lr", ft.CLASSROOM_LR)
        out[f"seed {seed}"]["pretraining"] = load_checkpoint(args.checkpoint)[2]["metrics"]
        alone = copy.copy(args)                                        # each fact alone: matched learning
        alone.facts, alone.top_t, alone.lr = COURSE_ONE_FACT, ft.CLASSROOM_FINETUNE["top_t"], ft.CLASSROOM_LR[("sparse", "sgd")]
        out[f"seed {seed}"]["one_fact"] = one_fact(alone, COURSE_ONE_FACT_LRS)["runs"]
    print(f"\nrange over the {len(COURSE_SEEDS)} pretraining seeds (new facts stream, {args.facts} facts):")
    span = lambda rs, key, scale=1: f"{min(r[key] for r in rs) * scale:.2f}-{max(r[key] for r in rs) * scale:.2f}"
    for i, name in enumerate(names):
        rs = [v["results"][i] for v in out.values() if len(v["results"]) == len(names)]
        for r in rs:
            r["val_loss_change"] = r["val_loss_after"] / r["val_loss_before"] - 1
        if rs:
            print(f"  {name:<12} learned {span(rs, 'learned_acc')}  unseen {span(rs, 'unseen_acc')}  "
                  f"background drop {span(rs, 'background_drop', 100)}%  skill {span(rs, 'skill_acc_before')} "
                  f"(drop {span(rs, 'skill_drop', 100)}%)  val loss {span(rs, 'val_loss_after')} "
                  f"({span(rs, 'val_loss_change', 100)}%)")
    print(f"each of the first {COURSE_ONE_FACT} facts taught alone (one_fact):")
    for i, r in enumerate(next(iter(out.values()))["one_fact"]):
        rs = [v["one_fact"][i] for v in out.values()]
        print(f"  {r['mode']:<7} lr {r['lr']:<6g} learned {span(rs, 'learned')}  unseen {span(rs, 'unseen')}  "
              f"background drop per fact {span(rs, 'background_drop', 100)}%")
    return {"variants": out}


def sweep_figure(plt, name, data):
    """Learned against forgotten (and against the val loss change), a line per group of runs."""
    key, field = SWEEPS[name][1:]
    panels = 2 if name in ("compare", "pareto") else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.2), squeeze=False)
    groups = {}
    for r in data["results"]:
        groups.setdefault(group(r["run"], key), []).append(r)
    for g, rs in groups.items():
        for i, ax in enumerate(axes[0]):
            xs = [r["background_drop"] * 100 if i == 0 else (r["val_loss_after"] / r["val_loss_before"] - 1) * 100 for r in rs]
            ys = [r["learned_acc"] * 100 for r in rs]
            ax.plot(xs, ys, "o-", label=g)
            for r, x, y in zip(rs, xs, ys):
                ax.annotate(point(r["run"], field), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    for i, ax in enumerate(axes[0]):
        ax.set_xlabel("forgotten: drop in background-fact accuracy (%)" if i == 0 else "val loss change (%, log scale past 1)")
        if i == 1:
            ax.set_xscale("symlog", linthresh=1.0)                 # sparse's +0.1% and LoRA's +190% on one axis
        ax.set_ylabel("learned: new-fact accuracy (%)")
        ax.set_ylim(0, 105)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def variants_figure(plt, name, data):
    """Learned against forgotten, a line per pretrained variant over its runs (classroom: beside it,
    what the preset's run learns and forgets against each variant's pretraining time)."""
    if name == "classroom":
        fig, (ax, ax1) = plt.subplots(1, 2, figsize=(13, 4.8))
        for label, v in data["variants"].items():
            r = next(r for r in v["results"] if r["run"]["top_t"] == ft.CLASSROOM_FINETUNE["top_t"]
                     and r["lr"] == ft.CLASSROOM_LR[("sparse", "sgd")])     # the preset's run
            ax1.plot(v["pretraining"]["step_seconds"], r["learned_acc"] * 100, "o")
            ax1.annotate(f"{label}: {r['background_drop']:.1%} drop", (v["pretraining"]["step_seconds"],
                         r["learned_acc"] * 100), textcoords="offset points", xytext=(4, 3), fontsize=6)
        ax1.set_xlabel("pretraining steps' time (s, 2 CPU cores)")
        ax1.set_ylabel("learned at the preset's t and lr (%)")
        ax1.set_ylim(0, 105)
        ax1.grid(alpha=0.3)
    else:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, v in data["variants"].items():
        rs = v["results"]
        mixed = name in ("dense", "real-text")              # runs of several methods: points, no line
        ax.plot([r["background_drop"] * 100 for r in rs], [r["learned_acc"] * 100 for r in rs],
                "o" if mixed else "o-", label=label)
        for r in rs if name != "classroom" else []:
            text = (f"{r['mode']} {r['lr']:g}" if name == "dense"
                    else point(r["run"], "mode" if name == "real-text" else "lr"))
            ax.annotate(text, (r["background_drop"] * 100, r["learned_acc"] * 100), textcoords="offset points",
                        xytext=(4, 3), fontsize=7)
    ax.set_xlabel("forgotten: drop in background-fact accuracy (%)")
    ax.set_ylabel("learned: new-fact accuracy (%)")
    if name == "classroom":
        ax.set_title("a line per variant through its runs: " + "; ".join(r["run"]["name"] for r in rs), fontsize=8)
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6 if name == "classroom" else 8)
    return fig


def course_figure(plt, data):
    """The course's runs (learned against forgotten, a colour per seed), and beside them each fact
    taught alone by full finetuning, LoRA and sparse: forgetting at matched learning."""
    fig, (ax, ax1) = plt.subplots(1, 2, figsize=(12, 4.2))
    for label, v in data["variants"].items():
        rs = v["results"]
        ax.plot([r["background_drop"] * 100 for r in rs], [r["learned_acc"] * 100 for r in rs], "o", label=label)
        for r, (name, _) in zip(rs, COURSE_RUNS):
            ax.annotate(name, (r["background_drop"] * 100, r["learned_acc"] * 100), textcoords="offset points",
                        xytext=(4, 3), fontsize=7)
        first = label == next(iter(data["variants"]))
        for i, r in enumerate(v.get("one_fact", [])):
            ax1.plot(r["background_drop"] * 100, r["learned"] * 100, {"full": "s", "lora": "^", "sparse": "o"}[r["mode"]],
                     color={"full": "C3", "lora": "C2", "sparse": "C0"}[r["mode"]], ms=8, alpha=0.6,
                     label=r["mode"] if first and (i == 0 or r["mode"] != v["one_fact"][i - 1]["mode"]) else None)
            if first:                                                  # each rate once
                ax1.annotate(f"lr {r['lr']:g}", (r["background_drop"] * 100, r["learned"] * 100), textcoords="offset points",
                             xytext=(5, -10), fontsize=7)
    ax.set_xlabel("forgotten: drop in background-fact accuracy (%)")
    ax1.set_xlabel("background drop after one fact (%, mean; log scale past 0.1)")
    ax1.set_xscale("symlog", linthresh=0.1)
    ax.set_title("the stream of 30 facts", fontsize=9)
    ax1.set_title(f"each of {COURSE_ONE_FACT} facts taught alone", fontsize=9)
    for a in (ax, ax1):
        a.set_ylabel("learned (%)")
        a.set_ylim(0, 105)
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    return fig


def plot(name, data, path, title):
    import matplotlib
    matplotlib.use("Agg")                                              # files only, no display needed
    import matplotlib.pyplot as plt
    if name in ANALYSES:
        fig = ANALYSES[name][1](plt, data)
    else:
        fig = (course_figure(plt, data) if name == "course" else variants_figure(plt, name, data) if name in VARIANTS
               else sweep_figure(plt, name, data))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


@interruptible
def main(argv=None):
    presets = {"recipe": RECIPES}
    p = config_parser(__doc__, RecipeConfig, presets=presets)          # the steps beyond the paper: recipes.py
    p.prog = "python -m experiments"
    p.add_argument("experiment", choices=sorted([*SWEEPS, *ANALYSES, *VARIANTS, "course"]))
    p.add_argument("--checkpoint", default=ft.DEFAULT_CHECKPOINT, help="pretrained model (made first if it is the default and missing)")
    p.add_argument("--facts", type=int, default=None, help="new facts in the stream (default 50; long: 500 in each of "
                   "its two streams), which keeps each experiment under 15 min on 2 CPU cores")
    p.add_argument("--steps-per-fact", type=int, default=ft.FinetuneConfig.steps_per_fact, help="steps on each fact's batch")
    p.add_argument("--top-t", type=int, default=ft.FinetuneConfig.top_t, help="sparse: rows per step where a run "
                   "does not set t (default: finetune.py's)")
    p.add_argument("--lr", type=float, default=0.0, help="learning rate where a run does not set one; 0 = finetune.py's "
                   "default (curves always uses each method's default)")
    p.add_argument("--facts-file", default="", help="the sweeps and answer-reads: your own facts (finetune.py's "
                   "facts-file format) instead of the corpus's new facts")
    rates = lambda mode: " ".join(f"{lr:g}" for lr in ONE_FACT_LRS[mode])   # the defaults, as help shows them
    p.add_argument("--full-lrs", type=float, nargs="+", help=f"one-fact: full finetuning's rates (default {rates('full')})")
    p.add_argument("--lora-lrs", type=float, nargs="+", help=f"one-fact: LoRA's rates (default {rates('lora')})")
    p.add_argument("--out-dir", default=os.path.join(ROOT, "out", "experiments"), help="where the JSON and PNG go")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.add_argument("--tinystories-file", default=SHARED_TINYSTORIES if os.path.exists(SHARED_TINYSTORIES) else "",
                   help="real-text: local TinyStories text (default: the shared sample when present, else download)")
    args = parse_args(p, argv, presets)
    if args.facts is not None and args.facts < 1:
        sys.exit(f"error: --facts must be at least 1, not {args.facts}")
    args.facts = args.facts or (500 if args.experiment == "long" else 50)
    if args.facts_file:
        if args.experiment not in SWEEPS and args.experiment != "answer-reads":
            sys.exit(f"error: --facts-file is for the sweeps ({', '.join(sorted(SWEEPS))}) and answer-reads; "
                     f"{args.experiment} streams the corpus's facts")
        try:
            args.facts = len(read_facts_file(args.facts_file))
        except (ValueError, OSError) as e:
            sys.exit(f"error: {e}")
    keep_freed_memory()
    t0 = time.time()
    path = os.path.join(args.out_dir, args.experiment)
    try:
        check_writable(path + ".json", f"--out-dir {args.out_dir}: its results")   # before any work
        check_recipe(split(args, RecipeConfig), args.top_t)
        if args.experiment in ANALYSES:
            data = ANALYSES[args.experiment][0](args)
        elif args.experiment in VARIANTS:
            data = variants(args, args.experiment)
        elif args.experiment == "course":
            data = course(args)
        else:
            runs, key, field = SWEEPS[args.experiment]
            data = sweep(args, runs(), key, field)
    except (ValueError, OSError, RuntimeError) as e:
        sys.exit(f"error: {e}")
    data = {"experiment": args.experiment, "checkpoint": args.checkpoint, "facts": args.facts, "facts_file": args.facts_file,
            "steps_per_fact": args.steps_per_fact, "seed": ft.FinetuneConfig.seed, "recipe": args.recipe,
            "recipe_settings": vars(split(args, RecipeConfig)), **data, "seconds": time.time() - t0}
    try:
        write_json(path + ".json", data)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {write_error(path + '.json', e)}")
    taught = (f"{ft.FinetuneConfig.documents} documents' chunks" if args.experiment.startswith("documents")
              else f"{args.facts} facts")
    title = f"{args.experiment}: {taught} x {args.steps_per_fact} steps"
    try:
        plot(args.experiment, data, path + ".png", title)
    except OSError as e:
        sys.exit(f"error: {write_error(path + '.png', e)}; {path}.json was written")
    print(f"{time.time() - t0:.0f}s | wrote {path}.json and {path}.png")


if __name__ == "__main__":
    main()
