"""Tokenizers on real English text (the Wikipedia demo corpus): GPT-2 BPE, bert-base-uncased
WordPiece, SentencePiece with T5 sentinels, and `dist-pretrain tokenizer train`."""
import glob
import gzip
import json
import re
import subprocess
import sys
import time

import pytest

from dist_pretrain.data import preprocess
from dist_pretrain.data.demo_corpus import build_demo_corpus
from dist_pretrain.data.loader import read_manifest
from dist_pretrain.data.tokenizer import load_tokenizer
from dist_pretrain.data.train_tokenizer import main as train_main

# Plain prose: words, with ", " / ". " between clauses, ending in "." -- the lines whose
# uncased WordPiece decode is exactly the lower-cased text (the decoder puts spaces around
# other punctuation: "doesn ' t", "( that )").
_SIMPLE = re.compile(r"[A-Za-z]+( [A-Za-z]+)*([,.] [A-Za-z]+( [A-Za-z]+)*)*\.")


def _docs(files):
    return [json.loads(line)["text"] for f in files for line in gzip.open(f, "rt", encoding="utf-8")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    c4 = build_demo_corpus(str(tmp_path_factory.mktemp("corpus")))
    train = sorted(glob.glob(f"{c4}/c4-train.*"))
    valid = _docs([f"{c4}/c4-validation.00000-of-00001.json.gz"])
    lines = [line for d in valid + _docs(train[:1]) for line in d.split("\n") if line.strip()]
    return {"dir": c4, "train": train, "valid": valid, "lines": lines}


@pytest.fixture(scope="module")
def gpt2():
    return load_tokenizer("gpt2")


@pytest.fixture(scope="module")
def bert():
    return load_tokenizer("bert")


@pytest.fixture(scope="module")
def spiece(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("spiece")
    t0 = time.perf_counter()
    train_main(["--kind", "sentencepiece", "--input", f"{corpus['dir']}/c4-train.*",
                "--vocab-size", "2000", "--sentinels", "100", "--output", str(out)])
    print(f"sentencepiece training: {time.perf_counter() - t0:.1f}s")
    return out


def test_gpt2_bpe(gpt2, corpus):
    assert (gpt2.vocab_size, gpt2.eos_id) == (50257, 50256)
    assert gpt2.special_ids == {"eos": 50256} and gpt2.sentinel_ids == []
    assert gpt2.encode_batch(["Hello world", ""]) == [[15496, 995], []]
    docs = corpus["valid"]
    assert [gpt2.decode(ids) for ids in gpt2.encode_batch(docs)] == docs  # byte-level: lossless
    ids = gpt2.encode_batch(["a <|endoftext|> b"])[0]
    assert gpt2.eos_id not in ids and gpt2.decode(ids) == "a <|endoftext|> b"


def test_bert_wordpiece(bert, corpus):
    assert (bert.name, bert.vocab_size, bert.eos_id) == ("bert", 30522, 102)
    assert bert.special_ids == {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103, "eos": 102}
    assert bert.sentinel_ids == []
    assert bert.encode_batch(["hello world", "Hello World!", ""]) == [[7592, 2088], [7592, 2088, 999], []]
    # [CLS]/[SEP] are never added; a literal "[SEP]" in a document is text, not a separator.
    ids = bert.encode_batch(["Use [SEP] and [MASK] here"])[0]
    assert not set(ids) & {101, 102, 103} and bert.decode(ids) == "use [ sep ] and [ mask ] here"
    assert bert.decode(bert.encode_batch(["Café Déjà Vu"])[0]) == "cafe deja vu"  # uncased: accents stripped
    ascii_lines = [s for s in corpus["lines"] if s.isascii()]
    simple = [s for s in ascii_lines if _SIMPLE.fullmatch(s)]
    assert len(ascii_lines) > 1000 and len(simple) > 50
    encoded = bert.encode_batch(ascii_lines)
    assert not any(bert.special_ids["unk"] in ids for ids in encoded)
    squash = lambda s: "".join(s.split())  # noqa: E731
    assert all(squash(bert.decode(ids)) == squash(s.lower()) for s, ids in zip(ascii_lines, encoded))
    assert [bert.decode(ids) for ids in bert.encode_batch(simple)] == \
        [" ".join(s.lower().split()) for s in simple]


def test_sentencepiece_t5(spiece, corpus):
    tok = load_tokenizer(str(spiece / "spiece.model"))
    assert tok.vocab_size == 2000
    assert tok.special_ids == {"pad": 0, "eos": 1, "unk": 2} and tok.eos_id == 1
    # 100 user-defined sentinels right after the control symbols, all distinct.
    assert tok.sentinel_ids == list(range(3, 103))
    assert [tok.sp.id_to_piece(i) for i in tok.sentinel_ids[:2]] == ["<extra_id_0>", "<extra_id_1>"]
    assert tok.encode_batch(["<extra_id_7>"])[0][-1] == tok.sentinel_ids[7]
    # Lossless: identity normalization, kept whitespace, byte fallback for unseen characters.
    texts = corpus["lines"] + corpus["valid"] + ["  two  spaces\tand tab\n", "naïve café — 東京 😀"]
    encoded = tok.encode_batch(texts)
    assert [tok.decode(ids) for ids in encoded] == texts
    assert not any(tok.special_ids["unk"] in ids or tok.eos_id in ids for ids in encoded)
    again = load_tokenizer(str(spiece))  # the directory works too
    assert (again.vocab_hash, again.sentinel_ids) == (tok.vocab_hash, tok.sentinel_ids)
    assert again.info() == {"name": str(spiece / "spiece.model"), "vocab_size": 2000,
                            "eos_id": 1, "vocab_hash": tok.vocab_hash}


def test_sentencepiece_preprocess(spiece, corpus, tmp_path):
    """The SentencePiece model drives preprocessing like any other tokenizer."""
    tok = load_tokenizer(str(spiece))
    out = tmp_path / "shards"
    preprocess.main(["--input", f"{corpus['dir']}/c4-validation.*", "--tokenizer", str(spiece),
                     "--seq-len", "32", "--output", str(out), "--quiet"])
    m = read_manifest(str(out))
    assert m["tokenizer"] == tok.info()
    stream = sum((ids + [tok.eos_id] for ids in tok.encode_batch(corpus["valid"])), [])
    assert m["splits"]["valid"]["samples"] == (len(stream) - 1) // 32


@pytest.mark.parametrize("kind,vocab,extra", [
    ("bpe", 1000, []), ("wordpiece", 1000, []), ("unigram", 800, ["--max-bytes", "300K"])])
def test_train_cli(kind, vocab, extra, corpus, tmp_path):
    out = tmp_path / kind
    result = train_main(["--kind", kind, "--input", corpus["train"][0], "--vocab-size", str(vocab),
                         "--output", str(out), *extra])
    tok = load_tokenizer(str(out))
    assert tok.vocab_size == vocab == result["vocab_size"]
    assert result["vocab_hash"] == tok.vocab_hash == load_tokenizer(str(out / "tokenizer.json")).vocab_hash
    texts = corpus["lines"][:300]
    decoded = [tok.decode(ids) for ids in tok.encode_batch(texts)]
    if kind == "bpe":
        assert tok.special_ids == {"eos": 0} and tok.sentinel_ids == []
        assert decoded == texts
    elif kind == "wordpiece":
        assert tok.special_ids == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4, "eos": 3}
        assert tok.sentinel_ids == []
        squash = lambda s: "".join(s.split())  # noqa: E731
        ascii_pairs = [(t, d) for t, d in zip(texts, decoded) if t.isascii()]
        assert len(ascii_pairs) > 200 and all(squash(d) == squash(t.lower()) for t, d in ascii_pairs)
    else:
        assert tok.special_ids == {"pad": 0, "eos": 1, "unk": 2}
        assert tok.sentinel_ids == list(range(3, 103)) and result["text_bytes"] >= 300_000
        ids = tok.encode_batch(["a literal </s> here"])[0]  # special pieces unreachable from text
        assert tok.eos_id not in ids and tok.decode(ids) == "a literal </s> here"


def test_train_cli_module_entry_point(corpus, tmp_path):
    r = subprocess.run([sys.executable, "-m", "dist_pretrain.data.train_tokenizer", "--kind", "wordpiece",
                        "--input", corpus["train"][1], "--vocab-size", "600", "--output", str(tmp_path)],
                       capture_output=True, text=True, check=True)
    assert re.search(r"trained wordpiece tokenizer: vocab 600, .* in [\d.]+s", r.stdout), r.stdout
    assert load_tokenizer(str(tmp_path / "tokenizer.json")).vocab_size == 600
    with pytest.raises(SystemExit):
        train_main(["--kind", "bpe", "--input", str(tmp_path / "missing*.json.gz"),
                    "--vocab-size", "100", "--output", str(tmp_path / "x")])


def test_vocab_hash_distinct_and_stable(gpt2, bert, spiece, corpus, tmp_path):
    trained = tmp_path / "bpe"
    train_main(["--kind", "bpe", "--input", corpus["train"][2], "--vocab-size", "400",
                "--output", str(trained)])
    names = ["gpt2", "bert", str(spiece), str(trained)]
    hashes = [load_tokenizer(n).vocab_hash for n in names]
    assert len(set(hashes)) == len(hashes)
    assert hashes == [load_tokenizer(n).vocab_hash for n in names]  # stable across loads
    # The hash is the token -> id mapping, whatever file it was loaded from.
    bert.tokenizer.save(str(tmp_path / "bert.json"))
    assert load_tokenizer(str(tmp_path / "bert.json")).vocab_hash == bert.vocab_hash
    assert load_tokenizer(str(tmp_path / "bert.json")).special_ids == bert.special_ids
    with pytest.raises(ValueError, match="unknown tokenizer"):
        load_tokenizer("no-such-tokenizer")
