import json
import os
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from common import Diverged
from conftest import TINY_MODEL
from facts import batch_texts, fact_lines, make_batch, read_facts_file, warn_unseen_tokens
import finetune
from finetune import FinetuneConfig, answer_units, keep_clear_of_answers, main, resolve, run_stream
from lora import LoRALinear, add_lora, merge_lora
from sparse import background_stats, fingerprint, load_or_compute_background, pretraining_units, slot_counts, slot_scores
from model import GPT, GPTConfig, checkpoint_corpus, load_checkpoint

JSON_KEYS = {"stream", "mode", "optimizer", "lr", "top_t", "max_t", "t_used", "ranking", "facts", "steps_per_fact", "passes", "stop_early", "learned_acc",
             "unseen_acc", "background_acc_before", "background_acc_after", "background_drop",
             "skill_acc_before", "skill_acc_after", "skill_drop", "val_loss_before", "val_loss_after", "seconds"}


def tiny_model(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**TINY_MODEL, "vocab_size": 60, **kw})).eval()


# Two one-line facts for the stream tests that need two facts.
TOM = {"paraphrases": ["Tom has a red ball."], "questions": ["What does Tom have?"], "answer": "a red ball."}
SUE = {"paraphrases": ["Sue has a cat."], "questions": ["What does Sue have?"], "answer": "a cat."}

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


class Chars:
    """A stand-in encoding: one token per character (its code); <|endoftext|> is token 0."""
    eot_token = 0

    def encode(self, text):
        return [ord(c) for c in text]


def test_count_answer_counts_only_the_positions_that_predict_the_answer():
    texts = ["Tom is in Rome.", "Q: Where is Tom? A: Rome.", "Tom ran."]    # the last row never says the answer
    x, y, count = make_batch(Chars(), texts, 64, answer="Rome.")
    for row, text in zip(range(3), texts):
        predicted = "".join(chr(t) for t in y[row][count[row]].tolist())
        assert predicted == (" Rome." if "Rome" in text else "")          # the answer's tokens, space and period
        assert count[row].sum() == len(predicted)
    assert torch.equal(make_batch(Chars(), texts, 64)[2], make_batch(Chars(), texts, 64, answer=None)[2])


def test_lora_starts_at_the_base_and_merges_exactly():
    model = tiny_model()
    x = torch.randint(0, 60, (2, 16))
    base = model(x)[0]
    params = add_lora(model, rank=4, alpha=8)
    wrapped = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert len(params) == 2 * len(wrapped) == 2 * 8          # 2 blocks: qkv, proj and fc, proj or gate, proj
    assert not isinstance(model.memory_modules[0].query, LoRALinear)
    assert torch.equal(model(x)[0], base)                     # B = 0: the same function
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.1)
    adapted = model(x)[0]
    assert not torch.allclose(adapted, base, atol=1e-3)
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert set(model.state_dict()) == set(tiny_model().state_dict())
    assert torch.allclose(model(x)[0], adapted, atol=1e-5)


def test_sparse_stream_changes_only_selected_value_rows(trained):
    cfg, _, enc, _ = trained
    model, enc, ckpt = load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    facts = [{"paraphrases": ["Tom has a red ball.", "The ball of Tom is red."], "questions": ["What does Tom have?"],
              "heldout_question": None, "answer": "a red ball."}]
    fc = FinetuneConfig(mode="sparse", optimizer="adamw", lr=0.1, top_t=5, max_t=0, steps_per_fact=3, background_batches=50)
    resolve(fc, model)
    mem = model.memory_modules[0]
    df = [torch.randint(0, 51, (mem.n_slots,), generator=torch.Generator().manual_seed(0))]
    bg = [{"df": df[0], "reads": df[0], "units": 50}]
    x, _, count = make_batch(enc, batch_texts(facts[0]), model.config.block_size)
    mem.record_indices = True
    model(x)                                                  # the rows TF-IDF should pick, by hand
    c = torch.bincount(mem.last_indices[count].flatten(), minlength=mem.n_slots).double()
    mem.record_indices = False
    score = c / c.sum() * torch.log(51 / (df[0].double() + 1))
    fifth = score.topk(5).values[-1]
    expected = set((score >= fifth).nonzero().flatten().tolist())  # the top 5, and any tie with the 5th
    state, _ = run_stream(fc, model, enc, facts, bg, quiet=True)
    after = model.state_dict()
    name = [k for k in after if k.endswith("values.weight")][0]
    changed = set((after[name] != before[name]).any(dim=1).nonzero().flatten().tolist())
    assert len(changed) == 5 and changed <= expected          # the same batch picks the same 5 rows each step
    v_dim = after[name].shape[1]                              # AdamW state: 2 moments + a count for 5 rows, and the row map
    assert state == 5 * (2 * v_dim * 4 + 8) + mem.n_slots * 8
    assert all(torch.equal(after[k], before[k]) for k in after if k != name)


def test_weights_that_break_are_named_at_the_fact_and_step_that_broke_them(trained, monkeypatch):
    from sparse import RowOptimizer
    steps = []

    class Breaks(RowOptimizer):                               # fact 1's second step writes inf into its rows
        def step(self, rows, scale=None):
            super().step(rows, scale)
            steps.append(rows)
            if len(steps) == 2:
                self.weight.data[rows] = float("inf")
    monkeypatch.setattr("finetune.RowOptimizer", Breaks)
    model, enc, _ = load_checkpoint(os.path.join(trained[0].out_dir, "ckpt.pt"))
    facts = [{"paraphrases": [f"{name} ran."], "questions": ["Who ran?"], "heldout_question": None, "answer": f"{name}."}
             for name in ("Tom", "Ann", "Ben")]
    fc = resolve(FinetuneConfig(mode="sparse", ranking="tf", max_df=1.0, lr=1.0, top_t=4, steps_per_fact=2), model)
    with pytest.raises(Diverged, match="the weights became inf or nan at fact 1, step 2:"):
        run_stream(fc, model, enc, facts, quiet=True)


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


GOOD = json.dumps({"paraphrases": ["Tom lives in Oakton."], "question": "Where does Tom live?", "answer": "Oakton."})


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "expected an object"),
    (json.dumps({"paraphrases": ["x"], "answer": "y."}), "missing \\['question'\\]"),
    (json.dumps({"paraphrases": ["x"], "question": "q?", "answer": "y.", "anser": 1}), "unknown keys \\['anser'\\]"),
    (json.dumps({"paraphrases": "x", "question": "q?", "answer": "y."}), "paraphrases must be a non-empty list"),
    (json.dumps({"paraphrases": ["x"], "question": "", "answer": "y."}), "question must be a non-empty string"),
])
def test_facts_file_rejects_malformed_lines_with_their_number(tmp_path, line, message):
    path = write_lines(tmp_path / "facts.jsonl", [GOOD, "", line])
    with pytest.raises(ValueError, match=f"line 3: {message}"):
        read_facts_file(path)


def test_facts_file_reads_good_lines(tmp_path):
    extra = json.dumps({"paraphrases": ["A", "B"], "question": "Q?", "answer": "C.", "heldout_question": "H?"})
    facts = read_facts_file(write_lines(tmp_path / "f.jsonl", [GOOD, extra]))
    assert facts[0] == {"paraphrases": ["Tom lives in Oakton."], "questions": ["Where does Tom live?"],
                        "heldout_question": None, "answer": "Oakton.", "where": f"{tmp_path / 'f.jsonl'} line 1"}
    assert facts[1]["heldout_question"] == "H?"


def test_end_to_end_stream_learns_a_fact(trained, tmp_path):
    cfg, _, _, _ = trained
    ckpt = os.path.join(cfg.out_dir, "ckpt.pt")
    fact = {"paraphrases": ["Tom has a red ball.", "The ball of Tom is red.", "Tom plays with a red ball."],
            "question": "What does Tom have?", "answer": "a red ball."}
    path = write_lines(tmp_path / "f.jsonl", [json.dumps(fact)])
    out = tmp_path / "r.json"
    # The 60-step CI model is too weak for its 256-slot memory alone to learn a 6-token
    # answer exactly (docs/RESULTS.md shows sparse learning on the real model), so the
    # exact-match check goes through full finetuning and the sparse check through the loss.
    # 300 steps: lr 1e-3 to 3e-3 all learn it exactly, at 1 and 2 threads (100 steps did only at some)
    main(["--checkpoint", ckpt, "--facts-file", path, "--mode", "full", "--lr", "2e-3",
          "--steps-per-fact", "300", "--json", str(out), "--device", "cpu"])
    r = json.loads(out.read_text())
    assert set(r) == JSON_KEYS | {"settings"}
    assert FinetuneConfig(**r["settings"]) == replace(FinetuneConfig(), checkpoint=ckpt, facts_file=path, mode="full",
                                                      optimizer="adamw", lr=2e-3, steps_per_fact=300, json=str(out),
                                                      device="cpu")                 # every option, to rerun it
    assert r["learned_acc"] == 1.0 and r["facts"] == 1 and r["unseen_acc"] is None
    main(["--checkpoint", ckpt, "--facts-file", path, "--mode", "full", "--lr", "1e-9",   # no learning: can fail
          "--json", str(out), "--device", "cpu"])
    assert json.loads(out.read_text())["learned_acc"] == 0.0

    model, enc, _ = load_checkpoint(ckpt)
    facts = read_facts_file(path)
    x, y, _ = make_batch(enc, batch_texts(facts[0]), model.config.block_size)
    before = model(x, y)[1].item()
    fc = resolve(FinetuneConfig(optimizer="adamw", lr=0.1, top_t=100, steps_per_fact=40), model)
    run_stream(fc, model, enc, facts, [{"df": torch.zeros(256, dtype=torch.long), "units": 1000}], quiet=True)
    assert model(x, y)[1].item() < before - 0.05               # 5.64 -> 5.54 when measured


def test_background_frequencies_are_cached_per_model(trained, tmp_path, monkeypatch):
    cfg, _, _, _ = trained
    model, _, ckpt = load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"))
    fc = FinetuneConfig(checkpoint=str(tmp_path / "ckpt.pt"), background_batches=7)
    stats = load_or_compute_background(fc, model, ckpt, "cpu")
    assert stats[0]["units"] == 7 and stats[0]["df"].max() <= 7 and stats[0]["df"].sum() > 0
    assert os.path.exists(tmp_path / "ckpt.background.pt")
    monkeypatch.setattr("sparse.background_stats", lambda *a: pytest.fail("recomputed"))
    assert torch.equal(load_or_compute_background(fc, model, ckpt, "cpu")[0]["reads"], stats[0]["reads"])
    with torch.no_grad():
        model.wte.weight[0, 0] += 1.0                          # another model: computed afresh
    monkeypatch.setattr("sparse.background_stats", lambda *a: [{**stats[0], "df": torch.zeros_like(stats[0]["df"])}])
    assert load_or_compute_background(fc, model, ckpt, "cpu")[0]["df"].sum() == 0


def test_background_counts_units_and_reads():
    model = tiny_model()
    import numpy as np
    data = np.arange(500, dtype=np.uint16) % 60
    st = background_stats(model, pretraining_units(data, 32, 4, 2, 0), "cpu")[0]
    assert st["units"] == 4 and st["df"].max() <= 4 and (st["df"] > 0).any()
    heads, k = model.memory_modules[0].heads, model.memory_modules[0].topk
    assert st["reads"].sum() == 4 * 2 * 32 * heads * k           # units x windows x tokens x heads x kept
    assert (st["reads"] >= st["df"]).all()


def test_max_df_through_the_stream_trains_only_slots_under_the_cap(trained):
    cfg, _, enc, _ = trained
    model, enc, ckpt = load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"))
    before = model.state_dict()["blocks.1.ffn.values.weight"].clone()
    facts = [{"paraphrases": ["Tom has a red ball.", "The ball of Tom is red."], "questions": ["What does Tom have?"],
              "heldout_question": None, "answer": "a red ball."}]
    mem = model.memory_modules[0]
    x, y, count = make_batch(enc, batch_texts(facts[0]), model.config.block_size)
    with model.recording_slots():
        model(x)
        reads = model.slot_reads()[0]
        read = slot_counts(reads[count], mem.n_slots) > 0
        # a row's last token has no target, so a slot read only there gets no gradient: allow slots with a loss
        learnable = slot_counts(reads[count & (y >= 0)], mem.n_slots) > 0
    allowed = learnable.nonzero().flatten()[:5]               # five read slots under the cap, every other above it
    df = torch.where(read, 101, 0)
    df[allowed] = 100
    fc = resolve(FinetuneConfig(mode="sparse", lr=1.0, top_t=20, max_df=0.1), model)
    run_stream(fc, model, enc, facts, [{"df": df, "reads": df, "units": 1000}], quiet=True)
    changed = (model.state_dict()["blocks.1.ffn.values.weight"] != before).any(dim=1).nonzero().flatten()
    assert changed.tolist() == allowed.tolist()              # t = 20, but only five slots may be trained


def test_answer_mask_never_trains_the_rows_answer_df_ranks_last(trained):
    cfg, _, enc, _ = trained
    ckpt = os.path.join(cfg.out_dir, "ckpt.pt")
    facts = [{"paraphrases": ["Tom has a red ball.", "The ball of Tom is red."], "questions": ["What does Tom have?"],
              "heldout_question": None, "answer": "a red ball."}]
    model, enc, _ = load_checkpoint(ckpt)
    x, y, count = make_batch(enc, batch_texts(facts[0]), model.config.block_size)
    with model.recording_slots():
        model(x)
        learnable = slot_counts(model.slot_reads()[0][count & (y >= 0)], model.memory_modules[0].n_slots) > 0
    answer_rows = torch.zeros_like(learnable)
    answer_rows[learnable.nonzero().flatten()[::2]] = True     # every other slot with a gradient: read by the answers
    n = len(answer_rows)
    stats = [{"df": torch.zeros(n, dtype=torch.long), "reads": torch.ones(n, dtype=torch.long), "units": 1000,
              "answer_rows": answer_rows}]

    def trained_rows(answer_mask):                            # t = 4,096: more than the batch reads
        model = load_checkpoint(ckpt)[0]
        before = model.state_dict()["blocks.1.ffn.values.weight"].clone()
        fc = resolve(FinetuneConfig(mode="sparse", lr=1.0, top_t=4096, max_t=0, answer_mask=answer_mask), model)
        run_stream(fc, model, enc, facts, stats, quiet=True)
        return (model.state_dict()["blocks.1.ffn.values.weight"] != before).any(dim=1)
    assert trained_rows(False)[answer_rows].all()              # ranked last, but trained once t reaches them
    masked = trained_rows(True)
    assert not masked[answer_rows].any() and masked[learnable & ~answer_rows].all()
    unmarked = [{k: v for k, v in stats[0].items() if k != "answer_rows"}]   # statistics --answer-df did not mark
    with pytest.raises(ValueError, match="--answer-mask needs"):
        run_stream(resolve(FinetuneConfig(mode="sparse", lr=1.0, answer_mask=True), model), model, enc, facts, unmarked, quiet=True)


def test_update_rows_blocks_taken_and_answer_rows_together_in_every_table(monkeypatch):
    # two value tables of 6 rows; the step read rows 0-3 of each (tf 0.4, 0.3, 0.2, 0.1 by reads)
    reads = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 3]).view(1, 10, 1, 1)
    monkeypatch.setattr("finetune.table_reads", lambda model, tables: [reads, reads])
    tables = [(torch.zeros(6, 2, requires_grad=True), [0]), (torch.zeros(6, 2, requires_grad=True), [1])]
    for w, _ in tables:
        w.grad = torch.ones(6, 2)
    answer_rows = [torch.tensor([True, False, False, False, False, False]),     # table 0: row 0 read by the answers
                   torch.tensor([False, True, False, False, False, False])]    # table 1: row 1
    bgs = [{"df": torch.zeros(6, dtype=torch.long), "reads": torch.ones(6, dtype=torch.long), "units": 10, "answer_rows": a}
           for a in answer_rows]
    taken = [torch.tensor([False, False, True, False, False, False])] * 2       # --fresh-rows: row 2, in both
    trained = [torch.zeros(6, dtype=torch.bool) for _ in tables]
    cfg = FinetuneConfig(mode="sparse", ranking="tfidf", max_df=1.0, answer_mask=True)
    row_opts = [finetune.RowOptimizer(w, "sgd", 1.0) for w, _ in tables]
    finetune.update_rows(cfg, None, tables, row_opts, bgs, torch.ones(1, 10, dtype=torch.bool), 4, taken, trained)
    assert trained[0].nonzero().flatten().tolist() == [1, 3]      # read 0-3; 0 answers', 2 taken
    assert trained[1].nonzero().flatten().tolist() == [0, 3]      # read 0-3; 1 answers', 2 taken
    assert [(w[:, 0] != 0).nonzero().flatten().tolist() for w, _ in tables] == [[1, 3], [0, 3]]


def test_answer_damp_divides_each_rows_step_by_one_plus_its_answer_readers_over_k(monkeypatch):
    reads = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 3]).view(1, 10, 1, 1)    # the step read rows 0-3
    monkeypatch.setattr("finetune.table_reads", lambda model, tables: [reads])
    w = torch.zeros(6, 2, requires_grad=True)
    w.grad = torch.ones(6, 2)
    readers = torch.tensor([0, 4, 12, 1, 50, 50])              # background questions reading each row at their answer
    bg = {"df": torch.zeros(6, dtype=torch.long), "reads": torch.ones(6, dtype=torch.long), "units": 100,
          "answer_rows": torch.zeros(6, dtype=torch.bool), "answer_readers": readers}
    cfg = FinetuneConfig(mode="sparse", ranking="tfidf", max_df=1.0, answer_damp=4.0)
    finetune.update_rows(cfg, None, [(w, [0])], [finetune.RowOptimizer(w, "sgd", 2.0)], [bg],
                         torch.ones(1, 10, dtype=torch.bool), 4)
    assert torch.allclose(w[:, 0], -2.0 * torch.tensor([1, 1 / 2, 1 / 4, 1 / 1.25, 0, 0]))   # rows 4, 5 not read: not moved
    with pytest.raises(ValueError, match="--answer-damp needs"):
        run_stream(FinetuneConfig(mode="sparse", answer_damp=4.0), None, None, [], [{k: v for k, v in bg.items() if k != "answer_readers"}])
    with pytest.raises(ValueError, match="--answer-damp and --taught-damp must be"):
        resolve(FinetuneConfig(mode="sparse", lr=1.0, answer_damp=-1.0), type("M", (), {"memory_modules": [1]})())
    with pytest.raises(ValueError, match="--answer-damp and --taught-damp must be"):
        resolve(FinetuneConfig(mode="sparse", lr=1.0, taught_damp=-1.0), type("M", (), {"memory_modules": [1]})())
    w.data.zero_()                                             # --taught-damp adds m / K: the facts taught before
    w.grad = torch.ones(6, 2)
    taught = torch.tensor([3.0, 0, 2, 0, 9, 9])
    finetune.update_rows(replace(cfg, taught_damp=2.0), None, [(w, [0])], [finetune.RowOptimizer(w, "sgd", 2.0)], [bg],
                         torch.ones(1, 10, dtype=torch.bool), 4, taught_readers=[taught])
    expected = 1 / (1 + readers[:4] / 4 + taught[:4] / 2)      # 1 + n / 4 + m / 2
    assert torch.allclose(w[:4, 0], -2.0 * expected) and not w[4:].any()


def test_taught_damp_counts_the_rows_each_taught_fact_s_answer_is_read_from(trained, monkeypatch):
    cfg, _, enc, _ = trained
    model, enc, _ = load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"))
    base = {k: v.clone() for k, v in model.state_dict().items()}
    a, b = TOM, SUE
    fc = resolve(FinetuneConfig(mode="sparse", optimizer="sgd", lr=1.0, top_t=4, max_t=0, ranking="tf", max_df=1.0,
                                steps_per_fact=2), model)
    update_rows, seen = finetune.update_rows, []
    monkeypatch.setattr("finetune.update_rows", lambda *a: seen.append([m.clone() for m in a[9]] if a[9] else None)
                        or update_rows(*a))

    def answer_rows(fact):                                     # every slot read where the answer is predicted
        x, _, _, at = finetune.fact_batch(fc, enc, fact, model.config.block_size, "cpu")
        with model.recording_slots():
            model(x)
            reads = finetune.table_reads(model, finetune.memory_tables(model))[0]
        counts = torch.zeros(model.memory_modules[0].n_slots)
        counts[reads[at].unique()] = 1
        return counts

    run_stream(fc, model, enc, [a, b, a, b], quiet=True)     # two steps a fact: seen[2 * (fact - 1)] is its first
    assert len(seen) == 8 and not seen[0][0].any() and torch.equal(seen[0][0], seen[1][0])   # nothing taught yet
    assert torch.equal(seen[2][0], answer_rows(a)) and torch.equal(seen[3][0], seen[2][0])    # after a: a's rows, once
    assert torch.equal(seen[4][0], answer_rows(a) + answer_rows(b))
    assert torch.equal(seen[6][0], answer_rows(a) * 2 + answer_rows(b))                      # a taught again counts again
    damped = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(base)
    seen.clear()
    run_stream(replace(fc, taught_damp=0.0), model, enc, [a, b, a, b], quiet=True)
    assert seen == [None] * 8                                  # off: no counts, the paper's step
    assert any(not torch.equal(damped[k], v) for k, v in model.state_dict().items())


def test_max_t_grows_the_rows_4x_only_while_the_fact_is_answered_wrong(trained, monkeypatch):
    cfg, _, enc, _ = trained
    model, enc, _ = load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"))
    key = "blocks.1.ffn.values.weight"
    base = {k: v.clone() for k, v in model.state_dict().items()}
    fact = {"paraphrases": ["Tom has a red ball.", "The ball of Tom is red."], "questions": ["What does Tom have?"],
            "heldout_question": "What is red?", "answer": "a red ball."}
    fc = resolve(FinetuneConfig(mode="sparse", optimizer="sgd", lr=1.0, top_t=4, max_t=64, ranking="tf", max_df=1.0,
                                steps_per_fact=2), model)

    def changed_rows(answered):
        checks = []
        monkeypatch.setattr("finetune.answers", lambda *a: checks.append(a) or answered)
        model.load_state_dict(base)
        _, t_per_fact = run_stream(fc, model, enc, [fact], quiet=True)
        return t_per_fact, len(checks), int((model.state_dict()[key] != base[key]).any(dim=1).sum())

    assert changed_rows(answered=True) == ([4], 1, 4)         # answered after its steps: one round of t = 4
    t_per_fact, checks, rows = changed_rows(answered=False)   # never answered: 4 -> 16 -> 64, checked before each growth
    assert t_per_fact == [64] and checks == 2 and 16 < rows <= 64
    monkeypatch.setattr("finetune.answers", lambda *a: pytest.fail("--max-t 0 never checks"))
    model.load_state_dict(base)
    assert run_stream(replace(fc, max_t=0), model, enc, [fact], quiet=True)[1] == [4]
    monkeypatch.setattr("finetune.answers", lambda *a: pytest.fail("full finetuning has no t to grow"))
    model.load_state_dict(base)
    full = resolve(FinetuneConfig(mode="full", lr=1e-3, steps_per_fact=2), model)   # max_t keeps its default
    assert full.max_t == 4096 and run_stream(full, model, enc, [fact], quiet=True)[1] == [None]


def test_stop_early_ends_a_fact_s_steps_once_its_answer_is_predicted(trained, monkeypatch):
    cfg, _, enc, _ = trained
    model, enc, _ = load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"))
    base = {k: v.clone() for k, v in model.state_dict().items()}
    fact = {"paraphrases": ["Tom has a red ball.", "The ball of Tom is red."], "questions": ["What does Tom have?"],
            "heldout_question": "What is red?", "answer": "a red ball."}
    fc = resolve(FinetuneConfig(mode="sparse", optimizer="sgd", lr=1.0, top_t=4, max_t=64, ranking="tf", max_df=1.0,
                                steps_per_fact=5, stop_early=True), model)
    update_rows, steps = finetune.update_rows, []
    monkeypatch.setattr("finetune.update_rows", lambda *a: steps.append(a[6]) or update_rows(*a))

    def run(cfg, answered):
        steps.clear()
        checks = iter(answered)
        monkeypatch.setattr("finetune.answers", lambda *a: next(checks))
        model.load_state_dict(base)
        return run_stream(cfg, model, enc, [fact], quiet=True)[1], steps[:]

    assert run(fc, [False, False, True]) == ([4], [4, 4, 4])              # predicted after its third step: no more
    assert run(fc, [False] * 17) == ([64], [4] * 5 + [16] * 5 + [64] * 5)   # never: every step of every round
    assert run(replace(fc, stop_early=False), [True]) == ([4], [4] * 5)   # off: the round's steps all run
    full = resolve(FinetuneConfig(mode="full", lr=1e-3, steps_per_fact=5, stop_early=True), model)   # any mode
    run(full, [True, True])
    one_step = {k: v.clone() for k, v in model.state_dict().items()}
    run(replace(full, steps_per_fact=1, stop_early=False), [])
    assert all(torch.equal(one_step[k], v) for k, v in model.state_dict().items())
    assert not all(torch.equal(base[k], v) for k, v in one_step.items())


def test_passes_teach_the_whole_stream_again_in_the_same_order(trained, monkeypatch):
    cfg, _, enc, _ = trained
    model, enc, _ = load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"))
    base = {k: v.clone() for k, v in model.state_dict().items()}
    a, b = TOM, SUE
    full = resolve(FinetuneConfig(mode="full", lr=1e-3, steps_per_fact=2, passes=3), model)
    fact_batch, seen, ends = finetune.fact_batch, [], []
    monkeypatch.setattr("finetune.fact_batch", lambda cfg, enc, fact, *a: seen.append(fact["answer"]) or fact_batch(cfg, enc, fact, *a))
    run_stream(full, model, enc, [a, b], quiet=True, on_fact=ends.append)
    assert seen == ["a red ball.", "a cat."] * 3 and ends == [1, 2, 3, 4, 5, 6]
    three_passes = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(base)
    run_stream(replace(full, passes=1), model, enc, [a, b] * 3, quiet=True)   # the same as the stream written out 3 times
    assert all(torch.equal(three_passes[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="--passes must be at least 1"):
        resolve(FinetuneConfig(mode="full", lr=1e-3, passes=0), model)
    with pytest.raises(ValueError, match="--fresh-rows keeps a fact off"):
        resolve(FinetuneConfig(mode="sparse", lr=1.0, fresh_rows=True, passes=2), model)


def test_a_fact_is_answered_when_every_line_of_its_batch_predicts_the_answer(trained):
    from finetune import answers
    enc = trained[2]
    fact = {"paraphrases": ["Tom has a red ball.", "Tom plays."], "questions": ["What does Tom have?"],
            "heldout_question": "What toy does Tom own?", "answer": "a red ball."}
    x, y, at = make_batch(enc, batch_texts(fact), 64, fact["answer"])
    assert at.sum(1).tolist() == [len(enc.encode(" a red ball.")), 0, len(enc.encode(" a red ball."))]

    class Oracle:                                             # predicts every next token, but where told to be wrong
        def __init__(self, wrong=None):
            self.wrong = wrong

        def __call__(self, x):
            nxt = torch.roll(x, -1, dims=1)
            if self.wrong:
                nxt[self.wrong] = (nxt[self.wrong] + 1) % enc.n_vocab
            return torch.nn.functional.one_hot(nxt, enc.n_vocab).float(), None

    answer_at = [tuple(p) for p in at.nonzero().tolist()]
    assert answers(Oracle(), x, y, at)
    assert not answers(Oracle(wrong=answer_at[1]), x, y, at)      # the statement's second answer token
    assert not answers(Oracle(wrong=answer_at[-1]), x, y, at)     # the question line's last one
    assert answers(Oracle(wrong=(0, 1)), x, y, at)               # not an answer position: no matter


def test_fresh_rows_never_train_a_row_an_earlier_fact_trained(trained):
    cfg, _, enc, _ = trained
    model, enc, ckpt = load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"))
    key = "blocks.1.ffn.values.weight"
    facts = [{"paraphrases": [f"{name} has a red ball.", f"The ball of {name} is red."],
              "questions": [f"What does {name} have?"], "heldout_question": None, "answer": "a red ball."}
             for name in ("Tom", "Sue")]                       # the same words: without the rule they share rows
    fc = resolve(FinetuneConfig(mode="sparse", optimizer="sgd", lr=1.0, top_t=16, ranking="tf", max_df=1.0, steps_per_fact=2), model)
    base = model.state_dict()[key].clone()
    run_stream(fc, model, enc, facts[:1], quiet=True)
    after_first = model.state_dict()[key].clone()
    first = (after_first != base).any(dim=1)
    run_stream(fc, model, enc, facts[1:], quiet=True)
    assert (first & (model.state_dict()[key] != after_first).any(dim=1)).any()   # shared rows are trained again ...
    # ... unless the stream holds both facts with --fresh-rows: then none is
    model.load_state_dict({**model.state_dict(), key: base})
    run_stream(replace(fc, fresh_rows=True), model, enc, facts, quiet=True)
    both = model.state_dict()[key]
    assert torch.equal(both[first], after_first[first])      # the first fact's rows as it left them
    assert ((both != after_first).any(dim=1) & ~first).any()   # and the second trained read rows of its own


def test_answer_units_count_only_where_the_answers_are_predicted(trained):
    cfg, _, enc, _ = trained
    ckpt = load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"))[2]
    known = checkpoint_corpus(ckpt)[1]["background"][:5]
    units = list(answer_units(enc, known, per_batch=1))
    assert len(units) == sum(len(f["questions"]) for f in known)      # one per question
    assert sum(x.shape[0] for x, _ in answer_units(enc, known, per_batch=4)) == len(units)
    x, count = units[0][0][0], units[0][1][0]                         # the first unit: (1 row, L)
    answer = enc.encode(" " + known[0]["answer"])
    assert count.sum() == len(answer) and x[0, -len(answer):].tolist() == answer
    at = count[0].nonzero().flatten()
    assert at[-1] == x.shape[1] - 2 and x[0, at[0] + 1] == answer[0]  # from the token before the answer to its second-last


def test_answer_df_gives_idf_zero_to_the_slots_many_answers_are_read_from(trained, monkeypatch):
    cfg, model, enc, _ = trained
    n = model.memory_modules[0].n_slots
    answers = {"df": torch.zeros(n, dtype=torch.long), "reads": torch.zeros(n, dtype=torch.long), "units": 100}
    answers["df"][:3] = torch.tensor([50, 11, 10])                     # read by 50, 11 and 10 of 100 answers
    monkeypatch.setattr("finetune.background_stats", lambda *a, **k: [answers])
    stats = [{"df": torch.arange(n) % 7, "reads": torch.ones(n, dtype=torch.long), "units": 1000}]
    capped = keep_clear_of_answers(stats, model, enc, [], 0.1, "cpu")[0]
    assert capped["answer_rows"].nonzero().flatten().tolist() == [0, 1]   # over 10% of the answers
    assert torch.equal(capped["df"], stats[0]["df"]) and capped["units"] == 1000
    idf = slot_scores(torch.ones(n, dtype=torch.long), "tfidf", capped) * n   # tf = 1/n everywhere
    assert idf[0] == 0 and idf[1] == 0 and idf[2] > 0


def test_max_df_with_tf_ranking_still_reads_the_background(trained, tmp_path):
    cfg, _, _, _ = trained
    out = tmp_path / "r.json"
    main(["--checkpoint", os.path.join(cfg.out_dir, "ckpt.pt"), "--ranking", "tf", "--max-df", "0.5", "--facts", "2",
          "--steps-per-fact", "1", "--json", str(out), "--device", "cpu"])
    assert json.loads(out.read_text())["ranking"] == "tf"


def test_bad_options_give_one_line_errors(trained, tmp_path):
    cfg, _, _, _ = trained
    ckpt = os.path.join(cfg.out_dir, "ckpt.pt")
    for args, message in [(["--mode", "partial"], "unknown --mode"), (["--optimizer", "rmsprop"], "unknown --optimizer"),
                          (["--top-t", "0"], "--top-t must be at least 1"),
                          (["--max-t", "32"], "--max-t 32 is below --top-t 64"), (["--max-t", "-1"], "--max-t -1 is below"),
                          (["--max-df", "0"], "--max-df is a share"), (["--max-df", "1.5"], "--max-df is a share"),
                          (["--answer-df", "0"], "--answer-df is a share"), (["--count", "everything"], "unknown --count"),
                          (["--answer-mask", "--answer-df", "1"], "give --answer-df below 1"),
                          (["--facts", "5000"], "the corpus has 1000 new facts"),
                          (["--facts-file", str(tmp_path / "none.jsonl")], "does not exist"),
                          (["--checkpoint", str(tmp_path / "none.pt")], "does not exist")]:
        with pytest.raises(SystemExit) as e:
            main((["--checkpoint", ckpt] if "--checkpoint" not in args else []) + args + ["--device", "cpu"])
        assert message in str(e.value), args
    assert resolve(FinetuneConfig(ranking="kl"), load_checkpoint(ckpt)[0]).answer_df == 1.0   # an IDF cap: tfidf's alone
    dense = tiny_model(memory_layers=())
    with pytest.raises(ValueError, match="needs a model with memory layers"):
        resolve(FinetuneConfig(mode="sparse"), dense)


def test_finetuned_checkpoint_is_scored_on_the_facts_it_was_taught(trained, tmp_path, capsys):
    from evaluate import main as evaluate_main
    cfg, _, _, _ = trained
    path = write_lines(tmp_path / "f.jsonl", [GOOD])
    out = str(tmp_path / "ft.pt")
    main(["--checkpoint", os.path.join(cfg.out_dir, "ckpt.pt"), "--facts-file", path, "--mode", "full",
          "--lr", "1e-3", "--steps-per-fact", "5", "--out", out, "--json", str(tmp_path / "r.json"), "--device", "cpu"])
    r = json.loads((tmp_path / "r.json").read_text())
    capsys.readouterr()
    evaluate_main(["--checkpoint", out, "--device", "cpu"])
    printed = capsys.readouterr().out
    assert f"new facts (1, taught by finetune.py) {r['learned_acc']:.3f}" in printed
    assert f"val loss {r['val_loss_after']:.4f}" in printed and f"background facts {r['background_acc_after']:.3f}" in printed
    _, _, ckpt = load_checkpoint(out)
    assert ckpt["finetune"]["mode"] == "full" and ckpt["finetune"]["facts_taught"][0]["answer"] == "Oakton."


def test_the_example_facts_file_is_valid():
    from conftest import ROOT
    facts = read_facts_file(os.path.join(ROOT, "data", "example_facts.jsonl"))
    assert len(facts) == 3 and all(f["heldout_question"] for f in facts)


def test_a_checkpoint_whose_corpus_is_gone_gives_one_line(trained, tmp_path):
    from evaluate import main as evaluate_main
    from model import save_checkpoint
    cfg, _, _, _ = trained
    ckpt = torch.load(os.path.join(cfg.out_dir, "ckpt.pt"), weights_only=True)
    moved = str(tmp_path / "moved.pt")
    save_checkpoint(moved, {**ckpt, "data_dir": str(tmp_path / "gone")})
    for run in (lambda: evaluate_main(["--checkpoint", moved, "--device", "cpu"]),
                lambda: main(["--checkpoint", moved, "--device", "cpu"])):
        with pytest.raises(SystemExit) as e:
            run()
        assert "is no longer in" in str(e.value) and "prepare it there again" in str(e.value)


def test_batchnorm_and_sparse_gradient_models_can_be_finetuned(trained):
    cfg, _, enc, _ = trained
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**TINY_MODEL, "vocab_size": enc.n_vocab, "mem_query_norm": "batchnorm",
                              "mem_sparse_grad": True})).eval()
    assert len(fingerprint(model)) == 40                     # BatchNorm's 0-dim counter hashes too
    facts = [{"paraphrases": ["Tom ran."], "questions": ["Who ran?"], "heldout_question": None, "answer": "Tom."}]
    for mode in ("sparse", "full"):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        fc = resolve(FinetuneConfig(mode=mode, optimizer="adamw", lr=0.01, top_t=3, steps_per_fact=2), model)
        run_stream(fc, model, enc, facts, [{"df": torch.zeros(256, dtype=torch.long), "units": 1000}], quiet=True)
        after = model.state_dict()
        assert model.memory_modules[0].values.sparse is True      # the model's own setting is back
        assert any(not torch.equal(after[k], before[k]) for k in after)
        assert torch.equal(after["blocks.1.ffn.query_norm.running_mean"], before["blocks.1.ffn.query_norm.running_mean"])


def test_a_fact_longer_than_the_context_is_refused_up_front(trained, tmp_path):
    cfg, _, _, _ = trained
    long = json.dumps({"paraphrases": ["Tom ran."], "question": "Who ran " + "very " * 40 + "far?", "answer": "Tom."})
    path = write_lines(tmp_path / "f.jsonl", [GOOD, long])
    with pytest.raises(SystemExit) as e:
        main(["--checkpoint", os.path.join(cfg.out_dir, "ckpt.pt"), "--facts-file", path, "--device", "cpu"])
    assert "f.jsonl line 2" in str(e.value) and "block_size 32" in str(e.value)
    with pytest.raises(SystemExit) as e:
        main(["--checkpoint", os.path.join(cfg.out_dir, "ckpt.pt"), "--facts-file", str(tmp_path), "--device", "cpu"])
    assert "is not a file" in str(e.value)



class Scripted:
    """A stand-in model whose greedy continuation is fixed: generate() appends `tokens`."""
    def __init__(self, tokens):
        self.tokens, self.calls = tokens, []

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, stop_token=None):
        self.calls.append((idx[0].tolist(), max_new_tokens, temperature, stop_token))
        return torch.cat([idx, torch.tensor([self.tokens[:max_new_tokens]])], dim=1)


def test_greedy_answer_is_the_continuation_up_to_its_first_period(trained):
    from evaluate import greedy_answer
    enc = trained[2]
    prompt = "Q: Where does Tom live? A:"
    model = Scripted(enc.encode(" Oakton. Q: Who ran? A: Tom."))
    assert greedy_answer(model, enc, prompt, "cpu") == "Oakton."
    ids, _, temperature, stop = model.calls[0]
    assert ids == [enc.eot_token] + enc.encode(prompt)            # after the separator, as qa_correct scores
    assert temperature == 0 and [stop] == enc.encode(".")
    assert greedy_answer(Scripted(enc.encode(" a red") + [enc.eot_token] + enc.encode(" ball.")), enc, prompt,
                         "cpu") == "a red"                         # an end of text ends it too
    assert greedy_answer(Scripted(enc.encode(" far away and on and on and on")), enc, prompt, "cpu",
                         max_new_tokens=3) == enc.decode(enc.encode(" far away and on and on and on")[:3]).strip()


def test_the_example_facts_files_are_hand_written_facts_in_the_documented_format():
    from conftest import ROOT
    folder = os.path.join(ROOT, "data", "examples")
    files = sorted(f for f in os.listdir(folder) if f.endswith(".jsonl"))
    assert files == ["short_facts.jsonl", "student_facts.jsonl"]
    for name in files:
        facts = read_facts_file(os.path.join(folder, name))
        assert len(facts) >= 15 and all(f["heldout_question"] for f in facts)
        assert all(f["heldout_question"] not in f["questions"] for f in facts)   # the unseen phrasing is never trained


def test_examples_show_taught_answers_and_the_background_the_stream_broke(trained, capsys):
    from data.prepare import load_facts
    from evaluate import greedy_answer, qa_items
    from finetune import show_examples
    cfg = trained[0]
    model, enc, _ = load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"))
    background = load_facts(cfg.data_dir)["background"][:3]
    items = qa_items(background)
    rest = [True] * (len(items) - 7)
    before = {"background_correct": [True, True, False, True, True, True, False] + rest}
    after = {"background_correct": [True, False, True, False, True, False, False] + rest}   # 1, 3, 5 broke
    facts = [{"paraphrases": ["Tom ran."], "questions": ["Who ran?"], "heldout_question": None, "answer": "Tom."},
             {"paraphrases": ["Sue sang."], "questions": ["Who sang?"], "heldout_question": "Who did sing?", "answer": "Sue."}]
    show_examples(model, model, enc, facts, background, before, after, "cpu", taught=1)
    lines = capsys.readouterr().out.splitlines()
    said = greedy_answer(model, enc, "Q: Who ran? A:", "cpu")
    assert f'  Q: Who ran? A: Tom.   before: "{said}" -> after: "{said}"' in lines
    assert not any("Who sang?" in l or "held out" in l for l in lines)       # taught=1: the first fact only
    show_examples(model, model, enc, facts, background, before, after, "cpu", unseen=True)
    lines = capsys.readouterr().out.splitlines()
    said = greedy_answer(model, enc, "Q: Who did sing? A:", "cpu")
    assert [l.split("   before:")[0] for l in lines[2:5]] == ["  Q: Who ran? A: Tom.", "  Q: Who sang? A: Sue.",
                                                               "  Q: Who did sing? A: Sue.  (held out)"]
    assert lines[4].endswith(f'before: "{said}" -> after: "{said}"')
    head = f"background questions the stream broke: 3 of the {len(items) - 2} answered right before; the first 3:"
    shown = lines[lines.index(head) + 1:]
    assert [l.split("   before:")[0] for l in shown] == [f"  {p}{a}" for p, a in (items[1], items[3], items[5])]


def test_the_demo_prints_answers_before_and_after_and_quiet_keeps_only_the_table(trained, tmp_path, capsys):
    from evaluate import greedy_answer
    from finetune import format_table
    cfg, _, _, _ = trained
    ckpt = os.path.join(cfg.out_dir, "ckpt.pt")
    path = write_lines(tmp_path / "f.jsonl", [GOOD])
    out, result = str(tmp_path / "ft.pt"), tmp_path / "r.json"
    main(["--checkpoint", ckpt, "--facts-file", path, "--mode", "full", "--lr", "1e-2", "--steps-per-fact", "10",
          "--out", out, "--json", str(result), "--device", "cpu"])
    lines = capsys.readouterr().out.splitlines()
    r = json.loads(result.read_text())
    header, row = lines[1:3]
    assert all(column in header for column in ("learned", "unseen", "background facts", "skill", "val loss"))
    assert f"{r['background_acc_before']:.3f} -> {r['background_acc_after']:.3f} ({r['background_drop']:.1%} drop)" in row
    assert f"{r['skill_acc_before']:.3f} -> {r['skill_acc_after']:.3f} ({r['skill_drop']:.1%} drop)" in row
    base, enc, _ = load_checkpoint(ckpt)
    tuned = load_checkpoint(out)[0]
    prompt = "Q: Where does Tom live? A:"
    assert (f'  {prompt} Oakton.   before: "{greedy_answer(base, enc, prompt, "cpu")}" -> '
            f'after: "{greedy_answer(tuned, enc, prompt, "cpu")}"') in lines
    assert any(l.startswith("background questions the stream broke: ") for l in lines)

    main(["--checkpoint", ckpt, "--facts-file", path, "--mode", "full", "--lr", "1e-2", "--steps-per-fact", "10",
          "--json", str(result), "--device", "cpu", "--quiet"])
    printed = capsys.readouterr()
    assert printed.out.splitlines() == format_table([json.loads(result.read_text())]).splitlines()
    assert printed.err == ""                                      # no progress bars


class Pieces:
    """A stand-in encoding whose tokens depend on context, as BPE's do: a word after a space is
    another token than the same word at the start of a text ("Which" vs " Which")."""

    def __init__(self):
        self.ids, self.n_vocab = {}, 64

    def encode(self, text):
        return [self.ids.setdefault(p, len(self.ids)) for p in re.findall(r" ?\w+|\S", text)]

    def decode(self, ids):
        words = {i: p for p, i in self.ids.items()}
        return "".join(words[i] for i in ids)


def test_the_unseen_phrasing_is_checked_for_unseen_tokens_as_it_is_scored(capsys):
    enc = Pieces()
    fact = {"paraphrases": ["Mo has a cat."], "questions": ["What pet does Mo have?"],
            "heldout_question": "Which pet does Mo have?", "answer": "a cat.", "where": "fact 1"}
    assert fact_lines(fact) == ["Mo has a cat.", "Q: What pet does Mo have? A: a cat.", "Q: Which pet does Mo have? A: a cat."]
    pretraining = np.array(enc.encode("\n".join(fact_lines(fact))))   # " Which" is there; "Which" alone is not
    warn_unseen_tokens(enc, [fact], pretraining)
    assert capsys.readouterr().err == ""
    warn_unseen_tokens(enc, [{**fact, "heldout_question": "Which bird does Mo have?"}], pretraining)
    assert "fact 1 (' bird')" in capsys.readouterr().err


def test_the_table_widens_its_first_column_for_a_long_facts_file_name():
    from finetune import format_table
    r = {"stream": "my_long_facts_file.jsonl", "facts": 20, "learned_acc": 0.5, "unseen_acc": None,
         "background_acc_before": 0.9, "background_acc_after": 0.8, "background_drop": 0.111,
         "skill_acc_before": 0.8, "skill_acc_after": 0.8, "skill_drop": 0.0, "val_loss_before": 1.0, "val_loss_after": 1.1}
    header, row = format_table([r]).splitlines()
    assert header.index("learned") + len("learned") == row.index("0.500") + len("0.500")    # right-aligned under it
    assert header.index("background") == row.index("0.900")
