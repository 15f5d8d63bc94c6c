"""
Byte-level BPE: a readable trainer over word counts, saved in tiktoken's own `.tiktoken`
ranks format (one `base64(token_bytes) rank` per line), and encoded by tiktoken.

    ranks = train_bpe(word_counts(text), vocab_size=4096)
    save_ranks("tok.tiktoken", ranks)
    enc = get_encoding("tok.tiktoken")     # or get_encoding("gpt2") where tiktoken can fetch it
    enc.encode("Once upon a time", allowed_special={EOT})

Ranks 0..255 are the single bytes; rank 256 + i is the i-th merge; `<|endoftext|>` comes last,
so vocab_size counts it.
"""

import base64
import heapq
import re
from collections import Counter

import tiktoken

from common import write_text

EOT = "<|endoftext|>"
# GPT-2's split pattern, as tiktoken uses it when encoding.
PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# The same pattern in Python's `re` (no \p classes), used only to count words for training.
# [^\W\d_] is "a letter"; \d stands in for \p{N}. Any difference on exotic Unicode only
# changes which merges are learned, never how tiktoken encodes.
TRAIN_PAT = re.compile(r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+""")


def word_counts(text, exclude=(), pieces=()):
    """Counts of pre-tokenized pieces of text (special tokens removed). Words in `exclude`
    (with or without a leading space) are left out, so BPE learns no merge just for them;
    each of `pieces` is counted as often as the commonest word, so BPE learns it early."""
    drop = set(exclude) | {" " + w for w in exclude}
    counts = Counter()
    for part in text.split(EOT):
        counts.update(TRAIN_PAT.findall(part))
    for w in drop:
        counts.pop(w, None)
    top = max(counts.values(), default=1)
    for p in pieces:
        counts[p] += top
    return counts


def train_bpe(counts, vocab_size):
    """Learn merges until there are vocab_size - 1 tokens (the last id is <|endoftext|>).
    Returns the token byte strings in rank order. Deterministic: ties go to the pair whose
    bytes sort first."""
    n_tokens = vocab_size - 1
    if n_tokens < 256:
        raise ValueError(f"vocab_size must be at least 257 (256 bytes + <|endoftext|>), not {vocab_size}")
    words = [[bytes([b]) for b in w.encode("utf-8")] for w in counts]
    freq = list(counts.values())
    pair_count = Counter()                      # (left, right) -> weighted occurrences
    where = {}                                  # (left, right) -> set of word ids holding it
    for i, w in enumerate(words):
        for p in zip(w, w[1:]):
            pair_count[p] += freq[i]
            where.setdefault(p, set()).add(i)
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)

    ranks = [bytes([b]) for b in range(256)]
    known = set(ranks)
    while len(ranks) < n_tokens and heap:
        c, pair = heapq.heappop(heap)
        if -c != pair_count.get(pair, 0) or c == 0:
            continue                            # stale heap entry
        merged = pair[0] + pair[1]
        if merged not in known:
            known.add(merged)
            ranks.append(merged)
        changed = Counter()
        for i in where.pop(pair):
            w, f = words[i], freq[i]
            for p in zip(w, w[1:]):             # forget this word's pairs ...
                changed[p] -= f
            j, out = 0, []
            while j < len(w):
                if j + 1 < len(w) and w[j] == pair[0] and w[j + 1] == pair[1]:
                    out.append(merged)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            words[i] = out
            for p in zip(out, out[1:]):         # ... and count its new ones
                changed[p] += f
                where.setdefault(p, set()).add(i)
        for p, d in changed.items():
            if d:
                pair_count[p] += d
                heapq.heappush(heap, (-pair_count[p], p))
        pair_count.pop(pair, None)
    return ranks


def save_ranks(path, ranks):
    """Atomically (common.write_text)."""
    write_text(path, "".join(f"{base64.b64encode(tok).decode('ascii')} {i}\n" for i, tok in enumerate(ranks)))


def encoding_from_text(text):
    """tiktoken Encoding from the text of a .tiktoken ranks file (as stored in checkpoints)."""
    # Parsed here rather than with tiktoken.load: that caches files by path in a temp folder,
    # so a retrained file at the same path would silently load the old ranks.
    ranks = {}
    for line in text.splitlines():
        if line.strip():
            tok, rank = line.split()                    # a damaged line: ValueError, as from the two below
            ranks[base64.b64decode(tok, validate=True)] = int(rank)
    if len(ranks) < 256 or sorted(ranks.values()) != list(range(len(ranks))):   # empty, or a rank lost or repeated
        raise ValueError(f"it ranks {len(ranks)} tokens, not 256 or more ranked 0 to n - 1 once each")
    return tiktoken.Encoding(name=f"bpe{len(ranks) + 1}", pat_str=PAT, mergeable_ranks=ranks,
                             special_tokens={EOT: len(ranks)})


def read_tokenizer(name):
    """(Encoding, text that rebuilds it): `gpt2` for tiktoken's stock encoding (it fetches its
    files once, so the first use needs the network), else a path to a .tiktoken ranks file."""
    if name == "gpt2":
        try:
            return tiktoken.get_encoding("gpt2"), "gpt2"
        except Exception as e:
            raise RuntimeError(f"tiktoken could not load the gpt2 encoding ({type(e).__name__}); "
                               "it downloads its files once, so it needs the network the first time") from None
    with open(name, "r", encoding="utf-8") as f:
        text = f.read()
    return encoding_from_text(text), text


def get_encoding(name):
    return read_tokenizer(name)[0]
