"""Scaling on one host's cores: data, tensor and pipeline parallelism against threads.

Same model (``common.FULL``, bf16), same global batch (16 samples in micro-batches of 4),
ZeRO-1, every run through ``Trainer.fit()`` under ``python -m torch.distributed.run``
(``benchmarks.worker``), tokens/s read from ``run_dir/history.jsonl``:

* 1 process x 2 intra-op threads (4 micro-batches accumulated), the baseline;
* DP=2: 2 processes x 1 thread, 2 micro-batches each, gradients reduced over gloo;
* TP=2: 2 processes x 1 thread, each layer split (2 all-reduces per layer forward, 2 backward);
* PP=2: 2 processes x 1 thread, 3 layers each, 1F1B over 4 micro-batches (bubble (p-1)/m = 1/4).
"""

from __future__ import annotations

from benchmarks.common import GPTSize, gpt_overrides

GLOBAL_BATCH = 16
LAYOUTS = {
    "DP=2 (ZeRO-1)": [],
    "TP=2": ["parallel.tensor=2"],
    "PP=2": ["parallel.pipeline=2"],
}


def cases(size: GPTSize, steps: int, warmup: int) -> tuple[list[dict], list[dict]]:
    """(cases for 1 process x 2 threads, cases for 2 processes x 1 thread)."""
    batch = min(GLOBAL_BATCH, 4 * size.micro_batch)

    def case(name, extra):
        return {"name": name, "kind": "train", "warmup": warmup,
                "overrides": gpt_overrides(size, "bf16", global_batch=batch, steps=warmup + steps) + extra}
    return [case("1 process x 2 threads", [])], [case(n, o) for n, o in LAYOUTS.items()]


def table(results: dict) -> str:
    base = results["1 process x 2 threads"]["tokens_per_s"]
    dp = results["DP=2 (ZeRO-1)"]["tokens_per_s"]
    lines = ["| layout | processes x threads | median step (s) | tokens/s | vs 1 x 2 threads | vs DP=2 |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        procs = "1 x 2" if name.startswith("1 process") else "2 x 1"
        lines.append(f"| {name} | {procs} | {r['step_s']:.3f} | {r['tokens_per_s']:,.0f} | "
                     f"{r['tokens_per_s'] / base:.2f}x | {r['tokens_per_s'] / dp:.2f}x |")
    return "\n".join(lines)
