"""Offline demo corpus of real English text, written in C4's exact on-disk layout.

No package ships C4, but gensim's wheel ships ~100 real Wikipedia articles as a wikitext
XML dump. Converting them to ``c4/en/c4-train.NNNNN-of-MMMMM.json.gz`` (JSON lines with
``text``, ``url``, ``timestamp``) lets the demo, the tests and a real C4 run go through the
very same preprocessing command.

gensim itself is not imported: installed with --no-deps it fails on ``import scipy``. The
XML is streamed with ``ElementTree.iterparse`` and the markup is removed by the small
regex cleaner below, which keeps paragraphs and headings readable.
"""
from __future__ import annotations

import argparse
import bz2
import gzip
import html
import importlib.util
import io
import json
import os
import re
import time
import xml.etree.ElementTree as ET
from typing import Iterator

WIKI_DUMP = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
NUM_TRAIN_FILES = 4
VALIDATION_EVERY = 20  # every 20th article goes to the validation file (~5%)
MIN_CHARS = 200        # drop stubs that are mostly markup

# Sections whose body is lists of citations/links rather than prose.
_TAIL_SECTIONS = re.compile(
    r"^==+\s*(References|Notes|Footnotes|Citations|Sources|Bibliography|Further reading|"
    r"External links|See also)\s*==+\s*$", re.M | re.I)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_MATH = re.compile(r"<math[^>]*>.*?</math>", re.S | re.I)  # TeX braces confuse {{...}}
_REF = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.S | re.I)
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")                 # innermost {{...}}
_TABLE = re.compile(r"\{\|(?:(?!\{\|).)*?\|\}", re.S)      # innermost {| ... |}
_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")                 # innermost [[...]]
_DROP_NS = re.compile(r"^\s*(File|Image|Category|Media|[a-z]{2,3}(-[a-z]+)?)\s*:", re.I)
_EXT_LINK = re.compile(r"\[(?:https?:)?//[^\s\]]+(?:\s+([^\]]*))?\]")
_TAG = re.compile(r"<[^>]+>")
_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$", re.M)


def _sub_until_stable(pattern: re.Pattern, repl, text: str) -> str:
    """Nested constructs ({{a|{{b}}}}, [[File:x|[[y]]]]) are removed innermost first."""
    while True:
        new = pattern.sub(repl, text)
        if new == text:
            return text
        text = new


def _link_text(m: re.Match) -> str:
    target, _, label = m.group(1).partition("|")
    if _DROP_NS.match(target) and not target.lower().startswith("wikt:"):
        return ""  # images, categories, interlanguage links carry no prose
    return (label.rsplit("|", 1)[-1] if label else target).strip()


def clean_wikitext(text: str) -> str:
    """Strip wikitext markup, keeping prose paragraphs and section headings as lines."""
    tail = _TAIL_SECTIONS.search(text)
    if tail:
        text = text[:tail.start()]
    text = _COMMENT.sub("", text)
    text = _MATH.sub("", _REF.sub("", text))
    text = _sub_until_stable(_TEMPLATE, "", text)
    text = _sub_until_stable(_TABLE, "", text)
    text = _sub_until_stable(_LINK, _link_text, text)
    text = _EXT_LINK.sub(lambda m: m.group(1) or "", text)
    text = _HEADING.sub(r"\2", text)
    text = text.replace("'''", "").replace("''", "")
    text = html.unescape(_TAG.sub("", text)).replace("\xa0", " ")
    lines = []
    for line in text.splitlines():
        # Leftovers of unbalanced markup (a caption containing "]", "{" inside a template)
        # are cut rather than parsed: losing a fragment beats keeping markup.
        line = re.sub(r"[ \t]+", " ", line.split("{{")[0].lstrip("*#:; \t")).strip()
        if line.startswith("[[") or line.endswith("]]"):
            line = ""
        if line.startswith(("|", "!", "{", "}", "__")) or line in ("()", ""):
            line = ""
        lines.append(re.sub(r"\s+([,.;:)])", r"\1", line.replace("( ", "(").replace("(; ", "(").replace("()", "")))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def wiki_dump_path() -> str:
    spec = importlib.util.find_spec("gensim")  # locate without importing (needs scipy)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("gensim is not installed: pip install --no-deps gensim==4.4.0")
    return os.path.join(list(spec.submodule_search_locations)[0], WIKI_DUMP)


def iter_wiki_articles(path: str) -> Iterator[dict]:
    """Yield ``{text, url, timestamp}`` for each main-namespace, non-redirect article."""
    with bz2.open(path, "rb") as f:
        for _, elem in ET.iterparse(f, events=("end",)):
            if elem.tag.rsplit("}", 1)[-1] != "page":
                continue
            page = {child.tag.rsplit("}", 1)[-1]: child for child in elem.iter()}
            title = page["title"].text or ""
            raw = (page["text"].text or "") if "text" in page else ""
            if page["ns"].text == "0" and "redirect" not in page and raw:
                text = clean_wikitext(raw)
                if len(text) >= MIN_CHARS:
                    yield {"text": f"{title}\n\n{text}",
                           "url": "https://en.wikipedia.org/wiki/" + title.replace(" ", "_"),
                           "timestamp": page["timestamp"].text}
            elem.clear()


def _write_jsonl_gz(path: str, docs: list[dict]) -> None:
    """Atomic, byte-reproducible (mtime=0) gzip'd JSON lines."""
    tmp = path + ".tmp"
    with gzip.GzipFile(tmp, "wb", mtime=0) as gz, io.TextIOWrapper(gz, encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def c4_file_names(num_train: int = NUM_TRAIN_FILES) -> list[str]:
    names = [f"c4-train.{i:05d}-of-{num_train:05d}.json.gz" for i in range(num_train)]
    return names + ["c4-validation.00000-of-00001.json.gz"]


def build_demo_corpus(output: str, num_train: int = NUM_TRAIN_FILES) -> str:
    """Write the corpus under ``output/c4/en``; returns that directory. Idempotent."""
    out_dir = os.path.join(output, "c4", "en")
    names = c4_file_names(num_train)
    if all(os.path.exists(os.path.join(out_dir, n)) for n in names):
        return out_dir
    os.makedirs(out_dir, exist_ok=True)
    train: list[list[dict]] = [[] for _ in range(num_train)]
    valid: list[dict] = []
    for i, doc in enumerate(iter_wiki_articles(wiki_dump_path())):
        if i % VALIDATION_EVERY == VALIDATION_EVERY - 1:
            valid.append(doc)
        else:  # round-robin keeps the train files about the same size
            train[(i - len(valid)) % num_train].append(doc)
    for name, docs in zip(names, train + [valid]):
        _write_jsonl_gz(os.path.join(out_dir, name), docs)
    return out_dir


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="dist-pretrain demo-corpus", description=__doc__.split("\n")[0])
    p.add_argument("--output", required=True, help="root directory; files go to OUTPUT/c4/en/")
    p.add_argument("--num-train-files", type=int, default=NUM_TRAIN_FILES)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    out_dir = build_demo_corpus(args.output, args.num_train_files)
    print(f"demo corpus in {out_dir} ({time.perf_counter() - t0:.1f}s)")


if __name__ == "__main__":
    main()
