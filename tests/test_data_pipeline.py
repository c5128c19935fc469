"""Data path end to end on real Wikipedia text: demo corpus -> GPT-2 shards -> loaders."""
import glob
import gzip
import hashlib
import json
import os
import re
import time

import pytest

from dist_pretrain.data import demo_corpus, preprocess
from dist_pretrain.data.loader import build_lm_loader, read_manifest
from dist_pretrain.data.tokenizer import load_tokenizer

SEQ_LEN = 64


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("gpt2")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    t0 = time.perf_counter()
    demo_corpus.main(["--output", str(root / "corpus")])
    print(f"demo corpus: {time.perf_counter() - t0:.2f}s")
    c4 = root / "corpus" / "c4" / "en"
    out = root / "shards"
    preprocess.main(["--input", str(c4 / "*.json.gz"), "--tokenizer", "gpt2", "--seq-len",
                     str(SEQ_LEN), "--output", str(out), "--samples-per-shard", "400", "--quiet"])
    return c4, str(out)


def _docs(files):
    return [json.loads(line)["text"] for f in files for line in gzip.open(f, "rt", encoding="utf-8")]


def test_tokenizer_gpt2(tok, tmp_path):
    assert (tok.vocab_size, tok.eos_id) == (50257, 50256)
    assert tok.encode_batch(["Hello world", ""]) == [[15496, 995], []]
    assert tok.decode(tok.encode_batch([" naïve café — ok"])[0]) == " naïve café — ok"
    tok.tokenizer.save(str(tmp_path / "tokenizer.json"))
    again = load_tokenizer(str(tmp_path / "tokenizer.json"))
    assert (again.vocab_hash, again.eos_id) == (tok.vocab_hash, tok.eos_id)
    with pytest.raises(ValueError, match="unknown tokenizer"):
        load_tokenizer("no-such-tokenizer")


def test_demo_corpus_is_c4_layout(data):
    c4, _ = data
    names = sorted(os.listdir(c4))
    assert names == [f"c4-train.{i:05d}-of-00004.json.gz" for i in range(4)] + \
        ["c4-validation.00000-of-00001.json.gz"]
    docs = [json.loads(line) for f in sorted(c4.iterdir()) for line in gzip.open(f, "rt")]
    assert len(docs) > 100
    for d in docs:
        assert set(d) == {"text", "url", "timestamp"}
        assert d["url"].startswith("https://en.wikipedia.org/wiki/")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", d["timestamp"])
        assert "[[" not in d["text"] and "{{" not in d["text"] and "<ref" not in d["text"]
    anarchism = next(d["text"] for d in docs if d["url"].endswith("/Anarchism"))
    assert "Anarchism is a political philosophy" in anarchism


@pytest.mark.parametrize("split,pattern", [("train", "c4-train.*"), ("valid", "c4-validation.*")])
def test_round_trip_reproduces_token_stream(data, tok, split, pattern):
    # Packing is per input file: each file's documents + EOS form one stream, cut into
    # overlapping seq_len + 1 windows, remainder dropped; shards are listed file by file.
    c4, out = data
    m = read_manifest(out)
    files = list(dict.fromkeys(s["source_files"][0] for s in m["splits"][split]["shards"]))
    assert sorted(files) == sorted(glob.glob(str(c4 / pattern)))
    expected = []
    for f in files:
        stream = [t for ids in tok.encode_batch(_docs([f])) for t in ids + [tok.eos_id]]
        n = (len(stream) - 1) // SEQ_LEN
        expected += [stream[i * SEQ_LEN: i * SEQ_LEN + SEQ_LEN + 1] for i in range(n)]
    loader = build_lm_loader(out, split, 0, 1, num_workers=0)
    samples = [b["tokens"] for b in loader]
    assert all(s.shape == (SEQ_LEN + 1,) for s in samples)
    assert len(samples) == m["splits"][split]["samples"] == len(expected)
    assert [s.tolist() for s in samples] == expected
    assert m["splits"][split]["tokens"] == len(samples) * SEQ_LEN
    for shard in m["splits"][split]["shards"]:
        with open(os.path.join(out, shard["path"]), "rb") as f:
            blob = f.read()
        assert hashlib.sha256(blob).hexdigest() == shard["sha256"] and len(blob) == shard["bytes"]


def test_manifest(data, tok):
    m = read_manifest(data[1])
    assert m["seq_len"] == SEQ_LEN and m["total_tokens"] == m["splits"]["train"]["tokens"]
    assert m["tokenizer"] == {"name": "gpt2", "vocab_size": 50257, "eos_id": 50256,
                              "vocab_hash": tok.vocab_hash}
    # shards are per input file: {split}-{file_id}-{k:05d}.tar, file_id = key-safe stem + path hash
    ids = preprocess.file_ids(sorted(str(p) for p in data[0].iterdir()))
    fid = ids[str(data[0] / "c4-validation.00000-of-00001.json.gz")]
    assert re.fullmatch(r"c4-validation-00000-of-00001-[0-9a-f]{8}", fid)
    assert [s["path"] for s in m["splits"]["valid"]["shards"]] == [f"valid-{fid}-{k:05d}.tar" for k in range(2)]
    assert all("validation" in f for s in m["splits"]["valid"]["shards"] for f in s["source_files"])


def _rows(loader):
    return [(b["index"], b["tokens"].tobytes()) for b in loader]


@pytest.mark.parametrize("split,dp_size,workers", [("train", 2, 2), ("valid", 4, 2), ("valid", 2, 3)])
def test_exactly_once_dp_ranks_are_disjoint_and_complete(data, split, dp_size, workers):
    out = data[1]
    total = read_manifest(out)["splits"][split]["samples"]
    loaders = [build_lm_loader(out, split, r, dp_size, block=8, num_workers=workers) for r in range(dp_size)]
    per_rank = [_rows(ld) for ld in loaders]
    assert [len(r) for r in per_rank] == [ld.num_samples for ld in loaders]
    assert sum(map(len, per_rank)) == total == len(set().union(*map(set, per_rank)))
    # dealt by sample in blocks of 8: rank r holds samples [8r, 8r + 8) of every 8 x dp_size
    for r, rows in enumerate(per_rank):
        assert all((i // 8) % dp_size == r for i, _ in rows)
        assert [i for i, _ in rows] == sorted(i for i, _ in rows)


@pytest.mark.parametrize("dp_size,workers", [(2, 1), (4, 3), (1, 3)])
def test_evaluated_samples_do_not_depend_on_dp_size_or_workers(data, dp_size, workers):
    """The first n samples in manifest order, each once, every rank the same count, and the
    same micro-batches (4 consecutive samples) as one rank with no worker process reads."""
    out = data[1]
    n, block = 3 * 16, 16 // dp_size
    one = list(build_lm_loader(out, "valid", 0, 1, block=16, num_workers=0, limit=n))
    assert [s["index"] for s in one] == list(range(n))
    per_rank = [list(build_lm_loader(out, "valid", r, dp_size, block=block, num_workers=workers, limit=n))
                for r in range(dp_size)]
    assert {len(p) for p in per_rank} == {n // dp_size}
    merged = sorted((s for p in per_rank for s in p), key=lambda s: s["index"])
    assert [s["index"] for s in merged] == list(range(n))
    assert all((a["tokens"] == b["tokens"]).all() for a, b in zip(merged, one))
    micro = {tuple(s["index"] for s in p[i:i + 4]) for p in per_rank for i in range(0, len(p), 4)}
    assert micro == {tuple(range(i, i + 4)) for i in range(0, n, 4)}


def test_bad_lines_txt_and_val_fraction(tmp_path):
    good = [json.dumps({"text": f"Document number {i} about cats."}) for i in range(40)]
    bad = ["{not json", json.dumps({"body": "no text field"}), json.dumps({"text": 7}), "[1, 2]"]
    (tmp_path / "a.jsonl").write_text("\n".join(good[:20] + bad + good[20:]) + "\n")
    (tmp_path / "b.txt").write_text("A whole plain text file is one document.\n" * 20)
    m = preprocess.main(["--input", str(tmp_path / "a.jsonl"), "--input", str(tmp_path / "*.txt"),
                         "--tokenizer", "gpt2", "--seq-len", "16", "--output", str(tmp_path / "out"),
                         "--val-fraction", "0.25", "--max-bad-fraction", "0.1", "--quiet"])
    assert m["bad_lines"] == {str(tmp_path / "a.jsonl"): 4}
    docs = {s: m["splits"][s]["docs"] for s in ("train", "valid")}
    assert sum(docs.values()) == 41 and docs["valid"] > 0 and docs["train"] > docs["valid"]
    with pytest.raises(SystemExit):  # refuses to clobber an existing dataset
        preprocess.main(["--input", str(tmp_path / "a.jsonl"), "--tokenizer", "gpt2",
                         "--seq-len", "16", "--output", str(tmp_path / "out"), "--quiet"])


def test_missing_data_dir_says_how_to_create_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*dist-pretrain preprocess"):
        build_lm_loader(str(tmp_path / "nope"), "train", 0, 1)
    with pytest.raises(FileNotFoundError, match=r"manifest\.json not found.*dist-pretrain preprocess"):
        read_manifest(str(tmp_path))
