"""
Pretrain the memory-layer GPT (or the dense one) on the prepared corpus.

    python train.py                 # default corpus and model, about 5 minutes on 2 CPU cores
    python train.py --dense         # same architecture with an FFN in every block
    python train.py --help          # every option
    torchrun --standalone --nproc_per_node=2 train.py    # data parallel: nccl on GPUs, gloo on CPU

Prepares the data first when it is missing (data/prepare.py). Writes out/ckpt.pt holding the
model's args, weights, tokenizer, data meta, optimizer, step and RNG state.
"""

import argparse
import ctypes
import inspect
import math
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from data.prepare import DataConfig, prepare
from data.tokenizer import encoding_from_text, read_tokenizer
from evaluate import check_same_corpus, load_facts, read_corpus_meta, qa_accuracy, qa_items, validate
from model import GPT, GPTConfig, config_dict


@dataclass
class TrainConfig:
    data_dir: str = DataConfig.out_dir   # prepared corpus (made here if missing)
    out_dir: str = "out"                 # checkpoint folder
    seed: int = 1337                     # model init and batch order
    batch_size: int = 16                 # sequences per step (more, smaller steps learn facts faster)
    max_iters: int = 850                 # optimizer steps (~4.5 min on 2 CPU cores by default)
    lr: float = 3e-3                     # peak learning rate of the dense parameters
    min_lr: float = 3e-4                 # end of the cosine decay
    warmup_iters: int = 60               # linear warmup steps
    value_lr: float = 1e-2               # fixed learning rate of memory values (references: 1e-3 at 1B scale)
    weight_decay: float = 0.1            # AdamW decay on dense matrices only
    grad_clip: float = 1.0               # max norm of all dense gradients (values too, unless sparse); 0 = off
    eval_interval: int = 425             # steps between evaluations (and checkpoints)
    dense: bool = False                  # no memory layers: the dense baseline
    device: str = "auto"                 # auto | cpu | cuda | mps
    compile: bool = False                # torch.compile the model (helps on GPU, not on CPU)
    resume: bool = False                 # continue exactly from out_dir/ckpt.pt (weights, optimizers, data order, lr recipe)
    stop_at: int = 0                     # end this run at this step with a checkpoint (the lr schedule still
                                         # runs to max_iters; go on with --resume); 0 = max_iters


def pick_device(name="auto"):
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda asked for but no CUDA device is available")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise SystemExit("error: --device mps asked for but MPS is not available")
    if name not in ("cpu", "cuda", "mps"):
        raise SystemExit(f"error: unknown device {name!r}: use auto, cpu, cuda or mps")
    return name


# What --resume takes from the checkpoint, whatever the command line says, so that a resumed
# run continues exactly: the seed, batch and learning-rate recipe. --max-iters, --stop-at,
# --eval-interval, --device, --compile and the folders still come from the command line.
RECIPE = ("seed", "batch_size", "lr", "min_lr", "warmup_iters", "value_lr", "weight_decay", "grad_clip", "dense")


def keep_freed_memory():
    """On Linux with glibc, keep freed memory for reuse instead of handing it back to the OS.
    By default glibc returns every freed block over 32 MiB at once, so each step page-faults
    its big buffers in again. Measured (README, bench): a 1M-slot layer at d = 512 1.6x
    faster, a full finetuning step 1.4x, the default training step about the same.
    Elsewhere (macOS, Windows, musl) this does nothing."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, 1 << 30)    # M_MMAP_THRESHOLD: blocks up to 1 GiB come from the reusable heap
    libc.mallopt(-1, 1 << 30)    # M_TRIM_THRESHOLD: keep up to 1 GiB of free heap


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


def save_checkpoint(path, obj):
    """Atomic: write a temporary file, fsync, rename. A kill at any moment leaves the old file intact."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")  # one per writer
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):                         # a failed write leaves no half file behind
            os.remove(tmp)
    if os.name == "posix":                              # make the rename itself survive a power cut
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_checkpoint(path, device="cpu"):
    """(model, encoding, raw checkpoint dict). Loads with weights_only=True."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist; run python train.py first")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        if "GLOBAL" in str(e):                            # torch names the global it refused to import
            raise RuntimeError(f"refused to load {path}: it holds pickled Python objects, which could run "
                               "code; only tensors and plain data are accepted") from None
        raise RuntimeError(f"could not load checkpoint {path} ({type(e).__name__}): the file is corrupt "
                           "or not a PyTorch checkpoint") from None
    if not isinstance(ckpt, dict) or not {"model", "model_args", "tokenizer"} <= ckpt.keys():
        raise RuntimeError(f"{path} is not a checkpoint written by train.py (no model args or tokenizer)")
    model = GPT(GPTConfig(**ckpt["model_args"])).to(device)
    model.load_state_dict(ckpt["model"])
    model.eval()
    tok = ckpt["tokenizer"]
    enc = read_tokenizer("gpt2")[0] if tok == "gpt2" else encoding_from_text(tok)
    return model, enc, ckpt


def config_parser(description, *dataclasses, skip=()):
    """argparse over the fields of the given dataclasses; each option's help is the comment
    beside its default in the dataclass's source."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for dc in dataclasses:
        comments = dict(re.findall(r"^\s+(\w+): .*?#\s*(.*)$", inspect.getsource(dc), re.M))
        for f in fields(dc):
            if f.name in skip:
                continue
            name, text = "--" + f.name.replace("_", "-"), comments.get(f.name, "").replace("%", "%%")
            if isinstance(f.default, bool):
                p.add_argument(name, action=argparse.BooleanOptionalAction, default=f.default,
                               help=f"{text} (default: {f.default})")
            elif isinstance(f.default, tuple):
                p.add_argument(name, type=lambda s: tuple(int(i) for i in s.split(",") if i.strip()),
                               default=f.default, help=f"{text}; comma-separated, e.g. 1,3 "
                               f"(default: {','.join(map(str, f.default))})")
            else:
                p.add_argument(name, type=type(f.default), default=f.default, help=f"{text} (default: {f.default})")
    return p


def split(args, dc):
    return dc(**{f.name: getattr(args, f.name) for f in fields(dc) if hasattr(args, f.name)})


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


def train(cfg, mcfg, quiet=False):
    """Train and return (model, encoding, final metrics)."""
    if cfg.eval_interval < 1 or cfg.max_iters < 1 or cfg.batch_size < 1:
        raise ValueError("--eval-interval, --max-iters and --batch-size must be positive")
    stop = cfg.stop_at or cfg.max_iters
    if not 0 < stop <= cfg.max_iters:
        raise ValueError(f"--stop-at {cfg.stop_at} must be between 1 and --max-iters {cfg.max_iters} (0 = max_iters)")
    torch.manual_seed(cfg.seed)
    rank, world, device = setup_ddp(cfg.device)
    quiet = quiet or rank > 0                        # one process prints, one writes checkpoints
    meta_path = os.path.join(cfg.data_dir, "meta.json")
    if not os.path.exists(meta_path):
        if os.path.abspath(cfg.data_dir) != os.path.abspath(DataConfig.out_dir):
            raise SystemExit(f"error: {cfg.data_dir} holds no prepared corpus; run python -m data.prepare --out-dir {cfg.data_dir}")
        if rank == 0:
            print("preparing the default corpus (data/prepare.py) ...")
            prepare(DataConfig())
    if world > 1:
        dist.barrier()                               # every process waits until the corpus is there
    meta, enc, tok_text = read_corpus_meta(cfg.data_dir)
    train_data = np.memmap(os.path.join(cfg.data_dir, "train.bin"), dtype=meta["dtype"], mode="r")
    val_data = np.memmap(os.path.join(cfg.data_dir, "val.bin"), dtype=meta["dtype"], mode="r")
    kb = load_facts(cfg.data_dir)
    if min(len(train_data), len(val_data)) <= mcfg.block_size + 1:
        raise ValueError(f"{cfg.data_dir} holds fewer tokens than one window of {mcfg.block_size}; prepare more text")

    mcfg.vocab_size = meta["vocab_size"]
    if cfg.dense:
        mcfg.memory_layers = ()
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    if cfg.resume:  # the checkpoint's own model args and training recipe win over the command line's
        model, _, ckpt = load_checkpoint(ckpt_path, device)
        mcfg = model.config
        check_same_corpus(ckpt, tok_text, meta, cfg.data_dir)
        cfg = replace(cfg, **{k: v for k, v in ckpt["train_config"].items() if k in RECIPE})
    else:
        model = GPT(mcfg).to(device)
    if cfg.batch_size % world:                       # a resumed run's batch size is the checkpoint's
        raise ValueError(f"batch size {cfg.batch_size} does not split evenly over {world} processes")
    if world > 1 and (mcfg.mem_sparse_grad or mcfg.mem_query_norm == "batchnorm"):
        raise ValueError("torchrun needs dense value gradients and batch-independent queries: "
                         "train without --mem-sparse-grad and --mem-query-norm batchnorm")
    opts = make_optimizers(model, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    start = 0
    if cfg.resume:
        for o, s in zip(opts, ckpt["optimizers"]):
            o.load_state_dict(s)
        start = ckpt["step"]
        if start >= stop:
            raise ValueError(f"{ckpt_path} is already at step {start}; raise --max-iters (or --stop-at) to train on")
        gen.set_state(ckpt["data_rng"])
        torch.set_rng_state(ckpt["torch_rng"])

    dense_n, mem_n = model.num_params()
    tokens_per_step = cfg.batch_size * mcfg.block_size
    if not quiet:
        slots = len(model.value_params()) * mcfg.mem_n_keys ** 2
        print(f"device {device}" + (f" x {world} processes" if world > 1 else "") + f" | params: dense {dense_n / 1e6:.2f}M, memory values {mem_n / 1e6:.2f}M "
              f"({slots:,} slots in {len(mcfg.memory_layers)} layer(s) {list(mcfg.memory_layers)}) | "
              f"{tokens_per_step:,} tokens/step | {len(train_data):,} train tokens")
    if not quiet and device.startswith("cuda") and world == 1 and mem_n and not mcfg.mem_sparse_grad \
            and mcfg.mem_n_keys ** 2 >= 2 ** 20:
        print("note: --mem-sparse-grad may train a table this large faster on a GPU (up to 1.5x at 1M x 768 "
              "on an H200: README, bench section 7)")
    run_model = model
    if world > 1:                                    # averages gradients over the processes in backward
        run_model = DistributedDataParallel(model, device_ids=[torch.cuda.current_device()] if device.startswith("cuda") else None)
    if cfg.compile:
        run_model = torch.compile(run_model)
    use_bf16 = device.startswith("cuda")
    sparse = {id(p) for p in model.value_params()} if mcfg.mem_sparse_grad else set()
    grad_params = [p for p in model.parameters() if id(p) not in sparse]   # clip_grad_norm_ wants dense grads

    metrics = {}
    model.train()
    bar = tqdm(range(start, stop), initial=start, total=stop, disable=quiet, desc="train")
    train_time, tokens_seen = 0.0, 0                  # tokens/s counts training steps only
    for it in bar:
        t0 = time.time()
        lr = lr_at(it, cfg)
        for g in opts[0].param_groups:
            g["lr"] = lr
        x, y = get_batch(train_data, mcfg.block_size, cfg.batch_size, gen, rank, world)
        x, y = x.to(device), y.to(device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_bf16):
            _, loss = run_model(x, y)
        if world > 1:                                # the whole batch's loss, the same on every process
            loss_all = loss.detach().clone()
            dist.all_reduce(loss_all)
            loss_all /= world
        else:
            loss_all = loss.detach()
        if not torch.isfinite(loss_all):
            raise SystemExit(f"error: loss became {loss_all.item()} at step {it}; the last good checkpoint is kept")
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(grad_params, cfg.grad_clip)
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)
        tokens_seen += tokens_per_step
        train_time += time.time() - t0
        bar.set_postfix(loss=f"{loss_all.item():.3f}", tok_s=f"{tokens_seen / train_time:.0f}")
        step = it + 1
        if rank == 0 and (step % cfg.eval_interval == 0 or step == stop):
            metrics = evaluate_all(model, enc, val_data, kb, device)
            metrics["tokens_per_s"] = tokens_seen / train_time
            metrics["train_loss"] = loss_all.item()
            if not quiet:
                usage = "".join(f" | slots used {u['used']:.1%}, KL {u['kl_uniform']:.2f}" for u in metrics["slots"])
                tqdm.write(f"step {step}: train loss {loss_all.item():.3f} | val loss {metrics['val_loss']:.3f} | "
                           f"fact acc {metrics['fact_acc']:.3f}{usage}")
            save_checkpoint(ckpt_path, {
                "model": model.state_dict(), "model_args": config_dict(mcfg), "step": step,
                "optimizers": [o.state_dict() for o in opts], "data_rng": gen.get_state(),
                "torch_rng": torch.get_rng_state(), "tokenizer": tok_text, "data_meta": meta,
                "data_dir": os.path.abspath(cfg.data_dir), "train_config": vars(cfg).copy(), "metrics": metrics})
    if dist.is_available() and dist.is_initialized():  # joined under torchrun, one process or more
        dist.destroy_process_group()
    return model, enc, metrics


def main(argv=None):
    p = config_parser(__doc__, TrainConfig, GPTConfig, skip=("vocab_size",))  # it comes from the corpus
    args = p.parse_args(argv)
    keep_freed_memory()
    t0 = time.time()
    try:
        cfg, mcfg = split(args, TrainConfig), split(args, GPTConfig)
        model, enc, m = train(cfg, mcfg)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        sys.exit(f"error: {e}")
    if not m:                                        # a torchrun process other than rank 0
        return
    print(f"done in {time.time() - t0:.0f}s | {m['tokens_per_s']:.0f} tokens/s | val loss {m['val_loss']:.3f} | "
          f"background fact accuracy {m['fact_acc']:.3f}")
    model.eval()
    prompt = torch.tensor([enc.encode("Once upon a time,")], device=next(model.parameters()).device)
    torch.manual_seed(cfg.seed)
    out = model.generate(prompt, 80, temperature=0.8, top_k=20, stop_token=enc.eot_token)
    print("sample:", enc.decode([t for t in out[0].tolist() if t != enc.eot_token]))


if __name__ == "__main__":
    main()
