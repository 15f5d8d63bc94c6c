"""recipes.py: each step beyond the paper does what its docstring says, through the points the
spine calls (sparse.sparse_step, finetune.run_stream), and the options build the recipe they name."""

import math
import os
from dataclasses import replace

import pytest
import torch

import recipes
from checkpoint import checkpoint_corpus, load_checkpoint
from conftest import chosen
from facts import batch_texts, make_batch
from finetune import FinetuneConfig, fact_batch, resolve, run_stream
from recipes import (IMPROVED, RECIPES, BlockAnswerSlots, Extension, FreshRows, KLRanking, RankBySequence, Recipe,
                     RecipeConfig, SlowAnswerSlots, SlowTaughtSlots, SpareAnswerSlots, answer_units, answers, build,
                     check_recipe, kl_scores)
from sparse import memory_tables, slot_counts, table_reads, top_slots

# Two one-line facts for the stream tests that need two facts.
TOM = {"paraphrases": ["Tom has a red ball."], "questions": ["What does Tom have?"], "answer": "a red ball."}
SUE = {"paraphrases": ["Sue has a cat."], "questions": ["What does Sue have?"], "answer": "a cat."}
BALL = {"paraphrases": ["Tom has a red ball.", "The ball of Tom is red."], "questions": ["What does Tom have?"],
        "heldout_question": "What is red?", "answer": "a red ball."}
KEY = "blocks.1.ffn.values.weight"


def load(trained):
    return load_checkpoint(os.path.join(trained[0].out_dir, "ckpt.pt"))


def changed_rows(model, before):
    return (model.state_dict()[KEY] != before).any(dim=1)


def test_kl_scores_on_a_hand_computed_example():
    counts = torch.tensor([2, 1, 0, 1])                        # tf = (1/2, 1/4, 0, 1/4)
    reads = torch.tensor([5, 1, 1, 1])                         # background q = (6, 2, 2, 2) / 12
    bg = {"df": torch.zeros(4, dtype=torch.long), "reads": reads, "units": 3}
    expected = torch.tensor([0.5 * math.log(1.0), 0.25 * math.log(1.5), 0.0, 0.25 * math.log(1.5)], dtype=torch.double)
    assert torch.allclose(kl_scores(counts, bg), expected)
    # slot 0 is read most but no more than the background reads it; 1 and 3 are the surprising ones
    assert torch.equal(top_slots(kl_scores(counts, bg), counts, 2), torch.tensor([1, 3]))
    assert kl_scores(counts, bg).sum() == pytest.approx(0.5 * math.log(1.5))   # the terms sum to KL


def test_sequence_ranking_keeps_each_slots_best_row():
    # two rows of 2 tokens, 1 head, 1 kept slot each; the second token of row 1 is padding
    indices = torch.tensor([[0, 1], [2, 3]]).view(2, 2, 1, 1)
    mask = torch.tensor([[True, True], [True, False]])
    ones = torch.ones(4, dtype=torch.double)                   # tf
    scores = RankBySequence().scores(0, indices, mask, None, ones)
    # row 0 reads slots 0, 1 (tf 1/2 each); row 1 reads slot 2 alone (tf 1); padding's slot 3 is never read
    assert torch.allclose(scores, torch.tensor([0.5, 0.5, 1.0, -math.inf], dtype=torch.double))
    # kl can be negative: a slot keeps its own row's score, not a 0 from a row that never read it
    bg = {"reads": torch.tensor([100, 0, 0, 0]), "df": None, "units": 1}     # q = (101, 1, 1, 1) / 104
    kl = RankBySequence(KLRanking([bg])).scores(0, indices, mask, None, ones)
    assert kl[0] == pytest.approx(0.5 * math.log(0.5 / (101 / 104))) and kl[0] < 0
    assert kl[2] == pytest.approx(math.log(104))


def test_the_named_recipes_and_the_paper_is_no_extension():
    assert RECIPES["paper"] == {} and RECIPES["improved"] is IMPROVED
    assert IMPROVED == dict(grow_t=4096, spare_answer_slots=0.01, max_df=0.99, slow_taught_slots=1.0)
    assert build(RecipeConfig(), "sparse", "tfidf").extensions == []
    for mode in ("full", "lora"):                              # the memory-row steps are sparse's alone
        full = build(replace(RecipeConfig(**IMPROVED), stop_early=True, passes=2), mode, "tfidf")
        assert [type(e).__name__ for e in full.extensions] == ["Passes", "StopEarly"]


def test_a_recipe_is_named_by_the_options_it_took_and_the_rest_is_said_to_be_ignored():
    from finetune import check_options, describe
    improved = RecipeConfig(**IMPROVED)
    assert recipes.recipe_name(RecipeConfig()) == "paper" and recipes.recipe_name(improved) == "improved"
    assert recipes.recipe_name(replace(improved, slow_taught_slots=0.0)) == \
        "--grow-t 4096 --max-df 0.99 --spare-answer-slots 0.01"
    full = build(replace(improved, stop_early=True), "full", "tfidf")
    assert full.name == "--stop-early"                       # the memory-row steps dropped, and said so below
    cfg = FinetuneConfig(mode="full", optimizer="adamw", lr=1e-5)
    assert check_options(cfg, improved) == ["--mode full trains no memory rows alone: it ignores --grow-t, "
                                            "--max-df, --spare-answer-slots, --slow-taught-slots"]
    with pytest.raises(ValueError, match="would ignore --grow-t; leave it out"):      # typed, not a preset's
        check_options(cfg, improved, given={"grow_t", "lr"})
    sparse = replace(cfg, mode="sparse", optimizer="sgd", lr=50.0)
    assert check_options(replace(sparse, ranking="kl"), improved) == [
        "--ranking kl has no IDF: it ignores --spare-answer-slots"]
    assert check_options(sparse, improved) == []
    sgd = dict(mode="sparse", optimizer="sgd", lr=50.0)
    for typed, given, why in ((dict(lora_rank=4), {"lora_rank"}, "only --mode lora has adapters"),
                              (dict(sgd, weight_decay=0.1), {"weight_decay"}, "SGD has no weight decay"),
                              (dict(top_t=8), {"top_t"}, "--mode full trains no memory rows"),
                              (dict(sgd, ranking="tf"), {"block_answer_slots"}, "--ranking tf has no IDF")):
        with pytest.raises(ValueError, match=why + ".*leave it out"):
            check_options(replace(cfg, **typed), replace(improved, block_answer_slots=True), given)
    assert describe(cfg, RecipeConfig(), build(RecipeConfig(), "full", "tfidf"), [TOM]).endswith("1 facts, 10 step(s) each")
    sparse = FinetuneConfig(optimizer="sgd", lr=50.0)
    stats = [{"df": torch.zeros(4, dtype=torch.long), "reads": torch.zeros(4, dtype=torch.long), "units": 1}]
    line = describe(sparse, improved, build(improved, "sparse", "tfidf", stats, stats), [TOM])
    assert line.endswith("beyond the paper: improved (--grow-t 4096 --max-df 0.99 --spare-answer-slots 0.01 "
                         "--slow-taught-slots 1)")
    assert describe(sparse, RecipeConfig(), build(RecipeConfig(), "sparse", "tfidf"), [TOM]).endswith("the paper's method")


def test_an_extension_that_changes_nothing_leaves_the_paper_s_step():
    reads = torch.tensor([[0, 2], [0, 2], [0, 2], [0, 3], [3, 1]]).view(1, 5, 1, 2)
    count = torch.ones(1, 5, dtype=torch.bool)
    assert chosen(reads, count, 2, recipe=Recipe([Extension()])) == chosen(reads, count, 2) == [0, 2]


def test_blocked_rows_of_fresh_rows_and_answer_slots_together_in_every_table():
    # two value tables of 6 rows; the step read rows 0-3 of each (tf 0.4, 0.3, 0.2, 0.1 by reads)
    reads = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 3]).view(1, 10, 1, 1)
    marked = [torch.tensor([True, False, False, False, False, False]),      # table 0: row 0 read by the answers
              torch.tensor([False, True, False, False, False, False])]      # table 1: row 1
    fresh = FreshRows()

    class TakeRowTwo(Extension):                               # an earlier fact took row 2, in both tables
        def start(self, tables):
            for taken in fresh.taken:
                taken[2] = True
    recipe = Recipe([fresh, TakeRowTwo(), BlockAnswerSlots(marked)])
    assert chosen(reads, torch.ones(1, 10, dtype=torch.bool), 4, recipe=recipe, tables=2) == [[1, 3], [0, 3]]
    assert [m.nonzero().flatten().tolist() for m in fresh.this_fact] == [[1, 3], [0, 3]]   # this fact's rows, noted


def test_slow_answer_and_taught_slots_divide_each_rows_step_by_one_plus_their_terms():
    reads = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 3]).view(1, 10, 1, 1)    # the step read rows 0-3
    count = torch.ones(1, 10, dtype=torch.bool)
    readers = torch.tensor([0, 4, 12, 1, 50, 50])             # background questions reading each row at their answer
    slow = SlowAnswerSlots(4.0, [{"df": readers, "units": 100}])

    def moved(recipe):                                         # SGD at lr 1 on a gradient of 1: each row's scale
        from conftest import Tables
        from facts import Batch
        from sparse import RowOptimizer, sparse_step
        model = Tables([reads], 6)
        tables = memory_tables(model)
        recipe.start(tables)
        sparse_step(model, Batch(None, None, count, None), 4, tables, [RowOptimizer(tables[0][0], "sgd", 2.0)],
                    [torch.ones(6, dtype=torch.double)], recipe)
        return -tables[0][0][:, 0] / 2.0
    assert torch.allclose(moved(Recipe([slow])), torch.tensor([1, 1 / 2, 1 / 4, 1 / 1.25, 0, 0]))   # rows 4, 5 not read
    taught = SlowTaughtSlots(2.0)

    class TaughtBefore(Extension):                             # the facts taught before, per row
        def start(self, tables):
            taught.m[0] = torch.tensor([3.0, 0, 2, 0, 9, 9])
    expected = 1 / (1 + readers[:4] / 4 + torch.tensor([3.0, 0, 2, 0]) / 2)     # 1 + n / 4 + m / 2
    assert torch.allclose(moved(Recipe([slow, taught, TaughtBefore()]))[:4], expected)
    assert Recipe([]).step_scale(0, torch.tensor([1, 2])) is None                # the paper: one rate


def test_slow_taught_slots_counts_the_rows_each_taught_fact_s_answer_is_read_from(trained, monkeypatch):
    model, enc, _ = load(trained)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    fc = resolve(FinetuneConfig(mode="sparse", optimizer="sgd", lr=1.0, top_t=4, ranking="tf", steps_per_fact=2), model)
    taught, seen = SlowTaughtSlots(1.0), []
    damping = taught.damping
    monkeypatch.setattr(taught, "damping", lambda i, rows: seen.append(taught.m[i].clone()) or damping(i, rows))

    def answer_rows(fact):                                     # every slot read where the answer is predicted
        batch = fact_batch(enc, fact, model.config.block_size, "cpu")
        with model.recording_slots():
            model(batch.x)
            reads = table_reads(model, memory_tables(model))[0]
        counts = torch.zeros(model.memory_modules[0].n_slots)
        counts[reads[batch.at].unique()] = 1
        return counts

    run_stream(fc, model, enc, [TOM, SUE, TOM, SUE], None, Recipe([taught]), quiet=True)   # two steps a fact
    assert len(seen) == 8 and not seen[0].any() and torch.equal(seen[0], seen[1])        # nothing taught yet
    assert torch.equal(seen[2], answer_rows(TOM)) and torch.equal(seen[3], seen[2])     # after TOM: its rows, once
    assert torch.equal(seen[4], answer_rows(TOM) + answer_rows(SUE))
    assert torch.equal(seen[6], answer_rows(TOM) * 2 + answer_rows(SUE))                # taught again counts again
    slowed = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(base)
    run_stream(fc, model, enc, [TOM, SUE, TOM, SUE], quiet=True)                       # the paper: every row at lr
    assert any(not torch.equal(slowed[k], v) for k, v in model.state_dict().items())


def test_grow_t_grows_the_rows_4x_only_while_the_fact_is_answered_wrong(trained, monkeypatch):
    model, enc, _ = load(trained)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    fc = resolve(FinetuneConfig(mode="sparse", optimizer="sgd", lr=1.0, top_t=4, ranking="tf", steps_per_fact=2), model)

    def run(answered, rcfg=RecipeConfig(grow_t=64), cfg=fc):
        checks = []
        monkeypatch.setattr(recipes, "answers", lambda *a: checks.append(a) or answered)
        model.load_state_dict(base)
        _, t_per_fact = run_stream(cfg, model, enc, [BALL], None, build(rcfg, cfg.mode, cfg.ranking), quiet=True)
        return t_per_fact, len(checks), int(changed_rows(model, base[KEY]).sum())

    assert run(answered=True) == ([4], 1, 4)                  # answered after its steps: one round of t = 4
    t_per_fact, checks, rows = run(answered=False)            # never answered: 4 -> 16 -> 64, checked before each growth
    assert t_per_fact == [64] and checks == 2 and 16 < rows <= 64
    assert run(answered=False, rcfg=RecipeConfig())[:2] == ([4], 0)      # the paper: one round, never checked
    full = resolve(FinetuneConfig(mode="full", lr=1e-3, steps_per_fact=2), model)
    assert run(answered=False, cfg=full)[:2] == ([None], 0)   # full finetuning has no t to grow


def test_stop_early_ends_a_fact_s_steps_once_its_answer_is_predicted(trained, monkeypatch):
    import finetune
    model, enc, _ = load(trained)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    fc = resolve(FinetuneConfig(mode="sparse", optimizer="sgd", lr=1.0, top_t=4, ranking="tf", steps_per_fact=5), model)
    step, steps = finetune.sparse_step, []
    monkeypatch.setattr(finetune, "sparse_step", lambda model, batch, t, *a: steps.append(t) or step(model, batch, t, *a))

    def run(cfg, answered, rcfg=RecipeConfig(grow_t=64, stop_early=True)):
        steps.clear()
        checks = iter(answered)
        monkeypatch.setattr(recipes, "answers", lambda *a: next(checks))
        model.load_state_dict(base)
        return run_stream(cfg, model, enc, [BALL], None, build(rcfg, cfg.mode, cfg.ranking), quiet=True)[1], steps[:]

    assert run(fc, [False, False, True, True]) == ([4], [4, 4, 4])            # predicted after its third step: no more
    assert run(fc, [False] * 17) == ([64], [4] * 5 + [16] * 5 + [64] * 5)    # never: every step of every round
    assert run(fc, [True], RecipeConfig(grow_t=64)) == ([4], [4] * 5)         # off: the round's steps all run
    full = resolve(FinetuneConfig(mode="full", lr=1e-3, steps_per_fact=5), model)   # any mode
    run(full, [True, True])
    one_step = {k: v.clone() for k, v in model.state_dict().items()}
    run(replace(full, steps_per_fact=1), [], RecipeConfig())
    assert all(torch.equal(one_step[k], v) for k, v in model.state_dict().items())
    assert not all(torch.equal(base[k], v) for k, v in one_step.items())


def test_passes_teach_the_whole_stream_again_in_the_same_order(trained, monkeypatch):
    import finetune
    model, enc, _ = load(trained)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    full = resolve(FinetuneConfig(mode="full", lr=1e-3, steps_per_fact=2), model)
    batch, seen, ends = finetune.fact_batch, [], []
    monkeypatch.setattr(finetune, "fact_batch", lambda enc, fact, *a: seen.append(fact["answer"]) or batch(enc, fact, *a))
    run_stream(full, model, enc, [TOM, SUE], None, build(RecipeConfig(passes=3), "full", "tfidf"), quiet=True,
               on_fact=ends.append)
    assert seen == ["a red ball.", "a cat."] * 3 and ends == [1, 2, 3, 4, 5, 6]
    three_passes = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(base)
    run_stream(full, model, enc, [TOM, SUE] * 3, quiet=True)     # the same as the stream written out 3 times
    assert all(torch.equal(three_passes[k], v) for k, v in model.state_dict().items())


def test_a_fact_is_answered_when_every_line_of_its_batch_predicts_the_answer(trained):
    enc = trained[2]
    fact = {"paraphrases": ["Tom has a red ball.", "Tom plays."], "questions": ["What does Tom have?"],
            "heldout_question": "What toy does Tom own?", "answer": "a red ball."}
    batch = fact_batch(enc, fact, 64, "cpu")
    assert batch.at.sum(1).tolist() == [len(enc.encode(" a red ball.")), 0, len(enc.encode(" a red ball."))]

    class Oracle:                                             # predicts every next token, but where told to be wrong
        def __init__(self, wrong=None):
            self.wrong = wrong

        def __call__(self, x):
            nxt = torch.roll(x, -1, dims=1)
            if self.wrong:
                nxt[self.wrong] = (nxt[self.wrong] + 1) % enc.n_vocab
            return torch.nn.functional.one_hot(nxt, enc.n_vocab).float(), None

    answer_at = [tuple(p) for p in batch.at.nonzero().tolist()]
    assert answers(Oracle(), batch)
    assert not answers(Oracle(wrong=answer_at[1]), batch)      # the statement's second answer token
    assert not answers(Oracle(wrong=answer_at[-1]), batch)     # the question line's last one
    assert answers(Oracle(wrong=(0, 1)), batch)               # not an answer position: no matter


def test_fresh_rows_never_train_a_row_an_earlier_fact_trained(trained):
    model, enc, _ = load(trained)
    facts = [{"paraphrases": [f"{name} has a red ball.", f"The ball of {name} is red."],
              "questions": [f"What does {name} have?"], "heldout_question": None, "answer": "a red ball."}
             for name in ("Tom", "Sue")]                       # the same words: without the rule they share rows
    fc = resolve(FinetuneConfig(mode="sparse", optimizer="sgd", lr=1.0, top_t=16, ranking="tf", steps_per_fact=2), model)
    base = model.state_dict()[KEY].clone()
    run_stream(fc, model, enc, facts[:1], quiet=True)
    after_first = model.state_dict()[KEY].clone()
    first = (after_first != base).any(dim=1)
    run_stream(fc, model, enc, facts[1:], quiet=True)
    assert (first & (model.state_dict()[KEY] != after_first).any(dim=1)).any()   # shared rows are trained again ...
    # ... unless the stream holds both facts with --fresh-rows: then none is
    model.load_state_dict({**model.state_dict(), KEY: base})
    run_stream(fc, model, enc, facts, None, build(RecipeConfig(fresh_rows=True), "sparse", "tf"), quiet=True)
    both = model.state_dict()[KEY]
    assert torch.equal(both[first], after_first[first])      # the first fact's rows as it left them
    assert ((both != after_first).any(dim=1) & ~first).any()   # and the second trained read rows of its own


def test_max_df_through_the_stream_trains_only_slots_under_the_cap(trained):
    model, enc, _ = load(trained)
    before = model.state_dict()[KEY].clone()
    mem = model.memory_modules[0]
    x, y, count = make_batch(enc, batch_texts(BALL), model.config.block_size)
    with model.recording_slots():
        model(x)
        reads = model.slot_reads()[0]
        read = slot_counts(reads[count], mem.n_slots) > 0
        # a row's last token has no target, so a slot read only there gets no gradient: allow slots with a loss
        learnable = slot_counts(reads[count & (y >= 0)], mem.n_slots) > 0
    allowed = learnable.nonzero().flatten()[:5]               # five read slots under the cap, every other above it
    df = torch.where(read, 101, 0)
    df[allowed] = 100
    stats = [{"df": df, "reads": df, "units": 1000}]
    fc = resolve(FinetuneConfig(mode="sparse", lr=1.0, top_t=20), model)
    run_stream(fc, model, enc, [BALL], stats, build(RecipeConfig(max_df=0.1), "sparse", "tfidf", stats), quiet=True)
    assert changed_rows(model, before).nonzero().flatten().tolist() == allowed.tolist()   # t = 20, but five may train


def test_block_answer_slots_never_trains_the_slots_spare_answer_slots_ranks_last(trained):
    model, enc, _ = load(trained)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    x, y, count = make_batch(enc, batch_texts(BALL), model.config.block_size)
    with model.recording_slots():
        model(x)
        learnable = slot_counts(model.slot_reads()[0][count & (y >= 0)], model.memory_modules[0].n_slots) > 0
    marked = torch.zeros_like(learnable)
    marked[learnable.nonzero().flatten()[::2]] = True          # every other slot with a gradient: read by the answers
    n = len(marked)
    stats = [{"df": torch.zeros(n, dtype=torch.long), "reads": torch.ones(n, dtype=torch.long), "units": 1000}]
    readers = [{"df": marked.long() * 50, "units": 100}]     # read where half the background answers are predicted

    def trained_rows(block):                                  # t = 4,096: more than the batch reads
        model.load_state_dict(base)
        fc = resolve(FinetuneConfig(mode="sparse", lr=1.0, top_t=4096), model)
        rcfg = RecipeConfig(spare_answer_slots=0.1, block_answer_slots=block)
        run_stream(fc, model, enc, [BALL], stats, build(rcfg, "sparse", "tfidf", stats, readers), quiet=True)
        return changed_rows(model, base[KEY])
    assert trained_rows(False)[marked].all()                  # ranked last, but trained once t reaches them
    blocked = trained_rows(True)
    assert not blocked[marked].any() and blocked[learnable & ~marked].all()


def test_answer_units_count_only_where_the_answers_are_predicted(trained):
    _, enc, ckpt = load(trained)
    known = checkpoint_corpus(ckpt)[1]["background"][:5]
    units = list(answer_units(enc, known, per_batch=1))
    assert len(units) == sum(len(f["questions"]) for f in known)      # one per question
    assert sum(x.shape[0] for x, _ in answer_units(enc, known, per_batch=4)) == len(units)
    x, count = units[0][0][0], units[0][1][0]                         # the first unit: (1 row, L)
    answer = enc.encode(" " + known[0]["answer"])
    assert count.sum() == len(answer) and x[0, -len(answer):].tolist() == answer
    at = count[0].nonzero().flatten()
    assert at[-1] == x.shape[1] - 2 and x[0, at[0] + 1] == answer[0]  # from the token before the answer to its second-last


def test_spare_answer_slots_gives_idf_zero_to_the_slots_many_answers_are_read_from():
    n = 6
    readers = [{"df": torch.tensor([50, 11, 10, 0, 0, 0]), "units": 100}]   # read by 50, 11 and 10 of 100 answers
    spare = SpareAnswerSlots(0.1, readers)
    assert spare.marked[0].nonzero().flatten().tolist() == [0, 1]          # over 10% of the answers
    idf = spare.idf(0, torch.ones(n, dtype=torch.double))
    assert idf.tolist() == [0, 0, 1, 1, 1, 1]


def test_the_options_are_checked_and_build_only_what_they_name():
    for rcfg, message in [(RecipeConfig(grow_t=32), "--grow-t 32 is below --top-t 64"),
                          (RecipeConfig(grow_t=-1), "--grow-t -1 is below"),
                          (RecipeConfig(max_df=0), "--max-df is a share"), (RecipeConfig(max_df=1.5), "--max-df is a share"),
                          (RecipeConfig(spare_answer_slots=0), "--spare-answer-slots is a share"),
                          (RecipeConfig(slow_taught_slots=float("nan")), "--slow-taught-slots must be 0"),
                          (RecipeConfig(slow_answer_slots=-1), "--slow-answer-slots must be 0"),
                          (RecipeConfig(block_answer_slots=True), "give --spare-answer-slots below 1"),
                          (RecipeConfig(passes=0), "--passes must be at least 1"),
                          (RecipeConfig(fresh_rows=True, passes=2), "--fresh-rows keeps a fact off"),
                          (RecipeConfig(count_reads="everything"), "unknown --count-reads"),
                          (RecipeConfig(rank_by="row"), "unknown --rank-by")]:
        with pytest.raises(ValueError, match=message):
            check_recipe(rcfg, 64)
    readers = [{"df": torch.zeros(4, dtype=torch.long), "units": 1}]
    stats = [{"df": torch.zeros(4, dtype=torch.long), "reads": torch.zeros(4, dtype=torch.long), "units": 1}]
    names = lambda r: [type(e).__name__ for e in r.extensions]
    improved = RecipeConfig(**IMPROVED)
    assert names(build(improved, "sparse", "tfidf", stats, readers)) == ["SpareAnswerSlots", "MaxDF", "SlowTaughtSlots",
                                                                         "GrowT", "WarnWhenBlocked"]
    assert names(build(improved, "sparse", "tf", stats, readers))[0] == "MaxDF"    # tf has no IDF to zero
    assert names(build(RecipeConfig(), "sparse", "kl", stats)) == ["KLRanking"]
    assert names(build(RecipeConfig(rank_by="sequence", count_reads="answer"), "sparse", "kl", stats)) == ["CountAnswer",
                                                                                                     "RankBySequence"]


def reference_stream(model, enc, facts, stats, readers, lr, t, steps, improved):
    """The paper's method (improved=False) and the improved recipe (True), written out in one loop
    without recipes.py, as one reads them in docs/METHOD.md: IDF against the background, top-t,
    SGD on those rows; improved: IDF 0 on the slots over 1% of the background answers read,
    no row read in over 99% of the background units, each row's step divided by 1 + m (the
    facts taught before whose answer reads it), and t grown 4x up to 4,096 while the answer is
    missed."""
    from sparse import RowOptimizer, top_slots
    w = model.memory_modules[0].values.weight
    for p in model.parameters():
        p.requires_grad_(False)
    w.requires_grad_(True)
    opt, n = RowOptimizer(w, "sgd", lr), w.shape[0]
    idf = torch.log((stats[0]["units"] + 1) / (stats[0]["df"].double() + 1))
    if improved:
        idf = idf.masked_fill(readers[0]["df"] > 0.01 * readers[0]["units"], 0.0)
    over, m = stats[0]["df"] > 0.99 * stats[0]["units"], torch.zeros(n)
    for fact in facts:
        texts = batch_texts(fact)
        x, y, at = make_batch(enc, texts, model.config.block_size, [fact["answer"]])
        count = make_batch(enc, texts, model.config.block_size)[2]
        t_now = t
        while True:
            for _ in range(steps):
                with model.recording_slots():
                    _, loss = model(x, y)
                    reads = model.slot_reads()[0]                      # (B, T, H, k)
                loss.backward()
                c = torch.bincount(reads[count].flatten(), minlength=n)
                scores = c.double() / c.sum() * idf
                rows = top_slots(scores, c.masked_fill(over, 0) if improved else c, t_now)
                opt.step(rows, 1 / (torch.ones(len(rows)) + m[rows]) if improved else None)
                w.grad = None
            with torch.no_grad():
                answered = bool((model(x)[0].argmax(-1) == y)[at].all())
            if not improved or t_now >= 4096 or answered:
                break
            t_now = min(4 * t_now, 4096)
        if improved:
            with torch.no_grad(), model.recording_slots():
                model(x)
                m[model.slot_reads()[0][at].unique()] += 1
    w.requires_grad_(False)


@pytest.mark.parametrize("name", ["paper", "improved"])
def test_the_paper_and_the_improved_recipe_are_what_the_docs_write_step_for_step(trained, tmp_path, name):
    """Pins both methods on the tiny model: the stream through sparse_step and the recipe leaves
    every weight bit-identical to the method written out in one plain loop."""
    from finetune import load_or_compute_background, make_recipe
    model, enc, ckpt = load(trained)
    facts = [{"paraphrases": f["statements"], "questions": f["questions"][:-1], "heldout_question": None,
              "answer": f["answer"]} for f in checkpoint_corpus(ckpt)[1]["new"][:4]]
    cfg = resolve(FinetuneConfig(checkpoint=str(tmp_path / "ckpt.pt"), lr=5.0, top_t=8, steps_per_fact=3,
                                 background_batches=40), model)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    stats, recipe = make_recipe(cfg, RecipeConfig(**RECIPES[name]), model, enc, ckpt)
    assert recipe.name == name
    assert [type(e).__name__ for e in recipe.extensions] == ([] if name == "paper" else
                                                             ["SpareAnswerSlots", "MaxDF", "SlowTaughtSlots", "GrowT", "WarnWhenBlocked"])
    _, t_per_fact = run_stream(cfg, model, enc, facts, stats, recipe, quiet=True)
    spine = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(base)
    readers = recipes.answer_readers(model, enc, checkpoint_corpus(ckpt)[1]["background"], "cpu")
    reference_stream(model, enc, facts, load_or_compute_background(cfg, model, ckpt, "cpu"), readers, 5.0, 8, 3,
                     name == "improved")
    assert all(torch.equal(spine[k], v) for k, v in model.state_dict().items())
    assert not torch.equal(spine[KEY], base[KEY])
    assert (set(t_per_fact) == {8}) == (name == "paper")                 # the improved recipe grew t for some fact
