"""
Metrics on a checkpoint: validation loss on held-out stories (read in order, so numbers
repeat), greedy exact-match accuracy on fact questions, and memory slot usage.

    python evaluate.py --checkpoint out/ckpt.pt      # one checkpoint (pretrained or finetuned)

(Full vs LoRA vs sparse finetuning on one stream, table and figure: python -m experiments compare.)

Greedy exact match is computed in one teacher-forced pass: greedy decoding produces the
answer's tokens (the answer ends with its period) exactly when every answer token is the
argmax given the question and the answer tokens before it. The match is on tokens: the same
text spelled in other tokens counts as wrong.
"""

import argparse
import os
import random
import re
import sys

import numpy as np
import torch

from checkpoint import checkpoint_corpus, load_checkpoint
from common import ROOT, interruptible, keep_freed_memory, pick_device
from data.tokenizer import EOT


def val_windows(val_tokens, block_size, batch_size, max_tokens):
    """Consecutive (x, y) windows of the validation tokens, in order, in batches."""
    def window(r, shift):                                              # row r, shifted by 0 (x) or 1 (y)
        return torch.from_numpy(val_tokens[r * block_size + shift:(r + 1) * block_size + shift].astype(np.int64))
    n = min(len(val_tokens) - 1, max_tokens) // block_size
    for i in range(0, n, batch_size):
        rows = range(i, min(i + batch_size, n))
        yield torch.stack([window(r, 0) for r in rows]), torch.stack([window(r, 1) for r in rows])


@torch.no_grad()
def validate(model, val_tokens, block_size, device, batch_size=32, max_tokens=200_000):
    """Mean next-token loss over the validation windows, and per memory layer the slot usage
    on the same pass: the fraction of slots read at least once, and KL(usage || uniform) in
    nats (0 = perfectly even; log(n_slots) = one slot takes every read)."""
    if len(val_tokens) <= block_size:
        raise ValueError(f"validation set has {len(val_tokens)} tokens, fewer than one window of {block_size}")
    total, count = 0.0, 0
    with model.recording_slots():
        counts = [torch.zeros(m.n_slots, dtype=torch.long) for m in model.memory_modules]
        for x, y in val_windows(val_tokens, block_size, batch_size, max_tokens):
            _, loss = model(x.to(device), y.to(device))
            total += loss.item() * len(x)
            count += len(x)
            for c, reads in zip(counts, model.slot_reads()):
                c += torch.bincount(reads.flatten().cpu(), minlength=len(c))
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


def qa_correct(model, enc, items, device, batch_size=128):
    """For each (prompt, answer) pair: does greedy decoding produce exactly the answer?"""
    return [wrong is None for wrong in first_wrong_tokens(model, enc, items, device, batch_size)]


def qa_batch(enc, items):
    """(x, y, starts) of (prompt, answer) pairs: x (B, L) the separator, the prompt and the answer,
    right-padded with the separator; y (B, L) the answer token each position predicts, -1 where
    none; starts: the position that predicts each answer's first token."""
    eot = enc.encode(EOT, allowed_special={EOT})
    rows = [(eot + enc.encode(p), enc.encode(a)) for p, a in items]
    x = torch.full((len(rows), max(len(p) + len(a) for p, a in rows)), eot[0], dtype=torch.long)   # (B, L)
    y = torch.full(x.shape, -1, dtype=torch.long)                      # -1 = not an answer token
    for r, (p, a) in enumerate(rows):
        x[r, :len(p) + len(a)] = torch.tensor(p + a)
        y[r, len(p) - 1:len(p) + len(a) - 1] = torch.tensor(a)   # predict each answer token
    return x, y, [len(p) - 1 for p, _ in rows]


@torch.no_grad()
def first_wrong_tokens(model, enc, items, device, batch_size=128):
    """For each (prompt, answer) pair: the index of the first answer token that greedy decoding
    gets wrong, or None when it produces the whole answer."""
    wrong = []
    for i in range(0, len(items), batch_size):
        x, y, starts = qa_batch(enc, items[i:i + batch_size])
        scored = y >= 0                                                # (B, L) the answer tokens
        logits, _ = model(x.to(device), at=scored.to(device))          # (answer tokens, vocab)
        miss = torch.zeros_like(scored)
        miss[scored] = logits.argmax(-1).cpu() != y[scored]            # (B, L) answer tokens predicted wrong
        for r, start in enumerate(starts):
            at = miss[r].nonzero()
            wrong.append(int(at[0]) - start if len(at) else None)
    return wrong


SENTENCE_END = re.compile(r'(?<=[.!?])["\u201d]?\s+(?=["\u201c]?[A-Z])')


def story_endings(val_tokens, enc, n_choices=4, seed=0):
    """The skill probe's items, like HellaSwag: for each held-out story (the validation text,
    never trained on), the story without its last sentence and n_choices endings, its own last
    sentence (the answer) and the last sentences of other stories, in a shuffled order.
    Returns [(context, endings, answer index)]."""
    rng = random.Random(seed)
    stories = enc.decode(np.asarray(val_tokens).tolist()).split(EOT)
    split = []
    for s in stories:
        parts = SENTENCE_END.split(s.strip())
        if len(parts) >= 2:
            split.append((s.strip()[:len(s.strip()) - len(parts[-1])].rstrip(), parts[-1]))
    items = []
    for i, (context, ending) in enumerate(split):
        others = rng.sample([e for j, (_, e) in enumerate(split) if j != i and e != ending], n_choices - 1)
        endings = [ending] + others
        rng.shuffle(endings)
        items.append((context, endings, endings.index(ending)))
    return items


@torch.no_grad()
def skill_accuracy(model, enc, items, device, batch_size=64):
    """Share of story_endings items where the right ending has the highest mean log-likelihood
    per token given the story (the context is cut from the left to fit the model's window)."""
    T = model.config.block_size
    rows = []                                                        # (item, tokens, first ending token)
    for n, (context, endings, _) in enumerate(items):
        for e in endings:
            end = enc.encode(" " + e)[:T - 1]
            ctx = enc.encode(context)[-(T - len(end)):]
            rows.append((n, ctx + end, len(ctx)))
    scores = torch.empty(len(rows))
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        L = max(len(t) for _, t, _ in chunk)
        x = torch.zeros((len(chunk), L), dtype=torch.long)
        y = torch.full((len(chunk), L), -1, dtype=torch.long)
        for r, (_, t, start) in enumerate(chunk):
            x[r, :len(t)] = torch.tensor(t)
            y[r, start - 1:len(t) - 1] = torch.tensor(t[start:])       # predict the ending's tokens
        mask = y >= 0                                                  # (B, L) the ending's tokens
        logits = model(x.to(device), at=mask.to(device))[0]           # (ending tokens, vocab)
        logp = torch.log_softmax(logits.float(), dim=-1).cpu()
        tok = torch.zeros(y.shape)                                     # (B, L) each ending token's log-probability
        tok[mask] = logp.gather(-1, y[mask].unsqueeze(-1)).squeeze(-1)
        scores[i:i + len(chunk)] = tok.sum(1) / mask.sum(1)
    k = len(items[0][1])
    best = scores.view(len(items), k).argmax(1)
    return float((best == torch.tensor([a for _, _, a in items])).double().mean())


def corpus_facts(entries):
    """facts.json entries -> stream facts, the form finetune.py teaches and measure() scores:
    all statements and the first two questions are trained; the last question is held out
    (its unseen phrasing, unseen_acc)."""
    return [{"paraphrases": f["statements"], "questions": f["questions"][:-1],
             "heldout_question": f["questions"][-1], "answer": f["answer"], "where": f"new fact {i + 1}"}
            for i, f in enumerate(entries)]


def measure(model, enc, facts, background, val, device, skill=None):
    """Every number finetune.py's table reports, on the model as it is now: accuracy on the
    stream facts' trained questions and on their unseen phrasings, on the background facts
    (and which of their questions it gets right), on the skill probe's items (story_endings),
    val loss and slot usage."""
    model.eval()
    loss, usage = validate(model, val, model.config.block_size, device)
    seen = qa_items(facts)                                  # the questions trained on
    unseen = [qa_pair(f["heldout_question"], f["answer"]) for f in facts if f["heldout_question"]]
    known = qa_correct(model, enc, qa_items(background), device)   # per background question
    return {"learned_acc": qa_accuracy(model, enc, seen, device),
            "unseen_acc": qa_accuracy(model, enc, unseen, device) if unseen else None,
            "background_acc": sum(known) / max(len(known), 1), "background_correct": known,
            "skill_acc": skill_accuracy(model, enc, skill, device) if skill else None,
            "val_loss": loss, "slots": usage}


@torch.no_grad()
def greedy_answer(model, enc, prompt, device, max_new_tokens=16):
    """The model's answer to a prompt "Q: <question> A:" by greedy decoding, up to its first
    period (or an <|endoftext|>, or max_new_tokens tokens). It starts after the separator
    qa_correct puts first, so an answer qa_correct counts as right comes out as that answer."""
    eot, period = enc.encode(EOT, allowed_special={EOT}), enc.encode(".")
    idx = torch.tensor([eot + enc.encode(prompt)], device=device)                   # (1, T)
    out = model.generate(idx, max_new_tokens, temperature=0, stop_token=period[0] if len(period) == 1 else None)
    tokens = out[0, idx.shape[1]:].tolist()
    text = enc.decode(tokens[:tokens.index(eot[0])] if eot[0] in tokens else tokens)
    return (text[:text.index(".") + 1] if "." in text else text).strip()


@interruptible
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=os.path.join(ROOT, "out", "ckpt.pt"),
                   help="checkpoint written by train.py or "
                   "finetune.py --out")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.add_argument("--facts", type=int, default=100, help="new facts to score, as finetune.py's --facts (a finetuned "
                   "checkpoint scores the facts it was taught)")
    args = p.parse_args(argv)
    keep_freed_memory()
    try:
        if args.facts < 1:                                # before the checkpoint is read
            raise ValueError(f"--facts must be at least 1, not {args.facts}")
        device = pick_device(args.device)
        model, enc, ckpt = load_checkpoint(args.checkpoint, device)
        val, kb = checkpoint_corpus(ckpt)
        taught = ckpt.get("finetune", {}).get("facts_taught")
        if not taught and not 1 <= args.facts <= len(kb["new"]):
            raise ValueError(f"--facts must be between 1 and the corpus's {len(kb['new'])} new facts, not {args.facts}")
        facts = taught or corpus_facts(kb["new"][:args.facts])
        m = measure(model, enc, facts, kb["background"], val, device)
    except (OSError, RuntimeError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(f"val loss {m['val_loss']:.4f}")
    print(f"background facts {m['background_acc']:.3f}")
    what = "taught by finetune.py" if taught else "not taught to this checkpoint"
    unseen = m["unseen_acc"]
    print(f"new facts ({len(facts)}, {what}) {m['learned_acc']:.3f}"
          + ("" if unseen is None else f", on their unseen phrasing {unseen:.3f}"))
    for i, u in enumerate(m["slots"]):
        print(f"memory layer {i}: {u['used']:.1%} of slots used, KL from uniform {u['kl_uniform']:.2f} nats")


if __name__ == "__main__":
    main()
