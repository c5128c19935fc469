"""``dist-pretrain plan`` against measured memory: model states and activations per rank.

One 2-process torchrun job (``benchmarks.worker``) trains each memory layout for two steps and
counts the tensor storage each rank holds (``dist_pretrain.memory.held_model_state``), and runs
one micro-batch's forward per activation layout counting the storages saved for backward
(``benchmarks.activations.count_saved``). The table puts ``plan``'s numbers next to them.
``tests/test_plan.py`` asserts the same comparison (parameters exact, model states and buckets
within 5%, activations within 10%).

    python -m benchmarks.plan_check
"""

from __future__ import annotations

import json
import sys
import tempfile
from functools import cache
from pathlib import Path

from benchmarks.common import GPTSize, gpt_overrides, launch_worker, machine
from benchmarks.memory import RELEASE_PARAMS

SIZE = GPTSize(layers=2, hidden=128, heads=4, seq=64, vocab=2048, micro_batch=2)
LLAMA = ["model.position_embedding=rope", "model.normalization=rmsnorm", "model.bias=false",
         "model.num_query_groups=2", "model.activation=swiglu", "model.ffn_hidden_size=320"]
T5 = ["model.arch=t5", "task.name=span_corruption", "model.decoder_seq_length=32"]
# name -> (kind, precision, ZeRO stage, overrides); 2 processes each
CASES = {
    "fp32 ZeRO-1 DP2": ("memory", "fp32", 1, []),
    "bf16 ZeRO-2 DP2": ("memory", "bf16", 2, []),
    "fp32 ZeRO-0 TP2": ("memory", "fp32", 0, ["parallel.tensor=2"]),
    "bf16 ZeRO-1 PP2 tied": ("memory", "bf16", 1, ["parallel.pipeline=2"]),
    # parameters released after use (benchmarks/memory.py's DeepSpeed JSON): the largest stays whole
    "fp32 ZeRO-3 DP2 params released": ("memory", "fp32", 3, ["deepspeed.config={release}"]),
    "activations bf16 TP2 Llama-style": ("activations", "bf16", 1, ["parallel.tensor=2"] + LLAMA),
    "activations fp32 TP2 recompute": ("activations", "fp32", 1, ["parallel.tensor=2", "model.recompute=full"]),
    "activations bf16 TP2 dropout 0.1": ("activations", "bf16", 1, ["parallel.tensor=2", "model.hidden_dropout=0.1",
                                                                      "model.attention_dropout=0.1"]),
    # encoder at seq 64, decoder at 32 with cross-attention (dist_pretrain/activation_memory.py)
    "activations bf16 T5 TP2": ("activations", "bf16", 1, ["parallel.tensor=2"] + T5),
    "activations fp32 T5 TP2 relative bias": ("activations", "fp32", 1,
                                               ["parallel.tensor=2", "model.position_embedding=relative"] + T5),
}


@cache
def release_json() -> Path:
    path = Path(tempfile.mkdtemp(prefix="plan-check-")) / "zero3_release.json"
    path.write_text(json.dumps(RELEASE_PARAMS))
    return path


def overrides(name: str) -> list[str]:
    _, precision, stage, extra = CASES[name]
    return gpt_overrides(SIZE, precision, global_batch=2 * SIZE.micro_batch, zero_stage=stage) + \
        [o.format(release=release_json()) for o in extra]


def measure() -> dict:
    cases = [{"name": name, "kind": kind, "precision": precision, "stage": stage, "overrides": overrides(name)}
             for name, (kind, precision, stage, _) in CASES.items()]
    return launch_worker(2, cases, threads=1)


def plan_for(name: str):
    from dist_pretrain.config import load_config
    from dist_pretrain.plan import make_plan

    return make_plan(load_config(None, overrides(name) + ["parallel.nproc=2"]), 2, SIZE.vocab)


def rows(results: dict) -> list[dict]:
    """Per case and rank: planned and measured bytes (the plan's stage of that rank)."""
    out = []
    for name, (kind, *_) in CASES.items():
        plan = plan_for(name)
        for rank, got in enumerate(results[name]["ranks"]):
            stage = plan.stages[rank if plan.layout.pp == 2 else 0]
            if kind == "memory":
                out.append({"case": name, "rank": rank, "kind": kind, "psi": (got["psi"], stage["psi"]),
                             "bytes": (got["params"] + got["grads"] + got["optimizer"],
                                       stage["params"] + stage["grads"] + stage["optimizer"]),
                             "buckets": (got["buffers"], stage["buckets"])})
            else:
                out.append({"case": name, "rank": rank, "kind": kind,
                            "bytes": (sum(got.values()), stage["micro_batch"]["saved"])})
    return out


def table(rows_: list[dict]) -> str:
    mib = 2**20
    lines = ["| case | rank | what | measured | plan | plan / measured |", "|---|---|---|---|---|---|"]
    for r in rows_:
        what = "model states (params + grads + optimizer)" if r["kind"] == "memory" else \
            "activations saved per micro-batch"
        got, want = r["bytes"]
        lines.append(f"| {r['case']} | {r['rank']} | {what} | {got / mib:.3f} MiB | {want / mib:.3f} MiB | "
                     f"{want / got:.3f} |")
        if r["kind"] == "memory":
            lines.append(f"| | | parameters on the rank | {r['psi'][0]:,} | {r['psi'][1]:,} | "
                         f"{r['psi'][1] / r['psi'][0]:.3f} |")
            if r["buckets"][0] or r["buckets"][1]:
                ratio = f"{r['buckets'][1] / r['buckets'][0]:.3f}" if r["buckets"][0] else "-"
                lines.append(f"| | | reduction bucket | {r['buckets'][0] / mib:,.1f} MiB | "
                             f"{r['buckets'][1] / mib:,.1f} MiB | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    results = measure()
    errors = {name: r["error"] for name, r in results.items() if "error" in r}
    if errors:
        raise SystemExit(f"cases failed: {json.dumps(errors, indent=1)}")
    print(f"Machine: {json.dumps(machine())}")
    print(f"Command: python -m benchmarks.plan_check {' '.join(sys.argv[1:])}")
    print(f"GPT {SIZE.layers} x {SIZE.hidden}, {SIZE.heads} heads, seq {SIZE.seq}, vocab {SIZE.vocab}, "
          f"micro-batch {SIZE.micro_batch}, 2 processes (T5 cases: {SIZE.layers} + {SIZE.layers} layers, "
          f"decoder seq 32)\n")
    print(table(rows(results)))


if __name__ == "__main__":
    main()
