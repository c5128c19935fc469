"""ZeRO-2 and ZeRO-3 hold the bytes the ZeRO paper promises (DP=2, real torchrun, gloo).

One 2-process job (``benchmarks.worker``, the memory benchmark's own count) on a tiny GPT.
It fails if ZeRO-2 gradients stop being partitioned (full-size gradients, or the reduced
partition copied again for AdamW: ~2x the paper), if fp32 training gets a master copy of
its fp32 weights again, or if ZeRO-3 keeps parameters gathered. The full table is
``python -m benchmarks.run_all --only memory``.
"""

import pytest

from benchmarks import memory
from benchmarks.common import SMOKE, gpt_overrides, launch_worker

CASES = [("fp32", 2), ("bf16", 2), ("fp32", 3)]


@pytest.fixture(scope="module")
def measured():
    cases = [{"name": f"{prec} ZeRO-{stage}", "kind": "memory", "precision": prec, "stage": stage,
              "overrides": gpt_overrides(SMOKE, prec, global_batch=2 * SMOKE.micro_batch, zero_stage=stage)}
             for prec, stage in CASES]
    got = launch_worker(2, cases, threads=1, timeout=300)
    errors = {name: r["error"] for name, r in got.items() if "error" in r}
    assert not errors, errors
    return {r["name"]: r for r in memory.rows(got, cases)}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_zero2_gradients_are_partitioned(measured, precision):
    row = measured[f"{precision} ZeRO-2"]
    # the paper: 4 (fp32) or 2 (bf16) bytes per parameter over N = 2 ranks; unpartitioned is 2x that
    assert row["measured"]["grads"] <= 1.05 * row["theory"]["grads"], memory.table([row])
    assert row["ratio"] <= 1.05, memory.table([row])


def test_fp32_zero3_holds_no_master_copy_and_releases_parameters(measured):
    row = measured["fp32 ZeRO-3"]
    assert row["measured"]["optimizer"] <= 1.05 * row["theory"]["optimizer"], memory.table([row])
    assert row["ratio_stated"] <= 1.05, memory.table([row])
