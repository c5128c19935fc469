"""Model-state memory per rank at DP=2 for ZeRO 0/1/2/3, fp32 and bf16, against the ZeRO paper.

Counted by ``dist_pretrain.memory.held_model_state`` inside a 2-process job
(``benchmarks.worker``, ``"kind": "memory"``): tensor storage reachable from the model's
parameters and the engine's optimizer, each storage once, at the high-water mark of the
second step. Stage 0 is megatron-core's DDP + optimizer; 1-3 are DeepSpeed. The
"ZeRO-3, params released" rows pass a DeepSpeed JSON through ``deepspeed.config``
(``stage3_max_live_parameters`` / ``max_reuse_distance`` / ``param_persistence_threshold``
= 0, 1e5-element buckets): by default DeepSpeed keeps up to 1e9 parameters gathered and
allocates 5e8-element reduction buckets, which a model this small never outgrows.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from benchmarks.common import GPTSize, gpt_overrides
from dist_pretrain.memory import zero_model_state_bytes

# model states do not depend on the shape, only on Ψ: a small GPT keeps the job short
MEMORY_SIZE = GPTSize(layers=4, hidden=256, heads=8, seq=128, vocab=8192, micro_batch=2)
RELEASE_PARAMS = {"zero_optimization": {
    "stage3_max_live_parameters": 0, "stage3_max_reuse_distance": 0,
    "stage3_param_persistence_threshold": 0, "stage3_prefetch_bucket_size": 0,
    "reduce_bucket_size": 100000, "allgather_bucket_size": 100000}}


def cases(size: GPTSize) -> list[dict]:
    ds_json = Path(tempfile.mkdtemp(prefix="bench-ds-")) / "zero3_release.json"
    ds_json.write_text(json.dumps(RELEASE_PARAMS))
    out = []
    for prec in ("fp32", "bf16"):
        for stage in (0, 1, 2, 3):
            out.append({"name": f"{prec} ZeRO-{stage}", "kind": "memory", "precision": prec, "stage": stage,
                        "overrides": gpt_overrides(size, prec, global_batch=2 * size.micro_batch, zero_stage=stage)})
        out.append({"name": f"{prec} ZeRO-3, params released", "kind": "memory", "precision": prec, "stage": 3,
                    "overrides": gpt_overrides(size, prec, global_batch=2 * size.micro_batch, zero_stage=3)
                    + [f"deepspeed.config={ds_json}"]})
    return out


def rows(results: dict, cases_: list[dict], n: int = 2) -> list[dict]:
    out = []
    for case in cases_:
        ranks = results[case["name"]]["ranks"]
        worst = max(ranks, key=lambda r: r["params"] + r["grads"] + r["optimizer"])
        psi = worst["psi"]
        theory = zero_model_state_bytes(psi, n, case["stage"], case["precision"])
        measured = {k: worst[k] for k in ("params", "grads", "optimizer")}
        out.append({"name": case["name"], "psi": psi, "measured": measured, "theory": theory,
                    "ratio": sum(measured.values()) / sum(theory.values()),
                    "buffers": worst["buffers"], "unreached": worst.get("live_unreached") or 0,
                    "where": worst.get("where", {})})
    return out


def table(rows_: list[dict]) -> str:
    psi = rows_[0]["psi"]
    lines = [(f"Ψ = {psi:,} parameters, N = 2 ranks; bytes per parameter (measured / ZeRO paper), "
             "the rank holding more"), "",
             "| case | params | grads | optimizer | total | measured / theory | reduction buckets | other live |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows_:
        m, t = r["measured"], r["theory"]
        cells = [f"{m[k] / psi:.2f} / {t[k] / psi:.2f}" for k in ("params", "grads", "optimizer")]
        total = f"{sum(m.values()) / psi:.2f} / {sum(t.values()) / psi:.2f}"
        lines.append(f"| {r['name']} | " + " | ".join(cells) + f" | {total} | {r['ratio']:.3f} | "
                     f"{r['buffers'] / 2**20:,.1f} MiB | {r['unreached'] / 2**20:.1f} MiB |")
    return "\n".join(lines)


def where(rows_: list[dict]) -> str:
    """Which DeepSpeed / megatron attributes each measured category came from (bytes / Ψ)."""
    lines = []
    for r in rows_:
        parts = []
        for cat in ("params", "grads", "optimizer"):
            items = ", ".join(f"{k} {v / r['psi']:.2f}" for k, v in r["where"].get(cat, {}).items() if v / r["psi"] >= 0.01)
            parts.append(f"{cat}: {items or '-'}")
        lines.append(f"- {r['name']}: " + "; ".join(parts))
    return "\n".join(lines)
