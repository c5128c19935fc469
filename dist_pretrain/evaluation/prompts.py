"""Few-shot prompts: description, k solved demonstrations, then the item.

``description + demo_1 + D + ... + demo_k + D + item`` where ``D`` is the task's example
delimiter (a blank line) and each demonstration is its question, the target delimiter (a
space) and its answer.

Demonstrations are drawn as lm-evaluation-harness's default ``ContextSampler`` draws them, so
that few-shot numbers are comparable with it (and equal, ``benchmarks/lm_eval_crosscheck.py``):
one ``random.Random(seed)`` per task and shot count (lm-eval's ``fewshot_random_seed``, 1234 by
default), advanced item by item in order. For item ``i`` with ``k`` shots it samples ``k + 1``
rows of the pool, drops those equal to the item (when the pool is the test set itself) and keeps
the first ``k``; if duplicates of the item leave fewer than ``k``, it samples ``k`` again from the
rows that differ from it. A separate train pool is sampled ``k`` at a time. The draws depend only
on the pool, ``k`` and the seed, so item ``i`` gets the same demonstrations at any ``--limit``,
batch size, data-parallel layout or run (every rank replays the same sequence).
"""

from __future__ import annotations

import random

from dist_pretrain.evaluation.tasks import Task
from dist_pretrain.inference.model import InferenceError


def question(task: Task, row: dict) -> str:
    return row["query"] if task.kind == "multiple_choice" else row["context"]


def answer(task: Task, row: dict) -> str:
    if task.kind == "multiple_choice":
        return row["choices"][row["gold"]]
    if task.kind == "lm":
        return row["continuation"]
    return accepted_answers(row)[0]


def accepted_answers(row: dict) -> list[str]:
    """A generative row's answers: ``answer`` as a string, or a list of accepted ones."""
    return [row["answer"]] if isinstance(row["answer"], str) else list(row["answer"])


def join_target(task: Task, text: str, target: str) -> str:
    """``text`` and ``target`` with the target delimiter between them, unless the target already
    starts with whitespace (llm-foundry's continuations often carry their space)."""
    return text + target if target[:1].isspace() else text + task.target_delimiter + target


def demonstration_plan(task: Task, shots: int, seed: int, items: int) -> list[list[int]]:
    """Pool indices of the demonstrations of test items ``0 .. items - 1`` (module docstring)."""
    pool, same = task.pool, not task.train
    rng = random.Random(seed)
    plan = []
    for i in range(items):
        if shots == 0:
            plan.append([])
            continue
        available = len(pool) - same  # the item itself is not its own demonstration
        if shots > available:
            raise InferenceError(f"task {task.name}: {shots} shots need {shots} demonstrations, the pool has "
                                 f"{available}")
        if not same:
            plan.append(rng.sample(range(len(pool)), shots))
            continue
        picked = [j for j in rng.sample(range(len(pool)), shots + 1) if pool[j] != task.test[i]][:shots]
        if len(picked) < shots:  # duplicates of the item were drawn: lm-eval samples again without them
            differ = [j for j in range(len(pool)) if pool[j] != task.test[i]]
            if shots > len(differ):
                raise InferenceError(f"task {task.name}: item {i} has duplicates; {shots} shots need {shots} "
                                     f"other rows, the pool has {len(differ)}")
            picked = rng.sample(differ, shots)
        plan.append(picked)
    return plan


def demonstrations(task: Task, index: int, shots: int, seed: int) -> list[dict]:
    return [task.pool[j] for j in demonstration_plan(task, shots, seed, index + 1)[index]]


def build_context(task: Task, index: int, shots: int, seed: int, demos: list[dict] | None = None) -> str:
    """The prompt for test item ``index`` (without its answer); ``demos``: its demonstrations when
    already drawn (``demonstration_plan``), else they are drawn here."""
    if demos is None:
        demos = demonstrations(task, index, shots, seed)
    parts = [join_target(task, question(task, d), answer(task, d)) for d in demos]
    parts.append(question(task, task.test[index]))
    prompt = task.example_delimiter.join(parts)
    return task.description + prompt if task.description else prompt
