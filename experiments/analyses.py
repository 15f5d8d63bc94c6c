"""
The analyses among python -m experiments' commands: rather than sweep a setting, each looks inside
streams at finetune.py's defaults, or (answer-reads) inside the pretrained memory.

    python -m experiments curves        # learned and forgotten after every 10 facts, per method
    python -m experiments slots         # which slots a fact selects, and which tokens read them
    python -m experiments forgetting    # which background answers a sparse stream breaks, and what they become
    python -m experiments long          # sparse: a stream of 500 facts, then 500 more
    python -m experiments one-fact      # each fact taught alone, by each method: forgetting at matched learning
    python -m experiments answer-reads  # which slots the answers are read from, and how many two questions share
    python -m experiments unseen        # why a new relation's unseen phrasing is missed: which part of the read falls short
    python -m experiments kept          # which taught facts the stream itself undoes, and by a fact of which subject

Each takes experiments/sweeps.py's parsed command line, prints its lines and returns every number
(the JSON experiments/sweeps.py writes); the *_figure after it draws its PNG. setup() is how every
experiment starts, the sweeps in experiments/sweeps.py too.
"""

from contextlib import contextmanager

import torch

import finetune as ft
from checkpoint import checkpoint_corpus, checkpoint_train_tokens
from common import pick_device
from data.prepare import DataConfig, new_fact_entries, seen_tokens
from evaluate import corpus_facts, first_wrong_tokens, qa_accuracy, qa_batch, qa_correct, qa_items, qa_pair
from facts import batch_texts, check_lengths, make_batch, stream_facts
from sparse import inverse_document_frequency, memory_tables, slot_counts, slot_scores, table_reads, top_slots


def setup(args, needs_memory=True):
    """(model, enc, ckpt, facts, base config, recipe config, device) as every experiment starts
    (experiments/sweeps.py's options: FinetuneConfig's and RecipeConfig's fields). needs_memory:
    the experiment has nothing to run without a memory layer, so a dense model is refused."""
    device = pick_device(args.device)
    cfg, rcfg = ft.configs(vars(args))
    model, enc, ckpt = ft.load_base(cfg, device)
    if needs_memory:
        refuse_dense(args, model)
    facts = stream_facts(ckpt, cfg.facts, args.facts_file)
    check_lengths(enc, facts, model.config.block_size)
    return model, enc, ckpt, facts, cfg, rcfg, device


def refuse_dense(args, model):
    if not model.memory_modules:
        raise ValueError(f"{args.experiment} studies the memory layer, and {args.checkpoint} has none (a dense "
                         "model); give a memory model's --checkpoint")


def curves(args, every=10):
    """Learned-so-far and background accuracy after every `every` facts, for each method."""
    model, enc, ckpt, facts, base_cfg, rcfg, device = setup(args, needs_memory=False)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    background = qa_items(checkpoint_corpus(ckpt)[1]["background"])
    out = {}
    for mode in ("full", "lora", "sparse"):
        if mode == "sparse" and not model.memory_modules:                # full and LoRA run on a dense model
            print("sparse  skipped: the model has no memory layer")
            continue
        cfg = ft.resolve(ft.FinetuneConfig(**{**vars(base_cfg), "mode": mode, "lr": 0.0}), model)
        model.load_state_dict(base)
        points = [{"facts": 0, "learned_so_far": None, "first_facts": None,
                   "background": qa_accuracy(model, enc, background, device)}]

        def measure(n):
            if n % every and n != len(facts):
                return
            seen, first = qa_items(facts[:n]), qa_items(facts[:every])    # the taught questions
            points.append({"facts": n, "learned_so_far": qa_accuracy(model, enc, seen, device),
                           "first_facts": qa_accuracy(model, enc, first, device),
                           "background": qa_accuracy(model, enc, background, device)})
            p = points[-1]
            print(f"{mode:<7} after {n:>4} facts: learned so far {p['learned_so_far']:.3f} | first {every} facts "
                  f"{p['first_facts']:.3f} | background {p['background']:.3f}", flush=True)
        stats, recipe = ft.make_recipe(cfg, rcfg, model, enc, ckpt)
        ft.run_stream(cfg, model, enc, facts, stats, recipe, quiet=True, on_fact=measure)
        out[mode] = {"lr": cfg.lr, "optimizer": cfg.optimizer, "points": points}
    return {"curves": out, "every": every}


def curves_figure(plt, data):
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for mode, c in data["curves"].items():
        pts = c["points"]
        axes[0].plot([p["facts"] for p in pts[1:]], [p["learned_so_far"] * 100 for p in pts[1:]], "o-", label=mode)
        axes[1].plot([p["facts"] for p in pts], [p["background"] * 100 for p in pts], "o-", label=mode)
    for ax, y in zip(axes, ("learned: accuracy on the facts so far (%)", "background-fact accuracy (%)")):
        ax.set_xlabel("facts streamed")
        ax.set_ylabel(y)
        ax.set_ylim(0, 105)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


# Rates of full finetuning and LoRA near where they learn one fact in 10 steps (their defaults learn none).
ONE_FACT_LRS = {"full": (1e-4, 3e-4), "lora": (3e-4, 1e-3)}


def one_fact(args, lrs=None):
    """Streams of one fact: each of the first --facts facts taught alone to the pretrained model
    by each method (full and LoRA at each of their rates in lrs, or --full-lrs and --lora-lrs, or
    ONE_FACT_LRS; sparse at the experiments' rate), and the background measured after it. The
    shortest stream, where every method can learn: its forgetting at matched learning."""
    model, enc, ckpt, facts, base_cfg, rcfg, device = setup(args, needs_memory=False)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    background = qa_items(checkpoint_corpus(ckpt)[1]["background"])
    before = qa_accuracy(model, enc, background, device)
    lrs = lrs or {m: getattr(args, f"{m}_lrs", None) or ONE_FACT_LRS[m] for m in ("full", "lora")}
    runs = [(m, lr) for m in ("full", "lora") for lr in lrs[m]]
    if model.memory_modules:                                           # a dense model: full and LoRA only
        runs.append(("sparse", base_cfg.lr))
    out = []
    for mode, lr in runs:
        model.load_state_dict(base)
        cfg = ft.resolve(ft.FinetuneConfig(**{**vars(base_cfg), "mode": mode, "lr": lr}), model)
        stats, recipe = ft.make_recipe(cfg, rcfg, model, enc, ckpt)       # of the pretrained model
        learned, unseen, drops = [], [], []
        for fact in facts:
            model.load_state_dict(base)
            ft.run_stream(cfg, model, enc, [fact], stats, recipe, quiet=True)
            learned.append(all(qa_correct(model, enc, qa_items([fact]), device)))
            if fact["heldout_question"]:
                unseen.append(qa_correct(model, enc, [qa_pair(fact["heldout_question"], fact["answer"])], device)[0])
            drops.append((before - qa_accuracy(model, enc, background, device)) / before if before else 0.0)
        out.append({"mode": mode, "lr": cfg.lr, "learned": sum(learned) / len(learned),
                    "unseen": sum(unseen) / max(1, len(unseen)), "background_drop": sum(drops) / len(drops), "drops": drops})
        r = out[-1]
        print(f"{mode:<7} lr {cfg.lr:<6g} one fact at a time, {len(facts)} facts: learned {r['learned']:.2f} "
              f"(unseen {r['unseen']:.2f}), background drop {r['background_drop']:.2%} on average "
              f"(largest {max(drops):.2%})", flush=True)
    model.load_state_dict(base)
    return {"background_before": before, "runs": out}


def one_fact_figure(plt, data):
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in data["runs"]:
        ax.plot(r["background_drop"] * 100, r["learned"] * 100, "o", ms=9, label=f"{r['mode']} (lr {r['lr']:g})")
    ax.set_xlabel("background drop after one fact (%, mean)")
    ax.set_ylabel("learned (%)")
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def new_facts(ckpt, enc, n):
    """The first n new-fact entries: facts.json's, continued by the corpus generator when
    more are asked (the same prefix; data.prepare.new_fact_entries)."""
    entries = checkpoint_corpus(ckpt)[1]["new"]
    if n <= len(entries):
        return entries[:n]
    return new_fact_entries(DataConfig(**ckpt["data_meta"]["config"]), enc, seen_tokens(checkpoint_train_tokens(ckpt)), n)


def long_stream(args, points=5):
    """Sparse finetuning on a stream of --facts facts, then a second stream of as many more:
    after every fifth of each stream, accuracy on both streams' facts (each stream's questions,
    taught or not yet), on all the facts taught so far, and on the background."""
    device = pick_device(args.device)
    cfg, rcfg = ft.configs({**vars(args), "facts": ft.FinetuneConfig.facts})   # --facts: each stream's, below
    model, enc, ckpt = ft.load_base(cfg, device)
    refuse_dense(args, model)
    cfg = ft.resolve(cfg, model)
    entries = new_facts(ckpt, enc, 2 * args.facts)
    streams = [corpus_facts(entries[:args.facts]), corpus_facts(entries[args.facts:])]
    for s in streams:
        check_lengths(enc, s, model.config.block_size)
    background = qa_items(checkpoint_corpus(ckpt)[1]["background"])
    items = [qa_items(s) for s in streams]                            # each stream's taught questions
    stats, recipe = ft.make_recipe(cfg, rcfg, model, enc, ckpt)
    trace = [{"facts": 0, "first": qa_accuracy(model, enc, items[0], device), "second": None, "taught": None,
              "background": qa_accuracy(model, enc, background, device)}]
    every = max(1, args.facts // points)
    t_per_fact = []                                                   # each fact's t in its last round
    for k, stream in enumerate(streams):
        def measure(n):
            if n % every and n != len(stream):
                return
            taught = qa_items(streams[0][:n] if k == 0 else streams[0] + stream[:n])
            p = {"facts": k * args.facts + n, "first": qa_accuracy(model, enc, items[0], device),
                 "second": qa_accuracy(model, enc, items[1], device) if k else None,
                 "taught": qa_accuracy(model, enc, taught, device),
                 "background": qa_accuracy(model, enc, background, device)}
            trace.append(p)
            print(f"after {p['facts']:>5} facts: first stream {p['first']:.3f}"
                  + ("" if p["second"] is None else f" | second stream {p['second']:.3f}")
                  + f" | all taught so far {p['taught']:.3f} | background {p['background']:.3f} "
                  f"(drop {(trace[0]['background'] - p['background']) / trace[0]['background']:.1%})", flush=True)
        t_per_fact += ft.run_stream(cfg, model, enc, stream, stats, recipe, quiet=True, on_fact=measure)[1]
    t_used = [{str(t): part.count(t) for t in sorted(set(part))}                # the facts of each fifth, by their last t
              for part in (t_per_fact[i:i + every] for i in range(0, len(t_per_fact), every))]
    if rcfg.grow_t:
        print("facts ending at each t, by fifth of each stream:", "; ".join(
            ", ".join(f"{t}: {c}" for t, c in part.items()) for part in t_used))
    return {"lr": cfg.lr, "top_t": cfg.top_t, "stream": args.facts, "trace": trace, "t_used": t_used}


def long_figure(plt, data):
    fig, ax = plt.subplots(figsize=(6.5, 4))
    tr = data["trace"]
    ax.plot([p["facts"] for p in tr], [p["first"] * 100 for p in tr], "o-", label="first stream's facts")
    second = [p for p in tr if p["second"] is not None]
    ax.plot([p["facts"] for p in second], [p["second"] * 100 for p in second], "o-", label="second stream's facts")
    taught = [p for p in tr if p.get("taught") is not None]
    ax.plot([p["facts"] for p in taught], [p["taught"] * 100 for p in taught], "o--", label="all facts taught so far")
    ax.plot([p["facts"] for p in tr], [p["background"] * 100 for p in tr], "o-", label="background facts")
    ax.axvline(data["stream"], color="#999", lw=1)
    ax.set_xlabel("facts streamed (sparse finetuning)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def token_spans(enc, text):
    """(start, end) character span of each token of text."""
    spans, at = [], 0
    for tok in enc.encode(text):
        n = len(enc.decode([tok]))
        spans.append((at, at + n))
        at += n
    return spans


@torch.no_grad()
def slots(args, show=3):
    """For each fact: the core set (slots read by every row of its batch), how many of the
    top-t fall in it, and which tokens read the top-t; over all facts, the share of top-t
    reads at entity tokens (the subject's name and the answer) against their share of tokens."""
    model, enc, ckpt, facts, base_cfg, rcfg, device = setup(args)
    t = base_cfg.top_t
    entries = checkpoint_corpus(ckpt)[1]["new"][:len(facts)]
    idf = inverse_document_frequency(ft.load_or_compute_background(ft.resolve(base_cfg, model), model, ckpt, device)[0])
    mem = model.memory_modules[0]
    per_fact, totals = [], {"entity_reads": 0, "selected_reads": 0, "entity_tokens": 0, "tokens": 0}
    for n, (fact, entry) in enumerate(zip(facts, entries)):
        texts = batch_texts(fact)
        x, _, count = make_batch(enc, texts, model.config.block_size)
        with model.recording_slots():
            model(x.to(device))
            reads = model.slot_reads()[0].cpu()                           # (B, T, H, k)
        c = slot_counts(reads[count], mem.n_slots)
        selected = top_slots(slot_scores(c, idf), c, t)                 # the paper's top-t
        is_selected = torch.zeros(mem.n_slots, dtype=torch.bool)
        is_selected[selected] = True
        core = set.intersection(*(set(reads[b][count[b]].flatten().tolist()) for b in range(len(texts))))
        marked = []
        for b, text in enumerate(texts):
            entity = [(text.find(w), text.find(w) + len(w)) for w in (entry["subject"], entry["answer"].rstrip("."))
                      if w in text]
            pieces = []
            for j, (s, e) in enumerate(token_spans(enc, text)):
                hits = int(is_selected[reads[b, j + 1].flatten()].sum())   # +1: the leading separator
                is_entity = any(s < ee and e > ss for ss, ee in entity)
                totals["tokens"] += 1
                totals["entity_tokens"] += is_entity
                totals["selected_reads"] += hits
                totals["entity_reads"] += hits * is_entity
                pieces.append(f"[{text[s:e]}]{hits}" if hits else text[s:e])
            marked.append("".join(pieces))
        per_fact.append({"fact": texts[0], "subject": entry["subject"], "answer": entry["answer"],
                         "slots_read": int((c > 0).sum()), "core": len(core),
                         "top_t_in_core": len(core & set(selected.tolist())), "marked": marked})
        if n < show:
            f = per_fact[-1]
            print(f"fact {n + 1}: subject {f['subject']}, answer {f['answer']}")
            print(f"  slots read by its batch {f['slots_read']} | core set (read by every row) {f['core']} | "
                  f"top-{t} slots in the core {f['top_t_in_core']}")
            print("  tokens that read top-t slots, [token]count of top-t reads:")
            for m in marked:
                print("    " + m)
    mean = lambda k: sum(f[k] for f in per_fact) / len(per_fact)
    summary = {"facts": len(per_fact), "t": t, "mean_slots_read": mean("slots_read"), "mean_core": mean("core"),
               "mean_top_t_in_core": mean("top_t_in_core"),
               "entity_share_of_tokens": totals["entity_tokens"] / totals["tokens"],
               "entity_share_of_top_t_reads": totals["entity_reads"] / max(totals["selected_reads"], 1)}
    print(f"over {len(per_fact)} facts: {summary['mean_slots_read']:.0f} slots read per batch, core set "
          f"{summary['mean_core']:.1f}, top-{t} in the core {summary['mean_top_t_in_core']:.1f}; entity tokens are "
          f"{summary['entity_share_of_tokens']:.1%} of tokens and take {summary['entity_share_of_top_t_reads']:.1%} "
          f"of the top-{t} slots' reads")
    return {"summary": summary, "per_fact": per_fact}


def slots_figure(plt, data):
    s = data["summary"]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.bar(["all tokens", f"reads of the top-{s['t']} slots"],
           [s["entity_share_of_tokens"] * 100, s["entity_share_of_top_t_reads"] * 100], color=["#999", "#1f77b4"])
    ax.set_ylabel("at entity tokens: subject name or answer (%)")
    ax.set_ylim(0, 100)
    return fig


@contextmanager
def memory_off(model):
    """Inside the block every memory layer outputs zeros (the whole memory+ block, gate and
    projection included); the hooks are gone again on the way out."""
    hooks = [m.register_forward_hook(lambda mod, inp, out: torch.zeros_like(out)) for m in model.memory_modules]
    try:
        yield model
    finally:
        for h in hooks:
            h.remove()


@contextmanager
def memory_part(model, part, at, replace=None):
    """Inside the block, at flat position `at` of the one sequence in the batch, each memory
    layer's `part` (memory.py's forward: "read" is y, the weighted sum of the values read;
    "gate" is W_1 x, before the silu; "output" is W_2 (y * silu(W_1 x))) is appended to the list
    it yields, or with `replace` (such a list) is replaced by that layer's entry."""
    got, hooks = [], []
    for i, m in enumerate(model.memory_modules):
        def hook(module, inputs, out, i=i):                            # out: (T, width) for a batch of one
            if replace is None:
                got.append(out[at].clone())
                return None
            out = out.clone()
            out[at] = replace[i]
            return out
        hooks.append({"read": m.values, "gate": m.gate, "output": m.proj}[part].register_forward_hook(hook))
    try:
        yield got
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def first_token_right(model, enc, pair, device, part=None, donor=None):
    """Does the model predict the first answer token of the (prompt, answer) pair? With a part
    (memory_part) and a donor pair: with that part of every memory layer, where the first answer
    token is predicted, taken from the donor's own such position."""
    x, y, starts = qa_batch(enc, [pair])
    if part:
        dx, _, dstarts = qa_batch(enc, [donor])
        with memory_part(model, part, dstarts[0]) as swap:            # the donor's part, recorded
            model(dx.to(device))
        with memory_part(model, part, starts[0], swap):               # and put in
            logits, _ = model(x.to(device))                            # (1, L, vocab)
    else:
        logits, _ = model(x.to(device))
    return logits[0, starts[0]].argmax().item() == y[0, starts[0]].item()


@torch.no_grad()
def trained_reads(model, enc, items, changed, device, batch_size=128):
    """For each (prompt, answer) pair: the share of the memory reads at the positions that
    predict its answer tokens (evaluate.qa_batch) that fall on a changed row.
    changed: per value table (memory_tables), (n_slots,) True on the rows a stream trained."""
    tables, shares = memory_tables(model), []
    with model.recording_slots():
        for i in range(0, len(items), batch_size):
            x, y, _ = qa_batch(enc, items[i:i + batch_size])
            at = y >= 0                                                # (B, L) positions predicting the answer
            model(x.to(device))
            hits, reads_n = torch.zeros(len(x)), torch.zeros(len(x))
            for reads, rows in zip(table_reads(model, tables), changed):   # reads: (B, L, H, k) slot ids
                on = rows.to(reads.device)[reads].cpu() & at[:, :, None, None]
                hits += on.sum(dim=(1, 2, 3))
                reads_n += at.sum(dim=1) * reads.shape[2] * reads.shape[3]
            shares += (hits / reads_n).tolist()
    return shares


def forgetting(args):
    """Where the forgetting goes. Before finetuning: background-fact accuracy with the memory
    layers' output set to zero (how much of it the memory carries). Then a sparse stream at
    finetune.py's defaults, and for each background question it breaks: which answer token
    went wrong first (the first, a middle one, or the final period), and what does the model
    now answer, exactly: an answer the stream taught for the same relation, another answer of
    that relation, or neither? For comparison, how many taught answers chance would give: each
    broken question that now gives an answer of its relation, with that answer drawn at random
    from the relation's other answers. And do the broken questions' subjects and answers share
    tokens with the taught subjects and answers more often than the questions that stay right?"""
    model, enc, ckpt, facts, base_cfg, rcfg, device = setup(args)
    corpus = checkpoint_corpus(ckpt)[1]
    items = qa_items(corpus["background"])
    relation = [f["relation"] for f in corpus["background"] for _ in f["questions"]]
    with memory_off(model):
        without_memory = qa_accuracy(model, enc, items, device)
    before = qa_correct(model, enc, items, device)
    cfg = ft.resolve(base_cfg, model)
    values = [w.detach().clone() for w, _ in memory_tables(model)]
    ft.run_stream(cfg, model, enc, facts, *ft.make_recipe(cfg, rcfg, model, enc, ckpt), quiet=True)
    after = qa_correct(model, enc, items, device)
    changed = [(w != v).any(dim=1).cpu() for (w, _), v in zip(memory_tables(model), values)]
    reads = trained_reads(model, enc, items, changed, device)         # sparse training leaves every read in place
    groups = {"broken": [r for r, b, a in zip(reads, before, after) if b and not a],
              "still right": [r for r, b, a in zip(reads, before, after) if b and a]}
    on_trained = {k: {"mean_share": sum(v) / max(len(v), 1), "any": sum(r > 0 for r in v) / max(len(v), 1)}
                  for k, v in groups.items()}
    broken = [item for item, b, a in zip(items, before, after) if b and not a]
    where = {"first token": 0, "a middle token": 0, "the final period": 0}     # the first answer token now wrong
    for (prompt, answer), wrong in zip(broken, first_wrong_tokens(model, enc, broken, device)):
        last = len(enc.encode(answer)) - 1
        where["first token" if wrong == 0 else "the final period" if wrong == last else "a middle token"] += 1
    taught, answers = {}, {}                                           # relation -> answers taught / all its answers
    for entry in corpus["new"][:len(facts)]:
        taught.setdefault(entry["relation"], set()).add(entry["answer"])
    for entry in corpus["background"] + corpus["new"]:
        answers.setdefault(entry["relation"], set()).add(entry["answer"])
    per_relation = {}
    for (prompt, answer), r, b, a in zip(items, relation, before, after):
        row = per_relation.setdefault(r, {"answered_before": 0, "broken": 0, "now_a_taught_answer": 0,
                                          "now_an_untaught_answer": 0, "taught_by_chance": 0.0})
        row["answered_before"] += b
        if not b or a:
            continue
        row["broken"] += 1
        others = sorted(answers[r] - {answer.strip()})                 # every answer of r but the right one
        taught_others = taught.get(r, set()) - {answer.strip()}
        now = [x for x, ok in zip(others, qa_correct(model, enc, [(prompt, " " + x) for x in others], device)) if ok]
        if now:                                                        # at most one answer can be the greedy one
            row["now_a_taught_answer" if now[0] in taught_others else "now_an_untaught_answer"] += 1
            row["taught_by_chance"] += len(taught_others) / len(others)
    total = {k: sum(row[k] for row in per_relation.values()) for k in next(iter(per_relation.values()))}
    # Do the broken questions' subjects (answers) share tokens with the taught subjects (answers)?
    def spelled(text):                                                 # its tokens as spelled mid-sentence,
        words = text.rstrip(".").split()                               # without an article or the period
        return set(enc.encode(" " + " ".join(words[1:] if words[0] in ("a", "an", "the") and len(words) > 1 else words)))
    shared = {}
    for key in ("subject", "answer"):
        taught_tokens = set().union(*(spelled(e[key]) for e in corpus["new"][:len(facts)]))
        sharing = [bool(spelled(f[key]) & taught_tokens) for f in corpus["background"] for _ in f["questions"]]
        for shares in (True, False):
            answered = sum(b for b, sh in zip(before, sharing) if sh == shares)
            broke = sum(b and not a for b, a, sh in zip(before, after, sharing) if sh == shares)
            shared[f"{key} shares {'a token' if shares else 'none'}"] = {"answered_before": answered, "broken": broke}
    acc_before, acc_after = sum(before) / len(items), sum(after) / len(items)
    print(f"background facts {acc_before:.3f}; with the memory output zeroed {without_memory:.3f}")
    print(f"after {len(facts)} facts (sparse, lr {cfg.lr:g}, t = {cfg.top_t}): {acc_after:.3f}; "
          f"{total['broken']} questions broken; now {total['now_a_taught_answer']} give an answer taught for the same "
          f"relation ({total['taught_by_chance']:.1f} by chance), {total['now_an_untaught_answer']} another answer of it")
    print("first answer token that went wrong: " + ", ".join(f"{k} {v}" for k, v in where.items()))
    n_trained, n_rows = sum(int(c.sum()) for c in changed), sum(len(c) for c in changed)
    print(f"rows trained: {n_trained} ({n_trained / n_rows:.1%} of the table); reads of them where an answer is predicted: " + ", ".join(
        f"{k} questions {v['mean_share']:.2%} of their reads ({v['any']:.0%} read one at least)" for k, v in on_trained.items()))
    print("tokens in common with what the stream taught: " + ", ".join(
        f"{k}: {v['broken']} of {v['answered_before']} broken ({v['broken'] / max(v['answered_before'], 1):.1%})"
        for k, v in shared.items()))
    for r, row in per_relation.items():
        print(f"  {r:<8} answered before {row['answered_before']:>4}  broken {row['broken']:>3}  now a taught answer "
              f"{row['now_a_taught_answer']:>3} (by chance {row['taught_by_chance']:4.1f})  "
              f"an untaught one {row['now_an_untaught_answer']:>3}  of {len(answers[r])} answers, "
              f"{len(taught.get(r, ()))} taught")
        row.update(answers=len(answers[r]), taught=len(taught.get(r, ())))
    return {"lr": cfg.lr, "top_t": cfg.top_t, "background_before": acc_before,
            "background_after": acc_after, "background_without_memory": without_memory,
            "first_wrong_token": where, "rows_trained": n_trained,
            "reads_of_trained_rows": on_trained, "shared_tokens": shared, **total, "per_relation": per_relation}


def forgetting_figure(plt, data):
    rel = data["per_relation"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.bar(list(rel), [r["broken"] for r in rel.values()], color="#999", label="broken by the stream")
    ax.bar(list(rel), [r["now_a_taught_answer"] for r in rel.values()], color="#d62728",
           label="now an answer taught for the same relation")
    ax.scatter(list(rel), [r["taught_by_chance"] for r in rel.values()], marker="_", s=400, color="k",
               label="taught answers expected by chance", zorder=3)
    ax.set_ylabel("background questions")
    ax.legend(fontsize=8)
    return fig


@torch.no_grad()
def first_answer_reads(model, enc, items, device, batch_size=128):
    """Per value table (memory_tables): (Q, layers * heads * k) slot ids, the slots each
    (prompt, answer) pair reads at the position that predicts its answer's first token."""
    tables, out = memory_tables(model), None
    with model.recording_slots():
        for i in range(0, len(items), batch_size):
            x, _, starts = qa_batch(enc, items[i:i + batch_size])    # starts: where each answer's first token is predicted
            model(x.to(device))
            reads = [r[torch.arange(len(x)), starts].reshape(len(x), -1).cpu()   # (B, layers * heads * k)
                     for r in table_reads(model, tables)]
            out = reads if out is None else [torch.cat([o, r]) for o, r in zip(out, reads)]
    return out


def jaccard(reads):
    """(Q, Q): |A_i & A_j| / |A_i | A_j|, A_i the set of slots in reads[i]. reads: (Q, R) slot ids."""
    _, inverse = torch.unique(reads, return_inverse=True)             # (Q, R): slot ids -> 0 .. U-1
    a = torch.zeros(len(reads), int(inverse.max()) + 1).scatter_(1, inverse, 1.0)   # (Q, U) 1 on each read slot
    inter = a @ a.T                                                   # (Q, Q) slots in common
    size = a.sum(dim=1)                                               # (Q,)
    return inter / (size[:, None] + size[None, :] - inter)


def facts_per_slot(reads, fact_of, n_slots):
    """(n_slots,) how many facts read each slot, a fact counted once however many of its questions
    or reads take it. reads: (Q, R) slot ids; fact_of: (Q,) the fact each question asks."""
    per_fact = [torch.unique(reads[fact_of == f]) for f in torch.unique(fact_of)]
    return torch.bincount(torch.cat(per_fact), minlength=n_slots)


def answer_reads(args):
    """Which slots answers are read from. With the memory in the last block, only the slots read
    at a position change that position's prediction, so a fact's answer can be stored only in the
    slots read where it is predicted. For the background questions at the position that predicts
    the answer's first token: how many distinct slots they read together, and how many of their
    reads two questions share (Jaccard), by pair: two phrasings of one fact, two subjects of one
    relation, two relations. For the questions of the first --facts new facts (or of --facts-file's
    facts, the held-out ones too): the share of their reads there that fall on slots a background
    question reads there too (for the corpus's facts also: one of the same relation). And how many
    background facts read each slot a question reads there: the other facts a change to it reaches."""
    model, enc, ckpt, facts, base_cfg, rcfg, device = setup(args)
    corpus = checkpoint_corpus(ckpt)[1]
    background, new = corpus["background"], None if args.facts_file else corpus["new"][:len(facts)]
    fact_of = torch.tensor([n for n, f in enumerate(background) for _ in f["questions"]])
    names = {r: n for n, r in enumerate(sorted({f["relation"] for f in background + (new or [])}))}
    relation = torch.tensor([names[f["relation"]] for f in background for _ in f["questions"]])
    new_items, new_relation = [], []                                  # each new question, and its fact's relation
    for n, f in enumerate(facts):
        for q in f["questions"] + ([f["heldout_question"]] if f.get("heldout_question") else []):
            new_items.append(qa_pair(q, f["answer"]))
            new_relation.append(names[new[n]["relation"]] if new else None)
    other = ~torch.eye(len(fact_of), dtype=torch.bool)                 # pairs of two questions
    same_fact = (fact_of[:, None] == fact_of[None, :]) & other
    same_relation = (relation[:, None] == relation[None, :]) & other
    pairs = {"same fact": same_fact, "same relation, another fact": same_relation & ~same_fact,
             "another relation": other & ~same_relation}
    tables = []
    for n, ((w, _), bg, nw) in enumerate(zip(memory_tables(model), first_answer_reads(model, enc, qa_items(background), device),
                                             first_answer_reads(model, enc, new_items, device))):
        n_slots = w.shape[0]
        read = torch.zeros(n_slots, dtype=torch.bool)
        read[bg.flatten()] = True
        by_relation = {r: torch.zeros(n_slots, dtype=torch.bool) for r in names.values()}
        for r, slots in zip(relation.tolist(), bg):
            by_relation[r][slots] = True
        jac = jaccard(bg)                                             # (Q, Q)
        readers = facts_per_slot(bg, fact_of, n_slots)               # (slots,) background facts that read each one there
        t = {"table": n, "slots": n_slots, "reads_per_question": bg.shape[1], "questions": len(bg),
             "distinct_slots": int(read.sum()),
             "jaccard": {k: jac[p].mean().item() for k, p in pairs.items()},
             "other_facts_per_read": (readers[bg] - 1).float().mean().item(),   # its own fact not counted
             "new_questions": len(nw), "new_reads_on_background_slots": read[nw].float().mean().item(),
             "background_facts_per_new_read": readers[nw].float().mean().item()}
        if new:                                                       # the corpus's facts: their relations are known
            same = torch.stack([by_relation[r][slots] for r, slots in zip(new_relation, nw)])   # (questions, reads)
            t["new_reads_on_same_relation_slots"] = same.float().mean().item()
        tables.append(t)
        print(f"table {n}: {t['questions']} background questions each read {t['reads_per_question']} slots where the "
              f"answer's first token is predicted, {t['distinct_slots']} distinct slots together "
              f"({t['distinct_slots'] / n_slots:.1%} of {n_slots:,})")
        print("  reads two questions share (Jaccard): " + ", ".join(f"{k} {v:.3f}" for k, v in t["jaccard"].items()))
        print(f"  each slot a background question reads there is read there by {t['other_facts_per_read']:.1f} other "
              "background facts (mean over its reads)")
        print(f"  {t['new_questions']} questions of {len(facts)} {'facts of ' + args.facts_file if args.facts_file else 'new facts'}: "
              f"{t['new_reads_on_background_slots']:.1%} of their reads there fall on those slots"
              + (f", {t['new_reads_on_same_relation_slots']:.1%} on slots a background question of the same relation reads"
                 if new else "") + f"; each is read there by {t['background_facts_per_new_read']:.1f} background facts")
    return {"tables": tables}


def answer_reads_figure(plt, data):
    t = data["tables"][0]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.bar(list(t["jaccard"]), [v * 100 for v in t["jaccard"].values()], color="#1f77b4")
    ax.set_ylabel("reads in common (Jaccard, %)")
    ax.set_title(f"{t['distinct_slots']:,} of {t['slots']:,} slots hold every background answer's first read", fontsize=9)
    return fig


@torch.no_grad()
def answer_logprob(model, enc, items, device, batch_size=128):
    """For each (prompt, answer) pair: the mean log-probability of its answer tokens, each
    given the prompt and the answer tokens before it (teacher-forced, evaluate.qa_batch)."""
    out = []
    for i in range(0, len(items), batch_size):
        x, y, _ = qa_batch(enc, items[i:i + batch_size])
        logits, _ = model(x.to(device))                               # (B, L, vocab)
        at = y >= 0                                                    # (B, L) the answer's positions
        token = torch.log_softmax(logits.float().cpu(), dim=-1).gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        out += ((token * at).sum(dim=1) / at.sum(dim=1)).tolist()
    return out


UNSEEN_SWAPS = {None: "unseen question", "read": "unseen + trained read y", "gate": "unseen + trained gate",
                "output": "unseen + trained output"}    # +: that part of the trained question's memory block (its output: all of it)


def unseen(args):
    """Why a new relation is hardly carried to its unseen phrasing. For the first --facts new
    facts and as many facts of new relations: before finetuning, how many slots a fact's first
    trained question and its unseen question read in common where the answer's first token is
    predicted (Jaccard, mean over facts and value tables). Then each stream is taught alone from
    the pretrained model with the run's settings, and for each fact: the share of the reads at
    its answer positions that fall on the rows its own steps trained, for its first trained
    question and for its unseen one, and how much the stream raised the log-probability of the
    answer's tokens after each (mean over facts). Last, the share of first answer tokens right
    after the unseen question as it is, and with one part of the memory block at that position
    taken from the trained question's own (memory_part): its read y, its gate, its whole output."""
    model, enc, ckpt, facts, base_cfg, rcfg, device = setup(args)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = ft.resolve(base_cfg, model)
    stats, recipe = ft.make_recipe(cfg, rcfg, model, enc, ckpt)
    streams = {"new facts": facts,
               "new relations": corpus_facts(checkpoint_corpus(ckpt)[1]["new_relations"][:len(facts)])}
    out = {}
    for name, stream in streams.items():
        stream = [f for f in stream if f.get("heldout_question")]
        asked = [qa_pair(f["questions"][0], f["answer"]) for f in stream]
        held = [qa_pair(f["heldout_question"], f["answer"]) for f in stream]
        questions = {"trained": asked, "unseen": held}                 # each fact's first trained question, its unseen one
        common = [jaccard(torch.stack([a, h]))[0, 1].item()           # one per table and fact
                  for ra, rh in zip(first_answer_reads(model, enc, asked, device), first_answer_reads(model, enc, held, device))
                  for a, h in zip(ra, rh)]
        model.load_state_dict(base)
        logp = {k: answer_logprob(model, enc, items, device) for k, items in questions.items()}
        tables = memory_tables(model)
        last, own = [w.detach().clone() for w, _ in tables], []        # own: per fact, per table, (n_slots,) its rows

        def mark(n):                                                   # after fact n: the rows its steps changed
            own.append([(w != v).any(dim=1).cpu() for (w, _), v in zip(tables, last)])
            for (w, _), v in zip(tables, last):
                v.copy_(w.detach())
        ft.run_stream(cfg, model, enc, stream, stats, recipe, quiet=True, on_fact=mark)
        trained = [qa_pair(q, f["answer"]) for f in stream for q in f["questions"]]
        on_own = {k: sum(trained_reads(model, enc, [item], rows, device)[0] for item, rows in zip(items, own)) / len(own)
                  for k, items in questions.items()}
        r = {"facts": len(stream), "jaccard_before": sum(common) / len(common),
             "learned": qa_accuracy(model, enc, trained, device), "unseen": qa_accuracy(model, enc, held, device),
             "trained_question_reads_on_own_rows": on_own["trained"], "unseen_question_reads_on_own_rows": on_own["unseen"]}
        r["first_token"] = {"trained question": sum(first_token_right(model, enc, a, device) for a in asked) / len(asked)}
        for part, label in UNSEEN_SWAPS.items():                       # the unseen question, with a part of the trained one's
            r["first_token"][label] = sum(first_token_right(model, enc, h, device, part, a) for a, h in zip(asked, held)) / len(held)
        for k, items in questions.items():                             # nats per answer token
            after = answer_logprob(model, enc, items, device)
            r[f"{k}_question_logprob"] = sum(after) / len(after)
            r[f"{k}_question_logprob_gain"] = sum(a - b for a, b in zip(after, logp[k])) / len(after)
        out[name] = r
        print(f"{name:<14} {r['facts']} facts: their trained and unseen questions read {r['jaccard_before']:.1%} of their "
              f"slots in common (Jaccard) where the answer is predicted; taught (sparse, lr {cfg.lr:g}): learned "
              f"{r['learned']:.3f}, unseen {r['unseen']:.3f}; reads there on the fact's own trained rows: trained question "
              f"{r['trained_question_reads_on_own_rows']:.1%}, unseen {r['unseen_question_reads_on_own_rows']:.1%}; "
              f"the answer's log-probability per token raised by {r['trained_question_logprob_gain']:.2f} to "
              f"{r['trained_question_logprob']:.2f} and by {r['unseen_question_logprob_gain']:.2f} to {r['unseen_question_logprob']:.2f}")
        print("  first answer token right: " + ", ".join(f"{k} {v:.2f}" for k, v in r["first_token"].items()))
    model.load_state_dict(base)
    return {"streams": out}


def unseen_figure(plt, data):
    """Left: the reads where the answer is predicted; right: the first answer tokens right."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    keys = {"jaccard_before": "slots in common,\ntrained and unseen question",
            "trained_question_reads_on_own_rows": "trained question:\nreads on the fact's rows",
            "unseen_question_reads_on_own_rows": "unseen question:\nreads on the fact's rows"}
    for i, (name, r) in enumerate(data["streams"].items()):
        axes[0].bar([j + 0.4 * i for j in range(len(keys))], [r[k] * 100 for k in keys], width=0.4, label=name)
        tokens = r["first_token"]
        axes[1].bar([j + 0.4 * i for j in range(len(tokens))], [v * 100 for v in tokens.values()], width=0.4, label=name)
    axes[0].set_xticks([j + 0.2 for j in range(len(keys))], list(keys.values()), fontsize=7)
    axes[0].set_ylabel("% (where the answer is predicted)")
    labels = [k.replace(" + ", "\n+ ") for k in next(iter(data["streams"].values()))["first_token"]]
    axes[1].set_xticks([j + 0.2 for j in range(len(labels))], labels, fontsize=7)
    axes[1].set_ylabel("first answer token right (%)")
    for ax in axes:
        ax.set_ylim(0, 115)                                            # room for the legend
        ax.legend(fontsize=8)
    return fig


def kept(args):
    """Which taught facts the stream itself undoes. For each of the demo's streams (the first
    --facts new facts, and as many of each generalisation set), taught alone from the pretrained
    model with the run's settings: the share of the trained questions answered right after their
    fact's steps and at the end of the stream, how many of them were lost in between, and for
    each one lost, whether the fact after which it first went wrong has the same subject (and,
    summed over them, the chance that a later fact of its stream picked at random has it)."""
    model, enc, ckpt, _, base_cfg, rcfg, device = setup(args)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = ft.resolve(base_cfg, model)
    stats, recipe = ft.make_recipe(cfg, rcfg, model, enc, ckpt)
    kb = checkpoint_corpus(ckpt)[1]
    out = {}
    for name, key in (("new facts", "new"), ("new answers", "new_answers"), ("new relations", "new_relations")):
        entries = kb[key][:args.facts]
        stream = corpus_facts(entries)
        per_fact = len(stream[0]["questions"])                          # trained questions of each fact
        right = []                                                     # right[n - 1]: facts[:n]'s questions after fact n
        model.load_state_dict(base)
        ft.run_stream(cfg, model, enc, stream, stats, recipe, quiet=True,
                      on_fact=lambda n: right.append(qa_correct(model, enc, qa_items(stream[:n]), device)))
        once = [right[q // per_fact][q] for q in range(len(right[-1]))]   # right after its own fact's steps
        lost, same, chance = 0, 0, 0.0
        for q, (was, now) in enumerate(zip(once, right[-1])):
            if was and not now:
                fact = q // per_fact
                breaker = next(n for n in range(fact + 1, len(stream)) if not right[n][q])
                subject = entries[fact]["subject"]
                lost += 1
                same += entries[breaker]["subject"] == subject
                chance += sum(e["subject"] == subject for e in entries[fact + 1:]) / (len(stream) - fact - 1)
        r = {"facts": len(stream), "right_after": sum(once) / len(once), "at_end": sum(right[-1]) / len(once),
             "lost": lost, "lost_to_same_subject": same, "same_subject_by_chance": chance}
        out[name] = r
        print(f"{name:<14} {r['facts']} facts (sparse, lr {cfg.lr:g}): answered right after their steps "
              f"{r['right_after']:.3f}, at the end {r['at_end']:.3f}; {lost} of {sum(once)} lost, {same} of them first "
              f"by a fact of the same subject (chance: {chance:.1f})")
    model.load_state_dict(base)
    return {"streams": out}


def kept_figure(plt, data):
    fig, ax = plt.subplots(figsize=(6, 3.8))
    names = list(data["streams"])
    for i, (key, label) in enumerate((("right_after", "right after its steps"), ("at_end", "at the end of the stream"))):
        ax.bar([j + 0.4 * i for j in range(len(names))], [data["streams"][n][key] * 100 for n in names], width=0.4,
               label=label)
    ax.set_xticks([j + 0.2 for j in range(len(names))], names)
    ax.set_ylabel("trained questions answered (%)")
    ax.set_ylim(0, 115)                                                # room for the legend
    ax.legend(fontsize=8)
    return fig


# Each analysis: (the function that runs it, the one that draws its figure).
ANALYSES = {"curves": (curves, curves_figure), "slots": (slots, slots_figure),
            "forgetting": (forgetting, forgetting_figure), "long": (long_stream, long_figure),
            "one-fact": (one_fact, one_fact_figure),
            "answer-reads": (answer_reads, answer_reads_figure), "unseen": (unseen, unseen_figure),
            "kept": (kept, kept_figure)}
