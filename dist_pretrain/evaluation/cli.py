"""``dist-pretrain evaluate SRC --task NAME_OR_FILE --shots 0,1,5``: zero- and few-shot scores.

Runs on one process, or under torchrun / srun: ``--tensor`` / ``--pipeline`` split the model,
and the replicas left over (world / (tensor x pipeline)) share the items, every replica scoring
every ``dp``-th one; the outcomes are gathered in item order, so the numbers are those of one
process. Only rank 0 prints and writes. Prints a table (metric, value, 95% interval, n, prompts that lost
tokens to left truncation) and writes ``--output results.json``: a list of rows
``{"task", "shots", "metric", "value", "n", "ci95", "truncated"}``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from dist_pretrain.errors import UserError, report_user_error
from dist_pretrain.inference.model import InferenceError


def parse_shots(text: str) -> list[int]:
    try:
        shots = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        shots = []
    if not shots or any(s < 0 for s in shots):
        raise InferenceError(f"--shots {text!r}: give non-negative integers separated by commas, e.g. 0,1,5")
    return shots


def table(results: list[dict]) -> str:
    lines = ["| task | shots | metric | value | 95% interval | n | truncated |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lo, hi = r["ci95"]
        ci = "-" if math.isnan(lo) else f"{lo:.4f} - {hi:.4f}"
        lines.append(f"| {r['task']} | {r['shots']} | {r['metric']} | {r['value']:.4f} | {ci} | {r['n']} | "
                     f"{r['truncated']} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dist-pretrain evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="run directory (newest checkpoint), checkpoint directory or imported model")
    parser.add_argument("--task", action="append", required=True,
                        help="built-in task (lambada-demo, analogies, polarity, quiz, quiz-mc) or a JSONL file; repeatable")
    parser.add_argument("--shots", default="0", help="comma-separated shot counts (default 0)")
    parser.add_argument("--limit", type=int, help="at most this many items per task")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the demonstration draws")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--tokenizer", help="tokenizer (default: the checkpoint's or its training data's)")
    parser.add_argument("--output", help="write the result rows as JSON")
    parser.add_argument("--tensor", type=int, default=1, help="tensor-parallel size (under torchrun)")
    parser.add_argument("--pipeline", type=int, default=1, help="pipeline-parallel size (under torchrun)")
    args = parser.parse_args(argv)
    from dist_pretrain.runtime import discover_launch_env

    rank0 = discover_launch_env().rank == 0
    try:
        return run(args, rank0)
    except (UserError, ValueError) as err:
        return report_user_error(err, rank0)
    finally:
        from dist_pretrain.runtime import shutdown

        if "torch" in sys.modules:
            shutdown()


def run(args, rank0: bool = True) -> int:
    from dist_pretrain.evaluation.runner import evaluate_task
    from dist_pretrain.evaluation.tasks import load_task
    from dist_pretrain.inference.model import load_causal_lm

    shots = parse_shots(args.shots)
    if args.limit is not None and args.limit < 1:
        raise InferenceError(f"--limit must be >= 1, got {args.limit}")
    tasks = [load_task(t) for t in args.task]
    lm = load_causal_lm(args.src, args.tokenizer, args.tensor, args.pipeline)
    results = []
    for task in tasks:
        for k in shots:
            results += evaluate_task(lm, task, k, args.limit, args.seed, args.batch_size)
    if not rank0:
        return 0
    print(table(results))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
        print(f"wrote {len(results)} rows to {args.output}", file=sys.stderr)
    return 0
