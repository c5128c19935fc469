"""Tokenize raw text into packed causal-LM samples stored as WebDataset tar shards.

``dist-pretrain preprocess --input 'c4/en/*.json.gz' --tokenizer gpt2 --seq-len 2048 --output DIR``

Sample convention (the training code relies on it): every sample is an int32 array of
``seq_len + 1`` tokens, ``inputs = s[:-1]``, ``labels = s[1:]``. Documents are joined with
EOS into one stream per split and cut like Megatron's GPT dataset: sample ``i`` covers
stream tokens ``[i*seq_len, i*seq_len + seq_len + 1)``, so consecutive samples share one
token and no label is lost at a sample boundary; the trailing remainder is dropped.
A split's ``tokens`` = ``samples * seq_len`` = number of (input, label) training positions.

Files whose name contains ``validation`` form the ``valid`` split, the rest ``train``
(optionally also ``--val-fraction`` of train documents, chosen by a hash of their text).

:func:`process_files` turns a list of files into shards and :func:`write_manifest` merges
the per-part results, so a multi-node run can later give each MPI rank its own files
(with ``shard_tag=f"r{rank:04d}-"``) and let rank 0 write the manifest.
"""
from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import io
import itertools
import json
import os
import sys
import time
from collections import Counter
from typing import Iterator

import numpy as np
import webdataset as wds
from tqdm import tqdm

from dist_pretrain.data.tokenizer import TextTokenizer, load_tokenizer

SPLITS = ("train", "valid")
MANIFEST = "manifest.json"


def expand_inputs(patterns: list[str]) -> list[str]:
    """Sorted, de-duplicated files matching the globs; a pattern matching nothing is an error."""
    files = set()
    for pat in patterns:
        hits = [f for f in glob.glob(pat, recursive=True) if os.path.isfile(f)]
        if not hits:
            raise FileNotFoundError(f"--input {pat!r} matches no file")
        files.update(hits)
    return sorted(files)


def iter_documents(path: str, text_field: str, bad: Counter) -> Iterator[tuple[str, int]]:
    """Yield ``(text, n_bytes)``. JSON lines for .json/.jsonl(.gz); a .txt file is one document.

    Malformed lines are counted in ``bad[path]`` and skipped: one broken line in a
    multi-GB crawl should not kill a preprocessing job.
    """
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        if path.removesuffix(".gz").endswith(".txt"):
            raw = f.read()
            yield raw.decode("utf-8", errors="replace"), len(raw)
            return
        for line in f:
            if not line.strip():
                continue
            try:
                text = json.loads(line)[text_field]
                if not isinstance(text, str):
                    raise TypeError
            except (ValueError, KeyError, TypeError, IndexError):
                bad[path] += 1
                continue
            yield text, len(line)


def split_of(path: str, text: str, val_fraction: float) -> str:
    if "validation" in os.path.basename(path):
        return "valid"
    if val_fraction > 0:  # content hash: stable across runs, machines and file orders
        h = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
        if h < val_fraction * 2**64:
            return "valid"
    return "train"


class Packer:
    """Cuts a token stream into overlapping ``seq_len + 1`` windows (see module docstring)."""

    def __init__(self, seq_len: int):
        self.seq_len = seq_len
        self.buf = np.empty(0, dtype=np.int32)
        self.buf_sources: set[str] = set()

    def add(self, tokens: np.ndarray, source: str) -> tuple[np.ndarray, set[str]]:
        """Append tokens from ``source``; return the completed samples and their source files."""
        stream = np.concatenate([self.buf, tokens])
        n = max(0, (len(stream) - 1) // self.seq_len)
        windows = np.lib.stride_tricks.sliding_window_view(stream, self.seq_len + 1)
        samples = windows[: n * self.seq_len : self.seq_len].copy()
        sources = self.buf_sources | {source}
        self.buf = stream[n * self.seq_len:]
        self.buf_sources = {source} if len(self.buf) <= len(tokens) else sources
        return samples, sources


class ShardSink:
    """Writes one split's samples into numbered tar shards of ``samples_per_shard`` each."""

    def __init__(self, out_dir: str, split: str, samples_per_shard: int, seq_len: int, tag: str = ""):
        self.out_dir, self.split, self.tag = out_dir, split, tag
        self.per_shard, self.seq_len = samples_per_shard, seq_len
        self.shards: list[dict] = []
        self.index = 0  # running sample index within this split (and tag)
        self.writer = self.file = None

    def _open(self) -> None:
        name = f"{self.split}-{self.tag}{len(self.shards):06d}.tar"
        self.current = {"path": name, "samples": 0, "tokens": 0, "source_files": set()}
        self.file = open(os.path.join(self.out_dir, name + ".tmp"), "wb")
        self.writer = wds.TarWriter(self.file, mtime=0)  # fixed mtime: reproducible sha256

    def _close(self) -> None:
        self.writer.close()
        self.file.close()
        path = os.path.join(self.out_dir, self.current["path"])
        os.replace(path + ".tmp", path)
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        self.current["sha256"] = digest.hexdigest()
        self.current["source_files"] = sorted(self.current["source_files"])
        self.shards.append(self.current)
        self.writer = None

    def write(self, samples: np.ndarray, sources: set[str]) -> None:
        for sample in samples:
            if self.writer is None:
                self._open()
            buf = io.BytesIO()
            np.save(buf, sample, allow_pickle=False)
            self.writer.write({"__key__": f"{self.tag}{self.index:09d}", "tokens.npy": buf.getvalue()})
            self.index += 1
            self.current["samples"] += 1
            self.current["tokens"] += self.seq_len
            self.current["source_files"].update(sources)
            if self.current["samples"] == self.per_shard:
                self._close()

    def close(self) -> list[dict]:
        if self.writer is not None:
            self._close()
        return self.shards


def process_files(files: list[str], out_dir: str, tokenizer: TextTokenizer, seq_len: int,
                  samples_per_shard: int = 8192, text_field: str = "text",
                  val_fraction: float = 0.0, shard_tag: str = "", batch_bytes: int = 8 << 20,
                  progress: bool = True) -> dict:
    """Tokenize and pack ``files`` into shards under ``out_dir`` (one worker/rank's share).

    Returns ``{"train": S, "valid": S, "bad_lines": {file: n}}`` with
    ``S = {docs, samples, tokens, text_bytes, shards}``, the input of :func:`write_manifest`.
    Shard paths are relative to ``out_dir``.
    """
    os.makedirs(out_dir, exist_ok=True)
    packers = {s: Packer(seq_len) for s in SPLITS}
    sinks = {s: ShardSink(out_dir, s, samples_per_shard, seq_len, shard_tag) for s in SPLITS}
    stats = {s: Counter() for s in SPLITS}
    bad: Counter = Counter()
    eos = tokenizer.eos_id
    bar = tqdm(total=len(files), unit="file", disable=not progress, file=sys.stderr)

    def flush(split: str, texts: list[str], path: str) -> None:
        ids = tokenizer.encode_batch(texts)
        n = sum(map(len, ids)) + len(ids)
        flat = np.fromiter(itertools.chain.from_iterable(d + [eos] for d in ids), np.int32, n)
        sinks[split].write(*packers[split].add(flat, path))
        stats[split]["docs"] += len(texts)
        stats[split]["stream_tokens"] += n
        bar.set_postfix(tokens=sum(st["stream_tokens"] for st in stats.values()), refresh=False)
        texts.clear()

    for path in files:
        pending = {s: [] for s in SPLITS}
        size = Counter()
        for text, nbytes in iter_documents(path, text_field, bad):
            if not text:
                continue
            split = split_of(path, text, val_fraction)
            pending[split].append(text)
            size[split] += nbytes
            stats[split]["text_bytes"] += nbytes
            if size[split] >= batch_bytes:
                flush(split, pending[split], path)
                size[split] = 0
        for split in SPLITS:
            if pending[split]:
                flush(split, pending[split], path)
        bar.update(1)
    bar.close()
    result = {}
    for split in SPLITS:
        shards = sinks[split].close()
        result[split] = {
            "docs": stats[split]["docs"], "text_bytes": stats[split]["text_bytes"],
            "samples": sum(s["samples"] for s in shards), "tokens": sum(s["tokens"] for s in shards),
            "shards": shards}
    result["bad_lines"] = dict(bad)
    return result


def write_manifest(out_dir: str, parts: list[dict], seq_len: int, tokenizer: TextTokenizer,
                   extra: dict | None = None) -> dict:
    """Merge the results of one or more :func:`process_files` calls; write atomically."""
    splits = {}
    for split in SPLITS:
        merged = {"samples": 0, "tokens": 0, "docs": 0, "text_bytes": 0, "shards": []}
        for part in parts:
            for k in merged:
                merged[k] += part[split][k]
        splits[split] = merged
    bad_lines = {path: n for part in parts for path, n in part["bad_lines"].items()}
    manifest = {"format": "dist_pretrain.lm/1", "seq_len": seq_len, "sample_len": seq_len + 1,
                "dtype": "int32", "field": "tokens.npy", "total_tokens": splits["train"]["tokens"],
                "tokenizer": tokenizer.info(), "splits": splits, "bad_lines": bad_lines,
                **(extra or {})}
    tmp = os.path.join(out_dir, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, os.path.join(out_dir, MANIFEST))  # readers never see a half-written file
    return manifest


def _summary(result: dict, seconds: float) -> str:
    rows = [f"{'split':<6} {'docs':>9} {'samples':>10} {'tokens':>13} {'MB':>9} {'MB/s':>7} {'tok/s':>11}"]
    total = {k: sum(result[s][k] for s in SPLITS) for k in ("docs", "samples", "tokens", "text_bytes")}
    for split, r in [*((s, result[s]) for s in SPLITS), ("total", total)]:
        mb = r["text_bytes"] / 1e6
        rows.append(f"{split:<6} {r['docs']:>9,} {r['samples']:>10,} {r['tokens']:>13,} {mb:>9.1f} "
                    f"{mb / seconds:>7.1f} {r['tokens'] / seconds:>11,.0f}")
    return "\n".join(rows)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="dist-pretrain preprocess", description=__doc__.split("\n")[0])
    p.add_argument("--input", action="append", required=True, help="glob; repeatable")
    p.add_argument("--tokenizer", required=True, help="'gpt2' or a path to a HF tokenizer.json")
    p.add_argument("--seq-len", type=int, required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--samples-per-shard", type=int, default=8192)
    p.add_argument("--text-field", default="text")
    p.add_argument("--val-fraction", type=float, default=0.0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing manifest")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.seq_len < 1 or args.samples_per_shard < 1 or not 0 <= args.val_fraction < 1:
        p.error("--seq-len and --samples-per-shard must be >= 1, --val-fraction in [0, 1)")
    if os.path.exists(os.path.join(args.output, MANIFEST)) and not args.overwrite:
        p.error(f"{args.output} already holds a {MANIFEST}; pass --overwrite to rebuild it")
    files = expand_inputs(args.input)
    tok = load_tokenizer(args.tokenizer)
    t0 = time.perf_counter()
    result = process_files(files, args.output, tok, args.seq_len, args.samples_per_shard,
                           args.text_field, args.val_fraction, progress=not args.quiet)
    seconds = time.perf_counter() - t0
    manifest = write_manifest(args.output, [result], args.seq_len, tok,
                              {"inputs": files, "seconds": round(seconds, 3)})
    for path, n in sorted(manifest["bad_lines"].items()):
        print(f"warning: skipped {n} bad line(s) in {path}", file=sys.stderr)
    if not args.quiet:
        print(_summary(manifest["splits"], seconds))
        print(f"bad lines skipped: {sum(manifest['bad_lines'].values())}")
        print(f"wrote {args.output}/{MANIFEST} ({seconds:.1f}s)")
    return manifest


if __name__ == "__main__":
    main()
