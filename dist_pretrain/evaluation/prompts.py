"""Few-shot prompts: description, k solved demonstrations, then the item.

``description + demo_1 + D + ... + demo_k + D + item`` where ``D`` is the task's example
delimiter (a blank line) and each demonstration is its question, the target delimiter (a
space) and its answer. The demonstrations of item ``i`` are drawn from the task's pool by a
generator seeded with ``(seed, i)``: the same at any ``--limit``, batch size or run, and never
the item itself when the pool is the test set.
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


def demonstrations(task: Task, index: int, shots: int, seed: int) -> list[dict]:
    pool = task.pool
    candidates = [j for j in range(len(pool)) if task.train or j != index]
    if shots > len(candidates):
        raise InferenceError(f"task {task.name}: {shots} shots need {shots} demonstrations, the pool has "
                             f"{len(candidates)}")
    return [pool[j] for j in random.Random(f"{seed}-{index}").sample(candidates, shots)]


def build_context(task: Task, index: int, shots: int, seed: int) -> str:
    """The prompt for test item ``index`` (without its answer)."""
    parts = [join_target(task, question(task, d), answer(task, d))
             for d in demonstrations(task, index, shots, seed)]
    parts.append(question(task, task.test[index]))
    prompt = task.example_delimiter.join(parts)
    return task.description + prompt if task.description else prompt
