"""A small regex sentence splitter for BERT/T5 document segments (no nltk, no downloads).

Rules, in order:

* a line break ends a sentence (headings, list items and paragraphs stay separate);
* within a line, a sentence ends after ``.``, ``!`` or ``?`` (plus closing quotes or
  brackets) when whitespace and then an uppercase letter, a digit or an opening
  quote/bracket follow;
* but not after a known abbreviation (``Mr.``, ``Dr.``, ``e.g.``, ``i.e.``, ``U.S.``,
  ``Jan.``, ...), a dotted acronym (``U.K.``, ``a.m.``), a single-letter initial
  (``J. R. R. Tolkien``), or ``No.``/``pp.``/``Fig.``/... before a number. ``etc.``
  ends a sentence when an uppercase word follows (before a lowercase word nothing splits).

It is tuned for encyclopedic and web prose; a rare wrong split or merge only moves a
segment boundary, never loses text.
"""
from __future__ import annotations

import re

# Lowercase, without the final dot. Titles and the like are almost never sentence-final.
ABBREVIATIONS = frozenset("""
    mr mrs ms mx dr prof sr jr st mt ft rev hon gen col lt capt cmdr sgt maj adm gov sen rep pres
    vs al cf viz approx ca dept est inc ltd co corp bros
    jan feb mar apr jun jul aug sep sept oct nov dec ph.d
""".split())
# Only abbreviations when a number follows ("No. 5", "pp. 12"); "said no. The" splits.
NUMBER_ABBREVIATIONS = frozenset("no nos fig figs vol vols pp op ch sec art eq".split())

# Candidate boundary: terminal punctuation, optional closers, whitespace, then what may
# start a sentence. Group 1 ends where the sentence ends.
_BOUNDARY = re.compile(r"""([.!?]+["'”’)\]]*)\s+(?=["'“‘(\[]?[A-Z0-9À-ÖØ-Þ])""")
_WORD_BEFORE = re.compile(r"(\S+)$")
_ACRONYM = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")  # e.g / U.S / a.m (final dot stripped)


def _is_abbreviation(text: str, end: int, next_char: str) -> bool:
    """Whether the ``.`` at ``text[end - 1]`` belongs to the word before it."""
    # only the last few characters: searching text[:end] for "\S+$" would rescan the line
    m = _WORD_BEFORE.search(text[max(0, end - 40): end - 1])
    if m is None:
        return False
    word = m.group(1).lstrip("\"'“‘([")
    if not word:
        return False
    if len(word) == 1 and word.isalpha():  # an initial: "J. R. R. Tolkien", "Mary J. Blige"
        return True
    word = word.lower()
    if word in NUMBER_ABBREVIATIONS:
        return next_char.isdigit()
    return word in ABBREVIATIONS or _ACRONYM.fullmatch(word) is not None


def split_line(line: str) -> list[str]:
    out, start = [], 0
    for m in _BOUNDARY.finditer(line):
        punct = m.group(1)
        if punct[0] == "." and len(punct.rstrip("\"'”’)]")) == 1 and _is_abbreviation(line, m.start(1) + 1, line[m.end()]):
            continue
        out.append(line[start:m.end(1)])
        start = m.end()
    out.append(line[start:])
    return [s for s in (s.strip() for s in out) if s]


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``, stripped, in order; empty ones dropped."""
    return [s for line in text.splitlines() for s in split_line(line)]
