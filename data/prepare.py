"""
Prepare a training corpus in three stages, each skipped when its output exists (so the
script is safe to re-run and an interrupted run redoes only the unfinished stage). Each
stage records the settings it was written with (stages.json; meta.json for the last), and a
re-run with other settings is refused rather than mixing two corpora:

  1. text:      train.txt, val.txt (stories + background-fact documents)
  2. tokenizer: bpe<vocab>.tiktoken, a byte-level BPE trained on train.txt (or gpt2)
  3. tokens:    train.bin, val.bin (uint16 token ids; uint32 if the vocab needs it), then
                facts.json (new facts and documents are kept only if pretraining holds all
                their tokens) and meta.json (tokenizer, vocab size, dtype, counts)

    python -m data.prepare                                   # default generated corpus
    python -m data.prepare --preset classroom                # the classroom's small one, in data/classroom
    python -m data.prepare --source tinystories              # download TinyStories (network)
    python -m data.prepare --source tinystories --tinystories-file F   # a local TinyStories text file F instead

Validation text is stories only (never facts), so val loss measures language.
"""

import hashlib
import json
import os
import random
import sys
import urllib.request
from dataclasses import dataclass

import numpy as np

if __package__ in (None, ""):  # allow `python data/prepare.py` as well as `python -m data.prepare`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import (Interrupted, config_parser, interruptible, parse_args, split, write_atomic, write_json,
                    write_text)
from data import corpus, documents, world as kworld
from data.tokenizer import EOT, get_encoding, read_tokenizer, save_ranks, train_bpe, word_counts

HERE = os.path.dirname(os.path.abspath(__file__))
TINYSTORIES_URL = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStories-train.txt"


@dataclass
class DataConfig:
    out_dir: str = os.path.join(HERE, "generated")  # where the three stages write
    source: str = "generated"     # generated | tinystories
    tinystories_file: str = ""    # local <|endoftext|>-separated text; empty = download
    max_stories: int = 20000      # cap on TinyStories stories read (the download is ~2 GB)
    seed: int = 1337              # one seed for stories, facts and their order
    n_stories: int = 20000        # generated training stories
    n_val_stories: int = 500      # held-out stories for validation loss
    world: str = "open"           # open (answers from large pools) | closed (15 answers per relation, for comparison)
    n_people: int = 200           # background people (3-8 of 14 relations each)
    n_towns: int = 30             # background towns (3-6 of 6 relations each)
    n_animals: int = 30           # background animals (3-6 of 6 relations each)
    fact_repeats: int = 140       # documents per background entity in the training text
    tokenizer: str = "bpe"        # bpe (trained here) | gpt2 (tiktoken's, needs its files)
    vocab_size: int = 2560        # BPE vocabulary, <|endoftext|> included (4096 costs 30% more per step here)


# The classroom preset's corpus (--preset classroom; docs/COURSE.md): the same open-answer world
# with 40 people, 8 towns and 8 animals, told in 600 stories (more stories teach more language,
# and the facts are then forgotten more: python -m experiments classroom). Every field is named,
# so a later change of the defaults neither moves it nor makes its prepared folder refuse the
# settings it was written with.
CLASSROOM_DATA = dict(out_dir=os.path.join(HERE, "classroom"), source="generated", tinystories_file="",
                      max_stories=20000, seed=1337, n_stories=600, n_val_stories=100, world="open",
                      n_people=40, n_towns=8, n_animals=8, fact_repeats=150, tokenizer="bpe", vocab_size=1024)


STAGES = ("text", "tokenizer", "tokens")


def stage_settings(cfg, stage):
    """The settings a stage's output depends on: all but the folder (the text: not the
    tokenizer's two), as JSON gives them back."""
    tokenizer = ("tokenizer", "vocab_size") if stage == "text" else ()
    s = {k: v for k, v in vars(cfg).items() if k != "out_dir" and k not in tokenizer}
    return json.loads(json.dumps(s))


def other_settings(cfg, stage, recorded):
    """The refusal when a stage's output was written with other settings than the command's."""
    diff = [f"--{k.replace('_', '-')} {recorded.get(k)} there, {v} here"
            for k, v in stage_settings(cfg, stage).items() if recorded.get(k) != v]
    return (f"{cfg.out_dir} holds a corpus prepared with other settings ({', '.join(diff)}); "
            "run with those, pass another --out-dir, or delete that folder")


def records(cfg):
    """Stage -> the settings it was written with, of the stages that finished (stages.json)."""
    path = os.path.join(cfg.out_dir, "stages.json")
    if not os.path.exists(path):
        return {}
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f)


def stage_done(cfg, stage, paths):
    """Whether a stage can be skipped: its outputs exist and were recorded with these settings.
    Outputs recorded with other settings are refused; outputs with no record (a run killed
    before recording them) are written again."""
    recorded = records(cfg).get(stage)
    if recorded is None or not all(os.path.exists(p) for p in paths):
        return False
    if recorded != stage_settings(cfg, stage):
        raise ValueError(other_settings(cfg, stage, recorded))
    return True


def record(cfg, stage, done):
    """Before a stage is written (done False): forget it and the stages after it, whose input it
    is. After (done True): record the settings it was written with."""
    kept = {k: v for k, v in records(cfg).items() if STAGES.index(k) < STAGES.index(stage)}
    if done:
        kept[stage] = stage_settings(cfg, stage)
    write_json(os.path.join(cfg.out_dir, "stages.json"), kept)


def world_of(cfg):
    return kworld.make_world(cfg.seed, cfg.n_people, cfg.n_towns, cfg.n_animals, closed=cfg.world == "closed")


def read_tinystories(cfg):
    """Stories from a local file, or downloaded from Hugging Face (cached in out_dir)."""
    path = cfg.tinystories_file
    if not path:
        path = os.path.join(cfg.out_dir, "TinyStories-train.txt")
        if not os.path.exists(path):
            download(TINYSTORIES_URL, path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"TinyStories file {path} does not exist; pass --tinystories-file PATH")
    with open(path, "r", encoding="utf-8") as f:
        parts = f.read().split(EOT)
    # A story cut off at the end of a sample file has no closing <|endoftext|>: drop it.
    stories = [s.strip() for s in parts[:-1] if s.strip()]
    return stories[:cfg.max_stories]


def download(url, path):
    from tqdm import tqdm
    print(f"downloading {url}")
    with urllib.request.urlopen(url) as r:
        total = int(r.headers.get("Content-Length", 0)) or None
        def w(f):
            with tqdm(total=total, unit="B", unit_scale=True) as bar:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
        write_atomic(path, w)


def stage_text(cfg):
    paths = [os.path.join(cfg.out_dir, n) for n in ("train.txt", "val.txt")]
    if stage_done(cfg, "text", paths):
        return
    record(cfg, "text", done=False)
    rng = random.Random(cfg.seed)
    world = world_of(cfg)
    if cfg.source == "generated":
        stories = [corpus.story(rng) for _ in range(cfg.n_stories + cfg.n_val_stories)]
    else:                                              # tinystories (check_options)
        stories = read_tinystories(cfg)
        if len(stories) < 2 * cfg.n_val_stories:
            raise ValueError(f"only {len(stories)} TinyStories stories; need at least {2 * cfg.n_val_stories}")
    val, train = stories[:cfg.n_val_stories], stories[cfg.n_val_stories:]
    docs = train + kworld.background_documents(rng, world, cfg.fact_repeats)
    rng.shuffle(docs)
    write_text(paths[0], EOT.join(docs) + EOT)
    write_text(paths[1], EOT.join(val) + EOT)
    record(cfg, "text", done=True)
    print(f"text: {len(train):,} stories + {len(docs) - len(train):,} fact documents, "
          f"{len(world.background)} background facts")


def tokenizer_path(cfg):
    return "gpt2" if cfg.tokenizer == "gpt2" else os.path.join(cfg.out_dir, f"bpe{cfg.vocab_size}.tiktoken")


def stage_tokenizer(cfg):
    path = tokenizer_path(cfg)
    if cfg.tokenizer == "gpt2" or stage_done(cfg, "tokenizer", [path]):
        return
    record(cfg, "tokenizer", done=False)
    with open(os.path.join(cfg.out_dir, "train.txt"), "r", encoding="utf-8") as f:
        text = f.read()
    # Invented names are left out of the merge statistics and their syllables (and the towns'
    # endings) put in: every name, old or new, is then spelled in the same few tokens, so a new
    # name is as readable to the model as an old one (no name becomes one opaque token).
    pieces = [p + s for s in kworld.SYLLABLES for p in ("", " ")]
    pieces += [p + s.capitalize() for s in kworld.SYLLABLES for p in ("", " ")] + kworld.TOWN_ENDS
    counts = word_counts(text, exclude=world_of(cfg).invented, pieces=pieces)
    ranks = train_bpe(counts, cfg.vocab_size)
    save_ranks(path, ranks)
    record(cfg, "tokenizer", done=True)
    print(f"tokenizer: {len(ranks) + 1} tokens from {len(counts):,} distinct words")


def rendered_lines(fact):
    """Every line a world fact is rendered as in the corpus (finetune.batch_texts: the lines a
    stream fact is trained on)."""
    return fact.statements() + [fact.qa_text(i) for i in range(len(fact.questions()))]


def spelled_in(enc, seen, lines):
    """Does every token of every line occur in pretraining (seen: the token ids of train.bin)? A token
    the model never saw has an untrained embedding, and new entities could not be told apart by it."""
    return all(set(enc.encode(t)) <= seen for t in lines)


def usable_for(enc, seen):
    """usable(facts): every line of the facts is spelled in tokens pretraining holds (spelled_in)."""
    return lambda facts: spelled_in(enc, seen, (t for f in facts for t in rendered_lines(f)))


def seen_tokens(train_tokens):
    """The token ids that pretraining holds: the ones a new fact may be spelled in."""
    return set(np.unique(train_tokens).tolist())


def new_fact_entries(cfg, enc, seen, n, at_most=False):
    """The first n facts of the new-fact stream whose tokens all occur in pretraining (at_most:
    fewer if fewer are). facts.json holds the first 1000 (on real text, whose tokenizer spells
    fewer invented names in tokens the text holds, as many as there are); the same call gives
    the same prefix and more (python -m experiments long asks for twice its --facts)."""
    return [f.to_dict() for f in world_of(cfg).new_facts(n, usable_for(enc, seen), at_most)]


def document_set(cfg, enc, seen):
    """The documents of facts.json (data/documents.py), those spelled in tokens pretraining holds:
    drawn after the world from a generator of their own, so they change none of its sets."""
    usable = lambda doc: spelled_in(enc, seen, documents.every_line(doc))
    return documents.make_documents(world_of(cfg), documents.N_DOCUMENTS, usable, closed=cfg.world == "closed")


def knowledge_base(cfg, enc, seen):
    """facts.json: the background facts, the first 1000 new facts, 100 facts of each
    generalisation set (fewer where fewer are spelled in tokens pretraining holds, as a large
    vocabulary on a small corpus leaves), the world's measured statistics (printed too), and the
    documents."""
    world, usable = world_of(cfg), usable_for(enc, seen)
    entropy = kworld.answer_entropy(world.background)
    stats = {"collision_share": kworld.collision_share(world),
             "answers": {r: {"facts": n, "distinct": d, "entropy_bits": round(h, 3)}
                         for r, (n, d, h) in entropy.items()}}
    bits = sorted(h for _, _, h in entropy.values())
    new = new_fact_entries(cfg, enc, seen, 1000, at_most=True)
    docs = document_set(cfg, enc, seen)
    print(f"facts: {len(world.background)} background over {len(entropy)} relations (answer entropy "
          f"{bits[0]:.1f}-{bits[-1]:.1f} bits per relation), {len(new)} new; new facts sharing a (relation, "
          f"answer) pair with the background: {stats['collision_share']:.1%}; {len(docs)} documents "
          f"({sum(len(d.facts) for d in docs)} facts)")
    return {"seed": cfg.seed, "world": cfg.world, "stats": stats,
            "background": [f.to_dict() for f in world.background],
            "new": new,
            "new_answers": [f.to_dict() for f in kworld.take(world.new_answers, 100, usable, at_most=True)],
            "new_relations": [f.to_dict() for f in kworld.take(world.new_relations, 100, usable, at_most=True)],
            "documents": [d.to_dict() for d in docs]}


def stage_tokens(cfg):
    """Token arrays, then facts.json, then meta.json (its presence marks the stage done)."""
    meta_path = os.path.join(cfg.out_dir, "meta.json")
    if os.path.exists(meta_path):
        return
    enc = get_encoding(tokenizer_path(cfg))
    dtype = np.uint16 if enc.n_vocab <= 65536 else np.uint32
    counts, seen = {}, None
    for split in ("train", "val"):
        with open(os.path.join(cfg.out_dir, f"{split}.txt"), "r", encoding="utf-8") as f:
            ids = enc.encode(f.read(), allowed_special={EOT})
        arr = np.array(ids, dtype=dtype)
        write_atomic(os.path.join(cfg.out_dir, f"{split}.bin"), arr.tofile)
        counts[split] = len(arr)
        seen = seen_tokens(arr) if split == "train" else seen

    write_json(os.path.join(cfg.out_dir, "facts.json"), knowledge_base(cfg, enc, seen))
    meta = {"tokenizer": tokenizer_path(cfg) if cfg.tokenizer == "gpt2" else os.path.basename(tokenizer_path(cfg)),
            "vocab_size": enc.n_vocab, "eot": enc.eot_token, "dtype": np.dtype(dtype).name,
            "train_tokens": counts["train"], "val_tokens": counts["val"], "config": vars(cfg)}
    write_json(meta_path, meta)
    print(f"tokens: {counts['train']:,} train, {counts['val']:,} val ({meta['dtype']})")


def check_options(cfg):
    """ValueError naming the first setting that could not make a corpus, before any stage is written
    (a stage written with a bad setting would make the folder refuse the corrected rerun)."""
    for name, value, choices in (("source", cfg.source, ("generated", "tinystories")), ("world", cfg.world,
                                 ("open", "closed")), ("tokenizer", cfg.tokenizer, ("bpe", "gpt2"))):
        if value not in choices:
            raise ValueError(f"unknown --{name} {value!r}: use {' or '.join(choices)}")
    for name in ("max_stories", "n_stories", "n_val_stories", "n_people", "n_towns", "n_animals", "fact_repeats"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(cfg, name)}")
    if cfg.tokenizer == "bpe" and cfg.vocab_size < 257:
        raise ValueError(f"--vocab-size must be at least 257 (256 bytes + <|endoftext|>), not {cfg.vocab_size}")
    if cfg.source == "tinystories" and cfg.tinystories_file and not os.path.isfile(cfg.tinystories_file):
        raise FileNotFoundError(f"--tinystories-file {cfg.tinystories_file} is not a file; give a TinyStories text")


def prepare(cfg):
    """Run every unfinished stage; return the out_dir."""
    check_options(cfg)
    meta_path = os.path.join(cfg.out_dir, "meta.json")
    if os.path.exists(meta_path):                      # the last stage's record: the corpus is complete
        with open(meta_path, "r", encoding="utf-8") as f:
            recorded = {k: v for k, v in json.load(f).get("config", {}).items() if k != "out_dir"}
        if recorded != stage_settings(cfg, "tokens"):
            raise ValueError(other_settings(cfg, "tokens", recorded))
        return cfg.out_dir
    os.makedirs(cfg.out_dir, exist_ok=True)
    stage_text(cfg)
    stage_tokenizer(cfg)
    stage_tokens(cfg)
    return cfg.out_dir


def read_corpus_meta(data_dir):
    """(meta.json, Encoding, tokenizer text) of a prepared corpus."""
    path = os.path.join(data_dir, "meta.json")
    with open(path, "r", encoding="utf-8") as f:
        try:
            meta = json.load(f)
        except ValueError:                                 # not JSON, or not UTF-8
            meta = None
    missing = [k for k in ("tokenizer", "vocab_size", "dtype") if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise ValueError(f"{path} is damaged or from another version (no {', '.join(missing)}); "
                         f"{prepare_again(data_dir)}")
    name = meta["tokenizer"] if meta["tokenizer"] == "gpt2" else os.path.join(data_dir, meta["tokenizer"])
    try:
        enc, text = read_tokenizer(name)
    except ValueError as e:
        raise ValueError(f"{name} is damaged ({e}); {prepare_again(data_dir)}") from None
    return meta, enc, text


def prepare_again(data_dir):
    """The fix for a damaged corpus file: the stages skip files that exist, so the folder goes first."""
    return f"delete {data_dir} and prepare it again (python -m data.prepare)"


def read_tokens(data_dir, split, dtype):
    """train.bin or val.bin (split) of a prepared corpus, read-only; an empty file, or one that is not a
    whole number of token ids, is refused naming it (numpy's own message names neither file nor fix)."""
    path = os.path.join(data_dir, f"{split}.bin")
    size, width = os.path.getsize(path), np.dtype(dtype).itemsize
    if size == 0 or size % width:
        what = "it is empty" if size == 0 else f"its {size} bytes are not a whole number of {dtype} token ids"
        raise ValueError(f"{path} is damaged ({what}); {prepare_again(data_dir)}")
    return np.memmap(path, dtype=dtype, mode="r")


def corpus_fingerprint(data_dir):
    """A sha256 of what a prepared corpus holds, not of where it is: its tokenizer, the size of train.bin and
    every byte of val.bin (small). Checkpoints keep it, so a corpus that moved with its project is still
    theirs, and another one in its place is refused by its content."""
    _, _, tok_text = read_corpus_meta(data_dir)
    h = hashlib.sha256(tok_text.encode("utf-8"))
    h.update(str(os.path.getsize(os.path.join(data_dir, "train.bin"))).encode())
    with open(os.path.join(data_dir, "val.bin"), "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def load_facts(data_dir):
    """facts.json of a prepared corpus: {"seed", "world", "stats", "background", "new", "new_answers",
    "new_relations", "documents"} (no "documents" in a corpus prepared before them: load_documents).
    A file that is not JSON or lacks a list of facts is refused naming it."""
    path = os.path.join(data_dir, "facts.json")
    with open(path, "r", encoding="utf-8") as f:
        try:
            kb = json.load(f)
        except ValueError:                                 # truncated, or not UTF-8
            kb = None
    lists = ("background", "new", "new_answers", "new_relations")
    missing = [k for k in lists if not (isinstance(kb, dict) and isinstance(kb.get(k), list))]
    if missing:
        raise ValueError(f"{path} is damaged or from another version (no list of {', '.join(missing)}); "
                         f"{prepare_again(data_dir)}")
    return kb


def load_documents(data_dir):
    """The documents of a prepared corpus (data.documents.Document): facts.json's, or, for a corpus
    prepared before facts.json held them, the same ones drawn now from its settings and tokens."""
    kb = load_facts(data_dir)
    if "documents" in kb:
        return [documents.Document.from_dict(d) for d in kb["documents"]]
    meta, enc, _ = read_corpus_meta(data_dir)
    cfg = DataConfig(**{**meta["config"], "out_dir": data_dir})
    return document_set(cfg, enc, seen_tokens(read_tokens(data_dir, "train", meta["dtype"])))


@interruptible
def main(argv=None):
    presets = {"preset": {"default": {}, "classroom": CLASSROOM_DATA}}
    cfg = split(parse_args(config_parser(__doc__, DataConfig, presets=presets), argv, presets), DataConfig)
    if cfg.source == "tinystories" and cfg.out_dir == DataConfig.out_dir:
        cfg.out_dir = os.path.join(HERE, "tinystories")
    try:
        prepare(cfg)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        raise Interrupted(f"the stages it finished are kept in {cfg.out_dir}; run it again to go on") from None


if __name__ == "__main__":
    main()
