"""Benchmark formulas against hand counts and torch's FLOP counter on a tiny config, the GPU plan without a GPU, and
one ``--smoke`` run of every CPU benchmark (tiny sizes: it proves they still execute)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.common import GPTSize
from benchmarks.mfu import gpt_params, megatron_flops_per_token, six_n_flops_per_token
from benchmarks.peers import NanoGPT
from dist_pretrain.memory import (
    flash_no_dropout_layer_bytes,
    held_model_state,
    korthikanti_layer_bytes,
    zero_model_state_bytes,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = GPTSize(layers=2, hidden=8, heads=2, seq=4, vocab=10, micro_batch=2)


def test_gpt_params_hand_count():
    h, ffn, s, v = 8, 32, 4, 10
    qkv = 8 * 24 + 24                 # weight [3h, h] + bias
    proj = 8 * 8 + 8
    fc1 = 8 * 32 + 32
    fc2 = 32 * 8 + 8
    norms = 2 * (8 + 8)               # two LayerNorms, weight + bias
    per_layer = qkv + proj + fc1 + fc2 + norms
    assert per_layer == 216 + 72 + 288 + 264 + 32 == 872
    total = 2 * per_layer + v * h + s * h + 2 * h   # tied embedding, positions, final norm
    assert total == 1744 + 80 + 32 + 16 == 1872
    assert gpt_params(2, h, ffn, v, s) == total
    # the nanoGPT peer has exactly this layout
    assert sum(p.numel() for p in NanoGPT(TINY).parameters()) == total


def counted_flops_per_token(model: torch.nn.Module, size: GPTSize) -> float:
    """Forward + backward FLOPs of one batch as torch's FlopCounterMode counts the matmuls that
    actually run (SDPA on its math kernel, whose bmm's the counter sees), per token."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    idx = torch.randint(0, size.vocab, (size.micro_batch, size.seq))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        logits = model(idx)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx.flatten()).backward()
    return counter.get_total_flops() / (size.micro_batch * size.seq)


def test_flops_formulas_against_torch_flop_counter():
    """Megatron's count (3 x forward, full s x s attention) equals what the peer's forward and
    backward execute; 6N + 12lhs also counts LayerNorm/bias parameters as if they were matmul
    weights, so it is a little above."""
    size = GPTSize(layers=2, hidden=32, heads=4, seq=16, vocab=100, micro_batch=2)
    counted = counted_flops_per_token(NanoGPT(size), size)
    assert megatron_flops_per_token(size) == pytest.approx(counted, rel=1e-9)
    assert 1.0 < six_n_flops_per_token(size) / counted < 1.05


def test_hf_gpt2_has_the_same_parameters():
    from benchmarks.peers import hf_gpt2

    assert sum(p.numel() for p in hf_gpt2(TINY).parameters()) == gpt_params(2, 8, 32, 10, 4)


@pytest.mark.parametrize("precision, stage, expected", [
    # Ψ = 1000, N = 4; mixed precision 2 + 2 + 12 bytes, fp32 4 + 4 + 8 (no master copy)
    ("bf16", 0, (2000, 2000, 12000)),
    ("bf16", 1, (2000, 2000, 3000)),
    ("bf16", 2, (2000, 500, 3000)),
    ("bf16", 3, (500, 500, 3000)),
    ("fp32", 0, (4000, 4000, 8000)),
    ("fp32", 1, (4000, 4000, 2000)),
    ("fp32", 2, (4000, 1000, 2000)),
    ("fp32", 3, (1000, 1000, 2000)),
])
def test_zero_formulas(precision, stage, expected):
    got = zero_model_state_bytes(1000, 4, stage, precision)
    assert (got["params"], got["grads"], got["optimizer"]) == expected


def test_activation_formulas_hand_count():
    s, b, h, a = 4, 2, 8, 2           # sbh = 64, a s^2 b = 64
    assert korthikanti_layer_bytes(s, b, h, a) == 34 * 64 + 5 * 64 == 2496
    # 16 sbh values of 2 bytes + fp32 log-sum-exp per (b, head, query)
    assert flash_no_dropout_layer_bytes(s, b, h, a, 2) == 16 * 64 * 2 + 4 * 2 * 4 * 2 == 2112


def test_held_model_state_counts_storages_once():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))   # Ψ = 40 + 18 = 58
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    params = list(model.parameters())
    held = held_model_state(params, [opt])
    psi = 58
    assert held["params"] == 4 * psi and held["grads"] == 4 * psi
    # exp_avg + exp_avg_sq per parameter, plus a 4-byte step counter per tensor
    assert held["optimizer"] == 8 * psi + 4 * len(params)
    assert held["buffers"] == 0 and held["live_unreached"] is None


def test_gpu_plan_dry_run(capsys):
    from benchmarks import gpu

    assert gpu.main(["--dry-run", "--compile", "off"]) == 0
    out = capsys.readouterr().out
    assert '"params": 1315819520' in out          # ~1.3B: 24 x 2048 with the GPT-2 vocab
    args = gpu.argparse.Namespace(layers=24, hidden=2048, heads=16, seq=2048, micro_batch=64,
                                  recompute="auto", compile="both", zero_stage=1, warmup=1, steps=1)
    assert gpu.plan(args, gpu_gib=80.0)["recompute"] == "full"   # does not fit: recompute
    args.micro_batch = 4
    assert gpu.plan(args, gpu_gib=80.0)["recompute"] == "none"


@pytest.mark.slow
def test_run_all_smoke(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run_all", "--smoke", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    reports = list(tmp_path.glob("*-cpu-smoke.md"))
    assert len(reports) == 1
    text = reports[0].read_text()
    for heading in ("Throughput against the alternatives", "MFU against", "Activation memory",
                    "Scaling on the cores", "Model-state memory", "Model families"):
        assert heading in text
    assert "| fp32 ZeRO-0 | 4.00 / 4.00 | 4.00 / 4.00 | 8.00 / 8.00 |" in text


def test_report_prose_follows_the_measurements():
    """The notes of a report are derived from its run: numbers from the JSON, and an explanation
    only where the measurements show its effect (checked by editing a saved run)."""
    import copy

    from benchmarks.common import FULL
    from benchmarks.notes import notes

    saved = json.loads((ROOT / "benchmarks/results/2026-11-26-cpu.json").read_text())
    text = notes(saved, FULL)
    ours = saved["peers"]["bf16"]["ours"]
    assert f"ours {ours['tokens_per_s']:,.0f} tokens/s" in text
    assert "keeps parameters gathered by default" in text and "two gradient copies at the step" in text
    assert "The update accounts for" in text
    # a run where ZeRO-3 released its parameters, ZeRO-0 matched the paper and the update cost what the
    # peers' does: none of those explanations may appear
    edited = copy.deepcopy(saved)
    for row in edited["memory"]:
        if row["name"].endswith("ZeRO-3"):
            released = next(r for r in edited["memory"] if r["name"] == row["name"] + ", params released")
            row["measured"]["params"] = released["measured"]["params"]
        if row["name"] == "bf16 ZeRO-0":
            row["measured"]["grads"] = row["theory"]["grads"]
    for prec in ("fp32", "bf16"):
        rows = edited["peers"][prec]
        rows["ours"]["phases"]["engine step (clip + AdamW)"] = 0.001
    text = notes(edited, FULL)
    assert "keeps parameters gathered by default" not in text
    assert "ZeRO-0 bf16: gradients" not in text
    assert "The update accounts for" not in text


def test_gpu_checks_dry_run(capsys, tmp_path):
    from benchmarks import gpu_checks

    assert gpu_checks.main(["--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert list(plan["checks"]) == gpu_checks.CHECKS and plan["device"] == "cuda"
    assert set(plan["resume"]) >= {"ZeRO-0 fp32", "ZeRO-3 bf16"} and plan["tolerances"]["stages_fp32"] == 1e-5
    # the one command the GPU machine runs, through its script, without a GPU or wheels
    proc = subprocess.run(["bash", "benchmarks/gpu.sh", "--all", "--dry-run", "--only", "nan"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and list(json.loads(proc.stdout)["checks"]) == ["nan"], proc.stderr[-2000:]


def test_gpu_checks_without_a_gpu_exit_2_unless_told_cpu(monkeypatch, tmp_path):
    from benchmarks import gpu_checks

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert gpu_checks.main(["--out", str(tmp_path)]) == 2
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_gpu_checks_on_cpu_nan_skip_and_report(tmp_path, monkeypatch):
    """The GPU script's real logic on gloo: the NaN-skip check in torchrun, its report, JSON and log
    (also copied to $OUT)."""
    from benchmarks import gpu_checks

    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv("OUT", str(out))
    assert gpu_checks.main(["--device", "cpu", "--only", "nan", "generation", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gpu-checks-cpu.json").read_text())["results"]
    assert result["nan"]["ok"] is True and result["generation"]["ok"] is None
    assert [r["skipped_steps"] for r in result["nan"]["rows"]] == [[0, 0, 1, 1, 1]] * 3
    text = (out / "gpu-checks-cpu.md").read_text()
    assert "| nan | pass |" in text and "no generation (inference) path yet" in text
    assert (out / "gpu-checks-cpu.log").exists()
