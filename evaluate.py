"""
Metrics on a checkpoint: validation loss on held-out stories (read in order, so numbers
repeat), greedy exact-match accuracy on fact questions, and memory slot usage.

    python evaluate.py --checkpoint out/ckpt.pt      # one checkpoint (pretrained or finetuned)
    python evaluate.py --compare                     # full vs LoRA vs sparse finetuning: table + figure

Greedy exact match is computed in one teacher-forced pass: greedy decoding produces the
answer's tokens (the answer ends with its period) exactly when every answer token is the
argmax given the question and the answer tokens before it. The match is on tokens: the same
text spelled in other tokens counts as wrong.
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

from data.tokenizer import EOT, read_tokenizer


def val_windows(val_tokens, block_size, batch_size, max_tokens):
    """Consecutive (x, y) windows of the validation tokens, in order, in batches."""
    n = min(len(val_tokens) - 1, max_tokens) // block_size
    for i in range(0, n, batch_size):
        rows = range(i, min(i + batch_size, n))
        x = torch.stack([torch.from_numpy(val_tokens[r * block_size:(r + 1) * block_size].astype(np.int64)) for r in rows])
        y = torch.stack([torch.from_numpy(val_tokens[r * block_size + 1:(r + 1) * block_size + 1].astype(np.int64)) for r in rows])
        yield x, y


@torch.no_grad()
def validate(model, val_tokens, block_size, device, batch_size=32, max_tokens=200_000):
    """Mean next-token loss over the validation windows, and per memory layer the slot usage
    on the same pass: the fraction of slots read at least once, and KL(usage || uniform) in
    nats (0 = perfectly even; log(n_slots) = one slot takes every read)."""
    if len(val_tokens) <= block_size:
        raise ValueError(f"validation set has {len(val_tokens)} tokens, fewer than one window of {block_size}")
    total, count = 0.0, 0
    with model.recording_slots() as mems:
        counts = [torch.zeros(m.n_slots, dtype=torch.long) for m in mems]
        for x, y in val_windows(val_tokens, block_size, batch_size, max_tokens):
            _, loss = model(x.to(device), y.to(device))
            total += loss.item() * len(x)
            count += len(x)
            for c, m in zip(counts, mems):
                c += torch.bincount(m.last_indices.flatten().cpu(), minlength=m.n_slots)
    return total / count, [usage_stats(c) for c in counts]


def usage_stats(counts):
    """Reads per slot -> fraction of slots read at least once, and KL(p || uniform) in nats."""
    p = counts.double() / counts.sum()
    nz = p[p > 0]
    return {"used": float((counts > 0).double().mean()), "kl_uniform": float((nz * (nz * len(p)).log()).sum())}


def qa_pair(question, answer):
    """The (prompt, answer) a question is scored on; joined, they are the line trained on."""
    return f"Q: {question} A:", " " + answer


def qa_items(facts, which="all"):
    """(prompt, answer) pairs of facts with "questions" and "answer" (facts.json entries or stream
    facts); which = all | first | last question."""
    items = []
    for f in facts:
        qs = {"all": f["questions"], "first": f["questions"][:1], "last": f["questions"][-1:]}[which]
        items += [qa_pair(q, f["answer"]) for q in qs]
    return items


def qa_accuracy(model, enc, items, device):
    """Fraction of (prompt, answer) pairs that greedy decoding answers exactly."""
    correct = qa_correct(model, enc, items, device)
    return sum(correct) / max(len(correct), 1)


@torch.no_grad()
def qa_correct(model, enc, items, device, batch_size=128):
    """For each (prompt, answer) pair: does greedy decoding produce exactly the answer?"""
    eot = enc.encode(EOT, allowed_special={EOT})
    correct = []
    for i in range(0, len(items), batch_size):
        chunk = [(eot + enc.encode(p), enc.encode(a)) for p, a in items[i:i + batch_size]]
        L = max(len(p) + len(a) for p, a in chunk)
        x = torch.full((len(chunk), L), eot[0], dtype=torch.long)     # (B, L), right-padded
        y = torch.full((len(chunk), L), -1, dtype=torch.long)          # -1 = not an answer token
        for r, (p, a) in enumerate(chunk):
            x[r, :len(p) + len(a)] = torch.tensor(p + a)
            y[r, len(p) - 1:len(p) + len(a) - 1] = torch.tensor(a)   # predict each answer token
        logits, _ = model(x.to(device))
        pred = logits.argmax(-1).cpu()
        mask = y >= 0
        correct += ((pred == y) | ~mask).all(dim=1).tolist()
    return correct


def load_facts(data_dir):
    with open(os.path.join(data_dir, "facts.json"), "r", encoding="utf-8") as f:
        return json.load(f)


def read_corpus_meta(data_dir):
    """(meta.json, Encoding, tokenizer text) of a prepared corpus."""
    with open(os.path.join(data_dir, "meta.json"), "r", encoding="utf-8") as f:
        meta = json.load(f)
    name = meta["tokenizer"] if meta["tokenizer"] == "gpt2" else os.path.join(data_dir, meta["tokenizer"])
    enc, text = read_tokenizer(name)
    return meta, enc, text


def check_same_corpus(ckpt, tok_text, meta, data_dir):
    """A checkpoint only reads text cut by its own tokenizer."""
    if ckpt["tokenizer"] != tok_text or ckpt["model_args"]["vocab_size"] != meta["vocab_size"]:
        raise ValueError(f"the checkpoint's tokenizer (vocab {ckpt['model_args']['vocab_size']}) does not match the "
                         f"corpus in {data_dir} (vocab {meta['vocab_size']}); use the corpus it was trained on")


def checkpoint_corpus(ckpt):
    """(validation tokens, facts.json) of the corpus a checkpoint was trained on."""
    data_dir = ckpt["data_dir"]
    try:
        meta, _, tok_text = read_corpus_meta(data_dir)
        check_same_corpus(ckpt, tok_text, meta, data_dir)
        val = np.memmap(os.path.join(data_dir, "val.bin"), dtype=ckpt["data_meta"]["dtype"], mode="r")
        return val, load_facts(data_dir)
    except FileNotFoundError:
        raise FileNotFoundError(f"the corpus this checkpoint was trained on is no longer in {data_dir}; "
                                "prepare it there again") from None


def plot_compare(results, path):
    """Learned accuracy against the relative drop in background-fact accuracy, one point per run."""
    import matplotlib
    matplotlib.use("Agg")                                          # files only, no display needed
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for r in results:
        ax.scatter(r["heldout_drop"] * 100, r["learned_acc"] * 100, s=60)
        ax.annotate(f"{r['mode']} ({r['optimizer']}, lr {r['lr']:g})", (r["heldout_drop"] * 100, r["learned_acc"] * 100),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("forgotten: drop in background-fact accuracy (%)")
    ax.set_ylabel("learned: new-fact accuracy (%)")
    ax.set_title(f"{results[0]['facts']} new facts, {results[0]['steps_per_fact']} steps each")
    ax.set_ylim(0, 105)
    drops = [r["heldout_drop"] * 100 for r in results]
    ax.set_xlim(min(0, min(drops)) - 2, max(drops) * 1.4 + 5)       # room for the labels
    ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    from train import keep_freed_memory, load_checkpoint, pick_device  # train imports this module; import late
    import finetune as ft
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=ft.DEFAULT_CHECKPOINT, help="checkpoint written by train.py or finetune.py --out")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.add_argument("--facts", type=int, default=ft.FinetuneConfig.facts, help="new facts to score (a finetuned "
                   "checkpoint scores the facts it was taught)")
    p.add_argument("--compare", action="store_true", help="finetune the checkpoint with full, LoRA and sparse on the "
                   "same fact stream (each at its README learning rate) and print one table")
    p.add_argument("--steps-per-fact", type=int, default=ft.FinetuneConfig.steps_per_fact, help="with --compare")
    p.add_argument("--plot", default=os.path.join("out", "compare.png"), help="with --compare: the figure (PNG)")
    p.add_argument("--json", default="", help="with --compare: write the results to this JSON file")
    args = p.parse_args(argv)
    keep_freed_memory()
    try:
        device = pick_device(args.device)
        if args.compare:
            return compare(args, device)
        model, enc, ckpt = load_checkpoint(args.checkpoint, device)
        val, kb = checkpoint_corpus(ckpt)
        taught = ckpt.get("finetune", {}).get("facts_taught")
        facts = taught or ft.corpus_facts(kb["new"][:args.facts])
        m = ft.measure(model, enc, facts, kb["background"], val, device)
    except (OSError, RuntimeError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(f"val loss {m['val_loss']:.4f}")
    print(f"background facts {m['heldout_acc']:.3f}")
    what = "taught by finetune.py" if taught else "not taught to this checkpoint"
    unseen = m["learned_acc_unseen_question"]
    print(f"new facts ({len(facts)}, {what}) {m['learned_acc']:.3f}"
          + ("" if unseen is None else f", on the held-out question {unseen:.3f}"))
    for i, u in enumerate(m["slots"]):
        print(f"memory layer {i}: {u['used']:.1%} of slots used, KL from uniform {u['kl_uniform']:.2f} nats")


def compare(args, device):
    """Full, LoRA and sparse finetuning of one checkpoint on one fact stream."""
    import finetune as ft
    cfg = ft.FinetuneConfig(checkpoint=args.checkpoint, facts=args.facts, steps_per_fact=args.steps_per_fact,
                            device=args.device)
    model, enc, ckpt = ft.load_base(cfg, device)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    facts = ft.stream_facts(cfg, ckpt)
    ft.check_lengths(enc, facts, model.config.block_size)
    results, before = [], None
    for mode in ("full", "lora", "sparse"):
        run = ft.FinetuneConfig(**{**vars(cfg), "mode": mode})
        ft.resolve(run, model)
        model.load_state_dict(base)
        r, before = ft.finetune(run, model, enc, ckpt, facts, before)
        results.append(r)
    print(ft.format_table(results))
    plot_compare(results, args.plot)
    print(f"figure: {args.plot}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
