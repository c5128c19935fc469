"""Running a task at k shots and computing its metrics, the same way for every task of a kind.

* multiple choice: each choice scored as the sum of its tokens' log-likelihoods after the
  prompt and the target delimiter; ``acc``: the argmax is the gold choice; ``acc_norm``: the
  argmax of log-likelihood divided by the choice's length in characters.
* lm (last word): ``acc``: every continuation token is the greedy argmax; ``perplexity``:
  exp(-mean over items of the continuation's log-likelihood), as lm-evaluation-harness
  reports LAMBADA.
* generate: greedy decoding until a stop string, EOS or ``max_new_tokens``; ``exact_match`` after whitespace
  normalisation (ends stripped, inner runs of whitespace one space) with any accepted answer.

Every metric comes with ``n`` and a 95% interval: Wilson's for proportions, and for
perplexity the normal interval of the mean log-likelihood mapped through exp.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from dist_pretrain.evaluation.prompts import (
    accepted_answers,
    answer,
    build_context,
    demonstration_plan,
    join_target,
)
from dist_pretrain.evaluation.scoring import score_requests
from dist_pretrain.evaluation.tasks import Task
from dist_pretrain.inference.model import CausalLM

Z95 = 1.959964


def wilson(successes: float, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (scipy's; clipped to [0, 1])."""
    if n == 0:
        return (math.nan, math.nan)
    from scipy.stats import binomtest

    ci = binomtest(int(round(successes)), n).proportion_ci(confidence_level=0.95, method="wilson")
    return (float(ci.low), float(ci.high))


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


def item_records(lm: CausalLM, task: Task, shots: int, items: Sequence[int], seed: int = 1234,
                 batch_size: int = 16) -> list[dict] | None:
    """Per-item outcomes (``acc``, ``acc_norm``, ``loglik``, ``exact_match``, ``truncated``, as
    the task kind has them) for the test items ``items``; None on ranks without logits (not the
    last pipeline stage). Every rank of one model replica calls this together."""
    plan = demonstration_plan(task, shots, seed, max(items, default=-1) + 1)
    contexts = [build_context(task, i, shots, seed, [task.pool[j] for j in plan[i]]) for i in items]
    rows = task.test
    if task.kind == "multiple_choice":
        requests = [(ctx, join_target(task, "", choice)) for ctx, i in zip(contexts, items)
                    for choice in rows[i]["choices"]]
        scores = score_requests(lm, requests, batch_size)
        if scores is None:
            return None
        scores, records = iter(scores), []
        for i in items:
            got = [next(scores) for _ in rows[i]["choices"]]
            ll = [s.loglik for s in got]
            norm = [s.loglik / max(1, len(c)) for s, c in zip(got, rows[i]["choices"])]
            records.append({"acc": max(range(len(ll)), key=ll.__getitem__) == rows[i]["gold"],
                            "acc_norm": max(range(len(norm)), key=norm.__getitem__) == rows[i]["gold"],
                            "truncated": any(s.truncated for s in got)})
        return records
    if task.kind == "lm":
        requests = [(ctx, join_target(task, "", answer(task, rows[i]))) for ctx, i in zip(contexts, items)]
        scores = score_requests(lm, requests, batch_size)
        if scores is None:
            return None
        return [{"acc": s.greedy, "loglik": s.loglik, "truncated": s.truncated} for s in scores]
    from dist_pretrain.inference.generate import generate
    from dist_pretrain.inference.sampling import SamplingParams

    done = []  # the delimiter is generated (" Paris" is one token, " " + "Paris" two)
    for start in range(0, len(contexts), batch_size):
        done += generate(lm, contexts[start:start + batch_size], task.max_new_tokens, SamplingParams(greedy=True),
                         stop=task.stop)
    return [{"exact_match": normalise(c.completion) in {normalise(a) for a in accepted_answers(rows[i])},
             "truncated": c.truncated_prompt_tokens > 0} for c, i in zip(done, items)]


def summarise(task: Task, shots: int, records: list[dict]) -> list[dict]:
    """Result rows ``{task, shots, metric, value, n, ci95, truncated}`` from per-item outcomes."""
    if task.kind == "multiple_choice":
        results = [proportion(task.name, shots, m, [r[m] for r in records]) for m in ("acc", "acc_norm")]
    elif task.kind == "lm":
        results = [proportion(task.name, shots, "acc", [r["acc"] for r in records]),
                   perplexity(task.name, shots, [r["loglik"] for r in records])]
    else:
        results = [proportion(task.name, shots, "exact_match", [r["exact_match"] for r in records])]
    for r in results:
        r["truncated"] = sum(rec["truncated"] for rec in records)
    return results


def gather_records(mine: list[dict] | None, dp_rank: int, dp_size: int, n: int) -> list[dict]:
    """All items' records in item order on every rank, from replica ``dp_rank``'s items
    ``dp_rank::dp_size`` (each replica's reporting rank contributes; the others send None)."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return mine
    every: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(every, (dp_rank, mine))
    parts = {rank: recs for rank, recs in every if recs is not None}
    if sorted(parts) != list(range(dp_size)):
        raise RuntimeError(f"evaluation: records from data-parallel ranks {sorted(parts)}, expected 0..{dp_size - 1}")
    out: list = [None] * n
    for rank, recs in parts.items():
        out[rank::dp_size] = recs
    return out


def evaluate_task(lm: CausalLM, task: Task, shots: int, limit: int | None = None, seed: int = 1234,
                  batch_size: int = 16) -> list[dict]:
    """Result rows ``{task, shots, metric, value, n, ci95, truncated}`` for ``task`` at ``shots``.

    Under torchrun each data-parallel replica scores every ``dp``-th item (its rank first) and
    the outcomes are gathered in item order: the numbers are those of one process."""
    from megatron.core import parallel_state

    n = min(limit, len(task.test)) if limit else len(task.test)
    dp_rank, dp_size = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
    mine = item_records(lm, task, shots, range(dp_rank, n, dp_size), seed, batch_size)
    if mine is not None and parallel_state.get_tensor_model_parallel_rank() != 0:
        mine = None  # one copy per replica
    return summarise(task, shots, gather_records(mine, dp_rank, dp_size, n))
