import torch

from evaluate import EOT, qa_accuracy, qa_correct


class Chars:
    """A stand-in encoding: one token per character (its code), <|endoftext|> is token 0."""
    def encode(self, text, allowed_special=()):
        return [0] if text == EOT and EOT in allowed_special else [ord(c) for c in text]


NEXT = dict(zip(map(ord, "A: Tom"), map(ord, ": Tom.")))     # after "A" comes ":", after ":" " ", ...


def knows_tom(x):
    """A stand-in model whose greedy next token depends on the current token only (NEXT, else 0):
    after any prompt ending in "A:" it answers " Tom." and nothing else."""
    nxt = torch.tensor([[NEXT.get(int(t), 0) for t in row] for row in x])     # (B, L)
    return torch.nn.functional.one_hot(nxt, 128).float(), None                # logits (B, L, 128)


def test_exact_match_needs_every_answer_token_and_only_those():
    items = [("Q: Who ran? A:", " Tom."),          # right
             ("Q: Who? A:", " Tim."),              # second token wrong
             ("Q: Who is it? A:", " Tom!"),        # only the last token wrong
             ("Q: Who? A:", " Tom")]               # right: greedy decoding starts with these tokens
    assert qa_correct(knows_tom, Chars(), items, "cpu", batch_size=3) == [True, False, False, True]
    assert qa_accuracy(knows_tom, Chars(), items, "cpu") == 0.5
