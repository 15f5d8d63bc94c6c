"""
The paper's experiments at small scale, each one command that prints a table and writes
out/experiments/<name>.json (every number) and <name>.png (the figure).

    python experiments.py topt          # top-t sweep, TF-IDF vs TF vs KL ranking (paper Figure 6)
    python experiments.py sequence      # batch-level vs sequence-level ranking over the same t's
    python experiments.py background    # IDF from pretraining text vs from the new facts (Figure 7)
    python experiments.py all-slots     # train every slot the batch read vs the top-t
    python experiments.py topt --facts 1000 --steps-per-fact 1   # the paper-sized stream

Every run starts from the same pretrained checkpoint (out/ckpt.pt; made first if missing),
streams the same facts with sparse SGD at the README's learning rate, and is scored like
finetune.py: learned = exact-match accuracy on the taught facts' questions; forgotten = the
relative drop in background-fact accuracy; val loss before and after.
"""

import argparse
import json
import os
import sys
import time

import finetune as ft
from train import keep_freed_memory, pick_device

T_SWEEP = (25, 50, 100, 200, 500, 1000)


def runs_topt():
    return [{"ranking": r, "top_t": t} for r in ("tfidf", "tf", "kl") for t in T_SWEEP]


def runs_sequence():
    return [{"rank_by": b, "top_t": t} for b in ("batch", "sequence") for t in T_SWEEP]


def runs_background():
    return [{"top_t": t, "background": b} for b in ("pretraining", "facts") for t in (64, 500)]


def runs_all_slots():
    return [{"top_t": t} for t in (64, 500)] + [{"top_t": 0}]   # 0: every slot the batch read


EXPERIMENTS = {"topt": (runs_topt, "ranking"), "sequence": (runs_sequence, "rank_by"),
               "background": (runs_background, "background"), "all-slots": (runs_all_slots, None)}


def label(run, key):
    t = "all read" if run["top_t"] == 0 else f"t={run['top_t']}"
    return t if key is None else f"{run[key]} {t}"


def plot(results, key, path, title):
    """Learned vs forgotten, one line per value of key (points labelled by t)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4.2))
    groups = {}
    for r in results:
        groups.setdefault(r["run"].get(key, "sparse") if key else "sparse", []).append(r)
    for name, rs in groups.items():
        xs, ys = [r["heldout_drop"] * 100 for r in rs], [r["learned_acc"] * 100 for r in rs]
        ax.plot(xs, ys, "o-", label=name)
        for r, x, y in zip(rs, xs, ys):
            ax.annotate("all" if r["run"]["top_t"] == 0 else str(r["run"]["top_t"]), (x, y),
                        textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xlabel("forgotten: drop in background-fact accuracy (%)")
    ax.set_ylabel("learned: new-fact accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", choices=sorted(EXPERIMENTS))
    p.add_argument("--checkpoint", default=ft.DEFAULT_CHECKPOINT, help="pretrained model (made first if it is the default and missing)")
    p.add_argument("--facts", type=int, default=50, help="new facts in the stream (50 keeps each experiment under 15 min on 2 CPU cores)")
    p.add_argument("--steps-per-fact", type=int, default=ft.FinetuneConfig.steps_per_fact, help="steps on each fact's batch")
    p.add_argument("--lr", type=float, default=0.0, help="sparse SGD learning rate; 0 = finetune.py's default")
    p.add_argument("--out-dir", default=os.path.join("out", "experiments"), help="where the JSON and PNG go")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    args = p.parse_args(argv)
    keep_freed_memory()
    make_runs, key = EXPERIMENTS[args.experiment]
    t0 = time.time()
    try:
        device = pick_device(args.device)
        base_cfg = ft.FinetuneConfig(checkpoint=args.checkpoint, facts=args.facts, steps_per_fact=args.steps_per_fact,
                                     lr=args.lr, device=args.device)
        model, enc, ckpt = ft.load_base(base_cfg, device)
        facts = ft.stream_facts(base_cfg, ckpt)
        ft.check_lengths(enc, facts, model.config.block_size)
        base = {k: v.clone() for k, v in model.state_dict().items()}
        results, before = [], None
        for run in make_runs():
            settings = {k: v for k, v in run.items() if k != "background"}
            n_slots = model.memory_modules[0].n_slots
            if settings["top_t"] > n_slots:
                print(f"{label(run, key):<24} skipped: t is larger than the {n_slots} slots")
                continue
            settings["top_t"] = settings["top_t"] or n_slots          # 0: every accessed slot
            cfg = ft.resolve(ft.FinetuneConfig(**{**vars(base_cfg), **settings}), model)
            model.load_state_dict(base)
            stats = None
            if run.get("background") == "facts":                     # IDF from the new facts themselves
                stats = ft.background_stats(model, ft.fact_units(enc, facts, model.config.block_size), device,
                                             quiet=True)
            r, before = ft.finetune(cfg, model, enc, ckpt, facts, before, quiet=True, stats=stats)
            r["run"] = run
            results.append(r)
            print(f"{label(run, key):<24} learned {r['learned_acc']:.3f}  unseen q {r['learned_acc_unseen_question']:.3f}  "
                  f"background {r['heldout_acc_before']:.3f} -> {r['heldout_acc_after']:.3f} ({r['heldout_drop']:+.1%})  "
                  f"val loss {r['val_loss_before']:.4f} -> {r['val_loss_after']:.4f}  [{r['seconds']:.0f}s]", flush=True)
    except (ValueError, OSError, RuntimeError) as e:
        sys.exit(f"error: {e}")
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, args.experiment)
    with open(path + ".json", "w", encoding="utf-8") as f:
        json.dump({"experiment": args.experiment, "checkpoint": args.checkpoint, "facts": len(facts),
                   "steps_per_fact": args.steps_per_fact, "seed": base_cfg.seed, "results": results,
                   "seconds": time.time() - t0}, f, indent=1)
    plot(results, key, path + ".png", f"{args.experiment}: {len(facts)} facts x {args.steps_per_fact} steps, sparse SGD")
    print(f"{time.time() - t0:.0f}s | wrote {path}.json and {path}.png")


if __name__ == "__main__":
    main()
