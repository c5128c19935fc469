"""Faults: non-finite steps are skipped and counted, too many in a row abort with the reason and
an intact checkpoint; a rank that stops participating makes the others fail with a timeout."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dist_pretrain.checkpoint import find_resumable, verify
from launch import kill_job, start_job

ROOT = Path(__file__).resolve().parents[1]
CFG = str(ROOT / "configs/gpt/tiny.yaml")
COMMON = ["monitor.tensorboard=false", "monitor.peak_tflops=1", "train.log_interval=1"]


def launch(nproc, run_dir, *overrides, env=None, timeout=180):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "dist_pretrain", "train", CFG, f"run_dir={run_dir}", f"parallel.nproc={nproc}", *COMMON,
           *overrides]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
    proc = start_job(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:  # never leave ranks behind
        kill_job(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _rows(run_dir):
    import json

    return [json.loads(line) for line in (Path(run_dir) / "history.jsonl").read_text().splitlines()]


def test_nan_step_is_skipped_and_counted_zero2_and_megatron_ddp(tmp_path):
    # bf16 ZeRO-1: inf/NaN is detected by the grad norm alone there (dist_pretrain/zero_step.py)
    for name, layout in [("zero2", ["parallel.zero_stage=2"]), ("ddp", ["parallel.zero_stage=0"]),
                         ("zero1 bf16", ["parallel.zero_stage=1", "train.precision=bf16"])]:
        run = tmp_path / name
        proc = launch(2, run, "train.steps=5", *layout, env={"DIST_PRETRAIN_FAULT_NAN_STEPS": "3"})
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        assert "warning: step 3 skipped" in proc.stdout
        rows = _rows(run)
        assert [r["train/skipped_steps"] for r in rows] == [0, 0, 1, 1, 1]
        assert rows[2]["train/loss"] != rows[2]["train/loss"]  # NaN logged for the poisoned step
        assert all(r["train/loss"] == r["train/loss"] for r in rows[3:])  # and training goes on


def test_consecutive_nan_steps_abort_with_reason_and_checkpoint_intact(tmp_path):
    run = tmp_path / "diverged"
    proc = launch(2, run, "train.steps=8", "checkpoint.interval=1", "train.max_skipped_in_a_row=3",
                  "parallel.zero_stage=1", env={"DIST_PRETRAIN_FAULT_NAN_STEPS": "3,4,5"})
    assert proc.returncode != 0
    assert "training aborted: 3 consecutive steps (up to step 5)" in proc.stderr
    good, warnings = find_resumable(run / "checkpoints")
    assert good == run / "checkpoints/step-00000002" and verify(good) is None and not warnings
    proc = launch(2, run, "train.steps=8", "checkpoint.interval=1", "parallel.zero_stage=1")
    assert proc.returncode == 0 and "resumed from" in proc.stdout and "step-00000002" in proc.stdout


def test_a_rank_that_stops_participating_makes_the_others_time_out(tmp_path):
    run = tmp_path / "hang"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
           "dist_pretrain", "train", CFG, f"run_dir={run}", "parallel.nproc=2", *COMMON, "train.steps=400",
           "parallel.timeout_minutes=0.25"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = start_job(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    workers = []
    try:
        while not (run / "history.jsonl").exists() or len(_rows(run)) < 3:
            time.sleep(0.1)
        workers = subprocess.run(["pgrep", "-f", "-P", str(proc.pid), "dist_pretrain"], capture_output=True,
                                 text=True).stdout.split()
        os.kill(int(workers[-1]), signal.SIGSTOP)  # one rank hangs
        t0 = time.monotonic()
        out, err = proc.communicate(timeout=120)
        waited = time.monotonic() - t0
    finally:  # the stopped rank too (re-parented once torchrun exits)
        kill_job(proc)
    assert proc.returncode != 0
    assert "stopped participating" in err and "parallel.timeout_minutes=0.25" in err, err[-3000:]
    assert waited < 90, waited
