"""The document stream (facts.document_stream, facts.text_stream, finetune --task documents and
--text): each chunk taught once, in order, in a batch of the chunk and its rewrites; nothing
question-shaped trained; every question scored after, with its second phrasing as the unseen one."""
import json
import os

import pytest
import torch

import finetune
from conftest import checkpoint_of, one_line_error
from data import documents, world
from facts import (batch_texts, chunk_item, document_stream, read_questions, read_text, text_stream)
from test_facts import Chars

QUESTION_SHAPED = ("Q:", "?")


@pytest.fixture(scope="module")
def docs():
    return documents.make_documents(world.make_world(1337))[:6]


def test_each_chunk_is_taught_once_in_order_beside_its_rewrites(docs):
    stream, questions = document_stream(docs, 7, seed=1337)
    chunks = [c for d in docs for c in d.chunks()]
    assert len(stream) == len(chunks) and len(questions) == sum(len(d.facts) for d in docs)
    for item, chunk in zip(stream, chunks):
        texts = batch_texts(item)
        assert texts[0] == chunk.text and len(texts) == 8 and len(set(texts)) > 1       # the chunk, then 7 rewrites
        assert item["answers"] == [f.object + "." for f in chunk.facts]
        for text in texts:                                       # every row tells each of its facts, and nothing else
            assert all(f.object in text for f in chunk.facts)
            assert not any(mark in text for mark in QUESTION_SHAPED)
    alone, _ = document_stream(docs, 0, seed=1337)
    assert [batch_texts(i) for i in alone] == [[c.text] for c in chunks]


def test_the_questions_are_scored_never_trained(docs):
    stream, questions = document_stream(docs, 7, seed=1337)
    asked = [q for d in docs for q in d.questions()]
    assert [(q["questions"], q["heldout_question"], q["answer"]) for q in questions] == \
        [([a["question"]], a["second"], a["answer"]) for a in asked]
    assert all(q["paraphrases"] == [] for q in questions)
    trained = " ".join(t for item in stream for t in batch_texts(item))
    assert not any(q["questions"][0] in trained or q["heldout_question"] in trained for q in questions)


def test_the_rewrites_are_drawn_from_the_seed(docs):
    assert document_stream(docs, 3, seed=1) == document_stream(docs, 3, seed=1)
    assert document_stream(docs, 3, seed=1)[0] != document_stream(docs, 3, seed=2)[0]


def test_a_chunk_batch_marks_every_answer_it_tells():
    item = chunk_item(["Tom has a cat.\nTom lives in Rome.", "Tom lives in Rome.", "Tom smiled."], ["a cat.", "Rome."], "x")
    batch = finetune.fact_batch(Chars(), item, 64, "cpu")
    predicted = ["".join(chr(t) for t in batch.y[r][batch.at[r]].tolist()) for r in range(3)]
    assert predicted == [" a cat. Rome.", " Rome.", ""]


def test_your_text_is_cut_into_chunks_of_two_sentences_that_fit_the_context(tmp_path):
    text = "Mira lives in Oakton. Mira has a dog! Is the dog big? The dog is called Pip."
    questions = [{"answer": "Oakton."}, {"answer": "Pip."}]
    stream = text_stream(text, questions, Chars(), 64, "t.txt")
    assert [batch_texts(i) for i in stream] == [["Mira lives in Oakton.\nMira has a dog!"],
                                               ["Is the dog big?\nThe dog is called Pip."]]
    assert [i["answers"] for i in stream] == [["Oakton."], ["Pip."]]
    narrow = text_stream(text, questions, Chars(), 30, "t.txt")                    # two would not fit in 30
    assert [batch_texts(i)[0] for i in narrow] == ["Mira lives in Oakton.", "Mira has a dog!", "Is the dog big?",
                                                   "The dog is called Pip."]
    with pytest.raises(ValueError, match="the sentence 'Mira lives in Oakton.'... is 22 tokens, more than the "
                                         "model's block_size 20; split it"):
        text_stream(text, questions, Chars(), 20, "t.txt")


@pytest.mark.parametrize("text, lines, message", [
    ("", ['{"question": "Q?", "answer": "a."}'], "is empty; write the sentences"),
    ("Mira lives in Oakton.", ['{"question": "Where?", "answer": "Paris."}'],
     "line 1: the answer 'Paris.' is nowhere in the text"),
    ("Mira lives in Oakton.", ['', '{"question": "Where?"}'], "line 2: a question is an object with question and answer"),
    ("Mira lives in Oakton.", ['{"question": "Where?", "answer": "Oakton.", "heldout": "x"}'],
     "a question is an object"),
    ("Mira lives in Oakton.", ['{"question": "", "answer": "Oakton."}'], "must be non-empty strings"),
    ("Mira lives in Oakton.", ['{"question": "Where?", "answer": "Oakton."'], "line 1: not valid JSON"),
    ("Mira lives in Oakton.", [''], "holds no questions"),
    ("Mira <|endoftext|> lives in Oakton.", ['{"question": "Where?", "answer": "Oakton."}'], "remove it")])
def test_bad_text_or_questions_are_named_with_their_line(tmp_path, text, lines, message):
    (tmp_path / "t.txt").write_text(text)
    (tmp_path / "q.jsonl").write_text("\n".join(lines))
    with pytest.raises(ValueError, match=message):
        read_questions(str(tmp_path / "q.jsonl"), read_text(str(tmp_path / "t.txt")))


def test_the_example_text_and_its_questions_are_in_the_documented_format():
    from conftest import ROOT
    folder = os.path.join(ROOT, "data", "examples")
    text = read_text(os.path.join(folder, "my_text.txt"))
    questions = read_questions(os.path.join(folder, "my_questions.jsonl"), text)
    assert len(questions) == 8 and all(q["heldout_question"] for q in questions)
    assert not any(q["questions"][0] in text or q["heldout_question"] in text for q in questions)


def test_finetune_teaches_your_text_and_asks_only_after(trained, tmp_path, monkeypatch):
    (tmp_path / "t.txt").write_text("Tom has a red ball.\nTom ran home.\n\nTom lives in the park.", encoding="utf-8")
    (tmp_path / "q.jsonl").write_text('{"question": "What does Tom have?", "answer": "a red ball.", "second": '
                                      '"What is the red thing of Tom?"}\n{"question": "Where does Tom live?", '
                                      '"answer": "the park."}\n')
    taught = []
    real = finetune.run_stream
    monkeypatch.setattr(finetune, "run_stream", lambda cfg, model, enc, items, *a: taught.extend(items) or
                        real(cfg, model, enc, items, *a))
    out = tmp_path / "r.json"
    finetune.main(["--checkpoint", checkpoint_of(trained), "--text", str(tmp_path / "t.txt"), "--questions",
                   str(tmp_path / "q.jsonl"), "--steps-per-fact", "1", "--quiet", "--device", "cpu", "--json", str(out)])
    r = json.loads(out.read_text())
    assert (r["stream"], r["facts"], r["batches"]) == ("t.txt", 2, 2) and r["unseen_acc"] is not None
    assert [batch_texts(i) for i in taught] == [["Tom has a red ball.\nTom ran home."], ["Tom lives in the park."]]
    assert r["settings"]["task"] == "documents"


def test_the_corpus_documents_are_the_stream_of_task_documents(trained):
    cfg = finetune.FinetuneConfig(checkpoint=checkpoint_of(trained), task="documents", documents=2, rewrites=1)
    _, enc, ckpt = finetune.load_checkpoint(cfg.checkpoint)
    stream, questions, name = finetune.what_to_teach(cfg, ckpt, enc, 10_000)
    assert name == "documents" and 2 <= len(stream) and len(questions) >= 8
    assert all(len(batch_texts(i)) == 2 and not i["questions"] for i in stream)
    cfg.documents = 10_000
    with pytest.raises(ValueError, match=r"--documents 10000: the corpus has \d+ documents"):
        finetune.what_to_teach(cfg, ckpt, enc, 10_000)
