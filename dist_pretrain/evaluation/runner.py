"""Running a task at k shots and computing its metrics, the same way for every task of a kind.

* multiple choice: each choice scored as the sum of its tokens' log-likelihoods after the
  prompt and the target delimiter; ``acc``: the argmax is the gold choice; ``acc_norm``: the
  argmax of log-likelihood divided by the choice's length in characters.
* lm (last word): ``acc``: every continuation token is the greedy argmax; ``perplexity``:
  exp(-mean over items of the continuation's log-likelihood), as lm-evaluation-harness
  reports LAMBADA.
* generate: greedy decoding until a stop string, EOS or ``max_new_tokens``; ``exact_match`` after whitespace
  normalisation (ends stripped, inner runs of whitespace one space).

Every metric comes with ``n`` and a 95% interval: Wilson's for proportions, and for
perplexity the normal interval of the mean log-likelihood mapped through exp.
"""

from __future__ import annotations

import math

from dist_pretrain.evaluation.prompts import answer, build_context, join_target
from dist_pretrain.evaluation.scoring import score_requests
from dist_pretrain.evaluation.tasks import Task
from dist_pretrain.inference.model import CausalLM

Z95 = 1.959964


def wilson(successes: float, n: int) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return (centre - half, centre + half)


def proportion(task: str, shots: int, metric: str, hits: list[bool]) -> dict:
    n = len(hits)
    return {"task": task, "shots": shots, "metric": metric, "value": sum(hits) / n if n else math.nan, "n": n,
            "ci95": wilson(sum(hits), n)}


def perplexity(task: str, shots: int, logliks: list[float]) -> dict:
    n = len(logliks)
    mean = sum(logliks) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in logliks) / (n - 1)) if n > 1 else math.inf
    half = Z95 * sd / math.sqrt(n)
    return {"task": task, "shots": shots, "metric": "perplexity", "value": math.exp(-mean), "n": n,
            "ci95": (math.exp(-mean - half), math.exp(min(-mean + half, 700.0)))}


def normalise(text: str) -> str:
    return " ".join(text.split())


def evaluate_task(lm: CausalLM, task: Task, shots: int, limit: int | None = None, seed: int = 1234,
                  batch_size: int = 16) -> list[dict]:
    """Result rows ``{task, shots, metric, value, n, ci95, truncated}`` for ``task`` at ``shots``."""
    items = range(min(limit, len(task.test)) if limit else len(task.test))
    contexts = [build_context(task, i, shots, seed) for i in items]
    rows = task.test
    if task.kind == "multiple_choice":
        requests = [(ctx, join_target(task, "", choice)) for ctx, i in zip(contexts, items)
                    for choice in rows[i]["choices"]]
        scores = iter(score_requests(lm, requests, batch_size))
        acc, acc_norm, truncated = [], [], 0
        for i in items:
            got = [next(scores) for _ in rows[i]["choices"]]
            truncated += any(s.truncated for s in got)
            ll = [s.loglik for s in got]
            norm = [s.loglik / max(1, len(c)) for s, c in zip(got, rows[i]["choices"])]
            acc.append(max(range(len(ll)), key=ll.__getitem__) == rows[i]["gold"])
            acc_norm.append(max(range(len(norm)), key=norm.__getitem__) == rows[i]["gold"])
        results = [proportion(task.name, shots, "acc", acc), proportion(task.name, shots, "acc_norm", acc_norm)]
    elif task.kind == "lm":
        requests = [(ctx, join_target(task, "", answer(task, rows[i]))) for ctx, i in zip(contexts, items)]
        scores = score_requests(lm, requests, batch_size)
        truncated = sum(s.truncated for s in scores)
        results = [proportion(task.name, shots, "acc", [s.greedy for s in scores]),
                   perplexity(task.name, shots, [s.loglik for s in scores])]
    else:
        from dist_pretrain.inference.generate import generate
        from dist_pretrain.inference.sampling import SamplingParams

        prompts = contexts  # the delimiter is generated (" Paris" is one token, " " + "Paris" two)
        done = []
        for start in range(0, len(prompts), batch_size):
            done += generate(lm, prompts[start:start + batch_size], task.max_new_tokens, SamplingParams(greedy=True),
                             stop=task.stop)
        truncated = sum(c.truncated_prompt_tokens > 0 for c in done)
        hits = [normalise(c.completion) == normalise(rows[i]["answer"]) for c, i in zip(done, items)]
        results = [proportion(task.name, shots, "exact_match", hits)]
    for r in results:
        r["truncated"] = int(truncated)
    return results
