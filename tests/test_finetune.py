import json
import os
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from checkpoint import load_checkpoint
from common import Diverged
from conftest import TINY_MODEL
from facts import batch_texts, fact_lines, make_batch, read_facts_file, warn_unseen_tokens
from finetune import (FinetuneConfig, configs, fingerprint, load_or_compute_background, main, pretraining_units, resolve,
                      run_stream)
from lora import LoRALinear, add_lora, merge_lora
from model import GPT, GPTConfig
from recipes import RecipeConfig
from sparse import background_stats

JSON_KEYS = {"stream", "mode", "optimizer", "lr", "recipe", "top_t", "t_used", "ranking", "facts", "batches",
             "steps_per_fact", "learned_acc", "unseen_acc", "background_acc_before", "background_acc_after", "background_drop",
             "skill_acc_before", "skill_acc_after", "skill_drop", "val_loss_before", "val_loss_after", "seconds"}


def tiny_model(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**TINY_MODEL, "vocab_size": 60, **kw})).eval()


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


@pytest.mark.parametrize("ranking", ["tfidf", "tf"])
def test_sparse_stream_changes_only_selected_value_rows(trained, ranking):
    cfg, _, enc, _ = trained
    model, enc, ckpt = load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    facts = [{"paraphrases": ["Tom has a red ball.", "The ball of Tom is red."], "questions": ["What does Tom have?"],
              "heldout_question": None, "answer": "a red ball."}]
    fc = FinetuneConfig(mode="sparse", optimizer="adamw", lr=0.1, top_t=5, steps_per_fact=3, background_batches=50,
                        ranking=ranking)
    resolve(fc, model)
    mem = model.memory_modules[0]
    df = [torch.randint(0, 51, (mem.n_slots,), generator=torch.Generator().manual_seed(0))]
    bg = [{"df": df[0], "reads": df[0], "units": 50}]
    x, _, count = make_batch(enc, batch_texts(facts[0]), model.config.block_size)
    mem.record_indices = True
    model(x)                                                  # the rows TF-IDF should pick, by hand
    c = torch.bincount(mem.last_indices[count].flatten(), minlength=mem.n_slots).double()
    mem.record_indices = False
    score = c / c.sum() * (torch.log(51 / (df[0].double() + 1)) if ranking == "tfidf" else 1)   # tf: no IDF
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
    fc = resolve(FinetuneConfig(mode="sparse", ranking="tf", lr=1.0, top_t=4, steps_per_fact=2), model)
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
    assert set(r) == JSON_KEYS | {"settings"} and r["settings"]["recipe"] == "paper"
    assert configs(r["settings"]) == (replace(FinetuneConfig(), checkpoint=ckpt, facts_file=path, mode="full",
                                              optimizer="adamw", lr=2e-3, steps_per_fact=300, json=str(out),
                                              device="cpu"), RecipeConfig())        # every option, to rerun it
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
    monkeypatch.setattr("finetune.background_stats", lambda *a: pytest.fail("recomputed"))
    assert torch.equal(load_or_compute_background(fc, model, ckpt, "cpu")[0]["reads"], stats[0]["reads"])
    with torch.no_grad():
        model.wte.weight[0, 0] += 1.0                          # another model: computed afresh
    monkeypatch.setattr("finetune.background_stats", lambda *a: [{**stats[0], "df": torch.zeros_like(stats[0]["df"])}])
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
                          (["--grow-t", "32"], "--grow-t 32 is below --top-t 64"), (["--max-df", "1.5"], "--max-df is a share"),
                          (["--spare-answer-slots", "0"], "--spare-answer-slots is a share"),
                          (["--count-reads", "everything"], "unknown --count-reads"), (["--ranking", "idf"], "unknown --ranking"),
                          (["--block-answer-slots"], "give --spare-answer-slots below 1"),
                          (["--facts", "5000"], "the corpus has 1000 new facts"),
                          (["--facts-file", str(tmp_path / "none.jsonl")], "does not exist"),
                          (["--checkpoint", str(tmp_path / "none.pt")], "does not exist")]:
        with pytest.raises(SystemExit) as e:
            main((["--checkpoint", ckpt] if "--checkpoint" not in args else []) + args + ["--device", "cpu"])
        assert message in str(e.value), args
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
    from checkpoint import save_checkpoint
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
    files = sorted(f for f in os.listdir(folder) if f.endswith("_facts.jsonl"))
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
