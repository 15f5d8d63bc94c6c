import pytest

from data.tokenizer import EOT, encoding_from_text, get_encoding, save_ranks, train_bpe, word_counts

TEXT = ("Once upon a time, there was a little girl named Lily. She liked to play in the park. "
        "One day, Lily found a shiny red ball. \"Look what I found!\" said Lily. ") * 20


def test_bpe_learns_frequent_words_and_is_deterministic():
    counts = word_counts(TEXT)
    a, b = train_bpe(counts, 400), train_bpe(counts, 400)
    assert a == b
    assert len(a) == len(set(a)) and a[:256] == [bytes([i]) for i in range(256)]
    assert b" Lily" in a and b" found" in a


def test_roundtrip_through_tiktoken_file(tmp_path):
    ranks = train_bpe(word_counts(TEXT), 400)
    path = str(tmp_path / "t.tiktoken")
    save_ranks(path, ranks)
    enc = get_encoding(path)
    assert enc.n_vocab == len(ranks) + 1 and enc.eot_token == len(ranks)
    for s in [TEXT[:300], "Unseen wörds, ünïcode 123 and émojis 🙂!", "  spaces\n\nand lines\t"]:
        assert enc.decode(enc.encode(s)) == s
    ids = enc.encode("Lily" + EOT, allowed_special={EOT})
    assert ids[-1] == enc.eot_token
    # frequent words are one token: the merges were actually applied
    assert len(enc.encode(" Lily")) == 1
    with open(path, encoding="utf-8") as f:
        assert encoding_from_text(f.read()).encode(TEXT) == enc.encode(TEXT)


def test_excluded_words_learn_no_merge_and_pieces_are_learned():
    counts = word_counts(TEXT + " Zorvak Zorvak Zorvak", exclude=["Zorvak"], pieces=[" Zo", "rv"])
    assert " Zorvak" not in counts and counts[" Zo"] >= counts[" a"]
    ranks = train_bpe(counts, 400)
    assert b" Zo" in ranks and b"rv" in ranks and b" Zorvak" not in ranks


def test_vocab_too_small_is_refused():
    with pytest.raises(ValueError, match="at least 257"):
        train_bpe(word_counts(TEXT), 100)
