import math

import torch

from evaluate import EOT, first_wrong_tokens, qa_accuracy, qa_correct, skill_accuracy, story_endings


class Chars:
    """A stand-in encoding: one token per character (its code), <|endoftext|> is token 0."""
    def encode(self, text, allowed_special=()):
        return [0] if text == EOT and EOT in allowed_special else [ord(c) for c in text]


NEXT = dict(zip(map(ord, "A: Tom"), map(ord, ": Tom.")))     # after "A" comes ":", after ":" " ", ...


def knows_tom(x, at=None):
    """A stand-in model whose greedy next token depends on the current token only (NEXT, else 0):
    after any prompt ending in "A:" it answers " Tom." and nothing else. Like GPT.forward, at
    keeps only the marked positions' logits."""
    nxt = torch.tensor([[NEXT.get(int(t), 0) for t in row] for row in x])     # (B, L)
    logits = torch.nn.functional.one_hot(nxt, 128).float()                    # (B, L, 128)
    return (logits if at is None else logits[at]), None


def test_exact_match_needs_every_answer_token_and_only_those():
    items = [("Q: Who ran? A:", " Tom."),          # right
             ("Q: Who? A:", " Tim."),              # second token wrong
             ("Q: Who is it? A:", " Tom!"),        # only the last token wrong
             ("Q: Who? A:", " Tom")]               # right: greedy decoding starts with these tokens
    assert qa_correct(knows_tom, Chars(), items, "cpu", batch_size=3) == [True, False, False, True]
    assert qa_accuracy(knows_tom, Chars(), items, "cpu") == 0.5
    assert first_wrong_tokens(knows_tom, Chars(), items, "cpu", batch_size=3) == [None, 2, 4, None]   # " Ti", "!"


class CharsText(Chars):
    def decode(self, ids):
        return "".join(EOT if i == 0 else chr(i) for i in ids)


STORIES = ["Tom had a kite. It flew away. Tom cried.", "Ann saw a frog! The frog sat still. Ann smiled.",
           "Max ran home. He was tired. Max slept.", "Sue baked a cake. \"Yum!\" said Sue. Sue ate it.",
           "Bob fed the dog. The dog wagged. Bob laughed."]


def test_story_endings_offer_the_true_last_sentence_among_the_others():
    tokens = [t for s in STORIES for t in [ord(c) for c in s] + [0]]           # stories separated by token 0
    items = story_endings(tokens, CharsText(), n_choices=3, seed=1)
    last = [s.rsplit(". ", 1)[-1] for s in STORIES]
    assert len(items) == len(STORIES)
    for story, last_sentence, (context, endings, answer) in zip(STORIES, last, items):
        assert context + " " + last_sentence == story and endings[answer] == last_sentence
        assert len(endings) == 3 and set(endings) - {last_sentence} <= set(last) - {last_sentence}
    assert story_endings(tokens, CharsText(), n_choices=3, seed=1) == items               # the same from a seed


class Block:
    block_size = 64


def likes(letter):
    """A stand-in model for which every next token is `letter` with probability 1/2, any other 1/510."""
    def model(x, at=None):
        logits = torch.zeros(x.shape[0], x.shape[1], 256)
        logits[..., ord(letter)] = math.log(255 / 1)
        return (logits if at is None else logits[at]), None
    model.config = Block()
    return model


def test_skill_accuracy_picks_the_ending_with_the_highest_mean_log_likelihood():
    items = [("Story.", ["xxxx", "abcd", "xa"], 0),       # the right one is all x: the model's favourite
             ("Story.", ["xb", "ab", "bb"], 0),           # half x beats none
             ("Story.", ["ab", "xxx", "b"], 0)]           # all x, but it is not the right one
    assert skill_accuracy(likes("x"), CharsText(), items, "cpu", batch_size=2) == 2 / 3
