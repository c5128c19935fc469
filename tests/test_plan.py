"""``dist-pretrain plan`` against what real 2-process jobs hold (``benchmarks/plan_check.py``).

One torchrun launch trains two steps per layout (DP2 ZeRO-1 fp32, DP2 ZeRO-2 bf16, TP2 ZeRO-0,
PP2) and counts the tensor storage of model states on each rank, and runs one micro-batch's
forward (TP2 Llama-style bf16, TP2 with full recomputation, TP2 with dropout) counting the storages saved for
backward. The plan must give every rank's parameter count exactly, model-state bytes and the
reduction bucket within 5%, activation bytes within 10%.
"""

import subprocess
import sys

import pytest

from benchmarks import plan_check


@pytest.fixture(scope="module")
def rows():
    results = plan_check.measure()
    errors = {name: r["error"] for name, r in results.items() if "error" in r}
    assert not errors, errors
    out = plan_check.rows(results)
    print("\n" + plan_check.table(out))
    return out


@pytest.mark.parametrize("case", list(plan_check.CASES))
def test_plan_matches_what_the_ranks_hold(rows, case):
    mine = [r for r in rows if r["case"] == case]
    assert len(mine) == 2
    for r in mine:
        got, want = r["bytes"]
        if r["kind"] == "memory":
            assert r["psi"][0] == r["psi"][1], r
            assert abs(want / got - 1) <= 0.05, r
            if r["buckets"][1]:
                assert abs(r["buckets"][1] / r["buckets"][0] - 1) <= 0.05, r
        else:
            assert abs(want / got - 1) <= 0.10, r


def test_schedule_and_offload_arithmetic():
    """Megatron's schedules: 1F1B keeps p - stage micro-batches in flight, interleaving
    2 (p - stage - 1) + (v - 1) p + 1 chunk-micro-batches; the bubble (p - 1) / (v m + p - 1).
    Optimizer offload moves the fp32 partition, Adam moments and fp32 gradients to the host."""
    from dist_pretrain.plan import Layout, bubble_fraction, in_flight, model_state_bytes

    one_f_one_b, interleaved = Layout(1, 4, None, 1, 8), Layout(1, 2, 2, 1, 4)
    assert [in_flight(one_f_one_b, s) for s in range(4)] == [4, 3, 2, 1]
    assert in_flight(Layout(1, 4, None, 1, 2), 0) == 2  # fewer micro-batches than stages
    assert [in_flight(interleaved, s) for s in range(2)] == [2.5, 1.5]
    assert bubble_fraction(one_f_one_b) == 3 / 11 and bubble_fraction(interleaved) == 1 / 9
    on, off = (model_state_bytes(1000, 2, 2, "bf16", offload_optimizer=o) for o in (False, True))
    assert off["optimizer"] == 0 and off["host"] == on["optimizer"] + 4 * 500 and off["params"] == on["params"]
    released = model_state_bytes(1000, 2, 3, "fp32", {"zero_optimization": {"stage3_max_live_parameters": 0}})
    assert released["params"] == 4 * 500 and released["grads"] == 4 * 500


def test_cli_says_what_does_not_fit_and_what_would():
    run = subprocess.run([sys.executable, "-m", "dist_pretrain", "plan", "configs/gpt/tiny.yaml", "--world-size", "2",
                          "--peak-tflops", "100", "--memory-gb", "16", "model.hidden_size=1024",
                          "model.num_layers=24", "model.num_attention_heads=16", "model.vocab_size=50257",
                          "model.seq_length=1024", "train.global_batch_size=16", "train.micro_batch_size=8"],
                         check=False, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stdout + run.stderr
    # 355M fp32 at DP2: 13.6 GiB of activations per micro-batch of 8; halving it is the cheapest fix
    assert "does not fit: 20.10 GiB needed on stage 0, 16 GiB available; try train.micro_batch_size=4" in run.stderr, \
        run.stderr
    assert "predicted step:" in run.stdout and "pipeline bubble" in run.stdout, run.stdout
    bad = subprocess.run([sys.executable, "-m", "dist_pretrain", "plan", "configs/gpt/tiny.yaml", "--world-size", "3",
                          "parallel.tensor=2"], check=False, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "error:" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
