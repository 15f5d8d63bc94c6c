"""sparse.py on hand-made reads and counts: scores, row choice, background statistics, row updates.
The optimizer tests come last: the first torch.optim step imports torch._dynamo (seconds), and
tests/mutants.py stops at the first failure."""

import contextlib
import math

import pytest
import torch

from conftest import chosen
from recipes import CountAnswer, Extension, KLRanking, MaxDF, RankBySequence, Recipe, SpareAnswerSlots
from sparse import RowOptimizer, background_stats, inverse_document_frequency, slot_scores, top_slots


def test_tfidf_scores_on_a_hand_computed_example():
    counts = torch.tensor([2, 1, 0, 1])
    df = torch.tensor([0, 3, 1, 1])                           # |B| = 3 background units
    # tf = (1/2, 1/4, 0, 1/4); idf = log(4/1), log(4/4), log(4/2), log(4/2)
    expected = torch.tensor([0.5 * math.log(4), 0.0, 0.0, 0.25 * math.log(2)], dtype=torch.double)
    idf = inverse_document_frequency({"df": df, "units": 3})
    assert torch.allclose(slot_scores(counts, idf), expected)
    assert torch.equal(top_slots(slot_scores(counts, idf), counts, 2), torch.tensor([0, 3]))
    ones = torch.ones(4, dtype=torch.double)                  # the TF ablation: an idf of ones
    assert torch.allclose(slot_scores(counts, ones), torch.tensor([0.5, 0.25, 0, 0.25], dtype=torch.double))
    # never an unread slot, even when t is larger than the slots read
    assert torch.equal(top_slots(torch.ones(4, dtype=torch.double), counts, 10), torch.tensor([0, 1, 3]))


def test_the_step_counts_only_the_counted_tokens():
    # one row: the separator and two paddings read slot 5, three text tokens read slots 0, 0, 1
    reads = torch.tensor([5, 0, 0, 1, 5, 5]).view(1, 6, 1, 1)
    count = torch.tensor([[False, True, True, True, False, False]])
    # tf over the counted reads: slot 0 2/3, slot 1 1/3, slot 5 unread (counted, it would be 1/2 and first)
    assert chosen(reads, count, 2) == [0, 1]


def test_the_step_trains_the_top_t_by_tfidf_and_no_other_row():
    reads = torch.tensor([[0, 2], [0, 2], [0, 2], [0, 3], [3, 1]]).view(1, 5, 1, 2)   # tf 0.4, 0.1, 0.3, 0.2
    count = torch.ones(1, 5, dtype=torch.bool)
    # df of |B| = 1000 units: tfidf = tf * log(1001 / (df + 1)) = 0.913, 0.691, 0.688, 1.382
    idf = inverse_document_frequency({"df": torch.tensor([101, 0, 100, 0, 0, 0]), "units": 1000})
    assert chosen(reads, count, 2, idf) == [0, 3]
    assert chosen(reads, count, 3, idf) == [0, 1, 3]
    assert chosen(reads, count, 2) == [0, 2]                   # tf alone
    assert chosen(reads, count, 10) == [0, 1, 2, 3]            # t above the slots read: every slot read, no other


@pytest.mark.parametrize("idf, sequence, uncapped, capped", [
    (True, False, [0, 3], [1, 3]), (False, False, [0, 2], [2, 3]), (False, True, [0, 2], [2, 3])])
def test_max_df_drops_the_slots_above_the_cap_before_top_t(idf, sequence, uncapped, capped):
    # one row of 5 tokens, 1 head, 2 slots each: slot 0 is read 4 times, slot 2 3 times, slot 3 twice, slot 1 once
    reads = torch.tensor([[0, 2], [0, 2], [0, 2], [0, 3], [3, 1]]).view(1, 5, 1, 2)
    count = torch.ones(1, 5, dtype=torch.bool)
    # df of |B| = 1000 units; the cap 0.1 x 1000 = 100 allows slot 2 (df 100), not slot 0 (df 101).
    bg = {"df": torch.tensor([101, 0, 100, 0, 0, 0]), "reads": torch.zeros(6, dtype=torch.long), "units": 1000}
    idf = inverse_document_frequency(bg) if idf else None
    ranking = [RankBySequence()] if sequence else []
    assert chosen(reads, count, 2, idf, Recipe(ranking)) == uncapped
    assert chosen(reads, count, 2, idf, Recipe(ranking + [MaxDF(0.1, [bg])])) == capped


def test_answer_slots_rank_last_and_max_df_caps_only_by_the_df():
    reads = torch.tensor([[0, 2], [0, 2], [0, 2], [0, 3], [3, 1]]).view(1, 5, 1, 2)   # tf 0.4, 0.1, 0.3, 0.2
    count = torch.ones(1, 5, dtype=torch.bool)
    # slots 0 and 3 are read where more than 1% of 100 background answers are predicted: IDF 0;
    # slot 0 is read in 5 background units, slot 2 in 995
    bg = {"df": torch.tensor([5, 0, 995, 7, 0, 0]), "reads": torch.zeros(6, dtype=torch.long), "units": 1000}
    readers = [{"df": torch.tensor([2, 0, 0, 5, 1, 0]), "units": 100}]
    idf = inverse_document_frequency(bg)
    spare = SpareAnswerSlots(0.01, readers)
    assert chosen(reads, count, 2, idf, Recipe([spare])) == [1, 2]               # tfidf 0, 0.69, 0.0015, 0
    assert chosen(reads, count, 4, idf, Recipe([spare, MaxDF(0.99, [bg])])) == [0, 1, 3]   # 2 capped; 0 and 3 still trainable


def test_the_step_ranks_by_the_recipe_s_scores_and_counts_the_recipe_s_tokens():
    # one row of 4 tokens reading slots 0, 0, 1, 3: tf (1/2, 1/4, 0, 1/4); the background reads slot 0
    # most, so its KL term is 0 and slots 1 and 3 are the surprising ones (tests/test_recipes.py)
    reads = torch.tensor([0, 0, 1, 3]).view(1, 4, 1, 1)
    count = torch.ones(1, 4, dtype=torch.bool)
    bg = {"df": torch.zeros(4, dtype=torch.long), "reads": torch.tensor([5, 1, 1, 1]), "units": 3}
    assert chosen(reads, count, 2, n_slots=4)[0] == 0                            # tf: slot 0 first
    assert chosen(reads, count, 2, recipe=Recipe([KLRanking([bg])]), n_slots=4) == [1, 3]
    at = torch.tensor([[False, False, False, True]])                            # the answer is predicted at token 4
    assert chosen(reads, count, 2, recipe=Recipe([CountAnswer()]), n_slots=4, at=at) == [3]


class Blocks(Extension):
    """Blocks the rows it is given."""

    def __init__(self, rows):
        self.rows = rows

    def blocked(self, i):
        return self.rows


def test_blocked_rows_are_never_chosen_and_the_next_best_take_their_place():
    reads = torch.tensor([[0, 2], [0, 2], [0, 2], [0, 3], [3, 1]]).view(1, 5, 1, 2)   # tf 0.4, 0.1, 0.3, 0.2
    count = torch.ones(1, 5, dtype=torch.bool)
    first = torch.tensor([True, False, False, False, False, False])
    assert chosen(reads, count, 2) == [0, 2]
    assert chosen(reads, count, 2, recipe=Recipe([Blocks(first)])) == [2, 3]
    third = torch.tensor([False, False, False, True, False, False])
    assert chosen(reads, count, 2, recipe=Recipe([Blocks(first), Blocks(third)])) == [1, 2]   # the union of both
    assert chosen(reads, count, 2, recipe=Recipe([Blocks(torch.ones(6, dtype=torch.bool))])) == []


class ReadsItsTokens:
    """A stand-in model with one memory table of 8 slots in which every token reads one slot,
    the slot of its own id: the reads of a unit are its tokens."""

    def __init__(self):
        self.memory_modules = [torch.nn.Module()]
        self.memory_modules[0].values = torch.nn.EmbeddingBag(8, 1)

    @contextlib.contextmanager
    def recording_slots(self):
        yield

    def __call__(self, x):
        self.reads = x.view(*x.shape, 1, 1)                        # (B, T, 1 head, 1 kept slot)

    def slot_reads(self):
        return [self.reads]


def test_background_df_counts_units_that_read_a_slot_and_skips_uncounted_tokens():
    F, T = False, True
    units = [(torch.tensor([[[7, 1, 2, 2], [7, 3, 7, 7]]]), torch.tensor([[[F, T, T, T], [F, T, F, F]]])),
             (torch.tensor([[[7, 2, 4, 7]]]), torch.tensor([[[F, T, T, F]]])),   # 7: separator and padding
             (torch.tensor([[[1, 1]]]), None)]                                    # no mask: every token counts
    st = background_stats(ReadsItsTokens(), units, "cpu", quiet=True)[0]
    assert st["units"] == 3
    assert st["df"].tolist() == [0, 2, 2, 1, 1, 0, 0, 0]            # slot 1 in units 1 and 3, slot 2 in 1 and 2
    assert st["reads"].tolist() == [0, 3, 3, 1, 1, 0, 0, 0]


def test_units_read_together_count_as_when_read_one_by_one():
    torch.manual_seed(0)
    x = torch.randint(0, 8, (5, 3, 6))                              # 5 units of 3 rows
    mask = torch.rand(5, 3, 6) < 0.6
    together = background_stats(ReadsItsTokens(), [(x, mask)], "cpu", quiet=True)[0]
    alone = background_stats(ReadsItsTokens(), [(x[u:u + 1], mask[u:u + 1]) for u in range(5)], "cpu", quiet=True)[0]
    assert together["units"] == alone["units"] == 5
    assert torch.equal(together["df"], alone["df"]) and torch.equal(together["reads"], alone["reads"])
    assert together["df"].max() <= 5 and (together["reads"] > together["df"]).any()   # a unit reading a slot twice counts once


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_rows_outside_the_selection_stay_bit_identical(kind):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(10, 4))
    opt = RowOptimizer(w, kind, lr=0.1, weight_decay=0.5)
    for rows in ([1, 3], [5], [1, 7], [2]):                 # rows 1 and 3 carry AdamW moments later
        before = w.detach().clone()
        w.grad = torch.randn(10, 4)                          # a gradient on every row, as in the model
        opt.step(torch.tensor(rows))
        others = [r for r in range(10) if r not in rows]
        assert torch.equal(w[others], before[others])       # bit-exact, not approximately
        assert not torch.equal(w[rows], before[rows])


@pytest.mark.parametrize("kind, reference, hyper, grad_scale", [
    ("sgd", torch.optim.SGD, dict(lr=0.3), 1.0),
    # betas, eps and decay away from the defaults, and gradients small enough for eps to matter
    ("adamw", torch.optim.AdamW, dict(lr=0.01, weight_decay=0.2, betas=(0.8, 0.9), eps=1e-3), 1e-3)])
def test_row_optimizer_matches_torch_on_the_selected_rows(kind, reference, hyper, grad_scale):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(6, 4))
    rows = torch.tensor([1, 4])
    ref = torch.nn.Parameter(w[rows].detach().clone())
    opt, ref_opt = RowOptimizer(w, kind, **hyper), reference([ref], **hyper)
    for _ in range(3):
        g = torch.randn(6, 4) * grad_scale
        w.grad, ref.grad = g, g[rows].clone()
        opt.step(rows)
        ref_opt.step()
    torch.testing.assert_close(w[rows], ref, rtol=1e-6, atol=1e-7)   # a few ulps: another kernel may fuse differently


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_a_rows_scale_gives_it_that_share_of_the_learning_rate(kind):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(6, 4))
    rows, scale = torch.tensor([1, 4]), torch.tensor([1.0, 0.25])
    refs = [torch.nn.Parameter(w.detach().clone()) for _ in range(2)]   # one optimizer at each row's own rate
    opt = RowOptimizer(w, kind, lr=0.2, weight_decay=0.1)
    ref_opts = [RowOptimizer(refs[0], kind, lr=0.2, weight_decay=0.1), RowOptimizer(refs[1], kind, lr=0.05, weight_decay=0.1)]
    for _ in range(3):
        g = torch.randn(6, 4)
        w.grad, refs[0].grad, refs[1].grad = g, g.clone(), g.clone()
        opt.step(rows, scale)
        for ref, ro in zip(refs, ref_opts):
            ro.step(rows)
    torch.testing.assert_close(w[1], refs[0][1], rtol=1e-6, atol=1e-7)   # scale 1: the optimizer's rate
    torch.testing.assert_close(w[4], refs[1][4], rtol=1e-6, atol=1e-7)   # scale 0.25: a quarter of it


def test_row_adamw_bias_correction_counts_each_rows_own_updates():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(6, 4))
    ref = torch.nn.Parameter(w[4:5].detach().clone())           # row 4: selected at steps 1 and 3 only
    opt = RowOptimizer(w, "adamw", lr=0.01)
    ref_opt = torch.optim.AdamW([ref], lr=0.01, weight_decay=0.0)
    for rows in ([4, 0], [0], [4, 1]):
        g = torch.randn(6, 4)
        w.grad = g
        opt.step(torch.tensor(rows))
        if 4 in rows:
            ref.grad = g[4:5].clone()
            ref_opt.step()                                       # AdamW's own step 1, then step 2
    counts = [opt.steps[opt.where[r]].item() if opt.where[r] >= 0 else 0 for r in range(6)]
    assert counts == [2, 1, 0, 0, 2, 0]
    assert opt.exp_avg.shape == (3, 4) and opt.steps.shape == (3,)   # state for the 3 rows ever selected, no more
    assert torch.allclose(w[4:5], ref, atol=1e-6)
