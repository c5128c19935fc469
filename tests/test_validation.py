"""Validation is a measurement: the same seed and train.eval_steps evaluate the same samples
at any DP size and loader worker count (real torchrun processes, tiny GPT, real shards)."""
import json
import os
import sys
from pathlib import Path

import pytest

from launch import demo_shards, run_group

ROOT = Path(__file__).resolve().parents[1]
GPT = str(ROOT / "configs/gpt/tiny.yaml")
RUN = ["monitor.peak_tflops=1", "monitor.tensorboard=false", "data.synthetic=false", "model.vocab_size=null",
       "model.seq_length=64", "train.steps=2", "train.eval_interval=2", "train.eval_steps=3",
       "train.global_batch_size=8", "train.micro_batch_size=2", "checkpoint.save_final=false"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """GPT-2 shards of 16 samples: the validation samples evaluated span several shards."""
    return demo_shards(tmp_path_factory.mktemp("validation"), samples_per_shard=16)


def _history(run_dir: Path) -> dict[int, dict]:
    return {row["step"]: row for row in map(json.loads, (run_dir / "history.jsonl").read_text().splitlines())}


def _train(tmp_path, name, nproc, *overrides):
    run_dir = tmp_path / name
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    r = run_group(["bash", str(ROOT / "launchers/torchrun.sh"), GPT, *RUN, f"run_dir={run_dir}", *overrides,
                   "--nproc", str(nproc)], timeout=240, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r, _history(run_dir)


def test_val_loss_is_the_same_at_dp1_dp2_and_1_or_3_workers(shards, tmp_path):
    data = f"data.path={shards}"
    r1, one = _train(tmp_path, "dp1-w1", 1, data, "data.num_workers=1")
    _, three = _train(tmp_path, "dp1-w3", 1, data, "data.num_workers=3")
    r2, dp2 = _train(tmp_path, "dp2-w1", 2, data, "data.num_workers=1")
    assert "validation at step 2" in r1.stdout and "DP 2" in r2.stdout
    # loader workers change nothing: bit-identical training and validation
    assert [one[s]["train/loss"] for s in (1, 2)] == [three[s]["train/loss"] for s in (1, 2)]
    assert one[2]["val/loss"] == three[2]["val/loss"]
    # DP=2 sums gradients in another order (weights differ in the last bits), evaluates the
    # same 3 x 8 samples in the same micro-batches
    assert dp2[2]["val/loss"] == pytest.approx(one[2]["val/loss"], rel=1e-5, abs=0)
    assert dp2[2]["train/loss"] == pytest.approx(one[2]["train/loss"], rel=1e-5, abs=0)


def test_eval_steps_all_evaluates_every_full_global_batch(shards, tmp_path):
    total = json.loads((shards / "manifest.json").read_text())["splits"]["valid"]["samples"]
    r, hist = _train(tmp_path, "all", 2, f"data.path={shards}", "train.eval_steps=all", "data.num_workers=2")
    full = total // 8
    assert f"validation: {full} x 8 of the {total} samples of {shards}" in r.stdout, r.stdout[-2000:]
    assert f"the last {total - full * 8} are left out" in r.stdout or total % 8 == 0
    assert hist[2]["val/loss"] > 0
