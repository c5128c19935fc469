"""Built-in ``quiz`` (generative) and ``quiz-mc`` (multiple choice) tasks from Debian's
``bsdgames`` quiz files (``apt-get install bsdgames``; BSD licence, see the README):

* capitals: the countries of ``africa``, ``america``, ``asia`` and ``europe`` and the US states
  of ``state`` ("Q: What is the capital of France?" -> "Paris");
* elements: ``elements`` ("Q: Which chemical element has the symbol Fe?" -> "Iron").

A quiz line is ``question:answer[:...]`` where each side is a small pattern: ``a|b``
alternatives, ``{x}`` optional text, ``[x|y]`` a choice (``Bras['i|i'|i]lia``, accents spelled
out). The question and the gold answer use one canonical spelling (optional parts in, the
plainest choice: fewest punctuation marks, so ``Bras['i|i'|i]lia`` is ``Brasilia``). The
generative task accepts every spelling of the answer (``Vienna`` or ``Wien``) as an exact
match; the multiple-choice one offers the gold answer and three distractors drawn (seeded)
from the other answers of the same section, so they are the same kind of thing.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

from dist_pretrain.errors import InferenceError

QUIZ_DIR = Path("/usr/share/games/bsdgames/quiz")
MAX_SPELLINGS = 32
# file -> (question template, which field is the question, which the answer)
SECTIONS = {
    "africa": ("What is the capital of {}?", 0, 1),
    "america": ("What is the capital of {}?", 0, 1),
    "asia": ("What is the capital of {}?", 0, 1),
    "europe": ("What is the capital of {}?", 0, 1),
    "state": ("What is the capital of the US state of {}?", 0, 1),
    "elements": ("Which chemical element has the symbol {}?", 0, 3),
}
ORDER_SEED = 1234


def split_top(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` outside ``{}`` and ``[]`` (and after no backslash)."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        depth += c in "{["
        depth -= c in "}]"
        if c == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    return parts + [text[start:]]


def pieces(pattern: str) -> list[tuple[str, str]]:
    """One alternative as a sequence of ``("text", s)``, ``("optional", inner)``, ``("choice", inner)``."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c in "{[":
            close, depth, j = "}" if c == "{" else "]", 0, i
            while j < len(pattern):
                depth += pattern[j] in "{["
                depth -= pattern[j] in "}]"
                if depth == 0:
                    break
                j += 1
            out.append(("optional" if c == "{" else "choice", pattern[i + 1:j]))
            i = j + 1
        else:
            if c == "\\" and i + 1 < len(pattern):
                i += 1
            out.append(("text", pattern[i]))
            i += 1
    return out


def plainness(text: str) -> int:
    return sum(not (ch.isalnum() or ch.isspace()) for ch in text)


def canonical(pattern: str) -> str:
    """The spelling used in prompts: first alternative, optional parts included, plainest choice."""
    return " ".join(canonical_raw(pattern).split())


def canonical_raw(pattern: str) -> str:
    out = []
    for kind, value in pieces(split_top(pattern, "|")[0]):
        if kind == "text":
            out.append(value)
        elif kind == "optional":
            out.append(canonical_raw(value))
        else:
            out.append(min((canonical_raw(a) for a in split_top(value, "|")), key=plainness))
    return "".join(out)


def spellings(pattern: str) -> list[str]:
    """Every spelling of ``pattern`` (at most ``MAX_SPELLINGS``), canonical first."""
    first = canonical(pattern)
    found = [" ".join(s.split()) for s in spellings_raw(pattern)]
    return [first] + [s for s in dict.fromkeys(found) if s and s != first][:MAX_SPELLINGS - 1]


def spellings_raw(pattern: str) -> list[str]:
    found = []
    for alternative in split_top(pattern, "|"):
        options = []
        for kind, value in pieces(alternative):
            if kind == "text":
                options.append([value])
            elif kind == "optional":
                options.append(spellings_raw(value) + [""])
            else:
                options.append([s for a in split_top(value, "|") for s in spellings_raw(a)])
        found += ["".join(combo) for combo in itertools.islice(itertools.product(*options), MAX_SPELLINGS)]
    return found


def quiz_rows() -> list[dict]:
    """``{"section", "question", "answer", "spellings"}`` for every usable quiz line."""
    if not QUIZ_DIR.is_dir():
        raise InferenceError(f"the quiz tasks read Debian's bsdgames quiz files ({QUIZ_DIR}), which are not "
                             "installed: apt-get install bsdgames (as root)")
    rows = []
    for section, (template, q, a) in SECTIONS.items():
        for line in (QUIZ_DIR / section).read_text(encoding="latin-1").splitlines():
            fields = split_top(line.strip(), ":")
            if len(fields) <= max(q, a) or not fields[q] or not fields[a]:
                continue
            rows.append({"section": section, "question": "Q: " + template.format(canonical(fields[q])) + "\nA:",
                         "answer": canonical(fields[a]), "spellings": spellings(fields[a])})
    random.Random(ORDER_SEED).shuffle(rows)
    return rows


def quiz_generative():
    from dist_pretrain.evaluation.tasks import Task

    rows = [{"context": r["question"], "answer": r["spellings"]} for r in quiz_rows()]
    return Task(name="quiz", kind="generate", test=rows, max_new_tokens=16)


def quiz_multiple_choice():
    from dist_pretrain.evaluation.tasks import Task

    rows = quiz_rows()
    by_section: dict[str, list[str]] = {}
    for r in rows:
        by_section.setdefault(r["section"], [])
        if r["answer"] not in by_section[r["section"]]:
            by_section[r["section"]].append(r["answer"])
    out = []
    for i, r in enumerate(rows):
        rng = random.Random(f"quiz-{i}")
        others = [a for a in by_section[r["section"]] if a != r["answer"]]
        choices = [r["answer"], *rng.sample(others, 3)]
        rng.shuffle(choices)
        out.append({"query": r["question"], "choices": choices, "gold": choices.index(r["answer"])})
    return Task(name="quiz-mc", kind="multiple_choice", test=out)
