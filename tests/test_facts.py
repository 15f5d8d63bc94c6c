"""facts.py: the facts a stream teaches and their batches: which tokens' reads count."""

import os

import torch

from checkpoint import load_checkpoint
from facts import make_batch
from sparse import slot_counts


class Chars:
    """A stand-in encoding: one token per character (its code); <|endoftext|> is token 0."""
    eot_token = 0

    def encode(self, text):
        return [ord(c) for c in text]


def test_count_answer_counts_only_the_positions_that_predict_the_answer():
    texts = ["Tom is in Rome.", "Q: Where is Tom? A: Rome.", "Tom ran."]    # the last row never says the answer
    x, y, count = make_batch(Chars(), texts, 64, answers=["Rome."])
    for row, text in zip(range(3), texts):
        predicted = "".join(chr(t) for t in y[row][count[row]].tolist())
        assert predicted == (" Rome." if "Rome" in text else "")          # the answer's tokens, space and period
        assert count[row].sum() == len(predicted)
    assert torch.equal(make_batch(Chars(), texts, 64)[2], make_batch(Chars(), texts, 64, answers=None)[2])


def test_slot_counts_ignore_padding_and_the_separator(trained):
    cfg, _, enc, _ = trained
    model, enc, _ = load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"))
    mem = model.memory_modules[0]
    texts = ["Tom has a red ball.", "Tom ran.", "Q: Where does Tom live? A: home."]
    x, y, count = make_batch(enc, texts, model.config.block_size)
    assert torch.equal(y >= 0, count.roll(-1, 1)) and count.sum() == sum(len(enc.encode(t)) for t in texts)
    mem.record_indices = True
    model(x)
    batch = slot_counts(mem.last_indices[count], mem.n_slots)
    alone = torch.zeros(mem.n_slots, dtype=torch.long)           # each row on its own, unpadded
    for t in texts:
        ids = [enc.eot_token] + enc.encode(t)
        model(torch.tensor([ids]))
        alone += slot_counts(mem.last_indices[0, 1:], mem.n_slots)
    mem.record_indices = False
    assert torch.equal(batch, alone)
