"""Tokenize raw text into WebDataset tar shards, one input file at a time, on 1..N MPI ranks.

``dist-pretrain preprocess --input 'c4/en/*.json.gz' --tokenizer gpt2 --seq-len 2048 --output DIR``
``mpiexec -n 64 dist-pretrain preprocess ...`` (same arguments, same result)

**Per-file packing.** Every input file is tokenized and packed on its own, so the output
does not depend on how files are spread over ranks: 1 rank and N ranks write the same
shards, keys and bytes. A file gets the id ``file_id`` = its stem made key-safe (letters,
digits, ``-``) plus 8 hex digits of a hash of its path relative to the common directory of
all inputs, e.g. ``c4-train-00042-of-01024-1f3a9c0e`` (no dots: WebDataset splits keys
on them). Its samples go to ``DIR/{split}-{file_id}-{k:05d}.tar``, each sample keyed
``f"{file_id}_{index:09d}"`` (index counts the file's samples of that split, from 0).

``--format lm`` (default; the training code relies on it): field ``tokens.npy`` = int32
array of ``seq_len + 1`` tokens, ``inputs = s[:-1]``, ``labels = s[1:]``. A file's
documents are joined with EOS (after every document) into one stream per split and cut
like Megatron's GPT dataset: sample ``i`` covers stream tokens ``[i*seq_len,
i*seq_len + seq_len + 1)``, so consecutive samples share one token; each file's
remainder is dropped. A split's ``tokens`` = ``samples * seq_len`` (training positions).

``--format docs`` (BERT/T5): a sample is a segment of one document, cut at sentence
boundaries to at most ``seq_len`` tokens: ``tokens.npy`` = int32 ids of its sentences
back to back (no special tokens), ``sentences.npy`` = int32 token count of each
sentence. A single sentence longer than ``seq_len`` is truncated. ``tokens`` = tokens in
segments. Sentences come from :mod:`dist_pretrain.data.sentences`.

**Splits.** Files whose name contains ``validation`` form ``valid``; ``--val-fraction``
also moves that fraction of other documents there, chosen by a hash of the URL (or text).

**Ranks.** Under an MPI launcher (``mpi4py`` is imported only then) rank 0 plans: it
lists the inputs and skips files already done; the rest are dealt to ranks by size
(largest first, each to the least-loaded rank). Every rank writes its files' shards, then
an atomic part record ``DIR/.parts/{file_id}.json``; rank 0 gathers the records and writes
``DIR/manifest.json`` (atomically). Timings go to ``DIR/preprocess_stats.json``, not the
manifest, so re-running on the same inputs rewrites an identical manifest.

**Resuming.** A file whose part record matches (same settings and tokenizer, input size
and mtime, shards present with the recorded sizes) is skipped, so an interrupted run
continues where it stopped; its half-written shards are replaced. ``--overwrite``
redoes everything. Writing into a dataset built with other settings is refused.

**Bad input.** Lines that are not strict UTF-8, not JSON, or lack a string text field
are skipped and counted per file (summary and manifest ``bad_lines``); a file whose bad
fraction exceeds ``--max-bad-fraction`` fails the run, naming the file.
"""
from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import itertools
import json
import os
import re
import sys
import time
import traceback
from collections import Counter
from typing import Iterator

import numpy as np

from dist_pretrain.data.manifest import MANIFEST
from dist_pretrain.data.mpi import Comm, threads_per_rank, world
from dist_pretrain.data.sentences import split_sentences
from dist_pretrain.data.shards import (  # noqa: F401
    CRASH_ENV,
    ShardSink,
    npy_bytes,
    shard_name,
    write_json_atomic,
)
from dist_pretrain.data.tokenizer import TextTokenizer, load_tokenizer

SPLITS = ("train", "valid")
STATS = "preprocess_stats.json"
PARTS = ".parts"
LM_FORMAT = "dist_pretrain.lm/1"   # manifest "format" of --format lm
DOCS_FORMAT = "docs"               # manifest "format" of --format docs
PART_VERSION = 1
# Fault injection for tests: the process hard-exits after writing this many samples.
_SHARD_RE = re.compile(r"^(train|valid)-.+-\d{5}\.tar(\.tmp)?$")


class PreprocessError(RuntimeError):
    """A user-facing failure (bad input, conflicting output); main() prints it and exits 1."""


# --------------------------------------------------------------------------- inputs

def expand_inputs(patterns: list[str]) -> list[str]:
    """Sorted files matching the globs, each file once however often it matches (first
    spelling kept); a pattern matching nothing is an error."""
    files: dict[str, str] = {}
    for pat in patterns:
        hits = [f for f in glob.glob(pat, recursive=True) if os.path.isfile(f)]
        if not hits:
            raise FileNotFoundError(f"--input {pat!r} matches no file")
        for f in sorted(hits):
            files.setdefault(os.path.realpath(f), os.path.normpath(f))
    return sorted(files.values())


_EXTENSIONS = (".json.gz", ".jsonl.gz", ".txt.gz", ".json", ".jsonl", ".txt", ".gz")


def file_ids(files: list[str]) -> dict[str, str]:
    """``{path: file_id}``: key-safe stem + hash of the path relative to the inputs' common dir."""
    absdirs = [os.path.dirname(os.path.abspath(f)) for f in files]
    root = os.path.commonpath(absdirs) if files else ""
    ids = {}
    for f in files:
        name = os.path.basename(f)
        for ext in _EXTENSIONS:
            if name.endswith(ext) and len(name) > len(ext):
                name = name[: -len(ext)]
                break
        stem = re.sub(r"[^A-Za-z0-9-]+", "-", name).strip("-")[:56] or "file"
        rel = os.path.relpath(os.path.abspath(f), root).replace(os.sep, "/")
        ids[f] = f"{stem}-{hashlib.blake2b(rel.encode(), digest_size=4).hexdigest()}"
    if len(set(ids.values())) != len(ids):  # 32-bit hash collision between same-named files
        dup = Counter(ids.values()).most_common(1)[0][0]
        raise PreprocessError(f"two inputs map to file id {dup}: "
                              f"{[f for f, i in ids.items() if i == dup]}")
    return ids


def is_txt(path: str) -> bool:
    return path.removesuffix(".gz").endswith(".txt")


class DocumentReader:
    """Documents of one file: ``(text, n_bytes, split_key)``; counts lines and bad lines.

    JSON lines (``.json``/``.jsonl``, optionally ``.gz``; C4's layout) hold one document
    per line in ``text_field``; ``split_key`` is its ``url`` when it has one. A ``.txt``
    file is one document (``txt_docs="file"``) or one per blank-line-separated paragraph
    (``"paragraphs"``). Every line is decoded as strict UTF-8; a line that fails (or is not
    a JSON object with a string ``text_field``) is a bad line and skipped.
    """

    def __init__(self, path: str, text_field: str = "text", txt_docs: str = "file"):
        self.path, self.text_field, self.txt_docs = path, text_field, txt_docs
        self.lines = self.bad = 0
        self._raw = None

    def position(self) -> int:
        """Bytes of the (compressed) file consumed so far."""
        try:
            return self._raw.tell() if self._raw is not None else 0
        except (ValueError, OSError):
            return 0

    def __iter__(self) -> Iterator[tuple[str, int, str]]:
        with open(self.path, "rb") as raw:
            self._raw = raw
            f = gzip.GzipFile(fileobj=raw, mode="rb") if self.path.endswith(".gz") else raw
            with f:
                yield from (self._txt(f) if is_txt(self.path) else self._jsonl(f))
            self._raw = None

    def _jsonl(self, f) -> Iterator[tuple[str, int, str]]:
        field = self.text_field
        for line in f:
            if not line.strip():
                continue
            self.lines += 1
            try:
                s = line.decode("utf-8")
                obj = json.loads(s)
                text = obj[field]
                if not isinstance(text, str):
                    raise TypeError
                if "\\ud" in s or "\\uD" in s:  # a JSON-escaped lone surrogate is not text
                    text.encode("utf-8")
            except (ValueError, KeyError, TypeError, IndexError, UnicodeError):
                self.bad += 1
                continue
            if text:
                url = obj.get("url")
                yield text, len(line), url if isinstance(url, str) and url else text

    def _decoded_lines(self, f) -> Iterator[tuple[str, int]]:
        for line in f:
            if line.strip():
                self.lines += 1
            try:
                yield line.decode("utf-8"), len(line)
            except UnicodeDecodeError:
                self.bad += 1

    def _txt(self, f) -> Iterator[tuple[str, int, str]]:
        if self.txt_docs == "file":
            parts, n = [], 0
            for text, nbytes in self._decoded_lines(f):
                parts.append(text)
                n += nbytes
            text = "".join(parts)
            if text:
                yield text, n, text
            return
        para, n = [], 0
        for text, nbytes in itertools.chain(self._decoded_lines(f), [("", 0)]):
            if text.strip():
                para.append(text)
                n += nbytes
            elif para:
                doc = "".join(para).strip()
                yield doc, n, doc
                para, n = [], 0


def iter_documents(path: str, text_field: str, bad: Counter, txt_docs: str = "file") -> Iterator[tuple[str, int]]:
    """Yield ``(text, n_bytes)`` of ``path``; bad lines are added to ``bad[path]``."""
    reader = DocumentReader(path, text_field, txt_docs)
    try:
        for text, nbytes, _ in reader:
            yield text, nbytes
    finally:
        if reader.bad:
            bad[path] += reader.bad


def split_of(path: str, key: str, val_fraction: float) -> str:
    """``valid`` for files named *validation*, else by a hash of the document's key (url/text)."""
    if "validation" in os.path.basename(path):
        return "valid"
    if val_fraction > 0:  # content hash: stable across runs, machines, ranks and file orders
        h = int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
        if h < val_fraction * 2**64:
            return "valid"
    return "train"


def remove_file_outputs(out_dir: str, file_id: str) -> None:
    """Delete a file's part record and shards (complete or half-written) before redoing it."""
    _unlink(part_path(out_dir, file_id))
    for split in SPLITS:
        for k in itertools.count():  # a file's shards are numbered 0, 1, ... without gaps
            path = os.path.join(out_dir, shard_name(split, file_id, k))
            found = [_unlink(p) for p in (path, path + ".tmp")]
            if not any(found):
                break


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


# --------------------------------------------------------------------------- packing

class Packer:
    """Cuts a token stream into overlapping ``seq_len + 1`` windows (see module docstring)."""

    def __init__(self, seq_len: int):
        self.seq_len = seq_len
        self.buf = np.empty(0, dtype=np.int32)

    def add(self, tokens: np.ndarray) -> np.ndarray:
        stream = np.concatenate([self.buf, tokens]) if len(self.buf) else tokens
        n = max(0, (len(stream) - 1) // self.seq_len)
        if n == 0:
            self.buf = stream
            return np.empty((0, self.seq_len + 1), np.int32)
        windows = np.lib.stride_tricks.sliding_window_view(stream, self.seq_len + 1)
        samples = windows[: n * self.seq_len : self.seq_len]
        self.buf = stream[n * self.seq_len:].copy()
        return samples


def join_with_eos(ids: list[list[int]], eos: int) -> np.ndarray:
    """Documents' ids back to back, each followed by ``eos``, as one int32 array."""
    lens = np.fromiter(map(len, ids), np.int64, len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), np.int32, int(lens.sum()))
    return np.insert(flat, np.cumsum(lens), np.int32(eos))


def segment_document(sentence_ids: list[list[int]], seq_len: int) -> list[list[list[int]]]:
    """Greedy segments of whole sentences, each at most ``seq_len`` tokens.

    A sentence longer than ``seq_len`` becomes a segment of its own, truncated; sentences
    with no tokens are dropped.
    """
    segments, cur, cur_len = [], [], 0
    for s in sentence_ids:
        if not s:
            continue
        if len(s) > seq_len:
            s = s[:seq_len]
        if cur_len + len(s) > seq_len:
            segments.append(cur)
            cur, cur_len = [], 0
        cur.append(s)
        cur_len += len(s)
    if cur:
        segments.append(cur)
    return segments


# --------------------------------------------------------------------------- one file

def part_path(out_dir: str, file_id: str) -> str:
    return os.path.join(out_dir, PARTS, f"{file_id}.json")


def process_file(task: dict, out_dir: str, tok: TextTokenizer, settings: dict, rank: int = 0,
                 max_bad_fraction: float = 0.01, batch_bytes: int = 8 << 20,
                 progress=None) -> dict:
    """Tokenize one input file into its shards and write its part record; returns the record.

    ``task`` = ``{path, file_id, size, mtime_ns}``; ``settings`` = :func:`make_settings`.
    ``progress(n_bytes)`` is told how many more (compressed) input bytes were consumed.
    """
    path, file_id = task["path"], task["file_id"]
    t0 = time.perf_counter()
    remove_file_outputs(out_dir, file_id)
    fmt, seq_len, per_shard = settings["format"], settings["seq_len"], settings["samples_per_shard"]
    reader = DocumentReader(path, settings["text_field"], settings["txt_docs"])
    sinks = {s: ShardSink(out_dir, s, file_id, per_shard) for s in SPLITS}
    packers = {s: Packer(seq_len) for s in SPLITS}
    stats = {s: Counter() for s in SPLITS}
    pending: dict[str, list[str]] = {s: [] for s in SPLITS}
    pending_bytes = Counter()
    seen = [0]

    def flush(split: str) -> None:
        texts = pending[split]
        if fmt == "lm":
            for sample in packers[split].add(join_with_eos(tok.encode_batch(texts), tok.eos_id)):
                sinks[split].add({"tokens.npy": npy_bytes(sample)}, seq_len)
        else:
            sents = [split_sentences(t) for t in texts]
            ids = iter(tok.encode_batch(list(itertools.chain.from_iterable(sents))))
            for doc_sents in sents:
                doc_ids = list(itertools.islice(ids, len(doc_sents)))
                for seg in segment_document(doc_ids, seq_len):
                    lens = np.fromiter(map(len, seg), np.int32, len(seg))
                    toks = np.fromiter(itertools.chain.from_iterable(seg), np.int32, int(lens.sum()))
                    sinks[split].add({"sentences.npy": npy_bytes(lens), "tokens.npy": npy_bytes(toks)},
                                     len(toks))
        pending[split] = []
        pending_bytes[split] = 0
        if progress is not None:
            pos = reader.position()
            progress(pos - seen[0])
            seen[0] = pos

    try:
        for text, nbytes, key in reader:
            split = split_of(path, key, settings["val_fraction"])
            pending[split].append(text)
            pending_bytes[split] += nbytes
            stats[split]["docs"] += 1
            stats[split]["text_bytes"] += nbytes
            if pending_bytes[split] >= batch_bytes:
                flush(split)
        for split in SPLITS:
            if pending[split]:
                flush(split)
        shards = {s: sinks[s].close() for s in SPLITS}
        if reader.bad and reader.bad > max_bad_fraction * reader.lines:
            raise PreprocessError(bad_fraction_message(path, reader.bad, reader.lines, max_bad_fraction))
    except BaseException:
        for sink in sinks.values():  # no half-written shards of a failed file stay behind
            if sink.shard is not None:
                sink.shard.file.close()
        remove_file_outputs(out_dir, file_id)
        raise
    if progress is not None:
        progress(task["size"] - seen[0])
    record = {
        "version": PART_VERSION, "file_id": file_id, "path": path,
        "size": task["size"], "mtime_ns": task["mtime_ns"], "settings": settings, "rank": rank,
        "lines": reader.lines, "bad_lines": reader.bad,
        "splits": {s: {"docs": stats[s]["docs"], "text_bytes": stats[s]["text_bytes"],
                       "samples": sum(x["samples"] for x in shards[s]),
                       "tokens": sum(x["tokens"] for x in shards[s]), "shards": shards[s]}
                   for s in SPLITS},
        "seconds": round(time.perf_counter() - t0, 3),
    }
    write_json_atomic(part_path(out_dir, file_id), record)  # only after its shards are complete
    return record


def bad_fraction_message(path: str, bad: int, lines: int, limit: float) -> str:
    return (f"{path}: {bad} of {lines} lines are bad ({bad / max(lines, 1):.2%}), more than "
            f"--max-bad-fraction {limit}; fix or drop the file, or raise the threshold")


def make_settings(args, tok: TextTokenizer) -> dict:
    """Everything that changes a file's output: a part record is reused only if these match."""
    # The vocabulary, not the name: the same tokenizer.json under another path is the same.
    vocab = {"vocab_hash": tok.vocab_hash, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id}
    return {"format": args.format, "seq_len": args.seq_len, "tokenizer": vocab,
            "samples_per_shard": args.samples_per_shard, "text_field": args.text_field,
            "txt_docs": args.txt_docs, "val_fraction": args.val_fraction,
            "val_rule": "name contains 'validation'; else blake2b(url or text) < val_fraction"}


def record_is_current(rec: dict | None, task: dict, settings: dict, out_dir: str) -> bool:
    if not rec or rec.get("version") != PART_VERSION or rec.get("settings") != settings:
        return False
    if (rec.get("file_id"), rec.get("size"), rec.get("mtime_ns")) != (task["file_id"], task["size"], task["mtime_ns"]):
        return False
    for split in SPLITS:
        for shard in rec["splits"][split]["shards"]:
            try:
                if os.path.getsize(os.path.join(out_dir, shard["path"])) != shard["bytes"]:
                    return False
            except OSError:
                return False
    return True


def read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- planning (rank 0)

def assign_files(tasks: list[dict], size: int) -> list[list[dict]]:
    """Deterministic size balancing: largest first (ties by path), each to the least-loaded rank."""
    loads, out = [0] * size, [[] for _ in range(size)]
    for t in sorted(tasks, key=lambda t: (-t["size"], t["path"])):
        r = min(range(size), key=lambda i: (loads[i], i))
        out[r].append(t)
        loads[r] += t["size"]
    for lst in out:
        lst.sort(key=lambda t: t["path"])
    return out


def _settings_diff(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [k for k in keys if old.get(k) != new.get(k)]


def make_plan(args, settings: dict, size: int) -> dict:
    out = args.output
    os.makedirs(os.path.join(out, PARTS), exist_ok=True)
    manifest_path = os.path.join(out, MANIFEST)
    if args.overwrite:
        for name in os.listdir(out):
            if name == MANIFEST or _SHARD_RE.match(name):
                _unlink(os.path.join(out, name))
        for name in os.listdir(os.path.join(out, PARTS)):
            _unlink(os.path.join(out, PARTS, name))
    elif os.path.exists(manifest_path):
        old = (read_json(manifest_path) or {}).get("settings") or {}
        diff = _settings_diff(old, settings)
        if diff:
            raise PreprocessError(f"{out} already holds a {MANIFEST} built with other settings "
                                  f"(differs in: {', '.join(diff)}); pass --overwrite to rebuild it")
    files = expand_inputs(args.input)
    ids = file_ids(files)
    tasks, done = [], []
    for f in files:
        st = os.stat(f)
        task = {"path": f, "file_id": ids[f], "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        rec = read_json(part_path(out, ids[f]))
        if record_is_current(rec, task, settings, out):
            rec["path"] = f  # the same file, maybe named differently (relative/absolute)
            done.append(rec)
        else:
            tasks.append(task)
    return {"files": files, "skipped": done, "assignment": assign_files(tasks, size)}


# --------------------------------------------------------------------------- manifest

def build_manifest(records: list[dict], settings: dict, files: list[str], ranks: int,
                   tokenizer: dict | None = None) -> dict:
    """One manifest from the part records of all input files (deterministic: sorted by path)."""
    records = sorted(records, key=lambda r: r["path"])
    splits = {}
    for split in SPLITS:
        shards = []
        for rec in records:
            for sh in rec["splits"][split]["shards"]:
                shards.append({**sh, "source_files": [rec["path"]], "file_id": rec["file_id"],
                               "rank": rec["rank"]})
        shards.sort(key=lambda s: s["path"])
        splits[split] = {k: sum(r["splits"][split][k] for r in records)
                         for k in ("samples", "tokens", "docs", "text_bytes")}
        splits[split]["shards"] = shards
    fmt, seq_len = settings["format"], settings["seq_len"]
    lm = fmt == "lm"
    return {
        "format": LM_FORMAT if lm else DOCS_FORMAT,
        "seq_len": seq_len,
        "sample_len": seq_len + 1 if lm else None,
        "dtype": "int32",
        "field": "tokens.npy",
        "fields": ["tokens.npy"] if lm else ["tokens.npy", "sentences.npy"],
        "total_tokens": splits["train"]["tokens"],
        "tokenizer": tokenizer or settings["tokenizer"],
        "splits": splits,
        "bad_lines": {r["path"]: r["bad_lines"] for r in records if r["bad_lines"]},
        "inputs": files,
        "files": [{"path": r["path"], "file_id": r["file_id"], "size": r["size"], "lines": r["lines"],
                   "bad_lines": r["bad_lines"], "docs": sum(r["splits"][s]["docs"] for s in SPLITS),
                   "rank": r["rank"]} for r in records],
        "ranks": ranks,
        "settings": settings,
    }


def write_manifest(out_dir: str, manifest: dict) -> None:
    write_json_atomic(os.path.join(out_dir, MANIFEST), manifest)


# --------------------------------------------------------------------------- driver

def _summary(manifest: dict, stats: dict) -> str:
    secs = max(stats["seconds"], 1e-9)
    rows = [f"{'split':<6} {'docs':>9} {'samples':>10} {'tokens':>13} {'MB':>9} {'MB/s':>7} {'tokens/s':>11}"]
    keys = ("docs", "samples", "tokens", "text_bytes")
    total = {k: sum(manifest["splits"][s][k] for s in SPLITS) for k in keys}
    ptotal = {k: sum(stats["processed"][s][k] for s in SPLITS) for k in keys}
    for name, r, p in [*((s, manifest["splits"][s], stats["processed"][s]) for s in SPLITS),
                       ("total", total, ptotal)]:
        rows.append(f"{name:<6} {r['docs']:>9,} {r['samples']:>10,} {r['tokens']:>13,} "
                    f"{r['text_bytes'] / 1e6:>9.1f} {p['text_bytes'] / 1e6 / secs:>7.1f} "
                    f"{p['tokens'] / secs:>11,.0f}")
    rows.append("(MB/s, tokens/s: files processed in this run; MB = input text)")
    rows.append(f"ranks: {stats['ranks']}  threads/rank: {stats['threads_per_rank']}  files: "
                f"{stats['files']} ({stats['files_done']} done, {stats['files_skipped']} skipped)  "
                f"seconds: {stats['seconds']:.2f} (+{stats['setup_seconds']:.2f} setup)")
    bad = manifest["bad_lines"]
    if bad:
        rows.append(f"bad lines skipped: {sum(bad.values())} in {len(bad)} file(s):")
        rows += [f"  {n:>8,}  {p}" for p, n in sorted(bad.items())[:20]]
        if len(bad) > 20:
            rows.append(f"  ... and {len(bad) - 20} more (manifest 'bad_lines')")
    else:
        rows.append("bad lines skipped: 0")
    return "\n".join(rows)


def _limit_threads(comm: Comm) -> int:
    """Under MPI, share the node's cores between its ranks (tokenizers' Rust thread pool)."""
    if comm.size == 1:
        return int(os.environ.get("RAYON_NUM_THREADS") or os.cpu_count() or 1)
    n = int(os.environ.get("RAYON_NUM_THREADS") or threads_per_rank(comm.local_size))
    os.environ.setdefault("RAYON_NUM_THREADS", str(n))
    if n == 1:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return n


def _collective(comm: Comm, fn, *args):
    """Run ``fn`` on rank 0 and broadcast its result, or the same error to every rank."""
    result = err = None
    if comm.rank == 0:
        try:
            result = fn(*args)
        except (PreprocessError, FileNotFoundError) as e:
            err = f"{e}"
        except (OSError, ValueError) as e:
            if comm.size == 1:
                raise
            traceback.print_exc()
            err = f"rank 0: {type(e).__name__}: {e}"
    result, err = comm.bcast((result, err))
    if err is not None:
        raise PreprocessError(err)
    return result


def run(args, comm: Comm | None = None) -> tuple[dict, dict]:
    """The whole job on this rank; every rank returns ``(manifest, stats)`` or raises the same error."""
    comm = comm or world()
    t_setup = time.perf_counter()
    threads = _limit_threads(comm)
    try:
        tok = load_tokenizer(args.tokenizer)
    except (ValueError, OSError) as e:  # the same on every rank: all exit, none waits
        raise PreprocessError(f"--tokenizer {args.tokenizer!r}: {e}") from e
    settings = make_settings(args, tok)
    plan = _collective(comm, make_plan, args, settings, comm.size)
    mine = plan["assignment"][comm.rank]
    setup_seconds = time.perf_counter() - t_setup
    t0 = time.perf_counter()

    from tqdm import tqdm
    bar = tqdm(total=sum(t["size"] for t in mine), unit="B", unit_scale=True, position=comm.rank,
               desc=f"rank {comm.rank}", disable=args.quiet, file=sys.stderr, dynamic_ncols=True,
               leave=comm.size == 1)
    records, errors = [], []
    for task in mine:
        try:
            records.append(process_file(task, args.output, tok, settings, comm.rank,
                                        args.max_bad_fraction, args.batch_mb << 20, bar.update))
        except PreprocessError as e:
            errors.append(str(e))
        except Exception as e:  # noqa: BLE001 - under MPI, one rank raising would hang the rest
            if comm.size == 1:
                raise
            traceback.print_exc()
            errors.append(f"rank {comm.rank}: {task['path']}: {type(e).__name__}: {e}")
        bar.set_postfix(files=f"{len(records)}/{len(mine)}", refresh=False)
    bar.close()
    busy = time.perf_counter() - t0
    gathered = comm.gather((records, errors, busy))

    def finish():
        all_records = list(plan["skipped"])
        errs = []
        for recs, es, _ in gathered:
            all_records += recs
            errs += es
        for rec in plan["skipped"]:  # the threshold may be lower than when they were done
            if rec["bad_lines"] and rec["bad_lines"] > args.max_bad_fraction * rec["lines"]:
                errs.append(bad_fraction_message(rec["path"], rec["bad_lines"], rec["lines"],
                                                 args.max_bad_fraction))
        if errs:
            raise PreprocessError("\n".join(sorted(errs)))
        manifest = build_manifest(all_records, settings, plan["files"], comm.size, tok.info())
        write_manifest(args.output, manifest)
        seconds = time.perf_counter() - t0
        processed = {s: {k: sum(r["splits"][s][k] for recs, _, _ in gathered for r in recs)
                         for k in ("docs", "samples", "tokens", "text_bytes")} for s in SPLITS}
        tokens = sum(processed[s]["tokens"] for s in SPLITS)
        stats = {"ranks": comm.size, "threads_per_rank": threads, "files": len(plan["files"]),
                 "files_done": sum(len(recs) for recs, _, _ in gathered),
                 "files_skipped": len(plan["skipped"]),
                 "files_by_rank": [[r["path"] for r in recs] for recs, _, _ in gathered],
                 "seconds": seconds, "setup_seconds": setup_seconds,
                 "rank_busy_seconds": [round(b, 3) for _, _, b in gathered],
                 "processed": processed, "tokens_per_s": tokens / max(seconds, 1e-9),
                 "text_mb_per_s": sum(processed[s]["text_bytes"] for s in SPLITS) / 1e6 / max(seconds, 1e-9)}
        write_json_atomic(os.path.join(args.output, STATS), stats)
        return manifest, stats

    return _collective(comm, finish)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dist-pretrain preprocess", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input", action="append", required=True,
                   help="glob of .json(l)[.gz] or .txt[.gz] files; repeatable")
    p.add_argument("--tokenizer", required=True,
                   help="'gpt2', 'bert', or a path to a HF tokenizer.json / SentencePiece .model")
    p.add_argument("--seq-len", type=int, required=True,
                   help="lm: tokens per sample (+1 stored); docs: max tokens per segment")
    p.add_argument("--output", required=True)
    p.add_argument("--format", choices=("lm", "docs", "classification", "seq2seq"), default="lm",
                   help="lm: packed causal-LM samples; docs: sentence-split document segments (BERT/T5); "
                        "classification / seq2seq: labelled examples for fine-tuning (data/labelled.py)")
    p.add_argument("--samples-per-shard", type=int, default=8192)
    p.add_argument("--text-field", default="text", help="JSON field holding the document text")
    p.add_argument("--txt-docs", choices=("file", "paragraphs"), default="file",
                   help=".txt inputs: one document per file, or per blank-line-separated paragraph")
    p.add_argument("--val-fraction", type=float, default=0.0,
                   help="fraction of non-validation documents moved to the valid split (by URL/text hash)")
    p.add_argument("--max-bad-fraction", type=float, default=0.01,
                   help="fail when a file has more than this fraction of bad lines")
    p.add_argument("--batch-mb", type=int, default=8, help="text tokenized per encode_batch call")
    labelled = p.add_argument_group("--format classification / seq2seq (fine-tuning data)")
    labelled.add_argument("--pair-field", default="text_pair", help="second text of a sentence pair (optional)")
    labelled.add_argument("--label-field", default="label")
    labelled.add_argument("--labels", help="label names in id order, comma-separated (default: sorted)")
    labelled.add_argument("--input-field", default="input")
    labelled.add_argument("--target-field", default="target")
    labelled.add_argument("--target-len", type=int, default=64, help="seq2seq: max target tokens, EOS included")
    labelled.add_argument("--csv-columns", help="column names of CSV/TSV files without a header row, e.g. "
                                                "label,text")
    labelled.add_argument("--test-fraction", type=float, default=0.0,
                          help="fraction of records of files not named train/validation/test moved to test")
    labelled.add_argument("--split-seed", type=int, default=0, help="seed of the --val/--test-fraction split")
    p.add_argument("--overwrite", action="store_true", help="redo every file and rewrite the manifest")
    p.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    return p


def main(argv=None) -> dict:
    p = build_parser()
    args = p.parse_args(argv)
    if args.seq_len < 1 or args.samples_per_shard < 1 or not 0 <= args.val_fraction < 1:
        p.error("--seq-len and --samples-per-shard must be >= 1, --val-fraction in [0, 1)")
    if not 0 <= args.max_bad_fraction <= 1 or args.batch_mb < 1:
        p.error("--max-bad-fraction must be in [0, 1], --batch-mb >= 1")
    if args.format in ("classification", "seq2seq"):
        return _labelled(p, args)
    comm = world()
    try:
        manifest, stats = run(args, comm)
    except PreprocessError as e:
        if comm.size == 1:
            raise SystemExit(f"dist-pretrain preprocess: error: {e}") from None
        if comm.rank == 0:  # every rank has the same error: print it once
            print(f"dist-pretrain preprocess: error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    except BaseException:
        if comm.size > 1:  # anything unexpected: take the whole job down instead of hanging it
            traceback.print_exc()
            comm.abort(1)
        raise
    if comm.rank == 0 and not args.quiet:
        print(_summary(manifest, stats))
        print(f"wrote {os.path.join(args.output, MANIFEST)}")
    return manifest


def _labelled(p: argparse.ArgumentParser, args) -> dict:
    from dist_pretrain.data import labelled

    if args.val_fraction + args.test_fraction >= 1 or not 0 <= args.test_fraction < 1:
        p.error("--val-fraction + --test-fraction must be below 1")
    minimum = 3 if args.format == "classification" else 2
    if args.seq_len < minimum or (args.format == "seq2seq" and args.target_len < 2):
        p.error(f"--seq-len must be >= {minimum} (special tokens) and --target-len >= 2 (a token and EOS)")
    try:
        manifest = labelled.build(args)
    except (labelled.LabelledDataError, FileNotFoundError) as e:
        raise SystemExit(f"dist-pretrain preprocess: error: {e}") from None
    if not args.quiet:
        print(labelled.summary(manifest))
        print(f"wrote {os.path.join(args.output, MANIFEST)}")
    return manifest


if __name__ == "__main__":
    main()
