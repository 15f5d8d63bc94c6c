"""
What a stream teaches (finetune.py) and their batches: facts read from a JSON Lines file
(--facts-file; the format is in python finetune.py --help) or taken from the corpus's new
facts; or documents, the corpus's (data/documents.py) or a text of your own (--text, with
--questions), cut into chunks. Everything is checked against the model before any work.

A stream fact is {"paraphrases": [...], "questions": [...], "heldout_question": a question
or None, "answer": ..., "where": where it came from, for messages}; the questions are
trained, the held-out one only scored. A document's chunk is a stream item of the same form
with no questions, and "answers" (each answer it tells) in place of "answer"; its document's
questions are stream facts with no paraphrases, scored, never trained (document_stream).
"""

import json
import os
import random
import re
import sys
from typing import NamedTuple

import numpy as np
import torch

from checkpoint import checkpoint_corpus, corpus_dir
from data.documents import FACTS_PER_CHUNK, LINE, rewrites
from data.prepare import load_documents
from data.tokenizer import EOT
from evaluate import corpus_facts, qa_pair


def read_lines(path, what):
    """(line number, line) of a UTF-8 text file (a BOM allowed); a missing file, a folder or a bad
    byte raises ValueError naming it (what: "facts file", ...)."""
    if not os.path.exists(path):
        raise ValueError(f"{what} {path} does not exist")
    if not os.path.isfile(path):
        raise ValueError(f"{what} {path} is not a file")
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:                                       # line by line, so a bad byte is named by its line
                yield n, raw.decode("utf-8-sig")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path} line {n}: not UTF-8 text (byte {raw[e.start]:#x}); save the file as "
                                 "UTF-8") from None


def json_lines(path, what):
    """(where, object) of each line of a JSON Lines file that is not blank (where: its path and line
    number, for messages); a line that is not JSON raises ValueError naming it."""
    for n, line in read_lines(path, what):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} line {n}: not valid JSON ({e.msg})") from None
        yield f"{path} line {n}", d


def read_facts_file(path):
    """Read and check a JSON Lines facts file (UTF-8, a BOM allowed); a bad line raises ValueError naming it."""
    keys = {"paraphrases", "question", "answer", "heldout_question"}
    facts = []
    for where, d in json_lines(path, "facts file"):
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


# ----------------------------------------------------------------------------------------
# documents: taught chunk by chunk, asked about only after the stream

def chunk_item(texts, answers, where):
    """A chunk as a stream item: its batch is texts, nothing question-shaped; answers (each
    ending with its period) mark where the batch predicts them (make_batch, for the recipes)."""
    return {"paraphrases": texts, "questions": [], "heldout_question": None, "answers": answers, "where": where}


def question_item(question, second, answer, where):
    """A question about a document as a stream fact that is scored and never trained: learned is
    its first phrasing, unseen its second (None: none)."""
    return {"paraphrases": [], "questions": [question], "heldout_question": second, "answer": answer, "where": where}


def document_stream(docs, n_rewrites, seed, facts_per_chunk=FACTS_PER_CHUNK):
    """(the stream, the questions) of documents (data.documents.Document): a stream item per chunk
    (Document.chunks), document by document, in the text's order, its batch the chunk and
    n_rewrites rewrites of it (data.documents.rewrites, drawn from the seed and the chunk's place:
    the same every run; 0: the chunk alone, the same step as the chunk repeated to fill a batch);
    and a question item per fact, its second phrasing the unseen one. facts_per_chunk: the fact
    sentences of a chunk (python -m experiments documents-chunks tries 1)."""
    stream, questions = [], []
    for i, doc in enumerate(docs, 1):
        for j, chunk in enumerate(doc.chunks(facts_per_chunk), 1):
            texts = [chunk.text] + rewrites(chunk, n_rewrites, random.Random(f"rewrites {seed} {i} {j}"))
            stream.append(chunk_item(texts, [f.questions()[0][1] for f in chunk.facts], f"{doc.title}, chunk {j}"))
        questions += [question_item(q["question"], q["second"], q["answer"], f"{doc.title}, question {k}")
                      for k, q in enumerate(doc.questions(), 1)]
    return stream, questions


def corpus_documents(ckpt, n):
    """The first n documents of the checkpoint's corpus."""
    docs = load_documents(corpus_dir(ckpt))
    if n > len(docs):
        raise ValueError(f"--documents {n}: the corpus has {len(docs)} documents")
    return docs[:n]


def read_text(path):
    """The text of a plain text file of your own (UTF-8), its words joined by single spaces."""
    text = " ".join(word for _, line in read_lines(path, "text file") for word in line.split())
    if not text:
        raise ValueError(f"text file {path} is empty; write the sentences to teach in it")
    if EOT in text:
        raise ValueError(f"text file {path}: {EOT} is the separator the model reads between texts; remove it")
    return text


def read_questions(path, text):
    """Questions about a text (read_text), JSON Lines, UTF-8: {"question": ..., "answer": ...} and
    optionally "second", another phrasing (scored as unseen). Each answer, less its final period,
    must be spelled in the text: a question the text cannot answer measures nothing."""
    questions = []
    for where, d in json_lines(path, "questions file"):
        if not isinstance(d, dict) or {"question", "answer"} - d.keys() or d.keys() - {"question", "answer", "second"}:
            raise ValueError(f"{where}: a question is an object with question and answer, and may have second")
        if not all(isinstance(v, str) and v.strip() and EOT not in v for v in d.values()):
            raise ValueError(f"{where}: question, answer and second must be non-empty strings without {EOT}")
        if d["answer"].strip().rstrip(".") not in text:
            raise ValueError(f"{where}: the answer {d['answer']!r} is nowhere in the text; ask what the text says")
        questions.append(question_item(d["question"], d.get("second"), d["answer"].strip(), where))
    if not questions:
        raise ValueError(f"questions file {path} holds no questions")
    return questions


def text_stream(text, questions, enc, block_size, path, per_chunk=2):
    """The stream of a text of your own: its sentences (cut after each . ! or ? a space follows),
    per_chunk to a chunk, one to a line (as the corpus's documents: data.documents.LINE), fewer
    where more would not fit the model's block_size. Each chunk's batch is the chunk alone (no
    rewrites: only the world's own documents have them), marked at the answers of the questions
    it spells."""
    chunks = []
    for sentence in re.split(r"(?<=[.!?]) ", text):
        n = 1 + len(enc.encode(sentence))                              # with the leading separator
        if n > block_size:
            raise ValueError(f"{path}: the sentence {sentence[:40]!r}... is {n} tokens, more than the model's "
                             f"block_size {block_size}; split it")
        joined = f"{chunks[-1][0]}{LINE}{sentence}" if chunks else ""
        if chunks and chunks[-1][1] < per_chunk and 1 + len(enc.encode(joined)) <= block_size:
            chunks[-1] = (joined, chunks[-1][1] + 1)
        else:
            chunks.append((sentence, 1))
    return [chunk_item([c], [q["answer"] for q in questions if " " + q["answer"] in " " + c], f"{path} chunk {i}")
            for i, (c, _) in enumerate(chunks, 1)]


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


def warn_unseen_tokens(enc, facts, train_tokens, what="facts"):
    """One warning line for the facts (what: or the chunks and questions of a document stream)
    spelled in tokens that the pretraining tokens never hold: their embeddings were never trained,
    so the model may not learn or answer those facts."""
    seen = np.bincount(train_tokens, minlength=enc.n_vocab) > 0
    odd = []
    for f in facts:
        pieces = sorted({p for t in fact_lines(f) for p in unseen_pieces(enc, t, seen)})
        if pieces:
            odd.append(f"{f['where']} ({', '.join(map(repr, pieces))})")
    if odd:
        print(f"warning: {len(odd)} of {len(facts)} {what} are spelled in tokens pretraining never saw, so they may "
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


def make_batch(enc, texts, block_size, answers=None):
    """Rows "<|endoftext|> text", right-padded. x (B, L) tokens, y (B, L) targets with -1 on
    padding, count (B, L) True on the tokens whose slot reads sparse finetuning counts:

    - answers None (the paper): the text's own tokens; not the padding, and not the leading
      separator, which reads the same slots in every row of every fact (same token, position 0):
      TF-IDF would rank those as fact-specific and retrain them for every fact, although every
      question prompt starts with them;
    - answers given (a list: a fact's one answer, or each answer a document's chunk tells): only
      the positions that predict an answer's tokens (" <answer>", its final period included), at
      its first place in each row that spells it, none in a row that spells none. With the memory
      in the last block a slot read at a position changes only that position's prediction, so
      these are the reads that can carry the fact."""
    eot = enc.eot_token
    rows = [[eot] + enc.encode(t) for t in texts]
    L = max(len(r) for r in rows)
    if L > block_size:
        raise ValueError(f"a fact line is {L} tokens, longer than the model's block_size {block_size}")
    x = torch.full((len(rows), L), eot, dtype=torch.long)
    y = torch.full((len(rows), L), -1, dtype=torch.long)
    count = torch.zeros((len(rows), L), dtype=torch.bool)
    targets = [enc.encode(" " + a) for a in answers] if answers is not None else None
    for i, r in enumerate(rows):
        x[i, :len(r)] = torch.tensor(r)
        y[i, :len(r) - 1] = torch.tensor(r[1:])
        if targets is None:
            count[i, 1:len(r)] = True
            continue
        for target in targets:
            start = next((j for j in range(1, len(r) - len(target) + 1) if r[j:j + len(target)] == target), None)
            if start is not None:                      # r[start] is the answer's first token, predicted at start - 1
                count[i, start - 1:start - 1 + len(target)] = True
    return x, y, count
