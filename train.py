"""
Pretrain the memory-layer GPT (or the dense one) on the prepared corpus.

    python train.py                 # default corpus and model, about 7 minutes on 2 CPU cores
    python train.py --dense         # same architecture with an FFN in every block
    python train.py --preset classroom   # the classroom's small corpus and model (docs/COURSE.md), out/classroom/
    python train.py --help          # every option
    torchrun --standalone --nproc_per_node=2 train.py    # data parallel: nccl on GPUs, gloo on CPU

Prepares the data first when it is missing (data/prepare.py). Writes out/ckpt.pt holding the
model's args, weights, tokenizer, data meta, optimizer, step and RNG state.
"""

import math
import os
import sys
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from checkpoint import check_same_corpus, config_dict, corpus_record, load_checkpoint, save_checkpoint
from common import (ROOT, Diverged, Interrupted, check_range, check_writable, config_parser, interruptible,
                    keep_freed_memory, parse_args, pick_device, split, write_error)
from data.prepare import CLASSROOM_DATA, DataConfig, load_facts, prepare, read_corpus_meta, read_tokens
from evaluate import qa_accuracy, qa_items, validate
from model import CLASSROOM_MODEL, LARGE_MODEL, GPT, GPTConfig


@dataclass
class TrainConfig:
    data_dir: str = DataConfig.out_dir   # prepared corpus (made here if missing)
    out_dir: str = os.path.join(ROOT, "out")  # checkpoint folder
    seed: int = 1337                     # model init and batch order
    batch_size: int = 16                 # sequences per step (more, smaller steps learn facts faster)
    max_iters: int = 1700                # optimizer steps (~7 min on 2 CPU cores by default); the facts come late
    lr: float = 3e-3                     # peak learning rate of the dense parameters
    min_lr: float = 3e-4                 # end of the cosine decay
    warmup_iters: int = 60               # linear warmup steps
    value_lr: float = 1e-2               # fixed learning rate of memory values (references: 1e-3 at 1B scale)
    weight_decay: float = 0.1            # AdamW decay on dense matrices only
    grad_clip: float = 1.0               # max norm of all dense gradients (values too, unless sparse); 0 = off
    eval_interval: int = 850             # steps between evaluations (and checkpoints)
    dense: bool = False                  # no memory layers: the dense baseline
    device: str = "auto"                 # auto | cpu | cuda | mps
    compile: bool = False                # torch.compile the model (helps on GPU, not on CPU)
    resume: bool = False                 # continue exactly from out_dir/ckpt.pt (weights, optimizers, data
                                         # order, lr recipe)
    stop_at: int = 0                     # end this sitting at this step, checkpoint saved; --resume goes on
                                         # (the lr schedule still ends at max_iters); 0 = max_iters


# The classroom preset (python train.py --preset classroom; docs/COURSE.md): the small corpus and
# model (CLASSROOM_DATA, CLASSROOM_MODEL) trained for 1,200 steps of 32 x 64 tokens (about 4 min on
# 2 CPU cores; 600 steps halve it and forget twice as much: python -m experiments classroom), into
# folders of its own. Every field is named, so a later change of the defaults does not move it.
CLASSROOM_TRAIN = dict(data_dir=CLASSROOM_DATA["out_dir"], out_dir=os.path.join(ROOT, "out", "classroom"), seed=1337,
                       batch_size=32, max_iters=1200, lr=1e-2, min_lr=1e-3, warmup_iters=30, value_lr=3e-2,
                       weight_decay=0.1, grad_clip=1.0, eval_interval=600, dense=False, device="auto",
                       compile=False, resume=False, stop_at=0)

# The large preset (python train.py --preset large): the default run on LARGE_MODEL, the default
# model with 4x the memory slots, into a folder of its own.
LARGE_TRAIN = dict(out_dir=os.path.join(ROOT, "out", "large"))


# What --resume takes from the checkpoint, whatever the command line says, so that a resumed
# run continues exactly: the seed, batch and learning-rate recipe. --max-iters, --stop-at,
# --eval-interval, --device, --compile and the folders still come from the command line.
RECIPE = ("seed", "batch_size", "lr", "min_lr", "warmup_iters", "value_lr", "weight_decay", "grad_clip", "dense")


def setup_ddp(device_name):
    """(rank, world size, device). Under torchrun (which sets RANK) this process joins the group:
    nccl with one GPU per process on CUDA, gloo on CPU. Run plainly, it is (0, 1, the device)."""
    device = pick_device(device_name)
    if "RANK" not in os.environ:
        return 0, 1, device
    if device == "mps":
        raise ValueError("torchrun is not supported on MPS; run python train.py as one process")
    if device == "cuda":
        local = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def make_optimizers(model, cfg):
    """AdamW on the dense parameters, with weight decay on 2-D weights (Linear and embedding
    matrices) but not on biases, norms or the memory's sub-keys; the memory values get their
    own fixed learning rate and no decay: SparseAdam when their gradients are sparse, else Adam."""
    values = {id(p) for p in model.value_params()}
    dense = [p for p in model.parameters() if id(p) not in values]
    decay = [p for p in dense if p.dim() == 2]
    no_decay = [p for p in dense if p.dim() != 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = next(model.parameters()).device.type in ("cpu", "cuda")   # one kernel per step
    opts = [torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=fused)]
    if values:
        if model.config.mem_sparse_grad:
            opts.append(torch.optim.SparseAdam(model.value_params(), lr=cfg.value_lr))
        else:
            opts.append(torch.optim.Adam(model.value_params(), lr=cfg.value_lr, fused=fused))
    return opts


def lr_at(it, cfg):
    if it < cfg.warmup_iters:
        return cfg.lr * (it + 1) / cfg.warmup_iters
    progress = (it - cfg.warmup_iters) / max(1, cfg.max_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))) * (cfg.lr - cfg.min_lr)


def get_batch(data, block_size, batch_size, gen, rank=0, world=1):
    """Random windows of the training tokens, drawn from a seeded generator: x, y (B / world, T).
    Every process draws the same batch_size offsets and reads only its own share of them, so
    N processes together see exactly the batch one process would."""
    ix = torch.randint(len(data) - block_size - 1, (batch_size,), generator=gen).tolist()
    share = batch_size // world
    ix = ix[rank * share:(rank + 1) * share]
    x = torch.stack([torch.from_numpy(data[i:i + block_size].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block_size].astype(np.int64)) for i in ix])
    return x, y


def evaluate_all(model, enc, val, kb, device):
    model.eval()
    loss, usage = validate(model, val, model.config.block_size, device)
    out = {"val_loss": loss, "slots": usage,
           "fact_acc": qa_accuracy(model, enc, qa_items(kb["background"]), device)}
    model.train()
    return out


def pretraining_diverged(what, step, cfg):
    """The error a diverging pretraining run ends with (finetune.stream_diverged: a stream's)."""
    return Diverged(f"{what} at step {step}: training diverged, and nothing from that step on is saved; "
                    f"lower --lr ({cfg.lr:g}) or --value-lr ({cfg.value_lr:g})")


def check_options(cfg):
    """ValueError naming the first training option that is out of range; returns the step this
    sitting ends at (--stop-at, or --max-iters)."""
    if cfg.eval_interval < 1 or cfg.max_iters < 1 or cfg.batch_size < 1:
        raise ValueError("--eval-interval, --max-iters and --batch-size must be positive")
    stop = cfg.stop_at or cfg.max_iters
    if not 0 < stop <= cfg.max_iters:
        raise ValueError(f"--stop-at {cfg.stop_at} must be between 1 and --max-iters {cfg.max_iters} (0 = max_iters)")
    check_range(cfg, positive=("lr", "value_lr"), not_negative=("min_lr", "weight_decay", "grad_clip"))
    return stop


def load_corpus(cfg, block_size, rank, world):
    """(meta, encoding, tokenizer text, train tokens, val tokens, facts.json) of cfg.data_dir,
    the default or classroom corpus prepared first if it is missing (by rank 0; the others wait)."""
    if not os.path.exists(os.path.join(cfg.data_dir, "meta.json")):
        known = {os.path.abspath(DataConfig.out_dir): ("the default corpus", DataConfig()),
                 os.path.abspath(CLASSROOM_DATA["out_dir"]): ("the classroom corpus", DataConfig(**CLASSROOM_DATA))}
        if os.path.abspath(cfg.data_dir) not in known:
            raise FileNotFoundError(f"{cfg.data_dir} holds no prepared corpus; "
                                    f"run python -m data.prepare --out-dir {cfg.data_dir}")
        if rank == 0:
            name, data = known[os.path.abspath(cfg.data_dir)]
            print(f"preparing {name} (data/prepare.py) ...")
            prepare(data)
    if world > 1:
        dist.barrier()                               # every process waits until the corpus is there
    meta, enc, tok_text = read_corpus_meta(cfg.data_dir)
    train_data = read_tokens(cfg.data_dir, "train", meta["dtype"])
    val_data = read_tokens(cfg.data_dir, "val", meta["dtype"])
    if min(len(train_data), len(val_data)) <= block_size + 1:
        raise ValueError(f"{cfg.data_dir} holds fewer tokens than one window of {block_size}; prepare more text")
    return meta, enc, tok_text, train_data, val_data, load_facts(cfg.data_dir)


def make_model(cfg, mcfg, meta, tok_text, ckpt_path, device):
    """(model, its config, the training config, the checkpoint or None): a new model, or with
    --resume the checkpoint's, whose model args and training recipe (RECIPE) win over the command
    line's."""
    mcfg.vocab_size = meta["vocab_size"]
    if cfg.dense:
        mcfg.memory_layers = ()
    if not cfg.resume:
        return GPT(mcfg).to(device), mcfg, cfg, None
    model, _, ckpt = load_checkpoint(ckpt_path, device)
    missing = [k for k in ("step", "optimizers", "data_rng", "torch_rng", "train_config") if k not in ckpt]
    if missing:
        raise ValueError(f"cannot resume from {ckpt_path}: it has no {', '.join(missing)}")
    check_same_corpus(ckpt, tok_text, meta, cfg.data_dir)
    kept = [(k, getattr(cfg, k), v) for k, v in ckpt["train_config"].items() if k in RECIPE and getattr(cfg, k) != v]
    kept += [(k, v, ckpt["model_args"][k]) for k, v in config_dict(mcfg).items() if v != ckpt["model_args"].get(k, v)]
    if kept:
        print(f"note: --resume goes on with {ckpt_path}'s settings and ignores " + ", ".join(
            f"--{k.replace('_', '-')} {mine} (it has {theirs})" for k, mine, theirs in kept), file=sys.stderr)
    return model, model.config, replace(cfg, **{k: v for k, v in ckpt["train_config"].items() if k in RECIPE}), ckpt


def resume(ckpt, ckpt_path, opts, gen, stop, rank):
    """The step a resumed run starts at, with its optimizers, data order and RNG as they were."""
    if not ckpt["optimizers"] and rank == 0:
        print(f"note: {ckpt_path} holds no optimizer state (finetune.py --out writes none); "
              "training goes on with fresh optimizers", file=sys.stderr)
    for o, s in zip(opts, ckpt["optimizers"]):
        o.load_state_dict(s)
    if ckpt["step"] >= stop:
        raise ValueError(f"{ckpt_path} is already at step {ckpt['step']}; raise --max-iters (or --stop-at) to train on")
    gen.set_state(ckpt["data_rng"])
    torch.set_rng_state(ckpt["torch_rng"])
    return ckpt["step"]


def describe(model, mcfg, cfg, device, world, train_tokens):
    """The line a run starts with: device, parameters, memory slots, tokens per step."""
    dense_n, mem_n = model.num_params()
    slots = len(model.value_params()) * mcfg.mem_n_keys ** 2
    print(f"device {device}" + (f" x {world} processes" if world > 1 else "") + f" | params: dense "
          f"{dense_n / 1e6:.2f}M, memory values {mem_n / 1e6:.2f}M ({slots:,} slots in {len(mcfg.memory_layers)} "
          f"layer(s) {list(mcfg.memory_layers)}) | {cfg.batch_size * mcfg.block_size:,} tokens/step | "
          f"{train_tokens:,} train tokens")
    big = mcfg.mem_n_keys ** 2 >= 2 ** 20
    if device.startswith("cuda") and world == 1 and mem_n and not mcfg.mem_sparse_grad and big:
        print("note: --mem-sparse-grad may train a table this large faster on a GPU (up to 1.5x at 1M x 768 "
              "on an H200: docs/BENCH.md, bench section 7)")


def wrap(model, cfg, world, device):
    """The model the steps run: under torchrun wrapped in DistributedDataParallel (which averages
    gradients over the processes in backward), with --compile compiled; the model itself is saved."""
    if world > 1:
        model = DistributedDataParallel(model, device_ids=[torch.cuda.current_device()]
                                        if device.startswith("cuda") else None)
    return torch.compile(model) if cfg.compile else model


def train(cfg, mcfg, quiet=False):
    """Train and return (model, encoding, final metrics)."""
    stop = check_options(cfg)
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    check_writable(ckpt_path, f"--out-dir {cfg.out_dir}: its checkpoint")   # before any work
    torch.manual_seed(cfg.seed)
    rank, world, device = setup_ddp(cfg.device)
    quiet = quiet or rank > 0                        # one process prints, one writes checkpoints
    meta, enc, tok_text, train_data, val_data, kb = load_corpus(cfg, mcfg.block_size, rank, world)
    model, mcfg, cfg, ckpt = make_model(cfg, mcfg, meta, tok_text, ckpt_path, device)
    corpus = corpus_record(cfg.data_dir)             # where the corpus is, and what it holds
    if cfg.batch_size % world:                       # a resumed run's batch size is the checkpoint's
        raise ValueError(f"batch size {cfg.batch_size} does not split evenly over {world} processes")
    if world > 1 and (mcfg.mem_sparse_grad or mcfg.mem_query_norm == "batchnorm"):
        raise ValueError("torchrun needs dense value gradients and batch-independent queries: "
                         "train without --mem-sparse-grad and --mem-query-norm batchnorm")
    opts = make_optimizers(model, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    start = resume(ckpt, ckpt_path, opts, gen, stop, rank) if cfg.resume else 0
    if not quiet:
        describe(model, mcfg, cfg, device, world, len(train_data))
    run_model = wrap(model, cfg, world, device)
    sparse = {id(p) for p in model.value_params()} if mcfg.mem_sparse_grad else set()
    grad_params = [p for p in model.parameters() if id(p) not in sparse]   # clip_grad_norm_ wants dense grads

    metrics = {}
    model.train()
    bar = tqdm(range(start, stop), initial=start, total=stop, disable=quiet, desc="train")
    train_time, tokens_seen = 0.0, 0                  # tokens/s counts training steps only
    for it in bar:
        t0 = time.time()
        for g in opts[0].param_groups:
            g["lr"] = lr_at(it, cfg)
        x, y = get_batch(train_data, mcfg.block_size, cfg.batch_size, gen, rank, world)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            _, loss = run_model(x.to(device), y.to(device))
        loss_all = loss.detach().clone()              # the whole batch's loss, the same on every process
        if world > 1:
            dist.all_reduce(loss_all)
            loss_all /= world
        if not torch.isfinite(loss_all):
            raise pretraining_diverged(f"loss became {loss_all.item()}", it + 1, cfg)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(grad_params, cfg.grad_clip)
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)
        tokens_seen += cfg.batch_size * mcfg.block_size
        train_time += time.time() - t0
        bar.set_postfix(loss=f"{loss_all.item():.3f}", tok_s=f"{tokens_seen / train_time:.0f}")
        step = it + 1
        if rank == 0 and (step % cfg.eval_interval == 0 or step == stop):
            metrics = {**evaluate_all(model, enc, val_data, kb, device), "tokens_per_s": tokens_seen / train_time,
                       "train_loss": loss_all.item()}
            check_weights(model, metrics, step, cfg)
            if not quiet:
                usage = "".join(f" | slots used {u['used']:.1%}, KL {u['kl_uniform']:.2f}" for u in metrics["slots"])
                tqdm.write(f"step {step}: train loss {loss_all.item():.3f} | val loss {metrics['val_loss']:.3f} | "
                           f"fact acc {metrics['fact_acc']:.3f}{usage}")
            save(ckpt_path, {
                "model": model.state_dict(), "model_args": config_dict(mcfg), "step": step,
                "optimizers": [o.state_dict() for o in opts], "data_rng": gen.get_state(),
                "torch_rng": torch.get_rng_state(), "tokenizer": tok_text, "data_meta": meta,
                **corpus, "train_config": vars(cfg).copy(), "metrics": metrics})
    if dist.is_available() and dist.is_initialized():  # joined under torchrun, one process or more
        dist.destroy_process_group()
    return model, enc, metrics


def check_weights(model, metrics, step, cfg):
    """Diverged if the last update left a weight or the val loss inf or nan (the loss checked before it could not)."""
    finite = all(torch.isfinite(p).all() for p in model.parameters())
    if not (finite and math.isfinite(metrics["val_loss"])):
        raise pretraining_diverged(f"val loss became {metrics['val_loss']}" if finite
                                   else "the weights became inf or nan", step, cfg)


def save(ckpt_path, state):
    """save_checkpoint; a write that fails (a full disk) is one line naming the checkpoint and what to do."""
    try:
        save_checkpoint(ckpt_path, state)
    except OSError as e:
        raise OSError(write_error(f"the checkpoint {ckpt_path}", e)) from None


def modified(path):
    """When path was last written, in ns; None if it is not there. Every save replaces the checkpoint,
    so a time other than the one it had when a run began means the run saved it."""
    try:
        return os.stat(path).st_mtime_ns
    except OSError:                                  # not there, or --out-dir is no folder (train() says so)
        return None


def interrupted(ckpt_path, before):
    """What a Ctrl-C during training leaves, as the exception common.interruptible says: the
    checkpoint the run saved last and its step, or nothing (before: modified(ckpt_path) as it began)."""
    if modified(ckpt_path) == before:
        return KeyboardInterrupt()
    step = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)["step"]
    return Interrupted(f"the checkpoint of step {step} is in {ckpt_path} (python train.py --resume goes on from it)")


def report(model, enc, m, cfg, t0):
    """The run's last lines: its time, speed and metrics, and a sample story."""
    print(f"done in {time.time() - t0:.0f}s | {m['tokens_per_s']:.0f} tokens/s | val loss {m['val_loss']:.3f} | "
          f"background fact accuracy {m['fact_acc']:.3f}")
    model.eval()
    prompt = torch.tensor([enc.encode("Once upon a time,")], device=next(model.parameters()).device)
    torch.manual_seed(cfg.seed)
    out = model.generate(prompt, 80, temperature=0.8, top_k=20, stop_token=enc.eot_token)
    print("sample:", enc.decode([t for t in out[0].tolist() if t != enc.eot_token]))


@interruptible
def main(argv=None):
    presets = {"preset": {"default": {}, "classroom": {**CLASSROOM_TRAIN, **CLASSROOM_MODEL},
                          "large": {**LARGE_TRAIN, **LARGE_MODEL}}}
    p = config_parser(__doc__, TrainConfig, GPTConfig, skip=("vocab_size",), presets=presets)  # from the corpus
    args = parse_args(p, argv, presets)
    keep_freed_memory()
    t0 = time.time()
    ckpt_path = os.path.join(args.out_dir, "ckpt.pt")
    before = modified(ckpt_path)                     # a Ctrl-C names the checkpoint only if this run saved it
    try:
        cfg, mcfg = split(args, TrainConfig), split(args, GPTConfig)
        model, enc, m = train(cfg, mcfg)
        if m:                                        # the other torchrun processes return no metrics
            report(model, enc, m, cfg, t0)
    except (ValueError, OSError, RuntimeError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        raise interrupted(ckpt_path, before) from None


if __name__ == "__main__":
    main()
