import json
import os

import numpy as np
import pytest

from conftest import SHARED_TINYSTORIES
from data import corpus, world
from data.prepare import DataConfig, prepare
from data.tokenizer import get_encoding


def test_generator_is_deterministic_for_a_seed():
    import random
    a = [corpus.story(random.Random(7)) for _ in range(3)]
    b = [corpus.story(random.Random(7)) for _ in range(3)]
    assert a == b and corpus.story(random.Random(8)) != a[0]
    w1, w2 = world.make_world(5), world.make_world(5)
    assert (w1.background, w1.new, w1.new_answers, w1.new_relations) == (w2.background, w2.new, w2.new_answers, w2.new_relations)
    assert world.make_world(6).background != w1.background


def test_world_has_many_relations_with_their_own_phrasings():
    assert len(world.RELATIONS) >= 24 and not world.RELATIONS.keys() & world.NEW_RELATIONS.keys()
    for kind in world.KINDS:
        assert sum(spec.kind == kind for spec in world.RELATIONS.values()) >= 3
    for spec in world.ALL_RELATIONS.values():
        assert len(spec.statements) >= 4 and len(spec.questions) >= 3
        assert all("{s}" in t and "{o}" in t for t in spec.statements) and all("{s}" in q for q in spec.questions)
    w = world.make_world(1337)
    per_subject = {}
    for f in w.background:
        per_subject.setdefault(f.subject, set()).add(f.relation)
    assert len({frozenset(r) for r in per_subject.values()}) > len(per_subject) / 2   # entities differ in relations


def test_open_world_answers_are_open():
    w = world.make_world(1337)
    # no new fact shares its (relation, answer) with a background fact; the closed world shares nearly all
    assert world.collision_share(w) < 0.05 and world.collision_share(world.make_world(1337, closed=True)) > 0.9
    for r, (n, distinct, bits) in world.answer_entropy(w.background).items():
        assert distinct == n and bits > 4.0, r                  # every background answer of a relation differs
    answers = {f.object for f in w.background}
    for f in w.new_answers:                                      # answers never given in pretraining, by any relation
        assert f.object not in answers and f.object.split()[-1] in world.HELD_OUT
    assert {f.relation for f in w.new_relations} <= world.NEW_RELATIONS.keys()


def test_names_are_distinct_and_new():
    w = world.make_world(1337)
    subjects = [{f.subject for f in facts} for facts in (w.background, w.new, w.new_answers, w.new_relations)]
    assert sum(len(s) for s in subjects) == len(set().union(*subjects))         # no entity in two sets
    named = {f.object for f in w.background + w.new if world.RELATIONS[f.relation].pool in ("name", "town")}
    assert not named & set().union(*subjects)                                    # an answer is never an entity
    assert len(set(w.invented)) == len(w.invented) and not {n.lower() for n in w.invented} & corpus.story_words()
    assert len({(f.subject, f.relation) for f in w.new}) == len(w.new)           # each fact once


def test_new_facts_skip_unusable_entities_and_say_when_too_few_are_left():
    w = world.make_world(1337)
    two = list(dict.fromkeys(f.subject for f in w.new))[:2]
    theirs = [f for f in w.new if f.subject in two]
    usable = lambda facts: facts[0].subject in two              # every other entity is "spelled in unseen tokens"
    assert w.new_facts(len(theirs), usable) == theirs
    with pytest.raises(ValueError, match=f"only {len(theirs)} facts available, {len(theirs) + 1} asked"):
        w.new_facts(len(theirs) + 1, usable)
    assert w.new_facts(1000, usable, at_most=True) == theirs     # facts.json: as many as there are


def test_fact_renderings():
    f = world.Fact("Tomi", "home", "Pinewood")
    assert "Tomi lives in Pinewood." in f.statements()
    q, a = f.questions()[0]
    assert q == "Where does Tomi live?" and a == "Pinewood."
    assert f.qa_text(0) == "Q: Where does Tomi live? A: Pinewood."


def test_prepared_corpus(tiny_corpus):
    d = tiny_corpus.out_dir
    meta = json.load(open(os.path.join(d, "meta.json")))
    enc = get_encoding(os.path.join(d, meta["tokenizer"]))
    assert meta["vocab_size"] == enc.n_vocab <= 1024
    train = np.fromfile(os.path.join(d, "train.bin"), dtype=meta["dtype"])
    assert len(train) == meta["train_tokens"] and int(train.max()) < enc.n_vocab
    text = open(os.path.join(d, "train.txt"), encoding="utf-8").read()
    assert enc.decode(train[:500].tolist()) == text[:len(enc.decode(train[:500].tolist()))]
    val = open(os.path.join(d, "val.txt"), encoding="utf-8").read()
    assert "Q:" not in val                                         # validation is stories only
    kb = json.load(open(os.path.join(d, "facts.json")))
    assert len(kb["new"]) == 1000 and len(kb["new_answers"]) == len(kb["new_relations"]) == 100
    assert kb["stats"]["collision_share"] == 0.0 and len(kb["stats"]["answers"]) == len(world.RELATIONS)
    # every token of every line of every new fact, of both sets too, occurs in the pretraining tokens
    seen = set(np.unique(train).tolist())
    for f in kb["new"] + kb["new_answers"] + kb["new_relations"]:
        for t in f["statements"] + [f"Q: {q} A: {f['answer']}" for q in f["questions"]]:
            assert set(enc.encode(t)) <= seen, t
    # names are spelled in a few syllable tokens, never one opaque token
    assert all(len(enc.encode(" " + f["subject"])) >= 2 for f in kb["new"][:50])
    # background facts are in the training text
    assert all(any(s in text for s in f["statements"] + [f"Q: {q} A: {f['answer']}" for q in f["questions"]])
               for f in kb["background"])


def test_prepare_skips_finished_stages(tiny_corpus):
    d = tiny_corpus.out_dir
    stamps = {n: os.path.getmtime(os.path.join(d, n)) for n in os.listdir(d)}
    prepare(tiny_corpus)
    assert stamps == {n: os.path.getmtime(os.path.join(d, n)) for n in os.listdir(d)}
    from dataclasses import replace
    with pytest.raises(ValueError, match="other settings"):
        prepare(replace(tiny_corpus, vocab_size=900))


def test_prepare_redoes_only_a_missing_stage(tiny_corpus, tmp_path):
    import shutil
    from dataclasses import replace
    cfg = replace(tiny_corpus, out_dir=str(tmp_path / "c"))
    shutil.copytree(tiny_corpus.out_dir, cfg.out_dir)
    os.remove(os.path.join(cfg.out_dir, "meta.json"))              # as if killed in the last stage
    with open(os.path.join(cfg.out_dir, "meta.json.tmp"), "w") as f:
        f.write("{half a fi")
    text_time = os.path.getmtime(os.path.join(cfg.out_dir, "train.txt"))
    prepare(cfg)
    assert os.path.getmtime(os.path.join(cfg.out_dir, "train.txt")) == text_time
    for name in ("train.bin", "facts.json", "meta.json"):
        with open(os.path.join(cfg.out_dir, name), "rb") as a, open(os.path.join(tiny_corpus.out_dir, name), "rb") as b:
            assert a.read() == b.read() or name == "meta.json"
    meta = json.load(open(os.path.join(cfg.out_dir, "meta.json")))
    assert meta["config"]["out_dir"] == cfg.out_dir


@pytest.mark.skipif(not os.path.isdir(SHARED_TINYSTORIES), reason="shared TinyStories sample not present")
def test_tinystories_local_file(tmp_path):
    path = os.path.join(SHARED_TINYSTORIES, "tinystories_v1_train_head_2MiB.txt")
    cfg = DataConfig(out_dir=str(tmp_path), source="tinystories", tinystories_file=path, max_stories=600,
                     n_val_stories=100, fact_repeats=4, vocab_size=1024)
    prepare(cfg)
    text = open(tmp_path / "train.txt", encoding="utf-8").read()
    assert "Lily" in text and "Q: " in text                        # real stories mixed with facts
    stories = [s for s in text.split("<|endoftext|>") if s and "Q: " not in s and " lives in " not in s]
    assert len(stories) >= 450
    meta = json.load(open(tmp_path / "meta.json"))
    assert meta["train_tokens"] > 100_000 and len(json.load(open(tmp_path / "facts.json"))["new"]) == 1000
