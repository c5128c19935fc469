"""Evaluation tasks: data plus a named output type, as in lm-evaluation-harness.

A task file is JSON lines in llm-foundry's formats, recognised by their keys:

* ``{"query", "choices", "gold"}``: multiple choice (``gold`` is the index of the right choice);
* ``{"context", "continuation"}``: language modelling / last word (LAMBADA-style);
* ``{"context", "answer"}``: generative (greedy until a stop string, exact match).

Demonstrations for few-shot prompts come from the task's ``train`` rows; a task file serves
as its own pool (the item being asked is never its own demonstration).

Built-in tasks, from data that installs offline (``/work/shared/DATA.md``):

* ``lambada-demo``: the last word of a passage of the demo corpus's validation articles
  (Wikipedia in gensim's wheel; every 20th article, as ``dist-pretrain demo-corpus`` splits
  them); demonstrations from the training articles.
* ``analogies``: gensim's ``questions-words.txt`` (19,544 analogies, Apache-2.0) as 4-way
  multiple choice: "Athens is to Greece as Baghdad is to" Iraq, with three distractors from
  the same section; items in a seeded order, so ``--limit`` takes a mix of sections.
* ``polarity``: gensim's 200 Pang & Lee movie-review sentences, label words
  "negative" / "positive".
* ``quiz`` / ``quiz-mc``: capitals and chemical elements from Debian's ``bsdgames`` quiz
  files, generative and 4-way multiple choice (``dist_pretrain.evaluation.quiz``).

A generative row's ``answer`` may be a list of accepted answers (the first one is shown in
demonstrations).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from dist_pretrain.errors import InferenceError
from dist_pretrain.evaluation.quiz import quiz_generative, quiz_multiple_choice

KINDS = {"multiple_choice": ("query", "choices", "gold"), "lm": ("context", "continuation"),
         "generate": ("context", "answer")}
ORDER_SEED = 1234  # the order of built-in items (what --limit takes)


@dataclass
class Task:
    name: str
    kind: str  # one of KINDS
    test: list[dict]
    train: list[dict] = field(default_factory=list)  # demonstrations; [] = the test rows themselves
    description: str = ""
    example_delimiter: str = "\n\n"
    target_delimiter: str = " "
    stop: tuple[str, ...] = ("\n",)  # generative tasks: greedy until one of these, EOS or
    max_new_tokens: int = 32  # this many tokens

    @property
    def pool(self) -> list[dict]:
        return self.train or self.test


def kind_of(row: dict, where: str) -> str:
    for kind, keys in KINDS.items():
        if all(k in row for k in keys):
            return kind
    raise InferenceError(f"{where}: a row needs the keys of one task kind: "
                         + "; ".join(f"{k}: {', '.join(v)}" for k, v in KINDS.items()) + f"; it has {sorted(row)}")


def load_task_file(path: str | Path) -> Task:
    """A task from a JSONL file in one of llm-foundry's formats (the first row sets the kind)."""
    path = Path(path)
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                raise InferenceError(f"{path} line {n}: not JSON") from None
    if not rows:
        raise InferenceError(f"task file {path} has no rows")
    kind = kind_of(rows[0], f"{path} line 1")
    for n, row in enumerate(rows, 1):
        if kind_of(row, f"{path} line {n}") != kind:
            raise InferenceError(f"{path} line {n}: a {kind_of(row, path)} row in a {kind} task")
        if kind == "multiple_choice" and not (isinstance(row["gold"], int) and 0 <= row["gold"] < len(row["choices"])):
            raise InferenceError(f"{path} line {n}: gold={row['gold']!r} is not an index into its "
                                 f"{len(row['choices'])} choices")
        if kind == "generate" and not (isinstance(row["answer"], str) or (
                isinstance(row["answer"], list) and row["answer"] and all(isinstance(a, str) for a in row["answer"]))):
            raise InferenceError(f"{path} line {n}: answer={row['answer']!r} is neither a string nor a non-empty "
                                 "list of accepted strings")
    return Task(name=path.stem, kind=kind, test=rows)


def gensim_test_data(name: str) -> Path:
    from dist_pretrain.data.demo_corpus import wiki_dump_path

    path = Path(wiki_dump_path()).parent / name
    if not path.is_file():
        raise InferenceError(f"{path} not found: install gensim's wheel (pip install --no-deps gensim==4.4.0)")
    return path


def analogies() -> Task:
    sections: dict[str, list[list[str]]] = {}
    name = ""
    for line in gensim_test_data("questions-words.txt").read_text().splitlines():
        if line.startswith(":"):
            name = line[1:].strip()
        elif line.strip():
            sections.setdefault(name, []).append(line.split())
    rows = []
    for name, items in sections.items():
        answers = sorted({words[3] for words in items})
        for i, (a, b, c, d) in enumerate(items):
            rng = random.Random(f"{name}-{i}")
            choices = [d, *rng.sample([w for w in answers if w not in (a, b, c, d)], 3)]
            rng.shuffle(choices)
            rows.append({"query": f"{a} is to {b} as {c} is to", "choices": choices, "gold": choices.index(d)})
    random.Random(ORDER_SEED).shuffle(rows)
    return Task(name="analogies", kind="multiple_choice", test=rows)


def polarity() -> Task:
    rows = []
    for line in gensim_test_data("pang_lee_polarity.cor").read_text(encoding="cp1252").splitlines():
        label, _, text = line.partition(" ")
        if label in ("__label__neg", "__label__pos"):
            rows.append({"query": f"Review: {text.strip()}\nSentiment:", "choices": ["negative", "positive"],
                         "gold": int(label == "__label__pos")})
    random.Random(ORDER_SEED).shuffle(rows)
    return Task(name="polarity", kind="multiple_choice", test=rows)


def last_words(articles: list[str], limit: int) -> list[dict]:
    """Passages of 40-120 words ending a paragraph's sentence, split before its last word
    (a word of letters only, so the target is a word and not a number or a symbol)."""
    rows = []
    for text in articles:
        for para in text.split("\n"):
            words = para.split()
            if len(words) < 40 or not para.rstrip().endswith("."):
                continue
            words = words[:120]
            while words and not words[-1].endswith("."):
                words.pop()
            if len(words) < 40:
                continue
            last = words[-1].rstrip(".")
            if re.fullmatch(r"[A-Za-z]{3,}", last):
                rows.append({"context": " ".join(words[:-1]), "continuation": " " + last})
            if len(rows) >= limit:
                return rows
    return rows


def lambada_demo() -> Task:
    from dist_pretrain.data.demo_corpus import (
        VALIDATION_EVERY,
        iter_wiki_articles,
        wiki_dump_path,
    )

    articles = [a["text"] for a in iter_wiki_articles(wiki_dump_path())]
    valid = [a for i, a in enumerate(articles) if i % VALIDATION_EVERY == VALIDATION_EVERY - 1]
    train = [a for i, a in enumerate(articles) if i % VALIDATION_EVERY != VALIDATION_EVERY - 1]
    return Task(name="lambada-demo", kind="lm", test=last_words(valid, 10**6), train=last_words(train, 500))


BUILT_IN = {"lambada-demo": lambada_demo, "analogies": analogies, "polarity": polarity, "quiz": quiz_generative,
            "quiz-mc": quiz_multiple_choice}


def load_task(name_or_file: str) -> Task:
    """A built-in task by name or a JSONL task file."""
    if name_or_file in BUILT_IN:
        return BUILT_IN[name_or_file]()
    if Path(name_or_file).is_file():
        return load_task_file(name_or_file)
    raise InferenceError(f"--task {name_or_file!r} is neither a built-in task ({', '.join(sorted(BUILT_IN))}) "
                         "nor a JSONL file")
