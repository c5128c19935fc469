"""Labelled examples for fine-tuning: JSONL / CSV / TSV -> tokenized WebDataset shards.

``dist-pretrain preprocess --format classification --input 'sst/*.jsonl' --tokenizer bert --seq-len 128
--output DIR``; ``dist-pretrain preprocess --format seq2seq --input 'pairs/*.jsonl' --tokenizer
spiece.model --seq-len 256 --target-len 64 --output DIR``

**Records.** ``.jsonl`` / ``.json`` (one object per line) and ``.csv`` / ``.tsv`` (a
header row, or ``--csv-columns label,text`` for files without one), optionally gzip'd.
Classification reads ``--text-field`` (``text``), ``--pair-field`` (``text_pair``,
optional: sentence pairs) and ``--label-field`` (``label``); seq2seq reads
``--input-field`` (``input``) and ``--target-field`` (``target``). A record that lacks a
field or has an empty text is bad: counted per file, and more than
``--max-bad-fraction`` of a file fails the run naming it.

**Labels** are strings (``3`` and ``"3"`` are the same label) mapped to ids in sorted
order (numerically when every label is an integer), or in the order ``--labels a,b,c``
gives. The list is the manifest's ``labels``; training copies it into the run's config,
so checkpoints and exports carry it.

**Splits.** A file whose name has the word ``train``, ``validation`` (or ``valid``,
``dev``) or ``test`` goes to that split whole. The records of other files are split by
``--val-fraction`` / ``--test-fraction``: a record goes to ``test`` when a hash of
(``--split-seed``, its text) is below the test fraction, to ``valid`` when below the sum,
else to ``train``. Equal texts land in the same split, so duplicates do not leak.

**Samples** (all int32 ``.npy``, no special tokens; the task adds them):
classification ``tokens`` (the text), ``pair`` (the pair, empty without one), ``label``
(one id); seq2seq ``input`` and ``target``. ``record.json`` keeps the original fields for
``predictions.jsonl``. Texts are cut to fit: classification to ``seq_len - 2`` tokens
(``seq_len - 3`` with a pair, the longer of the two trimmed first, from the end, as
transformers' ``longest_first``), seq2seq inputs to ``seq_len - 1`` and targets to
``target_len - 1`` (EOS is added). The manifest counts the records cut.

Labelled sets are small next to pretraining corpora: one process reads them whole.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import re
from collections import Counter
from typing import Iterator

import numpy as np

from dist_pretrain.data.manifest import MANIFEST
from dist_pretrain.data.shards import ShardSink, npy_bytes, write_json_atomic
from dist_pretrain.data.tokenizer import load_tokenizer

SPLITS = ("train", "valid", "test")
FORMATS = {"classification": "dist_pretrain.classification/1", "seq2seq": "dist_pretrain.seq2seq/1"}
_SPLIT_WORDS = {"train": "train", "training": "train", "validation": "valid", "valid": "valid", "dev": "valid",
                "test": "test"}


class LabelledDataError(ValueError):
    """Bad labelled input: printed as one line naming the file and what would fit."""


# --------------------------------------------------------------------------- reading


def _open_text(path: str):
    raw = gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


def read_records(path: str, csv_columns: list[str] | None = None) -> Iterator[dict | None]:
    """The records of one file, in order; ``None`` for a line that is not a record."""
    name = path.removesuffix(".gz")
    if name.endswith((".csv", ".tsv")):
        with _open_text(path) as f:
            reader = csv.DictReader(f, fieldnames=csv_columns, delimiter="\t" if name.endswith(".tsv") else ",")
            for row in reader:
                yield row if None not in row else None  # more cells than columns
        return
    if not name.endswith((".jsonl", ".json")):
        raise LabelledDataError(f"{path}: not .jsonl, .json, .csv or .tsv (optionally .gz)")
    with _open_text(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                yield None
                continue
            yield record if isinstance(record, dict) else None


def split_of_file(path: str) -> str | None:
    """The split a file's name names (a word train / validation / valid / dev / test), or None."""
    words = re.split(r"[^a-z]+", os.path.basename(path).lower())
    found = {_SPLIT_WORDS[w] for w in words if w in _SPLIT_WORDS}
    if len(found) > 1:
        raise LabelledDataError(f"{path}: the file name names several splits ({', '.join(sorted(found))}); "
                                "rename it")
    return found.pop() if found else None


def fraction_split(key: str, seed: int, val_fraction: float, test_fraction: float) -> str:
    h = int.from_bytes(hashlib.blake2b(f"{seed}\0{key}".encode("utf-8", "surrogatepass"),
                                       digest_size=8).digest(), "little") / 2**64
    if h < test_fraction:
        return "test"
    return "valid" if h < test_fraction + val_fraction else "train"


def _text(record: dict, field: str) -> str | None:
    value = record.get(field)
    if value is None or isinstance(value, (dict, list)):
        return None
    value = str(value).strip()
    return value or None


def label_names(labels: set[str], given: list[str] | None) -> list[str]:
    if given:
        unknown = sorted(labels - set(given))
        if unknown:
            raise LabelledDataError(f"--labels {','.join(given)} lacks label(s) found in the data: "
                                    f"{', '.join(unknown)}")
        return list(given)
    try:
        return sorted(labels, key=lambda s: (int(s), s))
    except ValueError:
        return sorted(labels)


# --------------------------------------------------------------------------- tokens


def fit_pair(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    """Trim the longer sequence from its end until both fit ``budget`` tokens (``b`` on a tie)."""
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        if len(b) >= len(a):
            b.pop()
        else:
            a.pop()
    return a, b


def _records(args) -> tuple[list[tuple[str, str, dict]], dict[str, dict]]:
    """(split, file_id, record) of every good record, and per-file counts."""
    from dist_pretrain.data.preprocess import expand_inputs, file_ids

    files = expand_inputs(args.input)
    ids = file_ids(files)
    needed = [args.text_field, args.label_field] if args.format == "classification" else \
        [args.input_field, args.target_field]
    out, per_file = [], {}
    for path in files:
        whole = split_of_file(path)
        lines = bad = 0
        for record in read_records(path, args.csv_columns.split(",") if args.csv_columns else None):
            lines += 1
            texts = None if record is None else [_text(record, f) for f in needed]
            if texts is None or None in texts:
                bad += 1
                continue
            key = texts[0] + ("\0" + (_text(record, args.pair_field) or "")
                              if args.format == "classification" else "")
            split = whole or fraction_split(key, args.split_seed, args.val_fraction, args.test_fraction)
            out.append((split, ids[path], record))
        if lines == 0:
            raise LabelledDataError(f"{path}: no records")
        if bad > args.max_bad_fraction * lines:
            raise LabelledDataError(
                f"{path}: {bad} of {lines} records lack a non-empty {' / '.join(needed)} or are not records "
                f"({bad / lines:.1%} > --max-bad-fraction {args.max_bad_fraction}); set the field names with "
                f"--{'text' if args.format == 'classification' else 'input'}-field ... (CSV without a header: "
                "--csv-columns)")
        per_file[path] = {"file_id": ids[path], "records": lines, "bad": bad, "split": whole}
    return out, per_file


def build(args) -> dict:
    """Tokenize the records, write ``{split}-{file_id}-NNNNN.tar`` shards and the manifest."""
    tok = load_tokenizer(args.tokenizer)
    records, per_file = _records(args)
    classify = args.format == "classification"
    f = (args.text_field, args.pair_field, args.label_field) if classify else (args.input_field, args.target_field)
    labels = label_names({_text(r, f[2]) for _, _, r in records}, args.labels.split(",") if args.labels else None) \
        if classify else None
    first = tok.encode_batch([_text(r, f[0]) for _, _, r in records])
    second = tok.encode_batch([_text(r, f[1]) or "" for _, _, r in records])
    os.makedirs(args.output, exist_ok=True)
    for name in os.listdir(args.output):  # a rebuild replaces every shard
        if name.endswith(".tar") and name.split("-", 1)[0] in SPLITS:
            os.unlink(os.path.join(args.output, name))
    sinks: dict[tuple[str, str], ShardSink] = {}
    counts = {s: Counter() for s in SPLITS}
    for (split, file_id, record), a, b in zip(records, first, second):
        if classify:
            fa, fb = fit_pair(a, b, args.seq_len - (3 if b else 2))
            fields = {"tokens.npy": npy_bytes(np.array(fa, np.int32)), "pair.npy": npy_bytes(np.array(fb, np.int32)),
                      "label.npy": npy_bytes(np.array([labels.index(_text(record, f[2]))], np.int32))}
            kept = {"text": _text(record, f[0]), "text_pair": _text(record, f[1]), "label": _text(record, f[2])}
        else:
            fa, fb = a[:args.seq_len - 1], b[:args.target_len - 1]
            fields = {"input.npy": npy_bytes(np.array(fa, np.int32)), "target.npy": npy_bytes(np.array(fb, np.int32))}
            kept = {"input": _text(record, f[0]), "target": _text(record, f[1])}
        fields["record.json"] = json.dumps(kept, ensure_ascii=False).encode()
        sink = sinks.get((split, file_id))
        if sink is None:
            sink = sinks[(split, file_id)] = ShardSink(args.output, split, file_id, args.samples_per_shard)
        sink.add(fields, len(fa) + len(fb))
        counts[split]["samples"] += 1
        counts[split]["tokens"] += len(fa) + len(fb)
        counts[split]["truncated"] += (len(fa) + len(fb)) < (len(a) + len(b))
    splits = {s: {"samples": counts[s]["samples"], "tokens": counts[s]["tokens"],
                  "truncated": counts[s]["truncated"], "shards": []} for s in SPLITS}
    for (split, _), sink in sorted(sinks.items()):
        splits[split]["shards"] += sink.close()
    manifest = {
        "format": FORMATS[args.format], "seq_len": args.seq_len,
        "target_len": None if classify else args.target_len,
        "labels": labels, "tokenizer": tok.info(), "splits": splits,
        "fields": dict(zip(("text", "text_pair", "label") if classify else ("input", "target"), f)),
        "files": per_file,
        "split_rule": {"val_fraction": args.val_fraction, "test_fraction": args.test_fraction,
                       "split_seed": args.split_seed},
    }
    write_json_atomic(os.path.join(args.output, MANIFEST), manifest)
    return manifest


def summary(manifest: dict) -> str:
    rows = [f"{'split':<6} {'samples':>8} {'tokens':>10} {'cut to fit':>10}"]
    for s in SPLITS:
        r = manifest["splits"][s]
        rows.append(f"{s:<6} {r['samples']:>8,} {r['tokens']:>10,} {r['truncated']:>10,}")
    if manifest["labels"]:
        rows.append(f"labels: {', '.join(f'{i}={name}' for i, name in enumerate(manifest['labels']))}")
    bad = {p: v["bad"] for p, v in manifest["files"].items() if v["bad"]}
    rows.append(f"bad records skipped: {sum(bad.values())}" + "".join(f"\n  {n:>6}  {p}" for p, n in bad.items()))
    return "\n".join(rows)
