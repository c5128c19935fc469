"""End to end on real English text: demo corpus (C4 layout) -> GPT-2 shards -> torchrun
training through launchers/torchrun.sh -> TensorBoard scalars read back from disk."""

import math
import os
import re
import sys
from pathlib import Path

import pytest
from launch import demo_shards, run_group

from dist_pretrain.models.flops import lm_flops_per_token
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["model.num_layers=2", "model.hidden_size=64", "model.num_attention_heads=4",
         "model.seq_length=64", "train.steps=8", "train.warmup_steps=2", "train.micro_batch_size=2",
         "train.global_batch_size=8", "train.log_interval=2", "train.eval_interval=4",
         "train.eval_steps=2", "train.lr=3e-3"]
TAGS = ["train/loss", "train/lr", "train/grad_norm", "val/loss", "val/perplexity",
        "throughput/tokens_per_s", "throughput/tflops_per_device", "throughput/mfu",
        "time/step_s", "time/data_wait_s", "time/data_wait_share", "memory/peak_gb"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return demo_shards(tmp_path_factory.mktemp("demo"), samples_per_shard=64)


def _launch(*args, timeout=300):
    env = {**os.environ, "PYTHON": sys.executable}
    return run_group(["bash", str(ROOT / "launchers/torchrun.sh"), *args], timeout, cwd=ROOT, env=env)


def _scalars(run_dir: Path) -> dict[str, list[float]]:
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.parametrize("layout", [
    ["parallel.tensor=2", "train.precision=bf16", "parallel.zero_stage=1"],
    ["parallel.pipeline=2", "parallel.tensor=1", "train.precision=fp32", "parallel.zero_stage=2"],
], ids=["TP2-bf16-ZeRO1", "PP2-fp32-ZeRO2"])
def test_demo_config_trains_and_logs(shards, tmp_path, layout):
    run_dir = tmp_path / "run"
    proc = _launch("configs/gpt/demo.yaml", f"data.path={shards}", f"run_dir={run_dir}", *SMALL, *layout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "step      8/8 | loss" in proc.stdout
    assert "validation at step 8" in proc.stdout
    scalars = _scalars(run_dir)
    for tag in TAGS:
        assert tag in scalars, f"{tag} missing from TensorBoard; have {sorted(scalars)}"
        assert all(math.isfinite(v) for v in scalars[tag]), (tag, scalars[tag])
    loss = scalars["train/loss"]
    assert len(loss) == 8
    assert loss[0] > 10.0 and loss[-1] < loss[0] - 0.5, loss  # GPT-2 vocab: starts near ln(50304)
    for val, ppl in zip(scalars["val/loss"], scalars["val/perplexity"]):
        assert ppl == pytest.approx(math.exp(val), rel=1e-4)
    # MFU = model TFLOP/s per device / the peak printed at start-up, and it cannot exceed 1;
    # the model FLOPs behind it are the formula that tests/test_flops.py checks against
    # torch's FLOP counter: 8 x 64 tokens per step, 2 layers of 64, vocab padded to 50304
    peak = float(re.search(r"peak ([0-9.]+) TFLOP/s/dev", proc.stdout)[1])
    world = 2
    for mfu, tflops, tokens_s, step_s in zip(scalars["throughput/mfu"], scalars["throughput/tflops_per_device"],
                                             scalars["throughput/tokens_per_s"], scalars["time/step_s"]):
        assert 0 < mfu <= 1.0
        # the peak is printed to 2 decimals: the true one lies within +-0.005 of it
        assert tflops / (peak + 0.005) * (1 - 1e-6) <= mfu <= tflops / (peak - 0.005) * (1 + 1e-6)
        assert tokens_s * step_s == pytest.approx(8 * 64, rel=1e-4)
        flops_per_token = tflops * 1e12 * world * step_s / (8 * 64)
        assert flops_per_token == pytest.approx(lm_flops_per_token(2, 64, 256, 64, 50304), rel=1e-4)


def test_bad_config_fails_fast_with_the_reason(shards, tmp_path):
    proc = _launch("configs/gpt/demo.yaml", f"data.path={shards}", "model.num_attention_heads=1",
                   "model.seq_length=64",
                   timeout=120)
    assert proc.returncode != 0
    assert "model.num_attention_heads=1 is not divisible by parallel.tensor=2" in proc.stderr


def test_missing_data_is_an_early_error(tmp_path):
    proc = _launch("configs/gpt/demo.yaml", f"data.path={tmp_path / 'nope'}", timeout=120)
    assert proc.returncode != 0
    assert "dist-pretrain preprocess" in proc.stderr and "nope" in proc.stderr


def test_seq_length_must_match_the_shards(shards):
    proc = _launch("configs/gpt/demo.yaml", f"data.path={shards}", timeout=120)
    assert proc.returncode != 0
    assert "model.seq_length=256 but" in proc.stderr and "--seq-len 64" in proc.stderr


def test_dp2_two_workers_uneven_shards_and_a_truncated_one(shards, tmp_path):
    """2 DP ranks x 2 loader workers over uneven shards (last shard of each file is short),
    one shard truncated: training and validation finish (no rank left waiting) and the
    skipped shard is named and counted in TensorBoard."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(shards, data)
    tars = sorted(data.glob("train-*.tar"))
    assert len({t.stat().st_size for t in tars}) > 1  # uneven
    for victim in tars[: len(tars) // 2]:  # truncate half of them so the stream surely meets one
        victim.write_bytes(victim.read_bytes()[:2000])
    run_dir = tmp_path / "run"
    proc = _launch("configs/gpt/demo.yaml", f"data.path={data}", f"run_dir={run_dir}", *SMALL,
                   "parallel.tensor=1", "data.num_workers=2", "train.precision=fp32", timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "DP 2" in proc.stdout and "validation at step 8" in proc.stdout
    assert "skipping corrupt shard" in proc.stderr and "train-" in proc.stderr
    skipped = _scalars(run_dir)["data/corrupt_shards_skipped"]
    assert skipped[-1] >= 1
