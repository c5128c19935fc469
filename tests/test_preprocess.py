"""Scaled-out preprocessing: per-file packing, 1 rank == 2 MPI ranks, resume, bad lines, docs format.

Real text: the C4-layout Wikipedia demo corpus. MPI runs use the venv's pip-MPICH
``mpiexec -n 2`` under a subprocess timeout (a hang is a failure, not a stuck CI job).
"""
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from dist_pretrain.data import demo_corpus, preprocess
from dist_pretrain.data.sentences import split_sentences
from dist_pretrain.data.tokenizer import load_tokenizer

SEQ_LEN = 64
MPIEXEC = Path(sys.executable).parent / "mpiexec"
TIMEOUT = 180
_MPI_VARS = ("PMI_RANK", "PMI_SIZE", "PMI_FD", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("gpt2")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return Path(demo_corpus.build_demo_corpus(str(tmp_path_factory.mktemp("corpus"))))


def _args(corpus, out, *extra):
    return ["--input", str(corpus / "*.json.gz"), "--tokenizer", "gpt2", "--seq-len", str(SEQ_LEN),
            "--output", str(out), "--samples-per-shard", "300", "--quiet", *extra]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in _MPI_VARS}
    env.update(extra)
    return env


def _run(cmd, **env):
    return subprocess.run(cmd, env=_env(**env), capture_output=True, text=True, timeout=TIMEOUT)


def _mpi(n, argv, **env):
    return _run([str(MPIEXEC), "-n", str(n), sys.executable, "-m", "dist_pretrain", "preprocess", *argv], **env)


def _stats(out):
    return json.loads((Path(out) / preprocess.STATS).read_text())


def _manifest(out):
    return json.loads((Path(out) / preprocess.MANIFEST).read_text())


def _without_ranks(m):
    m = json.loads(json.dumps(m))
    m.pop("ranks")
    for split in m["splits"].values():
        for shard in split["shards"]:
            shard.pop("rank")
    for f in m["files"]:
        f.pop("rank")
    return m


def _samples(path):
    """``[(key, {field: array})]`` of one shard, in tar order."""
    out = {}
    with tarfile.open(path) as tf:
        for member in tf:
            key, field = member.name.split(".", 1)
            arr = np.load(io.BytesIO(tf.extractfile(member).read()), allow_pickle=False)
            out.setdefault(key, {})[field] = arr
    return list(out.items())


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def one_rank(corpus, tmp_path_factory, monkeypatch_module):
    out = tmp_path_factory.mktemp("one") / "shards"
    for var in _MPI_VARS:
        monkeypatch_module.delenv(var, raising=False)
    monkeypatch_module.setitem(sys.modules, "mpi4py", None)  # a plain run must never import MPI
    m = preprocess.main(_args(corpus, out))
    return out, m


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def two_ranks(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("two") / "shards"
    r = _mpi(2, _args(corpus, out))
    assert r.returncode == 0, r.stderr
    return out


def test_two_mpi_ranks_equal_one_rank(one_rank, two_ranks, corpus):
    out1, m1 = one_rank
    m2 = _manifest(two_ranks)
    assert m1 == _manifest(out1)
    assert (m1["ranks"], m2["ranks"]) == (1, 2)
    assert m2["total_tokens"] == m1["total_tokens"] == m1["splits"]["train"]["tokens"] > 0
    assert _without_ranks(m2) == _without_ranks(m1)  # same shard list, sizes, sha256, counts
    for split in ("train", "valid"):
        shards = m1["splits"][split]["shards"]
        assert [s["path"] for s in shards] == sorted(s["path"] for s in shards)
        for s in shards:  # the bytes on disk are what the manifests say, on both sides
            assert _sha(out1 / s["path"]) == _sha(two_ranks / s["path"]) == s["sha256"]
            assert os.path.getsize(two_ranks / s["path"]) == s["bytes"]
    # each rank wrote its own files, all files were written, both ranks had work
    by_rank = _stats(two_ranks)["files_by_rank"]
    assert len(by_rank) == 2 and all(by_rank)
    assert sorted(sum(by_rank, [])) == sorted(m2["inputs"]) and not set(by_rank[0]) & set(by_rank[1])
    assert {f["path"]: f["rank"] for f in m2["files"]} == {p: r for r, ps in enumerate(by_rank) for p in ps}
    assert all(s["rank"] == (0 if s["source_files"][0] in by_rank[0] else 1)
               for s in m2["splits"]["train"]["shards"])


def test_shard_and_key_layout(one_rank, tok, corpus):
    out, m = one_rank
    ids = preprocess.file_ids(m["inputs"])
    for f, fid in ids.items():
        assert "." not in fid and re.fullmatch(r"[A-Za-z0-9-]+-[0-9a-f]{8}", fid)
    f0 = str(corpus / "c4-train.00000-of-00004.json.gz")
    shards = [s for s in m["splits"]["train"]["shards"] if s["source_files"] == [f0]]
    assert [s["path"] for s in shards] == [f"train-{ids[f0]}-{k:05d}.tar" for k in range(len(shards))]
    samples = [x for s in shards for x in _samples(out / s["path"])]
    assert [k for k, _ in samples] == [f"{ids[f0]}_{i:09d}" for i in range(len(samples))]
    # per-file packing: this file's docs + EOS, cut into overlapping windows, remainder dropped
    docs = [json.loads(line)["text"] for line in gzip.open(f0, "rt", encoding="utf-8")]
    stream = [t for ids_ in tok.encode_batch(docs) for t in ids_ + [tok.eos_id]]
    assert len(samples) == (len(stream) - 1) // SEQ_LEN == sum(s["samples"] for s in shards)
    for i, (_, fields) in enumerate(samples):
        assert set(fields) == {"tokens.npy"} and fields["tokens.npy"].dtype == np.int32
        assert fields["tokens.npy"].tolist() == stream[i * SEQ_LEN: (i + 1) * SEQ_LEN + 1]


def test_rerun_is_idempotent_and_resumes_one_file(one_rank, corpus, tmp_path):
    src, m1 = one_rank
    out = tmp_path / "shards"
    shutil.copytree(src, out)
    before = (out / preprocess.MANIFEST).read_bytes()
    preprocess.main(_args(corpus, out))
    assert _stats(out)["files_done"] == 0 and _stats(out)["files_skipped"] == 5
    assert (out / preprocess.MANIFEST).read_bytes() == before
    # lose one file's record and shards (as if its rank died): only that file is redone
    f1 = str(corpus / "c4-train.00001-of-00004.json.gz")
    fid = preprocess.file_ids(m1["inputs"])[f1]
    (out / preprocess.PARTS / f"{fid}.json").unlink()
    for p in out.glob(f"train-{fid}-*.tar"):
        p.unlink()
    preprocess.main(_args(corpus, out))
    st = _stats(out)
    assert (st["files_done"], st["files_skipped"], st["files_by_rank"]) == (1, 4, [[f1]])
    assert (out / preprocess.MANIFEST).read_bytes() == before
    # a shard truncated behind our back invalidates its file's record
    shard = next(out.glob(f"train-{fid}-*.tar"))
    shard.write_bytes(shard.read_bytes()[:1000])
    preprocess.main(_args(corpus, out))
    assert _stats(out)["files_by_rank"] == [[f1]] and (out / preprocess.MANIFEST).read_bytes() == before
    # other settings: refused without --overwrite; with it every file is redone
    other = [a if a != str(SEQ_LEN) else "32" for a in _args(corpus, out)]
    with pytest.raises(SystemExit, match=r"other settings \(differs in: seq_len\).*--overwrite"):
        preprocess.main(other)
    m = preprocess.main(other + ["--overwrite"])
    assert _stats(out)["files_done"] == 5 and m["seq_len"] == 32
    assert not list(out.glob("*.tmp")) and len(list(out.glob("*.tar"))) == sum(
        len(m["splits"][s]["shards"]) for s in ("train", "valid"))


def test_killed_run_resumes_under_mpi(one_rank, corpus, tmp_path):
    out1, m1 = one_rank
    out = tmp_path / "shards"
    # one rank, hard-killed after 3000 samples: mid-file, half-written shard left behind
    r = _run([sys.executable, "-m", "dist_pretrain.data.preprocess", *_args(corpus, out)],
             **{preprocess.CRASH_ENV: "3000"})
    assert r.returncode == 75, r.stderr
    assert not (out / preprocess.MANIFEST).exists() and list(out.glob("*.tar.tmp"))
    done_before = len(list((out / preprocess.PARTS).glob("*.json")))
    assert 0 < done_before < 5
    r = _mpi(2, _args(corpus, out))
    assert r.returncode == 0, r.stderr
    st = _stats(out)
    assert (st["files_done"], st["files_skipped"]) == (5 - done_before, done_before)
    assert _without_ranks(_manifest(out)) == _without_ranks(m1)
    assert not list(out.glob("*.tmp"))
    for s in _manifest(out)["splits"]["train"]["shards"]:
        assert _sha(out / s["path"]) == s["sha256"]


def _bad_file(path, n_good=300):
    good = [json.dumps({"text": f"Document {i} is about cats and dogs.", "url": f"u{i}"}).encode()
            for i in range(n_good)]
    bad = [b"{not json", json.dumps({"body": "no text field"}).encode(), json.dumps({"text": 7}).encode(),
           b"[1, 2]", b'{"text": "caf\xe9 latin-1"}', b'{"text": "lone \\ud800 surrogate"}']
    path.write_bytes(b"\n".join(good[:100] + bad + good[100:]) + b"\n\n")
    return len(bad), n_good + len(bad)


def test_bad_lines_counted_and_threshold(tmp_path, corpus):
    n_bad, n_lines = _bad_file(tmp_path / "mixed.jsonl")
    args = ["--input", str(tmp_path / "mixed.jsonl"), "--input", str(corpus / "c4-validation.*"),
            "--tokenizer", "gpt2", "--seq-len", "16", "--output", str(tmp_path / "out")]
    m = preprocess.main(args + ["--max-bad-fraction", "0.05", "--quiet"])
    assert m["bad_lines"] == {str(tmp_path / "mixed.jsonl"): n_bad}
    f = next(f for f in m["files"] if f["path"].endswith("mixed.jsonl"))
    assert (f["lines"], f["bad_lines"], f["docs"]) == (n_lines, n_bad, n_lines - n_bad)
    expected = (rf"mixed\.jsonl: {n_bad} of {n_lines} lines are bad \(1\.96%\), "
                r"more than --max-bad-fraction 0\.01")
    with pytest.raises(SystemExit, match=expected):  # also for a file done earlier (skipped)
        preprocess.main(args + ["--quiet"])
    out2 = tmp_path / "out2"
    r = _mpi(2, args[:-1] + [str(out2), "--quiet"])
    assert r.returncode == 1 and re.search(expected, r.stderr), r.stderr
    assert not (out2 / preprocess.MANIFEST).exists() and not list(out2.glob("train-mixed-*"))
    assert len(list((out2 / preprocess.PARTS).glob("*.json"))) == 1  # the good file is kept


def test_summary_table(tmp_path, corpus, capsys):
    _bad_file(tmp_path / "mixed.jsonl")
    preprocess.main(["--input", str(tmp_path / "mixed.jsonl"), "--input", str(corpus / "c4-validation.*"),
                     "--tokenizer", "gpt2", "--seq-len", "16", "--output", str(tmp_path / "out"),
                     "--max-bad-fraction", "0.05"])
    text = capsys.readouterr().out
    for word in ("docs", "samples", "tokens", "MB/s", "tokens/s", "ranks: 1", "2 done, 0 skipped"):
        assert word in text
    assert re.search(r"^train +300 ", text, re.M) and re.search(r"6 +.*mixed\.jsonl", text)


def test_txt_inputs_and_val_fraction(tmp_path):
    paras = ["First paragraph. It has two sentences.", "Second one\nspans two lines.", "Third."]
    (tmp_path / "book.txt").write_text("\n\n".join(paras) + "\n")
    (tmp_path / "other.txt").write_bytes(b"Good line.\nbad \xff line\nAnother good line.\n")
    base = ["--input", str(tmp_path / "*.txt"), "--tokenizer", "gpt2", "--seq-len", "4", "--quiet",
            "--max-bad-fraction", "0.5"]
    m = preprocess.main(base + ["--output", str(tmp_path / "a")])
    assert m["splits"]["train"]["docs"] == 2 and m["bad_lines"] == {str(tmp_path / "other.txt"): 1}
    m = preprocess.main(base + ["--output", str(tmp_path / "b"), "--txt-docs", "paragraphs"])
    assert m["splits"]["train"]["docs"] == 3 + 1  # other.txt has no blank line: one paragraph
    # --val-fraction picks documents by a hash of url (else text): stable, ~the fraction
    lines = [json.dumps({"text": f"doc {i}", "url": f"https://x/{i}"}) for i in range(2000)]
    (tmp_path / "c.jsonl").write_text("\n".join(lines))
    m = preprocess.main(["--input", str(tmp_path / "c.jsonl"), "--tokenizer", "gpt2", "--seq-len", "4",
                         "--quiet", "--output", str(tmp_path / "c"), "--val-fraction", "0.1"])
    valid = sum(preprocess.split_of("c.jsonl", f"https://x/{i}", 0.1) == "valid" for i in range(2000))
    assert m["splits"]["valid"]["docs"] == valid and 150 < valid < 250
    assert preprocess.split_of("c4-validation.00000-of-00008.json.gz", "x", 0.0) == "valid"
    # plain JSON lines, gzip'd, text under another field
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps({"content": f"Text number {i}."}) for i in range(50)))
    m = preprocess.main(["--input", str(tmp_path / "d.jsonl.gz"), "--tokenizer", "gpt2", "--seq-len", "4",
                         "--quiet", "--output", str(tmp_path / "d"), "--text-field", "content"])
    assert m["splits"]["train"]["docs"] == 50 and not m["bad_lines"]
    assert m["splits"]["train"]["shards"][0]["path"].startswith("train-d-")


def _segments(sentence_ids, seq_len):
    """Independent reference of the docs-format segmentation."""
    segs, cur = [], []
    for s in (s[:seq_len] for s in sentence_ids if s):
        if cur and sum(map(len, cur)) + len(s) > seq_len:
            segs.append(cur)
            cur = []
        cur.append(s)
    return segs + ([cur] if cur else [])


@pytest.mark.parametrize("tokenizer", ["gpt2", "bert"])
def test_docs_format_round_trip(tmp_path, corpus, tokenizer):
    tok = load_tokenizer(tokenizer)  # both ship with the install (launchers/install.sh): never skip
    seq_len = 48
    long = " ".join(["word"] * 200) + ". Short one after it."
    (tmp_path / "extra.jsonl").write_text(json.dumps({"text": long}) + "\n")
    files = [corpus / "c4-train.00001-of-00004.json.gz", tmp_path / "extra.jsonl"]
    out = tmp_path / "docs"
    m = preprocess.main(["--input", str(files[0]), "--input", str(files[1]), "--tokenizer", tokenizer,
                         "--seq-len", str(seq_len), "--output", str(out), "--format", "docs",
                         "--samples-per-shard", "500", "--quiet"])
    assert (m["format"], m["sample_len"], m["fields"]) == ("docs", None, ["tokens.npy", "sentences.npy"])
    total = 0
    for f in files:
        shards = [s for s in m["splits"]["train"]["shards"] if s["source_files"] == [str(f)]]
        samples = [fields for s in shards for _, fields in _samples(out / s["path"])]
        opener = gzip.open if f.suffix == ".gz" else open
        docs = [json.loads(line)["text"] for line in opener(f, "rt", encoding="utf-8")]
        expected, sentence_ids = [], []
        for d in docs:
            ids = tok.encode_batch(split_sentences(d))
            sentence_ids.append(ids)
            expected += _segments(ids, seq_len)
        assert len(samples) == len(expected) == sum(s["samples"] for s in shards)
        for got, seg in zip(samples, expected):
            toks, lens = got["tokens.npy"], got["sentences.npy"]
            assert toks.dtype == lens.dtype == np.int32
            assert lens.sum() == len(toks) <= seq_len
            assert lens.tolist() == [len(s) for s in seg] and toks.tolist() == [t for s in seg for t in s]
            total += len(toks)
        if f.suffix == ".gz":  # the segments give back every sentence (the few long ones cut)
            got = [t for x in samples for t in x["tokens.npy"].tolist()]
            assert got == [t for ids in sentence_ids for s in ids for t in s[:seq_len]]
            assert len(samples) > 2 * len(docs) and max(len(x["sentences.npy"]) for x in samples) > 2
        else:  # the 200-word sentence was cut to seq_len, the next one starts a new segment
            assert [x["sentences.npy"].tolist() for x in samples][0] == [seq_len]
    assert m["total_tokens"] == m["splits"]["train"]["tokens"] == total


def test_sentence_splitter():
    cases = {
        "Mr. Smith went to Washington. He arrived at 5 p.m. on Monday.":
            ["Mr. Smith went to Washington.", "He arrived at 5 p.m. on Monday."],
        "The U.S. Army won. Then e.g. this and i.e. that. Dr. Who said \"Hi.\" She left!":
            ["The U.S. Army won.", "Then e.g. this and i.e. that.", "Dr. Who said \"Hi.\"", "She left!"],
        "See No. 5 in the list. I said no. The end?": ["See No. 5 in the list.", "I said no.", "The end?"],
        "J. R. R. Tolkien wrote it. In 1954. 1955 came next.":
            ["J. R. R. Tolkien wrote it.", "In 1954.", "1955 came next."],
        "It costs 3.5 dollars. Version 2.0 is out. lowercase. after": ["It costs 3.5 dollars.",
                                                                     "Version 2.0 is out. lowercase. after"],
        "Heading\nA paragraph (it ends.) \"Quoted start.\" Next": ["Heading", "A paragraph (it ends.)",
                                                                 "\"Quoted start.\"", "Next"],
        "Apples, pears, etc. The end.  ": ["Apples, pears, etc.", "The end."],
        "": [],
    }
    for text, want in cases.items():
        assert split_sentences(text) == want, text


def test_file_ids_and_assignment(tmp_path):
    a = ["/d/c4/en/c4-train.00000-of-01024.json.gz", "/d/c4/en/c4-validation.00000-of-00008.json.gz",
         "/d/other/c4-train.00000-of-01024.json.gz", "/d/x/book one.v2.txt"]
    ids = preprocess.file_ids(a)
    assert ids[a[0]].startswith("c4-train-00000-of-01024-") and ids[a[0]] != ids[a[2]]
    assert ids[a[3]].startswith("book-one-v2-") and all("." not in i and "_" not in i for i in ids.values())
    moved = preprocess.file_ids([p.replace("/d/", "/mnt/data/") for p in a])  # hash of relative path
    assert list(moved.values()) == list(ids.values())
    tasks = [{"path": f"f{i}", "size": s} for i, s in enumerate([50, 10, 40, 30, 30, 20, 5])]
    plan = preprocess.assign_files(tasks, 3)
    assert plan == preprocess.assign_files(list(reversed(tasks)), 3)
    assert [sum(t["size"] for t in r) for r in plan] == [65, 60, 60]
    assert sorted(t["path"] for r in plan for t in r) == sorted(t["path"] for t in tasks)
