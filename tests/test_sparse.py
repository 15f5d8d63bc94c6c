import contextlib

import torch

from sparse import RowOptimizer, background_stats, choose_rows


def test_row_sgd_matches_torch_sgd_on_the_selected_rows():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(6, 4))
    rows = torch.tensor([1, 4])
    ref = torch.nn.Parameter(w[rows].detach().clone())
    opt, ref_opt = RowOptimizer(w, "sgd", lr=0.3), torch.optim.SGD([ref], lr=0.3)
    for _ in range(3):
        g = torch.randn(6, 4)
        w.grad, ref.grad = g, g[rows].clone()
        opt.step(rows)
        ref_opt.step()
    torch.testing.assert_close(w[rows], ref, rtol=0, atol=1e-6)


def test_choose_rows_counts_only_the_counted_tokens():
    # one row: the separator and two paddings read slot 5, three text tokens read slots 0, 0, 1
    reads = torch.tensor([5, 0, 0, 1, 5, 5]).view(1, 6, 1, 1)
    count = torch.tensor([[False, True, True, True, False, False]])
    # tf over the counted reads: slot 0 2/3, slot 1 1/3, slot 5 unread (counted, it would be 1/2 and first)
    assert choose_rows(reads, count, 6, 2, "tf").tolist() == [0, 1]


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
    units = [(torch.tensor([[7, 1, 2, 2], [7, 3, 7, 7]]), torch.tensor([[F, T, T, T], [F, T, F, F]])),
             (torch.tensor([[7, 2, 4, 7]]), torch.tensor([[F, T, T, F]])),   # 7: separator and padding
             (torch.tensor([[1, 1]]), None)]                                  # no mask: every token counts
    st = background_stats(ReadsItsTokens(), units, "cpu", quiet=True)[0]
    assert st["units"] == 3
    assert st["df"].tolist() == [0, 2, 2, 1, 1, 0, 0, 0]            # slot 1 in units 1 and 3, slot 2 in 1 and 2
    assert st["reads"].tolist() == [0, 3, 3, 1, 1, 0, 0, 0]
