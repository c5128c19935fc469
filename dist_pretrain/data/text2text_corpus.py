"""Real text-to-text pairs, offline: WordNet definitions and Wikipedia section headings.

No package ships summarization pairs. Two real sources of (input, target) pairs do ship:

* ``define: <word>`` -> its WordNet gloss (Debian ``wordnet-base``,
  ``/usr/share/wordnet/data.{noun,verb,adj,adv}``): the first lemma of each synset and
  the gloss's definition part (before the first ``;`` example), one pair per synset whose
  lemma is a single lower-case word, at most ``--define-limit`` of them, chosen evenly
  over the files.
* ``summarize: <section text>`` -> the section's heading, from the demo corpus's
  Wikipedia articles (``dist-pretrain demo-corpus``): a heading is a line of at most 8
  words without final punctuation followed by a paragraph; the input is that section's
  first paragraph, cut to ``--summarize-chars`` characters at a word boundary.

Both are written as JSONL with ``input`` and ``target``; ``preprocess --format seq2seq``
mixes the two files into one multi-task dataset, the prefixes telling the tasks apart.
"""
from __future__ import annotations

import glob
import gzip
import json
import os
import re

WORDNET = "/usr/share/wordnet"
_WORD = re.compile(r"^[a-z]+$")


def define_pairs(wordnet_dir: str = WORDNET, limit: int = 4000) -> list[dict]:
    files = [os.path.join(wordnet_dir, f"data.{pos}") for pos in ("noun", "verb", "adj", "adv")]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f"{missing[0]} not found: install Debian's wordnet-base (apt-get install "
                                "wordnet-base)")
    per_file = []
    for path in files:
        pairs = []
        with open(path, encoding="latin-1") as f:
            for line in f:
                if line.startswith("  ") or "|" not in line:
                    continue  # the licence header
                fields, gloss = line.split("|", 1)
                parts = fields.split()
                word = parts[4].lower()
                definition = gloss.split(";")[0].strip().strip('"').strip()
                if _WORD.match(word) and len(definition) > 3:
                    pairs.append({"input": f"define: {word}", "target": definition})
        per_file.append(pairs)
    share = max(1, limit // len(per_file))
    out = []
    for pairs in per_file:  # evenly spaced, so every part of speech and letter is represented
        step = max(1, len(pairs) // share)
        out += pairs[::step][:share]
    return out


def _is_heading(line: str) -> bool:
    words = line.split()
    return 0 < len(words) <= 8 and line[-1] not in ".:;,!?\"')" and not line.startswith(("*", "|", "-"))


def summarize_pairs(corpus_dir: str, max_chars: int = 400) -> list[dict]:
    files = sorted(glob.glob(os.path.join(corpus_dir, "c4", "en", "c4-*.json.gz")))
    if not files:
        raise FileNotFoundError(f"no demo corpus under {corpus_dir}/c4/en: run dist-pretrain demo-corpus --output "
                                f"{corpus_dir}")
    out = []
    for path in files:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                lines = [x.strip() for x in json.loads(line)["text"].split("\n")]
                for i, (head, body) in enumerate(zip(lines[1:], lines[2:]), start=1):
                    if _is_heading(head) and not _is_heading(body) and len(body) > 80 and lines[i - 1] == "":
                        text = body if len(body) <= max_chars else body[:max_chars].rsplit(" ", 1)[0]
                        out.append({"input": f"summarize: {text}", "target": head})
    return out


def write_text2text(out_dir: str, corpus_dir: str, define_limit: int = 4000) -> dict[str, int]:
    from dist_pretrain.data.finetune_corpus import write_jsonl

    counts = {}
    for name, pairs in (("define", define_pairs(limit=define_limit)), ("summarize", summarize_pairs(corpus_dir))):
        write_jsonl(os.path.join(out_dir, "text2text", f"{name}.jsonl"), pairs)
        counts[name] = len(pairs)
    return counts
