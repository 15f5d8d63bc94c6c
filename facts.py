"""
The facts a stream teaches (finetune.py) and their batches: read from a JSON Lines file
(--facts-file; the format is in python finetune.py --help) or taken from the corpus's new
facts, checked against the model before any work, and made into one batch per fact.

A stream fact is {"paraphrases": [...], "questions": [...], "heldout_question": a question
or None, "answer": ..., "where": where it came from, for messages}; the questions are
trained, the held-out one only scored.
"""

import json
import os
import sys
from typing import NamedTuple

import numpy as np
import torch

from checkpoint import checkpoint_corpus
from data.tokenizer import EOT
from evaluate import corpus_facts, qa_pair


def read_facts_file(path):
    """Read and check a JSON Lines facts file (UTF-8, a BOM allowed); a bad line raises ValueError naming it."""
    if not os.path.exists(path):
        raise ValueError(f"facts file {path} does not exist")
    keys = {"paraphrases", "question", "answer", "heldout_question"}
    facts = []
    if not os.path.isfile(path):
        raise ValueError(f"facts file {path} is not a file")
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            where = f"{path} line {n}"
            try:                                       # line by line, so a bad byte is named by its line
                line = raw.decode("utf-8-sig")
            except UnicodeDecodeError as e:
                raise ValueError(f"{where}: not UTF-8 text (byte {raw[e.start]:#x}); save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(d, dict):
                raise ValueError(f"{where}: expected an object with paraphrases, question and answer")
            missing, unknown = {"paraphrases", "question", "answer"} - d.keys(), d.keys() - keys
            if missing or unknown:
                wrong = f"missing {sorted(missing)}" if missing else f"unknown keys {sorted(unknown)}"
                raise ValueError(f"{where}: {wrong}; a fact has paraphrases, question and answer, and may have "
                                 "heldout_question")
            p = d["paraphrases"]
            if not isinstance(p, list) or not p or not all(isinstance(s, str) and s.strip() for s in p):
                raise ValueError(f"{where}: paraphrases must be a non-empty list of non-empty strings")
            for k in ("question", "answer", "heldout_question"):
                if k in d and not (isinstance(d[k], str) and d[k].strip()):
                    raise ValueError(f"{where}: {k} must be a non-empty string")
            if any(EOT in s for s in p + [d[k] for k in ("question", "answer", "heldout_question") if k in d]):
                raise ValueError(f"{where}: {EOT} is the separator the model reads between texts; remove it")
            facts.append({"paraphrases": p, "questions": [d["question"]],
                          "heldout_question": d.get("heldout_question"), "answer": d["answer"], "where": where})
    if not facts:
        raise ValueError(f"facts file {path} holds no facts")
    return facts


def stream_facts(ckpt, n, facts_file=""):
    """The stream: the facts of facts_file, or else the first n new facts of the checkpoint's corpus."""
    if facts_file:
        return read_facts_file(facts_file)
    new = checkpoint_corpus(ckpt)[1]["new"]
    if n > len(new):
        raise ValueError(f"--facts {n}: the corpus has {len(new)} new facts")
    return corpus_facts(new[:n])


def batch_texts(fact):
    """The lines a stream fact is trained on: its paraphrases and a "Q: <question> A: <answer>"
    line per question (data.prepare.rendered_lines: a world fact's lines in the corpus)."""
    return fact["paraphrases"] + ["".join(qa_pair(q, fact["answer"])) for q in fact["questions"]]


def fact_lines(fact):
    """Every line the model reads for a stream fact: the lines it is trained on, and its unseen
    phrasing as it is scored ("Q: <question> A: <answer>")."""
    heldout = fact["heldout_question"]
    return batch_texts(fact) + (["".join(qa_pair(heldout, fact["answer"]))] if heldout else [])


def check_lengths(enc, facts, block_size):
    """Every trained line and every scored question must fit the model's context."""
    for f in facts:
        for t in fact_lines(f):
            n = 1 + len(enc.encode(t))                                 # with the leading separator
            if n > block_size:
                raise ValueError(f"{f.get('where', 'a fact')}: {t[:40]!r}... is {n} tokens, more than the "
                                 f"model's block_size {block_size}; shorten it")


def unseen_pieces(enc, text, seen):
    """The pieces of text spelled in tokens that never occur in pretraining (seen: a bool per token id)."""
    pieces, run = [], []
    for t in enc.encode(text) + [None]:
        if t is not None and not seen[t]:
            run.append(t)
        elif run:
            pieces.append(enc.decode(run))
            run = []
    return pieces


def warn_unseen_tokens(enc, facts, train_tokens):
    """One warning line for the facts spelled in tokens that the pretraining tokens never hold:
    their embeddings were never trained, so the model may not learn or answer those facts."""
    seen = np.bincount(train_tokens, minlength=enc.n_vocab) > 0
    odd = []
    for f in facts:
        pieces = sorted({p for t in fact_lines(f) for p in unseen_pieces(enc, t, seen)})
        if pieces:
            odd.append(f"{f['where']} ({', '.join(map(repr, pieces))})")
    if odd:
        print(f"warning: {len(odd)} of {len(facts)} facts are spelled in tokens pretraining never saw, so they may "
              f"not be learned: " + "; ".join(odd[:3]) + ("; ..." if len(odd) > 3 else ""), file=sys.stderr)


class Batch(NamedTuple):
    """A fact's batch as the stream trains on it (finetune.fact_batch): x, y (B, L) tokens and
    targets (-1 on padding); count (B, L) True on the tokens whose slot reads sparse finetuning
    counts (the text's: make_batch); at (B, L) True at the positions that predict the answer's
    tokens, in every line that spells it (make_batch with answer)."""
    x: torch.Tensor
    y: torch.Tensor
    count: torch.Tensor
    at: torch.Tensor


def make_batch(enc, texts, block_size, answer=None):
    """Rows "<|endoftext|> text", right-padded. x (B, L) tokens, y (B, L) targets with -1 on
    padding, count (B, L) True on the tokens whose slot reads sparse finetuning counts:

    - answer None (the paper): the text's own tokens; not the padding, and not the leading
      separator, which reads the same slots in every row of every fact (same token, position 0):
      TF-IDF would rank those as fact-specific and retrain them for every fact, although every
      question prompt starts with them;
    - answer given (--count-reads answer): only the positions that predict the answer's tokens, in
      each row that spells the answer (" <answer>", its final period included), none in a row
      that does not. With the memory in the last block a slot read at a position changes only
      that position's prediction, so these are the reads that can carry the fact."""
    eot = enc.eot_token
    rows = [[eot] + enc.encode(t) for t in texts]
    L = max(len(r) for r in rows)
    if L > block_size:
        raise ValueError(f"a fact line is {L} tokens, longer than the model's block_size {block_size}")
    x = torch.full((len(rows), L), eot, dtype=torch.long)
    y = torch.full((len(rows), L), -1, dtype=torch.long)
    count = torch.zeros((len(rows), L), dtype=torch.bool)
    target = enc.encode(" " + answer) if answer is not None else None
    for i, r in enumerate(rows):
        x[i, :len(r)] = torch.tensor(r)
        y[i, :len(r) - 1] = torch.tensor(r[1:])
        if target is None:
            count[i, 1:len(r)] = True
            continue
        start = next((j for j in range(1, len(r) - len(target) + 1) if r[j:j + len(target)] == target), None)
        if start is not None:                          # r[start] is the answer's first token, predicted at start - 1
            count[i, start - 1:start - 1 + len(target)] = True
    return x, y, count
