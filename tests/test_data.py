import json
import os

import numpy as np
import pytest

from conftest import SHARED_TINYSTORIES
from data import corpus
from data.prepare import DataConfig, fact_texts, prepare
from data.tokenizer import get_encoding


def test_generator_is_deterministic_for_a_seed():
    import random
    a = [corpus.story(random.Random(7)) for _ in range(3)]
    b = [corpus.story(random.Random(7)) for _ in range(3)]
    assert a == b and corpus.story(random.Random(8)) != a[0]
    w1, w2 = corpus.make_world(5), corpus.make_world(5)
    assert w1.background == w2.background and w1.new_facts(50) == w2.new_facts(50)
    assert corpus.make_world(6).background != w1.background


def test_new_facts_are_disjoint_from_background():
    w = corpus.make_world(1337)
    new = w.new_facts(1000)
    assert len(new) == 1000
    old_subjects = {f.subject for f in w.background}
    assert not old_subjects & {f.subject for f in new}
    assert len({(f.subject, f.relation) for f in new}) == 1000       # each fact once
    story_text = " ".join(corpus.story(__import__("random").Random(i)) for i in range(200))
    assert not any(f" {f.subject} " in story_text for f in new)


def test_fact_renderings():
    f = corpus.Fact("Tomi", "home", "Pinewood")
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
    assert len(kb["new"]) == 1000
    # every token of every new fact occurs in the pretraining tokens
    seen = set(np.unique(train).tolist())
    world = corpus.make_world(tiny_corpus.seed, tiny_corpus.n_people, tiny_corpus.n_animals, tiny_corpus.n_towns)
    new = {(f["subject"], f["relation"]) for f in kb["new"]}
    facts = [f for f in world.new_facts(3000) if (f.subject, f.relation) in new]
    assert len(facts) == 1000
    for f in facts:
        for t in fact_texts(f):
            assert set(enc.encode(t)) <= seen, t
    # names are spelled in a few syllable tokens, never one opaque token
    assert all(len(enc.encode(" " + f.subject)) >= 2 for f in facts[:50])
    # background facts are in the training text
    assert all(any(s in text for s in f["statements"]) for f in kb["background"])


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
