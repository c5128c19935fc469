"""Build the real-English corpus of the scaling benchmark, in C4's layout, from offline sources.

    python -m benchmarks.scaling_corpus --output data/scaling-corpus

Sources (see ../shared/DATA.md; nothing is downloaded at run time):
* Wikipedia: gensim's ~100 articles (``dist_pretrain.data.demo_corpus``), ~3 MB of text;
* Linux kernel documentation (Debian ``linux-doc-6.1``): every ``*.rst.gz`` outside
  ``translations/``, one document each, ~20 MB;
* Python 3.11 documentation (Debian ``python3.11-doc``): the info manual split at its nodes;
* WordNet glosses (Debian ``wordnet-base``): the ``data.*`` files' definitions and examples in
  documents of 200 glosses.
Missing sources are skipped with a note (``apt-get install linux-doc-6.1 python3.11-doc
wordnet-base``). Every 20th document goes to the validation file. Then preprocess as usual:
``dist-pretrain preprocess --input 'DIR/c4/en/*.json.gz' ...``.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import os
import random
import re

from dist_pretrain.data.demo_corpus import _write_jsonl_gz, iter_wiki_articles, wiki_dump_path  # noqa: PLC2701

STAMP = "2026-01-01T00:00:00Z"
LINUX_DOC = "/usr/share/doc/linux-doc-6.1/Documentation"
PYTHON_INFO = "/usr/share/info/python3.11.info.gz"
WORDNET = "/usr/share/wordnet"


def linux_docs():
    for path in sorted(glob.glob(f"{LINUX_DOC}/**/*.rst.gz", recursive=True)):
        if "/translations/" in path:
            continue
        text = gzip.open(path, "rt", errors="replace").read()
        if len(text) > 500:
            yield {"text": text, "url": "file://" + path, "timestamp": STAMP}


def python_docs():
    if not os.path.exists(PYTHON_INFO):
        return
    text = gzip.open(PYTHON_INFO, "rt", errors="replace").read()
    for i, node in enumerate(text.split("\x1f")):  # info nodes are separated by ^_
        body = "\n".join(line for line in node.splitlines() if not line.startswith("File: "))
        if len(body) > 500:
            yield {"text": body.strip(), "url": f"info:python3.11#{i}", "timestamp": STAMP}


def wordnet_glosses(per_doc: int = 200):
    glosses = []
    for path in sorted(glob.glob(f"{WORDNET}/data.*")):
        for line in open(path, errors="replace"):
            if line.startswith("  ") or "|" not in line:
                continue  # the licence header
            words = re.findall(r"^\S+ \S+ \S \S+ (\S+)", line)
            gloss = line.split("|", 1)[1].strip()
            glosses.append(f"{words[0].replace('_', ' ') if words else ''}: {gloss}")
    for i in range(0, len(glosses), per_doc):
        yield {"text": "\n".join(glosses[i:i + per_doc]), "url": f"wordnet:{i}", "timestamp": STAMP}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--train-files", type=int, default=16)
    args = parser.parse_args(argv)
    out = os.path.join(args.output, "c4", "en")
    os.makedirs(out, exist_ok=True)
    sources = {"wikipedia": lambda: iter_wiki_articles(wiki_dump_path()), "linux-doc": linux_docs,
               "python-doc": python_docs, "wordnet": wordnet_glosses}
    train, valid, n = [[] for _ in range(args.train_files)], [], 0
    for name, source in sources.items():
        count = chars = 0
        for doc in source():
            if n % 20 == 19:
                valid.append(doc)
            else:
                train[n % args.train_files].append(doc)
            n, count, chars = n + 1, count + 1, chars + len(doc["text"])
        print(f"{name}: {count} documents, {chars / 1e6:.1f} M characters" + ("" if count else " (not installed?)"))
    for i, docs in enumerate(train):
        # C4 is in random order; written source by source, every file would hold Wikipedia, then the
        # Linux docs, then the Python docs, then WordNet, and training would switch domain every
        # ~1M tokens (a sweep's loss at a budget then depends on which block its decay ends in)
        random.Random(i).shuffle(docs)
        _write_jsonl_gz(os.path.join(out, f"c4-train.{i:05d}-of-{args.train_files:05d}.json.gz"), docs)
    # the sweep's fixed validation set is the first batches of this file: shuffled, it samples every
    # source in proportion (in source order it was nearly all Wikipedia)
    random.Random(args.train_files).shuffle(valid)
    _write_jsonl_gz(os.path.join(out, "c4-validation.00000-of-00001.json.gz"), valid)
    print(f"{n} documents ({len(valid)} validation) in {out}")


if __name__ == "__main__":
    main()
