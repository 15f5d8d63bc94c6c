"""
Checkpoints of model.py's GPT: the model's args beside its weights, so that the file alone
rebuilds the model (load_checkpoint), the tokenizer, and the prepared corpus it was trained on
(checkpoint_corpus): found relative to the project, so that a moved project or a checkpoint copied into
another clone still finds it, and recognised by its content. Saved atomically, loaded with
weights_only=True, and checked before use.
"""

import errno
import os
from dataclasses import asdict, fields

import torch

from common import ROOT, write_atomic
from data.prepare import corpus_fingerprint, load_facts, prepare_again, read_corpus_meta, read_tokens
from data.tokenizer import encoding_from_text, read_tokenizer
from model import GPT, GPTConfig


def config_dict(cfg):
    """Plain dict of a config, safe for torch.save(weights_only) checkpoints."""
    d = asdict(cfg)
    d["memory_layers"] = list(cfg.memory_layers)
    return d


def save_checkpoint(path, obj):
    """Atomic (common.write_atomic): a kill at any moment leaves the old file intact, and the
    temporary files of killed saves are removed by the next save. A write that fails inside
    torch.save (a full disk) comes out of its zip writer as a RuntimeError ("[enforce fail at
    inline_container.cc...]") raised while handling the write's OSError: that OSError is raised
    instead, so that callers catch one kind of error, and its errno says what went wrong."""
    def save(f):
        try:
            torch.save(obj, f)
        except RuntimeError as e:
            if isinstance(e.__context__, OSError):
                raise e.__context__ from None
            raise OSError(errno.EIO, f"torch.save could not write it ({e})") from None
    write_atomic(path, save)


def load_checkpoint(path, device="cpu"):
    """(model, encoding, raw checkpoint dict). Loads with weights_only=True."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist; run python train.py first")
    if os.path.isdir(path):
        raise ValueError(f"checkpoint {path} is a folder; give the checkpoint file, as {os.path.join(path, 'ckpt.pt')}")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        if "GLOBAL" in str(e):                            # torch names the global it refused to import
            raise RuntimeError(f"refused to load {path}: it holds pickled Python objects, which could run "
                               "code; only tensors and plain data are accepted") from None
        raise RuntimeError(f"could not load checkpoint {path} ({type(e).__name__}): the file is corrupt "
                           "or not a PyTorch checkpoint") from None
    problem = checkpoint_problem(ckpt)
    if problem:
        raise RuntimeError(f"{path} is not a checkpoint written by train.py of this version ({problem}); "
                           "use one it wrote, or train again")
    model = build_model(path, ckpt["model_args"])
    mine, theirs = model.state_dict(), ckpt["model"]
    wrong = sorted(k for k in mine.keys() | theirs.keys()
                   if k not in mine or k not in theirs or mine[k].shape != theirs[k].shape)
    if wrong:
        raise RuntimeError(f"{path}: its weights do not fit its model args ({len(wrong)} tensors, the first "
                           f"{wrong[0]}); "
                           "the file is damaged or from another version")
    broken = sorted(k for k, v in theirs.items() if v.is_floating_point() and not torch.isfinite(v).all())
    if broken:                                            # train.py and finetune.py save no diverged model
        raise RuntimeError(f"{path}: {len(broken)} of its weights hold inf or nan (the first {broken[0]}); "
                           "the file is damaged: use another checkpoint, or train again")
    model.load_state_dict(theirs)
    model.to(device).eval()
    tok = ckpt["tokenizer"]
    try:
        enc = read_tokenizer("gpt2")[0] if tok == "gpt2" else encoding_from_text(tok)
    except ValueError:
        raise RuntimeError(f"{path}: its tokenizer is not a .tiktoken ranks text; the file is damaged") from None
    return model, enc, ckpt


def build_model(path, args):
    """The model a checkpoint's model args describe (path: the checkpoint, for the message). Args that
    make no model (GPTConfig refuses them) are a damaged file, said in one line, not a traceback."""
    try:
        return GPT(GPTConfig(**args))
    except (TypeError, ValueError, ZeroDivisionError, RuntimeError) as e:
        raise RuntimeError(f"{path}: its model args do not make a model ({e}); the file is damaged: use another "
                           "checkpoint, or train again") from None


def checkpoint_problem(ckpt):
    """What keeps a loaded file from being a checkpoint this version reads; None if nothing does."""
    if not isinstance(ckpt, dict):
        return "it holds no dict"
    missing = [k for k in ("model", "model_args", "tokenizer", "data_dir", "data_meta") if k not in ckpt]
    if missing:
        return "no " + ", ".join(missing)
    if not isinstance(ckpt["model"], dict) or not all(torch.is_tensor(v) for v in ckpt["model"].values()):
        return "its model is not a dict of tensors"
    if not isinstance(ckpt["model_args"], dict):
        return "its model_args is not a dict"
    unknown = sorted(ckpt["model_args"].keys() - {f.name for f in fields(GPTConfig)})
    if unknown:
        return "model args this version does not know: " + ", ".join(map(str, unknown))
    if not isinstance(ckpt["tokenizer"], str):
        return "its tokenizer is not text"
    if not (isinstance(ckpt["data_dir"], str) and isinstance(ckpt["data_meta"], dict) and "dtype" in ckpt["data_meta"]):
        return "its data_dir or data_meta is malformed"
    if not isinstance(ckpt.get("train_config", {}), dict):                  # train.py --resume reads it
        return "its train_config is not a dict"
    record = ckpt.get("finetune", {})                                       # evaluate.py scores facts_taught
    taught = record.get("facts_taught", []) if isinstance(record, dict) else None
    if not (isinstance(taught, list) and all(isinstance(f, dict) and isinstance(f.get("questions"), list)
                                              and isinstance(f.get("answer"), str) and "heldout_question" in f
                                              for f in taught)):
        return "its finetune record is malformed"
    return None


def check_same_corpus(ckpt, tok_text, meta, data_dir):
    """A checkpoint only reads text cut by its own tokenizer, and, where it keeps its corpus's fingerprint
    (corpus_record), only the corpus it was trained on."""
    if ckpt["tokenizer"] != tok_text or ckpt["model_args"]["vocab_size"] != meta["vocab_size"]:
        raise ValueError(f"the checkpoint's tokenizer (vocab {ckpt['model_args']['vocab_size']}) does not match the "
                         f"corpus in {data_dir} (vocab {meta['vocab_size']}); use the corpus it was trained on")
    kept = ckpt.get("corpus_fingerprint")                  # None in checkpoints written before it was kept
    if kept is not None and kept != corpus_fingerprint(data_dir):
        raise ValueError(f"the corpus in {data_dir} does not match the one this checkpoint was trained on (its "
                         "content differs); use the corpus it was trained on, or train again on this one")


def corpus_record(data_dir):
    """What train.py stores of its corpus in a checkpoint: the folder, relative to the project when it is
    in it (so that a moved project or a copy of the checkpoint in another clone finds its own), and a
    fingerprint of the content (so that another corpus in that place is refused)."""
    path, root = os.path.realpath(data_dir), os.path.realpath(ROOT)
    inside = os.path.commonpath([path, root]) == root
    return {"data_dir": os.path.relpath(path, root) if inside else path, "corpus_fingerprint": corpus_fingerprint(path)}


def corpus_dir(ckpt):
    """The folder of a checkpoint's corpus: its data_dir in this project when stored relative; an absolute
    one (checkpoints written before, corpora outside the project) as it is, or, if it is gone, the folder
    of the same name in this project's data/, where a moved project's older checkpoints find theirs."""
    stored = ckpt["data_dir"]
    if not os.path.isabs(stored):
        return os.path.join(ROOT, stored)
    moved = os.path.join(ROOT, "data", os.path.basename(stored))
    return moved if not os.path.exists(stored) and os.path.exists(moved) else stored


def checked_corpus(ckpt):
    """(folder, meta.json) of the corpus a checkpoint was trained on, once its files are whole and it is
    that corpus (check_same_corpus)."""
    data_dir = corpus_dir(ckpt)
    try:
        meta, _, tok_text = read_corpus_meta(data_dir)
        for split in ("train", "val"):
            read_tokens(data_dir, split, meta["dtype"])
        check_same_corpus(ckpt, tok_text, meta, data_dir)
        return data_dir, meta
    except FileNotFoundError as e:
        raise corpus_missing(data_dir, e) from None


def checkpoint_train_tokens(ckpt):
    """The pretraining tokens of the corpus a checkpoint was trained on (train.bin, read-only)."""
    data_dir, meta = checked_corpus(ckpt)
    return read_tokens(data_dir, "train", meta["dtype"])


def checkpoint_corpus(ckpt):
    """(validation tokens, facts.json) of the corpus a checkpoint was trained on."""
    data_dir, meta = checked_corpus(ckpt)
    try:
        return read_tokens(data_dir, "val", meta["dtype"]), load_facts(data_dir)
    except FileNotFoundError as e:
        raise corpus_missing(data_dir, e) from None


def corpus_missing(data_dir, e):
    """The error for a file of a checkpoint's corpus that is not there (e): the whole corpus gone, or one file."""
    if not os.path.exists(os.path.join(data_dir, "meta.json")):
        return FileNotFoundError(f"the corpus this checkpoint was trained on is no longer in {data_dir}; "
                                 "prepare it there again")
    return FileNotFoundError(f"{e.filename} is missing; {prepare_again(data_dir)}")
