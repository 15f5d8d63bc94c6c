import json
import os

import pytest
import torch

from checkpoint import load_checkpoint
from conftest import TINY_MODEL
from data.prepare import CLASSROOM_DATA, DataConfig
from evaluate import qa_items
from experiments import analyses, sweeps
from facts import batch_texts, make_batch
from finetune import DEFAULT_CHECKPOINT, fingerprint
from model import CLASSROOM_MODEL, GPT, GPTConfig
from sparse import background_stats
from train import CLASSROOM_TRAIN, TrainConfig, train

FACTS = [{"paraphrases": ["Tom ran.", "Tom ran home."], "questions": ["Who ran?"], "heldout_question": None, "answer": "Tom."},
         {"paraphrases": ["Ann sat."], "questions": ["Who sat?"], "heldout_question": None, "answer": "Ann."}]


def test_fact_background_counts_one_unit_per_fact_and_only_text_tokens(trained):
    cfg = trained[0]
    model, enc, _ = load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"))
    st = background_stats(model, sweeps.fact_units(enc, FACTS, model.config.block_size), "cpu", quiet=True)[0]
    mem = model.memory_modules[0]
    tokens = sum(int(make_batch(enc, batch_texts(f), model.config.block_size)[2].sum()) for f in FACTS)
    assert st["units"] == 2 and st["df"].max() <= 2
    assert st["reads"].sum() == tokens * mem.heads * mem.topk     # padding and separators are not read


def test_an_experiment_writes_its_runs_and_skips_t_beyond_the_table(trained, tmp_path, capsys):
    cfg = trained[0]
    sweeps.main(["all-slots", "--checkpoint", os.path.join(cfg.out_dir, "ckpt.pt"), "--facts", "2",
                      "--steps-per-fact", "2", "--lr", "1.0", "--device", "cpu", "--out-dir", str(tmp_path)])
    printed = [l for l in capsys.readouterr().out.splitlines() if "skipped" in l]
    assert len(printed) == 1 and printed[0].startswith("sparse t=500 ") and printed[0].endswith("larger than the 256 slots")
    out = json.loads((tmp_path / "all-slots.json").read_text())
    assert [r["run"]["top_t"] for r in out["results"]] == [64, 0]
    assert [r["top_t"] for r in out["results"]] == [64, 256]       # "all read" trains up to every slot
    assert out["facts"] == 2 and out["seed"] == 1337
    assert (tmp_path / "all-slots.png").read_bytes()[:4] == b"\x89PNG"


def test_a_sweep_streams_a_facts_file_and_only_a_sweep_takes_one(trained, tmp_path, monkeypatch):
    cfg = trained[0]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps({"paraphrases": f["paraphrases"], "question": f["questions"][0], "answer": f["answer"]})
                              for f in FACTS) + "\n", encoding="utf-8")
    streamed = []
    real = sweeps.ft.finetune
    monkeypatch.setattr(sweeps.ft, "finetune", lambda cfg, m, e, c, facts, *a, **k: streamed.append(facts) or real(cfg, m, e, c, facts, *a, **k))
    sweeps.main(["all-slots", "--checkpoint", os.path.join(cfg.out_dir, "ckpt.pt"), "--facts-file", str(path),
                      "--steps-per-fact", "1", "--device", "cpu", "--out-dir", str(tmp_path)])
    out = json.loads((tmp_path / "all-slots.json").read_text())
    assert out["facts"] == 2 and out["facts_file"] == str(path) and len(out["results"]) == 2   # t = 500 is skipped
    assert all([f["answer"] for f in s] == ["Tom.", "Ann."] for s in streamed) and len(streamed) == 2
    with pytest.raises(SystemExit, match="--facts-file is for the sweeps"):
        sweeps.main(["long", "--facts-file", str(path), "--out-dir", str(tmp_path), "--device", "cpu"])


def test_slot_analysis_marks_the_tokens_that_read_selected_slots(trained, tmp_path, capsys):
    import re
    cfg = trained[0]
    sweeps.main(["slots", "--checkpoint", os.path.join(cfg.out_dir, "ckpt.pt"), "--facts", "3", "--top-t", "64",
                      "--device", "cpu", "--out-dir", str(tmp_path)])
    out = json.loads((tmp_path / "slots.json").read_text())
    for f in out["per_fact"]:
        assert 0 < f["core"] <= f["slots_read"] and f["top_t_in_core"] <= min(64, f["core"])
        plain = [re.sub(r"\[([^\]]*)\]\d+", r"\1", m) for m in f["marked"]]
        assert plain[0] == f["fact"]                              # the marks only annotate the text
        assert any("]" in m for m in f["marked"])                 # some token reads a selected slot
    s = out["summary"]
    assert 0 < s["entity_share_of_tokens"] < 1 and 0 <= s["entity_share_of_top_t_reads"] <= 1


def test_more_new_facts_continue_the_corpus_stream(trained):
    cfg = trained[0]
    model, enc, ckpt = load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"))
    kb_new = json.loads(open(os.path.join(cfg.data_dir, "facts.json")).read())["new"]
    more = analyses.new_facts(ckpt, enc, len(kb_new) + 5)
    assert more[:len(kb_new)] == kb_new                             # the same prefix
    old = {(f["subject"], f["relation"]) for f in kb_new}
    assert len(more) == len(kb_new) + 5 and not any((f["subject"], f["relation"]) in old for f in more[-5:])


def test_forgetting_sorts_broken_answers_into_taught_untaught_and_neither(trained, tmp_path, monkeypatch):
    cfg = trained[0]
    corpus = json.loads(open(os.path.join(cfg.data_dir, "facts.json")).read())
    items = qa_items(corpus["background"])
    taught = corpus["new"][0]                                         # the stream's only fact
    rel = [f for f in corpus["background"] if f["relation"] == taught["relation"] and f["answer"] != taught["answer"]]
    answers = {f["answer"] for f in corpus["background"] + corpus["new"] if f["relation"] == taught["relation"]}
    untaught = sorted(answers - {taught["answer"], rel[1]["answer"]})[0]
    to_taught, to_untaught = (qa_items([f], "first")[0][0] for f in rel[:2])
    to_neither = next(p for p, _ in items if p not in (to_taught, to_untaught))
    now = dict(items)                                                 # a stand-in model: every answer right
    monkeypatch.setattr(analyses, "qa_correct", lambda model, enc, pairs, device: [now[p] == a for p, a in pairs])

    def stream(*args, **kwargs):
        now[to_taught], now[to_untaught], now[to_neither] = " " + taught["answer"], " " + untaught, " nothing."
    monkeypatch.setattr(analyses.ft, "run_stream", stream)
    sweeps.main(["forgetting", "--checkpoint", os.path.join(cfg.out_dir, "ckpt.pt"), "--facts", "1",
                      "--device", "cpu", "--out-dir", str(tmp_path)])
    out = json.loads((tmp_path / "forgetting.json").read_text())
    assert out["background_before"] == 1.0 and out["background_after"] == (len(items) - 3) / len(items)
    assert (out["broken"], out["now_a_taught_answer"], out["now_an_untaught_answer"]) == (3, 1, 1)
    row = out["per_relation"][taught["relation"]]
    assert row["answers"] == len(answers) and row["taught"] == 1
    # chance: one taught answer among the other answers, for each of the two that became one
    assert abs(row["taught_by_chance"] - 2 / (len(answers) - 1)) < 1e-9


def test_memory_off_zeroes_the_memory_only_inside_the_block():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**TINY_MODEL, "vocab_size": 60})).eval()
    x = torch.randint(0, 60, (2, 8))
    base = model(x)[0]
    with analyses.memory_off(model):
        off = model(x)[0]
    assert not torch.allclose(off, base) and torch.equal(model(x)[0], base)


def test_a_dense_checkpoint_runs_full_and_lora_and_is_refused_where_only_memory_runs(tiny_corpus, tmp_path, capsys):
    train(TrainConfig(data_dir=tiny_corpus.out_dir, out_dir=str(tmp_path), batch_size=4, max_iters=2, eval_interval=2,
                      dense=True, device="cpu"), GPTConfig(**TINY_MODEL), quiet=True)
    args = ["--checkpoint", str(tmp_path / "ckpt.pt"), "--facts", "1", "--steps-per-fact", "1", "--device", "cpu",
            "--out-dir", str(tmp_path / "out")]
    sweeps.main(["compare", *args])
    assert "sparse                     skipped: the model has no memory layer" in capsys.readouterr().out
    assert [r["mode"] for r in json.loads((tmp_path / "out" / "compare.json").read_text())["results"]] == ["full", "lora"]
    for name in ("topt", "slots", "forgetting", "long"):
        with pytest.raises(SystemExit) as e:
            sweeps.main([name, *args])
        assert f"{name} studies the memory layer" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["compare", "long"])
def test_facts_below_one_are_refused_before_any_work(tmp_path, monkeypatch, name):
    monkeypatch.setattr(sweeps.ft, "load_base", lambda *a: pytest.fail("the experiment started"))
    for n in ("0", "-5"):
        with pytest.raises(SystemExit) as e:
            sweeps.main([name, "--facts", n, "--out-dir", str(tmp_path), "--device", "cpu"])
        assert str(e.value) == f"error: --facts must be at least 1, not {n}"


def test_a_variant_gets_its_own_corpus_and_model_and_reuses_its_checkpoint(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(sweeps, "ROOT", str(tmp_path))
    monkeypatch.setattr(sweeps, "prepare", lambda cfg: calls.append(("prepare", cfg)))
    monkeypatch.setattr(sweeps, "train", lambda cfg, mcfg: calls.append(("train", cfg, mcfg)))
    args = type("Args", (), {"device": "cpu", "tinystories_file": ""})()
    ckpt = sweeps.pretrained("few", {"n_people": 5}, {"mem_heads": 8, "mem_topk": 4}, {"max_iters": 7}, args)
    (_, corpus), (_, run, model) = calls
    assert corpus.n_people == 5 and corpus.out_dir == str(tmp_path / "data" / "variants" / "few")
    assert run.data_dir == corpus.out_dir and ckpt == str(tmp_path / "out" / "variants" / "few" / "ckpt.pt")
    assert run.out_dir == os.path.dirname(ckpt) and (model.mem_heads, model.mem_topk) == (8, 4)
    assert model.n_embd == GPTConfig().n_embd and run.max_iters == 7  # everything else is the default
    assert (run.seed, run.dense) == (TrainConfig.seed, False)
    sweeps.pretrained("wide", {}, {"n_embd": 64}, {}, args)
    assert calls[2][1].out_dir.endswith(os.path.join("data", "generated"))   # no corpus change: the default corpus
    sweeps.pretrained("dense", {}, {}, {"dense": True}, args)    # a training change alone is a variant too
    assert calls[5][1].dense and calls[5][1].out_dir == str(tmp_path / "out" / "variants" / "dense")
    assert sweeps.pretrained("same", {}, {}, {}, args) == DEFAULT_CHECKPOINT and len(calls) == 6   # no change at all
    os.makedirs(os.path.dirname(ckpt), exist_ok=True)
    open(ckpt, "wb").close()
    calls.clear()
    assert sweeps.pretrained("few", {"n_people": 5}, {}, {}, args) == ckpt and calls == []   # reused


def test_a_classroom_variant_differs_from_the_classroom_preset(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(sweeps, "ROOT", str(tmp_path))
    monkeypatch.setattr(sweeps, "prepare", lambda cfg: calls.append(cfg))
    monkeypatch.setattr(sweeps, "train", lambda cfg, mcfg: calls.append((cfg, mcfg)))
    args = type("Args", (), {"device": "cpu", "tinystories_file": ""})()
    ckpt = sweeps.pretrained("cls-few", {"n_people": 30}, {"mem_topk": 4}, {}, args, "classroom")
    corpus, (run, model) = calls
    assert corpus == DataConfig(**{**CLASSROOM_DATA, "n_people": 30, "out_dir": str(tmp_path / "data" / "variants" / "cls-few")})
    assert model == GPTConfig(**{**CLASSROOM_MODEL, "mem_topk": 4})
    assert run == TrainConfig(**{**CLASSROOM_TRAIN, "data_dir": corpus.out_dir, "out_dir": os.path.dirname(ckpt), "device": "cpu"})
    sweeps.pretrained("cls-long", {}, {}, {"max_iters": 9}, args, "classroom")
    assert calls[2].out_dir == CLASSROOM_DATA["out_dir"] and calls[3][0].max_iters == 9   # the preset's own corpus
    assert sweeps.pretrained("cls-same", {}, {}, {}, args, "classroom") == sweeps.ft.CLASSROOM_FINETUNE["checkpoint"]


def test_long_scores_the_facts_taught_so_far_beside_each_whole_stream(trained, tmp_path, monkeypatch):
    cfg, _, _, _ = trained
    monkeypatch.setattr(analyses, "qa_accuracy", lambda model, enc, items, device: len(items))   # "accuracy" = items scored
    monkeypatch.setattr(analyses.ft, "run_stream", lambda cfg, model, enc, stream, stats, recipe, quiet, on_fact:
                        ([on_fact(n) for n in range(1, len(stream) + 1)], [64, 256][:len(stream)]))
    sweeps.main(["long", "--checkpoint", os.path.join(cfg.out_dir, "ckpt.pt"), "--facts", "2", "--device", "cpu",
                      "--out-dir", str(tmp_path)])
    data = json.loads((tmp_path / "long.json").read_text())
    first, half, second, more, both = data["trace"]
    assert data["t_used"] == [{"64": 1}, {"256": 1}] * 2      # each fact's last t, by point of the trace
    assert 0 < half["taught"] < half["first"]                  # one fact of the first stream's two
    assert second["taught"] == second["first"]                 # all of the first stream
    assert second["first"] < more["taught"] < more["first"] + more["second"]
    assert both["taught"] == both["first"] + both["second"]    # both streams


def test_known_facts_background_holds_every_other_fact_and_the_drop_is_measured_on_the_rest(trained):
    cfg, _, enc, _ = trained
    ckpt = load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"))[2]
    known = sweeps.checkpoint_corpus(ckpt)[1]["background"]
    fc = sweeps.ft.FinetuneConfig(background_batches=3)
    units = list(sweeps.known_units(enc, ckpt, fc, 32))
    assert len(units) == 1 + (len(known) + 1) // 2                      # 3 windows in one batch, then the even-numbered facts
    assert units[0][0].shape == (3, 1, 32) and units[1][0].shape[0] == 1   # (units, rows, tokens)
    assert units[0][1] is None and units[1][1] is not None            # windows count every token; facts their text
    odd = [i % 2 for i, f in enumerate(known) for _ in f["questions"]]
    before = {"background_correct": [True] * len(odd)}
    even_broken = {"background_correct": [bool(o) for o in odd]}
    assert sweeps.other_half_drop(ckpt, before, even_broken) == 0.0
    first_odd_broken = {"background_correct": [i != odd.index(1) for i in range(len(odd))]}
    assert sweeps.other_half_drop(ckpt, before, first_odd_broken) == pytest.approx(1 / sum(odd))


def test_trained_reads_counts_the_reads_where_the_answer_is_predicted(trained):
    cfg, _, enc, _ = trained
    model = load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"))[0].eval()
    n = model.memory_modules[0].n_slots
    items = [("Q: Where does Tom live? A:", " Dedufield."), ("Q: What does Sue eat? A:", " soup.")]
    eot = enc.encode("<|endoftext|>", allowed_special="all")
    p, a = eot + enc.encode(items[0][0]), enc.encode(items[0][1])
    with model.recording_slots():
        model(torch.tensor([p + a]))
        reads = model.slot_reads()[0][0]                                # (T, H, k)
    at_answer = torch.zeros(n, dtype=torch.bool)
    at_answer[reads[len(p) - 1:len(p) + len(a) - 1].flatten()] = True  # the positions predicting " Dedufield."
    elsewhere = torch.zeros(n, dtype=torch.bool)
    elsewhere[reads[:len(p) - 1].flatten()] = True
    elsewhere &= ~at_answer                                            # read in the question only
    assert analyses.trained_reads(model, enc, items, [torch.ones(n, dtype=torch.bool)], "cpu") == [1.0, 1.0]
    assert analyses.trained_reads(model, enc, items, [torch.zeros(n, dtype=torch.bool)], "cpu") == [0.0, 0.0]
    assert analyses.trained_reads(model, enc, items, [at_answer], "cpu")[0] == 1.0
    assert elsewhere.any() and analyses.trained_reads(model, enc, items, [elsewhere], "cpu")[0] == 0.0


def test_one_fact_teaches_every_fact_to_the_pretrained_model(trained, tmp_path, monkeypatch):
    cfg = trained[0]
    weights = []                                                       # the model each stream and ranking starts from
    real_stream, real_recipe = analyses.ft.run_stream, analyses.ft.make_recipe
    monkeypatch.setattr(analyses.ft, "run_stream", lambda c, model, *a, **k: weights.append(fingerprint(model)) or real_stream(c, model, *a, **k))
    monkeypatch.setattr(analyses.ft, "make_recipe", lambda c, r, model, *a: weights.append(fingerprint(model)) or real_recipe(c, r, model, *a))
    sweeps.main(["one-fact", "--checkpoint", os.path.join(cfg.out_dir, "ckpt.pt"), "--facts", "2", "--steps-per-fact", "2",
                      "--lr", "1.0", "--device", "cpu", "--out-dir", str(tmp_path)])
    runs = json.loads((tmp_path / "one-fact.json").read_text())["runs"]
    assert [(r["mode"], r["lr"]) for r in runs] == [("full", 1e-4), ("full", 3e-4), ("lora", 3e-4), ("lora", 1e-3), ("sparse", 1.0)]
    assert all(len(r["drops"]) == 2 and 0 <= r["learned"] <= 1 for r in runs)
    assert len(weights) == 5 * 3 and len(set(weights)) == 1          # 5 runs x (statistics + 2 facts), all from the pretrained model
    assert (tmp_path / "one-fact.png").read_bytes()[:4] == b"\x89PNG"
    sweeps.main(["one-fact", "--checkpoint", os.path.join(cfg.out_dir, "ckpt.pt"), "--facts", "1", "--steps-per-fact", "1",
                 "--lr", "1.0", "--device", "cpu", "--out-dir", str(tmp_path), "--full-lrs", "1e-3", "--lora-lrs", "2e-3", "5e-3"])
    runs = json.loads((tmp_path / "one-fact.json").read_text())["runs"]
    assert [(r["mode"], r["lr"]) for r in runs] == [("full", 1e-3), ("lora", 2e-3), ("lora", 5e-3), ("sparse", 1.0)]


def test_jaccard_of_read_sets_counts_each_slot_once():
    reads = torch.tensor([[1, 2, 3, 4], [3, 4, 5, 6], [7, 8, 9, 9], [4, 3, 2, 1]])   # 9 twice in row 2: one slot
    assert torch.allclose(analyses.jaccard(reads), torch.tensor([[1, 1 / 3, 0, 1],
                                                                  [1 / 3, 1, 0, 1 / 3],
                                                                  [0, 0, 1, 0],
                                                                  [1, 1 / 3, 0, 1]]))


def test_facts_per_slot_counts_each_fact_once():
    reads = torch.tensor([[1, 2], [2, 3], [2, 2], [4, 4]])            # fact 0 asks rows 0 and 1, fact 1 row 2, fact 2 row 3
    got = analyses.facts_per_slot(reads, torch.tensor([0, 0, 1, 2]), 6)
    assert got.tolist() == [0, 1, 2, 1, 1, 0]                          # slot 2: facts 0 and 1, though read four times


def test_answer_reads_takes_the_reads_where_the_answers_first_token_is_predicted(trained, tmp_path):
    cfg, _, enc, _ = trained
    model = load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"))[0].eval()
    items = [("Q: Where does Tom live? A:", " Dedufield."), ("Q: What does Sue eat? A:", " soup.")]
    eot = enc.encode("<|endoftext|>", allowed_special="all")
    expected = []
    for prompt, answer in items:
        p = eot + enc.encode(prompt)
        with model.recording_slots():
            model(torch.tensor([p + enc.encode(answer)]))
            expected.append(model.slot_reads()[0][0, len(p) - 1].flatten())   # (H * k,) where the answer's first token is predicted
    got = analyses.first_answer_reads(model, enc, items, "cpu")   # one right-padded batch
    assert len(got) == 1 and torch.equal(got[0], torch.stack(expected))
    sweeps.main(["answer-reads", "--checkpoint", os.path.join(cfg.out_dir, "ckpt.pt"), "--facts", "3",
                      "--device", "cpu", "--out-dir", str(tmp_path)])
    t = json.loads((tmp_path / "answer-reads.json").read_text())["tables"][0]
    assert t["new_questions"] >= 3 and 0 < t["distinct_slots"] <= t["slots"]
    assert 0 <= t["new_reads_on_same_relation_slots"] <= t["new_reads_on_background_slots"] <= 1
    assert 0 <= t["other_facts_per_read"] < t["questions"] and 0 <= t["background_facts_per_new_read"] <= t["questions"]
    assert set(t["jaccard"]) == {"same fact", "same relation, another fact", "another relation"}
    mine = tmp_path / "mine.jsonl"                                     # facts written by hand: no relation to compare
    mine.write_text(json.dumps({"paraphrases": ["Tom lives in Dedufield."], "question": "Where does Tom live?",
                                "answer": "Dedufield.", "heldout_question": "What town is Tom from?"}) + "\n", encoding="utf-8")
    sweeps.main(["answer-reads", "--checkpoint", os.path.join(cfg.out_dir, "ckpt.pt"), "--facts-file", str(mine),
                      "--device", "cpu", "--out-dir", str(tmp_path)])
    t = json.loads((tmp_path / "answer-reads.json").read_text())["tables"][0]
    assert t["new_questions"] == 2 and "new_reads_on_same_relation_slots" not in t   # its question and the held-out one


def test_block_answer_slots_runs_never_train_the_rows_half_the_background_answers_mark(trained, tmp_path, monkeypatch):
    from recipes import BlockAnswerSlots, SpareAnswerSlots
    cfg = trained[0]
    seen = []                                                          # (blocked, the rows marked, the rows trained)
    real = sweeps.ft.finetune
    def finetune(c, model, enc, ckpt, facts, stats, recipe, *a, **k):
        before = model.memory_modules[0].values.weight.detach().clone()
        out = real(c, model, enc, ckpt, facts, stats, recipe, *a, **k)
        spare = [e for e in recipe.extensions if isinstance(e, SpareAnswerSlots)][0]
        seen.append((any(isinstance(e, BlockAnswerSlots) for e in recipe.extensions), spare.marked[0],
                     (model.memory_modules[0].values.weight != before).any(dim=1)))
        return out
    monkeypatch.setattr(sweeps.ft, "finetune", finetune)
    sweeps.main(["block-answer-slots", "--checkpoint", os.path.join(cfg.out_dir, "ckpt.pt"), "--facts", "2",
                      "--steps-per-fact", "2", "--top-t", "256", "--lr", "1.0", "--device", "cpu", "--out-dir", str(tmp_path)])
    out = json.loads((tmp_path / "block-answer-slots.json").read_text())
    assert [(r["run"]["block_answer_slots"], r["run"]["spare_answer_slots"]) for r in out["results"]] == [
        (m, d) for m in (False, True) for d in (0.01, 0.003, 0.0003)]
    assert all("other_half_drop" in r for r in out["results"])
    assert [m for m, _, _ in seen] == [False] * 3 + [True] * 3
    for blocked, marked, trained_rows in seen:                         # t = 256: every slot read is a candidate
        assert marked.any() and trained_rows.any()
        assert (marked & trained_rows).any() != blocked                # ranked last, every read row trains; blocked, none


def test_the_slowing_ablation_divides_by_the_pretraining_df_not_the_answers_count(trained):
    from recipes import RecipeConfig, SlowAnswerSlots, SpareAnswerSlots
    cfg = trained[0]
    fc = sweeps.ft.FinetuneConfig(checkpoint=os.path.join(cfg.out_dir, "ckpt.pt"), device="cpu")
    rcfg = RecipeConfig(spare_answer_slots=0.01, slow_answer_slots=8.0)
    model, enc, ckpt = sweeps.ft.load_base(fc, "cpu")
    fc = sweeps.ft.resolve(fc, model)
    run = {"spare_answer_slots": 0.01, "slow_answer_slots": 8.0}
    stats, answers = sweeps.run_recipe(run, fc, rcfg, model, enc, ckpt, [], "cpu")
    text = sweeps.run_recipe({**run, "damp_by": "text"}, fc, rcfg, model, enc, ckpt, [], "cpu")[1]
    pick = lambda recipe, kind: [e for e in recipe.extensions if isinstance(e, kind)][0]
    assert torch.equal(pick(text, SlowAnswerSlots).readers[0], stats[0]["df"])          # the pretraining units' df
    assert not torch.equal(pick(answers, SlowAnswerSlots).readers[0], stats[0]["df"])   # the answers' count is another
    assert torch.equal(pick(text, SpareAnswerSlots).marked[0], pick(answers, SpareAnswerSlots).marked[0])   # same ranking


def test_every_sweep_run_sets_only_finetune_options_and_has_a_label():
    from dataclasses import fields
    from finetune import FinetuneConfig
    from recipes import RecipeConfig
    options = {f.name for dc in (FinetuneConfig, RecipeConfig) for f in fields(dc)} | set(sweeps.RUN_KEYS)
    for name, (runs, key, _) in sweeps.SWEEPS.items():
        for run in runs():
            assert set(run) <= options, (name, set(run) - options)
            assert sweeps.group(run, key)
    passes = sweeps.SWEEPS["passes"][0]()
    assert {r["mode"] for r in passes if r["passes"] > 1} == {"full", "lora", "sparse"}   # every method, many passes
    assert sweeps.group({"mode": "lora", "passes": 10}, "passes") == "lora, the stream 10x"


def test_a_sweep_run_streams_documents_statements_or_facts(trained):
    from checkpoint import load_checkpoint
    from facts import batch_texts
    from finetune import FinetuneConfig
    ckpt = load_checkpoint(os.path.join(trained[0].out_dir, "ckpt.pt"))[2]
    facts = [{"paraphrases": ["Tom is in Rome."], "questions": ["Where is Tom?"], "heldout_question": None,
              "answer": "Rome."}]
    assert sweeps.stream_of({}, FinetuneConfig(), ckpt, facts) == (facts, facts)
    taught, scored = sweeps.stream_of({"statements_only": True}, FinetuneConfig(), ckpt, facts)
    assert scored == facts and batch_texts(taught[0]) == ["Tom is in Rome."]          # the question is not trained
    cfg = FinetuneConfig(task="documents", documents=3, rewrites=0)
    two, questions = sweeps.stream_of({}, cfg, ckpt, facts)
    one, same = sweeps.stream_of({"facts_per_chunk": 1, "mid_line": True}, cfg, ckpt, facts)
    assert same == questions and len(one) == len(questions) < 2 * len(two)             # a chunk per fact
    assert any("\n" in batch_texts(c)[0] for c in two) and not any("\n" in batch_texts(c)[0] for c in one)


def test_a_named_recipe_in_a_run_sets_its_options_as_finetune_does(trained, tmp_path, monkeypatch):
    from recipes import RECIPES, RecipeConfig
    seen = []
    runs = lambda: [{"recipe": "improved", "lr": 200, "name": "x"}]
    monkeypatch.setitem(sweeps.SWEEPS, "compare", (runs, "name", "lr"))
    monkeypatch.setattr(sweeps, "run_recipe", lambda run, cfg, rcfg, *a: (seen.append((run, rcfg)), 1 / 0))
    with pytest.raises(ZeroDivisionError):
        sweeps.main(["compare", "--checkpoint", os.path.join(trained[0].out_dir, "ckpt.pt"), "--facts", "1",
                     "--out-dir", str(tmp_path)])
    run, rcfg = seen[0]
    assert rcfg == RecipeConfig(**RECIPES["improved"]) and "spare_answer_slots" not in run   # make_recipe's path


def test_unseen_compares_a_fact_s_two_questions_on_the_rows_its_own_steps_trained(trained, tmp_path, monkeypatch):
    cfg = trained[0]
    real_setup = analyses.setup

    def setup(args, needs_memory=True):                               # the new facts' unseen question = their first trained one
        model, enc, ckpt, facts, base, rcfg, device = real_setup(args, needs_memory)
        return model, enc, ckpt, [{**f, "heldout_question": f["questions"][0]} for f in facts], base, rcfg, device
    monkeypatch.setattr(analyses, "setup", setup)
    sweeps.main(["unseen", "--checkpoint", os.path.join(cfg.out_dir, "ckpt.pt"), "--facts", "2", "--steps-per-fact", "2",
                      "--lr", "1.0", "--device", "cpu", "--out-dir", str(tmp_path)])
    streams = json.loads((tmp_path / "unseen.json").read_text())["streams"]
    same, other = streams["new facts"], streams["new relations"]
    assert same["facts"] == other["facts"] == 2
    assert same["jaccard_before"] == 1
    assert same["unseen_question_reads_on_own_rows"] == same["trained_question_reads_on_own_rows"] > 0   # its rows are read
    assert 0 <= other["jaccard_before"] <= 1 and 0 < other["trained_question_reads_on_own_rows"] <= 1
    assert same["unseen_question_logprob_gain"] == same["trained_question_logprob_gain"]
    assert len(set(same["first_token"].values())) == 1 and len(other["first_token"]) == 5   # the same question, swapped or not


def test_answer_logprob_is_the_mean_log_probability_of_the_answer_tokens(trained):
    cfg, _, enc, _ = trained
    model = load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"))[0].eval()
    items = [("Q: Where does Tom live? A:", " Dedufield."), ("Q: Who? A:", " a red ball.")]   # two lengths: padding
    eot = enc.encode("<|endoftext|>", allowed_special="all")
    expected = []
    for prompt, answer in items:
        p, a = eot + enc.encode(prompt), enc.encode(answer)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([p + a]))[0][0], dim=-1)   # (L, vocab)
        expected.append(sum(logp[len(p) - 1 + i, t].item() for i, t in enumerate(a)) / len(a))
    assert analyses.answer_logprob(model, enc, items, "cpu") == pytest.approx(expected, abs=1e-4)


def test_memory_part_records_and_replaces_one_position_of_each_memory_layer(trained):
    cfg, _, enc, _ = trained
    model = load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"))[0].eval()
    from evaluate import qa_batch
    x, _, starts = qa_batch(enc, [("Q: Where does Tom live? A:", " Dedufield.")])
    parts = {}
    with torch.no_grad():
        for part in ("read", "gate", "output"):
            with analyses.memory_part(model, part, starts[0]) as got:
                logits = model(x)[0]
            parts[part] = got
        m = model.memory_modules[0]
        assert len(parts["read"]) == len(model.memory_modules)
        assert torch.allclose(m.proj(parts["read"][0] * torch.nn.functional.silu(parts["gate"][0])), parts["output"][0], atol=1e-5)
        with analyses.memory_part(model, "output", starts[0], parts["output"]):
            assert torch.equal(model(x)[0], logits)                     # its own output put back: nothing changes
        with analyses.memory_part(model, "output", starts[0], [torch.zeros_like(o) for o in parts["output"]]):
            changed = model(x)[0]
        assert torch.equal(changed[0, :starts[0]], logits[0, :starts[0]])   # before the position: untouched
        assert not torch.equal(changed[0, starts[0]], logits[0, starts[0]])
    pair = ("Q: Where does Tom live? A:", " Dedufield.")
    assert all(analyses.first_token_right(model, enc, pair, "cpu", part, pair) == analyses.first_token_right(model, enc, pair, "cpu")
               for part in ("read", "gate", "output"))


def test_kept_counts_the_questions_a_later_fact_undoes_and_whose_subject_it_has(trained, tmp_path, monkeypatch):
    cfg = trained[0]
    script = {2: [True, False],                                        # after fact 1: its second question missed
              4: [False, False, True, True],                           # after fact 2: fact 1's first question lost
              6: [False, False, True, True, True, False]}              # after fact 3: its second question missed
    monkeypatch.setattr(analyses, "qa_correct", lambda model, enc, items, device: script[len(items)])
    monkeypatch.setattr(analyses.ft, "run_stream", lambda cfg, model, enc, stream, stats, recipe, quiet, on_fact:
                        [on_fact(n) for n in range(1, len(stream) + 1)])
    sweeps.main(["kept", "--checkpoint", os.path.join(cfg.out_dir, "ckpt.pt"), "--facts", "3", "--device", "cpu",
                      "--out-dir", str(tmp_path)])
    streams = json.loads((tmp_path / "kept.json").read_text())["streams"]
    kb = json.loads(open(os.path.join(cfg.data_dir, "facts.json")).read())
    for name, key in (("new facts", "new"), ("new answers", "new_answers"), ("new relations", "new_relations")):
        r, subjects = streams[name], [e["subject"] for e in kb[key][:3]]
        assert (r["facts"], r["right_after"], r["at_end"], r["lost"]) == (3, 4 / 6, 3 / 6, 1)
        assert r["lost_to_same_subject"] == (subjects[1] == subjects[0])          # fact 2 broke fact 1's question
        assert r["same_subject_by_chance"] == pytest.approx(subjects[1:].count(subjects[0]) / 2)


def test_course_teaches_each_fact_alone_at_the_preset_t_and_rate_and_leaves_the_sweeps_rates_alone(tmp_path, monkeypatch,
                                                                                                   capsys):
    """python -m experiments course: the one-fact comparison (exercise 2) runs sparse at the preset's t and rate,
    on COURSE_ONE_FACT facts, and the stream runs keep --lr 0, so that full and LoRA take their own rates."""
    monkeypatch.setattr(sweeps, "ROOT", str(tmp_path))
    for seed in sweeps.COURSE_SEEDS[1:]:
        os.makedirs(tmp_path / "out" / f"classroom-seed{seed}")
        open(tmp_path / "out" / f"classroom-seed{seed}" / "ckpt.pt", "wb").close()
    monkeypatch.setitem(sweeps.ft.CLASSROOM_FINETUNE, "checkpoint", str(tmp_path / "out" / "classroom" / "ckpt.pt"))
    half = str(tmp_path / "out" / f"classroom-seed{sweeps.COURSE_SEEDS[2]}" / "ckpt.pt")   # stopped half-way
    monkeypatch.setattr(sweeps.ft, "unfinished", lambda path: (600, 1200) if path == half else None)
    trained = []
    monkeypatch.setattr(sweeps, "train", lambda cfg, mcfg, quiet: trained.append(cfg))
    monkeypatch.setattr(sweeps, "load_checkpoint", lambda path: (None, None, {"metrics": {}}))
    os.makedirs(tmp_path / "out" / "classroom")
    open(tmp_path / "out" / "classroom" / "ckpt.pt", "wb").close()
    seen = []
    fake = {"learned_acc": 0.5, "unseen_acc": 0.5, "background_drop": 0.02, "skill_acc_before": 0.5, "skill_drop": 0.0,
            "val_loss_before": 2.0, "val_loss_after": 2.02}
    monkeypatch.setattr(sweeps, "sweep", lambda args, runs, *a: seen.append(("sweep", args.lr, runs)) or
                        {"results": [dict(fake) for _ in runs], "diverged": []})
    monkeypatch.setattr(sweeps, "one_fact", lambda args, lrs: seen.append(("alone", args.facts, args.top_t, args.lr, lrs))
                        or {"runs": [{"mode": "full", "lr": 1e-4, "learned": 1.0, "unseen": 1.0, "background_drop": 0.2}]})
    args = type("Args", (), {"device": "cpu", "lr": 0.0, "top_t": 64, "facts": 50, "steps_per_fact": 10})()
    data = sweeps.course(args)
    assert [(c.out_dir, c.resume) for c in trained] == [(os.path.dirname(half), True)]   # only it, and resumed
    sweeps_, alone = seen[0::2], seen[1::2]
    assert len(alone) == len(sweeps.COURSE_SEEDS) and len(data["variants"]) == len(sweeps.COURSE_SEEDS)
    preset = sweeps.ft.CLASSROOM_FINETUNE
    assert set((*a[:4], str(a[4])) for a in alone) == {("alone", sweeps.COURSE_ONE_FACT, preset["top_t"],
                                                        sweeps.ft.CLASSROOM_LR[("sparse", "sgd")],
                                                        str(sweeps.COURSE_ONE_FACT_LRS))}
    assert all(lr == 0.0 for _, lr, _ in sweeps_) and args.lr == 0.0 and args.top_t == 64
    for (_, own), run in zip(sweeps.COURSE_RUNS, sweeps_[0][2]):
        assert run["top_t"] == own.get("top_t", preset["top_t"])          # the preset's t unless the run sets one
    out = capsys.readouterr().out
    assert "val loss 2.02-2.02 (1.00-1.00%)" in out and "full    lr 0.0001 learned 1.00-1.00" in out
    for v in data["variants"].values():                                # the figure takes what course returns
        v["results"] = [{**r, "run": run} for r, run in zip(v["results"], sweeps_[0][2])]
    sweeps.plot("course", data, str(tmp_path / "course.png"), "course")
    assert (tmp_path / "course.png").read_bytes()[:4] == b"\x89PNG"


def test_the_classroom_levers_figure_marks_the_presets_run_against_pretraining_time(tmp_path):
    t = sweeps.ft.CLASSROOM_FINETUNE["top_t"]
    runs = [{"name": "t = 64, lr 100", "top_t": 64, "lr": 100}, {"name": f"t = {t}, lr 100", "top_t": t, "lr": 100}]
    assert any(r["top_t"] == sweeps.ft.CLASSROOM_FINETUNE["top_t"] and r["lr"] == sweeps.ft.CLASSROOM_LR[("sparse", "sgd")]
               for r in sweeps.VARIANTS["classroom"][1])                  # the experiment runs the preset's run
    result = lambda run: {"run": run, "lr": run["lr"], "learned_acc": 0.5, "background_drop": 0.03}
    data = {"variants": {"a": {"results": [result(r) for r in runs], "pretraining": {"step_seconds": 60.0}}}}
    sweeps.plot("classroom", data, str(tmp_path / "classroom.png"), "classroom")
    assert (tmp_path / "classroom.png").read_bytes()[:4] == b"\x89PNG"
    assert [name for _, name, *_ in sweeps.CLASSROOM_VARIANTS][0].startswith("the preset")
    assert sweeps.CLASSROOM_VARIANTS[0][2:] == ({}, {}, {})             # the first variant is the preset itself
