"""
Metrics on a checkpoint: validation loss on held-out stories (read in order, so numbers
repeat), greedy exact-match accuracy on fact questions, and memory slot usage.

    python evaluate.py --checkpoint out/ckpt.pt

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

from data.tokenizer import EOT


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
    mems = model.memory_modules
    counts = [torch.zeros(m.n_slots, dtype=torch.long) for m in mems]
    for m in mems:
        m.record_indices = True
    total, count = 0.0, 0
    try:
        for x, y in val_windows(val_tokens, block_size, batch_size, max_tokens):
            _, loss = model(x.to(device), y.to(device))
            total += loss.item() * len(x)
            count += len(x)
            for c, m in zip(counts, mems):
                c += torch.bincount(m.last_indices.flatten().cpu(), minlength=m.n_slots)
    finally:
        for m in mems:
            m.record_indices, m.last_indices = False, None
    return total / count, [usage_stats(c) for c in counts]


def usage_stats(counts):
    """Reads per slot -> fraction of slots read at least once, and KL(p || uniform) in nats."""
    p = counts.double() / counts.sum()
    nz = p[p > 0]
    return {"used": float((counts > 0).double().mean()), "kl_uniform": float((nz * (nz * len(p)).log()).sum())}


def qa_items(facts, which="all"):
    """(prompt, answer) pairs from facts.json entries; which = all | first | last question."""
    items = []
    for f in facts:
        qs = {"all": f["questions"], "first": f["questions"][:1], "last": f["questions"][-1:]}[which]
        items += [(f"Q: {q} A:", " " + f["answer"]) for q in qs]
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


def main(argv=None):
    from train import load_checkpoint, pick_device  # train imports this module; import late
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=os.path.join("out", "ckpt.pt"), help="checkpoint written by train.py")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    try:
        model, enc, ckpt = load_checkpoint(args.checkpoint, device)
    except (FileNotFoundError, RuntimeError) as e:
        sys.exit(f"error: {e}")
    data_dir = ckpt["data_dir"]
    try:
        val = np.memmap(os.path.join(data_dir, "val.bin"), dtype=ckpt["data_meta"]["dtype"], mode="r")
        kb = load_facts(data_dir)
    except FileNotFoundError:
        sys.exit(f"error: the corpus this checkpoint was trained on is no longer in {data_dir}; prepare it there again")
    bs = model.config.block_size
    loss, usage = validate(model, val, bs, device)
    print(f"val loss {loss:.4f}")
    print(f"background facts {qa_accuracy(model, enc, qa_items(kb['background']), device):.3f}")
    print(f"new facts (never trained) {qa_accuracy(model, enc, qa_items(kb['new'][:200]), device):.3f}")
    for i, u in enumerate(usage):
        print(f"memory layer {i}: {u['used']:.1%} of slots used, KL from uniform {u['kl_uniform']:.2f} nats")


if __name__ == "__main__":
    main()
