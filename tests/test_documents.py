"""The documents of data/documents.py: one document per subject, questions never in a text, chunks
that cut a document, rewrites that tell a chunk's facts and nothing else, open answers,
determinism, and a world (and corpus) left as it was."""
import copy
import json
import os
import random
import re
import shutil
from collections import Counter

import numpy as np
import pytest

from data import corpus, documents, prepare, world
from data.prepare import knowledge_base, load_documents, read_corpus_meta, seen_tokens

SETS = ("background", "new", "new_answers", "new_relations")
# Every statement template as a pattern, any subject and any answer: a sentence that matches none
# states no fact of any relation.
TEMPLATES = [re.compile("^" + re.escape(t).replace(re.escape("{s}"), "(.+)").replace(re.escape("{o}"), "(.+)") + "$")
             for spec in world.ALL_RELATIONS.values() for t in spec.statements]


@pytest.fixture(scope="module")
def made():
    """(world, its documents) for seed 1337."""
    w = world.make_world(1337)
    return w, documents.make_documents(w)


def sentences(text):
    """The sentences of a text the generator wrote: one to a line."""
    return text.split(documents.LINE)


def mentions(name, text):
    return re.search(rf"\b{re.escape(name)}\b", text) is not None


def stated(sentence, facts):
    """The facts among `facts` that the sentence states word for word."""
    return [f for f in facts if sentence in f.statements()]


def test_documents_have_the_default_size_and_mix(made):
    _, docs = made
    assert len(docs) == documents.N_DOCUMENTS == 20
    assert [d.kind for d in docs[:4]] == list(documents.KIND_ORDER)
    assert all(4 <= len(d.facts) <= 8 for d in docs) and max(len(d.facts) for d in docs) > 6
    for d in docs:
        assert len({f.relation for f in d.facts}) == len(d.facts)            # each relation once
        assert all(world.RELATIONS[f.relation].kind == d.kind and f.subject == d.subject for f in d.facts)
        assert d.states.count(None) >= 1 and sorted(s for s in d.states if s is not None) == list(range(len(d.facts)))


def test_every_question_is_answered_by_one_document(made):
    w, docs = made
    others = {f.subject for name in SETS for f in getattr(w, name)} | {n for n in w.invented}
    assert len({d.subject for d in docs}) == len(docs) and not {d.subject for d in docs} & others
    for d in docs:
        qs = d.questions()
        assert len(qs) == len(d.facts)
        for f, q in zip(d.facts, qs):
            templates = [t.format(s=d.subject) for t in world.RELATIONS[f.relation].questions]
            assert q["question"] in templates and q["second"] in templates and q["question"] != q["second"]
            assert q["answer"] == f.object + "." and f.object in d.text
            assert [e for e in docs if mentions(d.subject, e.text)] == [d]   # its subject: in this document only
            assert sum(f.object in s for s in d.sentences) >= 1


def test_no_question_in_any_text(made):
    _, docs = made
    rng = random.Random(0)
    for d in docs:
        texts = [d.text] + [c.text for c in d.chunks()]
        texts += [r for c in d.chunks() for r in documents.rewrites(c, 16, rng)]
        questions = [q[k] for q in d.questions() for k in ("question", "second")]
        questions += [q for f in d.facts for q, _ in f.questions()]
        for t in texts:
            assert "?" not in t and "Q:" not in t and "A:" not in t
            assert not any(q in t for q in questions)


@pytest.mark.parametrize("size", [1, 2, 3])
def test_chunks_cut_the_document_in_order(made, size):
    _, docs = made
    for d in docs:
        chunks, bounds = d.chunks(size), d.chunk_bounds(size)
        assert [s for c in chunks for s in c.sentences] == d.sentences          # in order, each sentence once
        assert bounds[0][0] == 0 and bounds[-1][1] == len(d.sentences)
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert [f for c in chunks for f in c.facts] == d.facts                  # each fact in one chunk
        for c in chunks:
            assert 1 <= len(c.facts) <= size and c.subject == d.subject and c.kind == d.kind
            assert [f for s in c.sentences for f in stated(s, d.facts)] == c.facts
        assert all(len(c.facts) == size for c in chunks[:-1])                  # only the last may hold fewer
    assert sum(len(d.chunks(size)) for d in docs) == sum(-(-len(d.facts) // size) for d in docs)


def test_fillers_state_no_fact_and_use_the_stories_words(tiny_corpus):
    text = open(os.path.join(tiny_corpus.out_dir, "train.txt"), encoding="utf-8").read()
    words = set(re.findall(r"[A-Za-z]+", text))
    for kind in world.KINDS:
        for t in documents.INTROS[kind] + documents.FILLERS[kind]:
            assert not any(p.match(t.format(s="Kobado")) for p in TEMPLATES), t
            assert set(re.findall(r"[A-Za-z]+", t.replace("{s}", ""))) <= words, t


def test_rewrites_state_the_chunk_facts_and_nothing_else(made):
    _, docs = made
    rng = random.Random(0)
    for d in docs:
        fillers = {t.format(s=d.subject) for t in documents.INTROS[d.kind] + documents.FILLERS[d.kind]}
        for c in d.chunks():
            told = Counter()
            rewrites = documents.rewrites(c, 32, rng)
            assert len(rewrites) == 32 and len(set(rewrites)) > 8
            for r in rewrites:
                facts = []
                for s in sentences(r):
                    found = stated(s, c.facts)
                    if not found:                                   # an intro or filler: no fact at all
                        assert s in fillers and not any(p.match(s) for p in TEMPLATES), s
                    facts += found
                    told.update((f.relation, s) for f in found)
                assert sorted(facts, key=c.facts.index) == c.facts    # the same facts, each once
            for f in c.facts:                                         # in more than one of its templates
                assert len({s for r, s in told if r == f.relation}) >= 2


def test_rewrites_are_deterministic_for_a_seed(made):
    _, docs = made
    c = docs[0].chunks()[0]
    a, b = documents.rewrites(c, 8, random.Random(3)), documents.rewrites(c, 8, random.Random(3))
    assert a == b and documents.rewrites(c, 8, random.Random(4)) != a


def test_answers_are_open(made):
    w, docs = made
    background = {(f.relation, f.object) for f in w.background}
    answers = [f for d in docs for f in d.facts]
    assert not {(f.relation, f.object) for f in answers} & background
    invented = {n.lower() for n in w.invented} | corpus.story_words()
    for f in answers:
        pool = world.RELATIONS[f.relation].pool
        if pool in ("name", "town"):                     # invented anew, never a name of the world
            assert f.object.lower() not in invented and mentions(f.object, " ".join(d.text for d in docs))
        elif pool in world.OPEN_WORDS:                   # never a held-out word (those are the new-answers set's)
            assert f.object.split()[-1] in world.OPEN_WORDS[pool]
    by_relation = Counter(f.relation for f in answers)   # answers of a relation differ while its pool lasts
    distinct = {r: len({f.object for f in answers if f.relation == r}) for r in by_relation}
    assert distinct == dict(by_relation)
    wc = world.make_world(1337, closed=True)             # a closed world: the background's answers
    closed_bg = {(f.relation, f.object) for f in wc.background}
    assert all((f.relation, f.object) in closed_bg for d in documents.make_documents(wc, closed=True) for f in d.facts)


def test_documents_are_deterministic_for_a_seed(made):
    w, docs = made
    again = documents.make_documents(world.make_world(1337))
    assert [d.to_dict() for d in again] == [d.to_dict() for d in docs]
    other = documents.make_documents(world.make_world(1338))
    assert {d.subject for d in other} != {d.subject for d in docs} and other[0].text != docs[0].text
    reseeded = copy.copy(w)                              # the same world under another seed: other draws
    reseeded.seed = 1338
    assert documents.make_documents(reseeded)[0].subject != docs[0].subject
    assert [documents.Document.from_dict(d.to_dict()) for d in docs] == docs


def test_every_line_holds_every_sentence_the_model_may_read(made):
    _, docs = made
    rng = random.Random(0)
    for d in docs:
        lines = set(documents.every_line(d))
        rewritten = [s for c in d.chunks() for r in documents.rewrites(c, 16, rng) for s in sentences(r)]
        assert set(d.sentences) <= lines and set(rewritten) <= lines
        assert {s for f in d.facts for s in f.statements()} <= lines
        assert {f"Q: {q[k]} A: {q['answer']}" for q in d.questions() for k in ("question", "second")} <= lines


def test_documents_change_no_world_set():
    state = random.getstate()
    w = world.make_world(1337)
    before = copy.deepcopy({k: getattr(w, k) for k in SETS + ("invented",)})
    docs = documents.make_documents(w)
    assert {k: getattr(w, k) for k in SETS + ("invented",)} == before
    fresh = world.make_world(1337)                       # made after the documents: the same world
    assert {k: getattr(fresh, k) for k in SETS + ("invented",)} == before
    assert random.getstate() == state and docs


def test_unusable_documents_are_drawn_again(made):
    _, docs = made
    skipped = {docs[0].subject, docs[5].subject}
    again = documents.make_documents(world.make_world(1337), usable=lambda d: d.subject not in skipped)
    assert len(again) == 20 and not skipped & {d.subject for d in again}
    assert [d.kind for d in again] == [d.kind for d in docs]
    assert documents.make_documents(world.make_world(1337), 3, usable=lambda d: False) == []


def test_prepared_corpus_holds_the_documents(tiny_corpus):
    d = tiny_corpus.out_dir
    kb = json.load(open(os.path.join(d, "facts.json"), encoding="utf-8"))
    docs = load_documents(d)
    assert len(kb["documents"]) == len(docs) == 20 and [x.to_dict() for x in docs] == kb["documents"]
    for entry in kb["documents"]:
        assert [c["text"] for c in entry["chunks"]] == [c.text for c in documents.Document.from_dict(entry).chunks()]
        assert entry["questions"] and set(entry["questions"][0]) == {"question", "second", "answer"}
    meta, enc, _ = read_corpus_meta(d)
    seen = seen_tokens(np.fromfile(os.path.join(d, "train.bin"), dtype=meta["dtype"]))
    assert all(set(enc.encode(t)) <= seen for x in docs for t in documents.every_line(x))
    text = open(os.path.join(d, "train.txt"), encoding="utf-8").read()
    names = {x.subject for x in docs} | {f.object for x in docs for f in x.facts
                                         if world.RELATIONS[f.relation].pool in ("name", "town")}
    assert not [n for n in names if mentions(n, text)]                  # pretraining never names them


def test_facts_json_sets_do_not_depend_on_the_documents(tiny_corpus, monkeypatch):
    d = tiny_corpus.out_dir
    kb = json.load(open(os.path.join(d, "facts.json"), encoding="utf-8"))
    meta, enc, _ = read_corpus_meta(d)
    seen = seen_tokens(np.fromfile(os.path.join(d, "train.bin"), dtype=meta["dtype"]))
    monkeypatch.setattr(documents, "N_DOCUMENTS", 0)
    without = knowledge_base(tiny_corpus, enc, seen)
    assert without.pop("documents") == [] and list(kb) == list(without) + ["documents"]
    assert all(kb[k] == without[k] for k in without)


def test_facts_json_keeps_what_a_generalisation_set_has_when_fewer_than_100_are_spelled_in_seen_tokens(
        tiny_corpus, monkeypatch):
    """A large vocabulary on a small corpus spells many invented names in tokens pretraining never
    holds: facts.json then keeps the usable facts of each set, where preparing used to stop."""
    d = tiny_corpus.out_dir
    meta, enc, _ = read_corpus_meta(d)
    seen = seen_tokens(np.fromfile(os.path.join(d, "train.bin"), dtype=meta["dtype"]))
    w = prepare.world_of(tiny_corpus)
    kept = {w.new[0].subject, w.new_answers[0].subject, w.new_relations[0].subject}
    monkeypatch.setattr(prepare, "usable_for", lambda enc, seen: lambda facts: facts[0].subject in kept)
    kb = knowledge_base(tiny_corpus, enc, seen)
    for key, first in (("new", w.new[0]), ("new_answers", w.new_answers[0]), ("new_relations", w.new_relations[0])):
        assert 0 < len(kb[key]) < 100 and {f["subject"] for f in kb[key]} == {first.subject}, key


def test_a_corpus_without_documents_draws_them_from_its_seed(tiny_corpus, tmp_path):
    d = str(tmp_path / "old")
    shutil.copytree(tiny_corpus.out_dir, d)
    path = os.path.join(d, "facts.json")
    kb = json.load(open(path, encoding="utf-8"))
    del kb["documents"]                                  # as prepared before facts.json held them
    with open(path, "w", encoding="utf-8") as f:
        json.dump(kb, f)
    assert [x.to_dict() for x in load_documents(d)] == [x.to_dict() for x in load_documents(tiny_corpus.out_dir)]
