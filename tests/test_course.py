"""docs/COURSE.md, exercise 11: a recipe extension a student writes, recipes.RowBudget (a row may be
trained by at most N facts of the stream; N = 1 is --fresh-rows). The check runs on the student's
class once it is there; on the solution kept here, and on a wrong one it must fail, always."""

import os

import pytest
import torch

import recipes
from checkpoint import checkpoint_corpus, load_checkpoint
from conftest import Tables
from facts import Batch
from finetune import FinetuneConfig, resolve, run_stream
from recipes import Extension, FreshRows, Recipe
from sparse import RowOptimizer, memory_tables, sparse_step


class Solution(Extension):
    """A row may be trained by at most n facts of the stream: after each fact, every row it trained
    counts one more fact; a row at n is blocked."""

    def __init__(self, n):
        self.n = n

    def start(self, tables):
        self.facts = [torch.zeros(w.shape[0], dtype=torch.long) for w, _ in tables]   # facts that trained each row
        self.this_fact = [torch.zeros(w.shape[0], dtype=torch.bool) for w, _ in tables]

    def blocked(self, i):
        return self.facts[i] >= self.n

    def trained(self, i, rows):
        self.this_fact[i][rows] = True

    def after_fact(self, model, batch):
        for facts, mine in zip(self.facts, self.this_fact):
            facts += mine
            mine.zero_()


class CountsSteps(Solution):
    """A wrong one: it counts the steps that trained a row, not the facts."""

    def trained(self, i, rows):
        self.facts[i][rows] += 1


def check_row_budget(RowBudget, trained):
    """RowBudget(n) behaves as the exercise asks, on hand-made reads and on the tiny model."""
    # three facts of two steps each on a stand-in table of 6 rows, every one reading rows 0-3
    reads = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 3]).view(1, 10, 1, 1)       # tf 0.4, 0.3, 0.2, 0.1
    model = Tables([reads], 6)
    tables = memory_tables(model)
    budget = RowBudget(2)
    recipe = Recipe([budget])
    recipe.start(tables)
    opt, per_fact = RowOptimizer(tables[0][0], "sgd", 1.0), []
    for fact in range(3):
        before = tables[0][0].detach().clone()
        for step in range(2):
            sparse_step(model, Batch(None, None, torch.ones(1, 10, dtype=torch.bool), None), 2, tables, [opt],
                        [torch.ones(6, dtype=torch.double)], recipe)
        recipe.after_fact(model, None)
        per_fact.append((tables[0][0][:, 0] != before[:, 0]).nonzero().flatten().tolist())
    assert per_fact == [[0, 1], [0, 1], [2, 3]], per_fact     # rows 0 and 1 trained by two facts: spent
    # N = 1 is --fresh-rows, weight for weight, on the tiny model
    model, enc, ckpt = load_checkpoint(os.path.join(trained[0].out_dir, "ckpt.pt"))
    facts = [{"paraphrases": f["statements"], "questions": f["questions"][:-1], "heldout_question": None,
              "answer": f["answer"]} for f in checkpoint_corpus(ckpt)[1]["new"][:3]]
    cfg = resolve(FinetuneConfig(lr=5.0, top_t=8, ranking="tf", steps_per_fact=2), model)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    weights = []
    for extension in (FreshRows(), RowBudget(1)):
        model.load_state_dict(base)
        run_stream(cfg, model, enc, facts, None, Recipe([extension]), quiet=True)
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in base)


def test_the_check_passes_the_solution_and_fails_a_wrong_one(trained):
    check_row_budget(Solution, trained)
    with pytest.raises(AssertionError):
        check_row_budget(CountsSteps, trained)


def test_exercise_11_your_row_budget(trained):
    if not hasattr(recipes, "RowBudget"):
        pytest.skip("exercise 11 (docs/COURSE.md): write recipes.RowBudget, then this test checks it")
    check_row_budget(recipes.RowBudget, trained)
