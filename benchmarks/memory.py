"""Model-state memory per rank at DP=2 for ZeRO 0/1/2/3, fp32 and bf16, against the ZeRO paper.

Counted by ``dist_pretrain.memory.held_model_state`` inside a 2-process job
(``benchmarks.worker``, ``"kind": "memory"``): tensor storage reachable from the model's
parameters and the engine's optimizer, each storage once, at the high-water mark of the
second step. Stage 0 is megatron-core's DDP + optimizer; 1-3 are DeepSpeed. The
"ZeRO-3, params released" rows pass a DeepSpeed JSON through ``deepspeed.config``
(``stage3_max_live_parameters`` / ``max_reuse_distance`` / ``param_persistence_threshold``
= 0, 1e5-element buckets); the plain ZeRO-3 rows use the engine's model-sized settings
(``dist_pretrain/zero_memory.py``: at most the largest parameter stays gathered). DeepSpeed's
reduction buckets (``reduce_bucket_size``, 5e8 elements by default) are listed apart.

"stated buffers" is what a stage needs beyond the paper's Ψ-proportional states by its own
configuration (the paper's "constant-size buffers", section 6): at ZeRO-3, the gathered
parameters DeepSpeed may keep (``stage3_max_live_parameters``, at least the largest
parameter, which is gathered whole) and that parameter's full gradient before its
reduce-scatter; none at stages 0-2 (their reduction bucket is the column apart). The goal is
measured / (paper + stated) <= 1.05.
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


def stated_buffer_bytes(stage: int, precision: str, largest_param: int, max_live_parameters: int) -> float:
    """Bytes a stage holds by its configuration beyond the paper's states (see the module doc):
    at ZeRO-3 the gathered parameters it may keep (at least the largest one, gathered whole)
    plus the largest parameter's full gradient; nothing at stages 0-2."""
    if stage != 3:
        return 0.0
    value = 4 if precision == "fp32" else 2  # weights and gradients in the training dtype
    return (max(largest_param, max_live_parameters) + largest_param) * value


def rows(results: dict, cases_: list[dict], n: int = 2) -> list[dict]:
    out = []
    for case in cases_:
        ranks = results[case["name"]]["ranks"]
        worst = max(ranks, key=lambda r: r["params"] + r["grads"] + r["optimizer"])
        psi = worst["psi"]
        theory = zero_model_state_bytes(psi, n, case["stage"], case["precision"])
        measured = {k: worst[k] for k in ("params", "grads", "optimizer")}
        stated = stated_buffer_bytes(case["stage"], case["precision"], worst.get("largest_param", 0),
                                     worst.get("max_live_parameters", 0))
        out.append({"name": case["name"], "psi": psi, "measured": measured, "theory": theory,
                    "ratio": sum(measured.values()) / sum(theory.values()), "stated": stated,
                    "ratio_stated": sum(measured.values()) / (sum(theory.values()) + stated),
                    "buffers": worst["buffers"], "unreached": worst.get("live_unreached") or 0,
                    "where": worst.get("where", {})})
    return out


def table(rows_: list[dict]) -> str:
    psi = rows_[0]["psi"]
    lines = [(f"Ψ = {psi:,} parameters, N = 2 ranks; bytes per parameter (measured / ZeRO paper), "
             "the rank holding more"), "",
             ("| case | params | grads | optimizer | total | measured / theory | stated buffers | "
              "measured / (theory + stated) | reduction buckets | other live |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows_:
        m, t = r["measured"], r["theory"]
        cells = [f"{m[k] / psi:.2f} / {t[k] / psi:.2f}" for k in ("params", "grads", "optimizer")]
        total = f"{sum(m.values()) / psi:.2f} / {sum(t.values()) / psi:.2f}"
        lines.append(f"| {r['name']} | " + " | ".join(cells) + f" | {total} | {r['ratio']:.3f} | "
                     f"{r.get('stated', 0) / psi:.2f} | {r.get('ratio_stated', r['ratio']):.3f} | "
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
