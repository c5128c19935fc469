"""Checkpoints: bit-exact resume after kill -9, resharding to other layouts, time-limit exits,
corruption fallback, a failed save leaving the previous checkpoint intact."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dist_pretrain.checkpoint import consolidate, find_resumable, verify
from launch import kill_job, start_job

ROOT = Path(__file__).resolve().parents[1]
CFG = str(ROOT / "configs/gpt/tiny.yaml")
BASE = ["train.steps=8", "checkpoint.interval=1", "monitor.tensorboard=false", "monitor.peak_tflops=1",
        "train.log_interval=1", "train.grad_clip=1.0"]
LAYOUT = ["parallel.pipeline=2", "parallel.zero_stage=2",  # 2 processes, PP2 with ZeRO-2, and dropout:
          "model.hidden_dropout=0.1", "model.attention_dropout=0.1"]  # resumes need every rank's RNG


def launch(nproc, run_dir, *overrides, stop_at=None, sig=signal.SIGKILL, timeout=300, delay=0.0, env=None):
    """Run training; with ``stop_at``, send ``sig`` to the whole job ``delay`` s after that step is logged."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "dist_pretrain", "train", CFG, f"run_dir={run_dir}", f"parallel.nproc={nproc}", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
    proc = start_job(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + timeout
    try:
        if stop_at is not None:
            while proc.poll() is None and time.monotonic() < deadline:
                if stop_at in history(run_dir):
                    time.sleep(delay)
                    if sig == signal.SIGKILL:  # the node dies: every process of the job at once
                        kill_job(proc, sig)
                    else:  # the scheduler signals the launcher, which forwards it to its ranks
                        os.killpg(proc.pid, sig)
                    break
                time.sleep(0.05)
        out, _ = proc.communicate(timeout=max(1, deadline - time.monotonic()))
    finally:  # never leave ranks behind (a killed launcher orphans its workers)
        kill_job(proc)
    return proc.returncode, out


def history(run_dir) -> dict[int, dict]:
    path = Path(run_dir) / "history.jsonl"
    if not path.exists():
        return {}
    rows = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["step"]] = row  # a step redone after a resume replaces the killed attempt
    return rows


def rewound_copy(run: Path, dest: Path, step: int) -> Path:
    """A copy of ``run`` as it stood after ``step``: the later checkpoints deleted and the
    history cut there, so every later row is one the continuation writes itself."""
    shutil.copytree(run, dest)
    for s, path in [(int(p.name.split("-")[1]), p) for p in (dest / "checkpoints").glob("step-*")]:
        if s > step:
            shutil.rmtree(path)
    (dest / "checkpoints/latest").write_text(f"step-{step:08d}\n")
    rows = [line for line in (dest / "history.jsonl").read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= step]
    (dest / "history.jsonl").write_text("".join(row + "\n" for row in rows))
    (dest / "history.json").unlink(missing_ok=True)
    return dest


def assert_resumed(out: str, run_dir: Path, step: int, steps: int) -> None:
    """The continuation resumed from ``step``'s checkpoint and wrote every later step's row."""
    assert f"resumed from {run_dir}/checkpoints/step-{step:08d} (step {step};" in out, out[-3000:]
    assert sorted(history(run_dir)) == list(range(1, steps + 1))


def losses(run_dir):
    return [history(run_dir)[s]["train/loss"] for s in sorted(history(run_dir))]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("reference")
    rc, out = launch(2, run, *BASE, *LAYOUT)
    assert rc == 0, out[-3000:]
    return run


def test_kill9_at_random_steps_resumes_bit_exact(reference, tmp_path):
    run = tmp_path / "killed"
    kills = sorted(random.Random(7).sample(range(2, 8), 3))
    for k in kills:
        rc, out = launch(2, run, *BASE, *LAYOUT, stop_at=k, sig=signal.SIGKILL)
        assert rc != 0 and max(history(run)) < 8  # killed before the end
    rc, out = launch(2, run, *BASE, *LAYOUT)
    assert rc == 0, out[-3000:]
    assert "resumed from" in out
    assert losses(run) == losses(reference)  # bit-identical loss curve
    a, b = consolidate(run / "checkpoints/step-00000008"), consolidate(reference / "checkpoints/step-00000008")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_reshard_tp2xpp2_checkpoint_to_one_process_and_to_dp2_zero2(tmp_path):
    """With a gated MLP (SwiGLU, weight and bias) and GQA: megatron describes the gated linear_fc1
    by a factory that the checkpoint stores as [2, ffn, ...], so each TP size takes matching
    halves of gate and up; a wrong split would change the resumed losses."""
    common = ["train.steps=6", "train.decay=constant", "train.warmup_steps=0", "monitor.tensorboard=false",
              "monitor.peak_tflops=1", "train.log_interval=1", "model.activation=swiglu", "model.num_query_groups=2",
              "model.ffn_hidden_size=96", "train.adam_eps=1e-3"]
    # adam_eps at the gradients' scale: Adam's first steps are then ~linear in the gradient instead of
    # ~sign(g), which for the many |g| ~ 1e-8 would turn float reduction-order noise between layouts
    # into lr-sized weight differences (measured 2.5e-5 with eps 1e-8) and hide a real one
    ref = tmp_path / "ref"
    assert launch(1, ref, *common, "checkpoint.interval=3")[0] == 0
    saved = tmp_path / "tp2pp2"
    rc, out = launch(4, saved, *common, "train.steps=3", "checkpoint.interval=3", "parallel.tensor=2",
                     "parallel.pipeline=2", "parallel.zero_stage=1", timeout=300)
    assert rc == 0, out[-3000:]
    a = consolidate(saved / "checkpoints/step-00000003")
    for nproc, layout in [(1, ["parallel.zero_stage=1"]), (2, ["parallel.zero_stage=2"])]:
        run = tmp_path / f"resumed{nproc}"
        shutil.copytree(saved, run)
        rc, out = launch(nproc, run, *common, *layout)
        assert rc == 0 and "saved at TP 2 PP 2" in out, out[-3000:]
        assert_resumed(out, run, 3, 6)
        got, want = losses(run)[3:], losses(ref)[3:]
        assert len(got) == 3
        assert all(abs(g - w) <= 1e-5 * abs(w) for g, w in zip(got, want)), (nproc, got, want)
    # the saved weights themselves: TP2xPP2 shards reassembled = the one-process weights at step 3
    b = consolidate(ref / "checkpoints/step-00000003")
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-6, worst


def test_corrupt_latest_falls_back_to_the_previous_good_one(reference, tmp_path, capsys):
    run = tmp_path / "corrupt"
    shutil.copytree(reference, run)
    ckpts = run / "checkpoints"
    latest = ckpts / (ckpts / "latest").read_text().strip()
    shard = max((p for p in latest.rglob("*.distcp")), key=lambda p: p.stat().st_size)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    assert "truncated" in verify(latest)
    chosen, warnings = find_resumable(ckpts)
    assert chosen == ckpts / "step-00000007" and any(shard.name in w for w in warnings)
    (ckpts / "latest").write_text("garbage\n")
    chosen, warnings = find_resumable(ckpts)
    assert chosen == ckpts / "step-00000007" and any("garbage" in w for w in warnings)


def test_failed_save_keeps_the_previous_checkpoint(tmp_path):
    run = tmp_path / "failing"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints/tmp-step-00000002").write_text("not a directory: the save of step 2 cannot happen")
    rc, out = launch(1, run, "train.steps=3", "checkpoint.interval=1", "monitor.tensorboard=false",
                     "monitor.peak_tflops=1", "train.warmup_steps=1")
    assert rc != 0 and "saving checkpoint step 2 failed" in out and "untouched" in out
    assert (run / "checkpoints/latest").read_text().strip() == "step-00000001"
    assert verify(run / "checkpoints/step-00000001") is None


def test_keep_last_n_and_every_kth(reference):
    names = sorted(p.name for p in (reference / "checkpoints").glob("step-*"))
    assert names == ["step-00000006", "step-00000007", "step-00000008"]  # keep=3 by default


def test_megatron_ddp_zero0_checkpoint_resumes_exactly_and_under_deepspeed(tmp_path):
    common = [*BASE, "train.steps=6", "parallel.zero_stage=0", "parallel.pipeline=2"]
    ref = tmp_path / "ref"
    assert launch(2, ref, *common)[0] == 0
    run = tmp_path / "killed"
    rc, _ = launch(2, run, *common, stop_at=3, sig=signal.SIGKILL)
    assert rc != 0 and max(history(run)) < 6
    rc, out = launch(2, run, *common)
    assert rc == 0 and "resumed from" in out, out[-3000:]
    assert losses(run) == losses(ref)
    # the same checkpoint, continued by DeepSpeed ZeRO-1 over DP2 (engines share the format)
    other = rewound_copy(run, tmp_path / "zero1", step=4)
    rc, out = launch(2, other, *BASE, "train.steps=6", "parallel.zero_stage=1")
    assert rc == 0 and "ZeRO-0" in out, out[-3000:]
    assert_resumed(out, other, 4, 6)
    got, want = losses(other)[4:], losses(ref)[4:]
    assert all(abs(g - w) <= 1e-5 * abs(w) for g, w in zip(got, want)), (got, want)


def test_time_limit_saves_and_exits_for_requeue(tmp_path):
    """(SIGTERM, and a signal during validation, on the real data path: tests/test_preemption.py.)"""
    run = tmp_path / "timed"
    rc, out = launch(2, run, *BASE, *LAYOUT, "train.steps=400", "checkpoint.interval=0",
                     "checkpoint.exit_after_minutes=0.05")
    assert rc != 0 and "checkpoint.exit_after_minutes reached" in out, out[-3000:]
    saved = find_resumable(run / "checkpoints")[0]
    assert saved is not None and verify(saved) is None


def test_prune_keeps_the_newest_and_every_kth(tmp_path):
    from dist_pretrain.checkpoint import prune

    for s in range(1, 13):
        (tmp_path / f"step-{s:08d}").mkdir()
    prune(tmp_path, keep=2, keep_every=5)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == [
        "step-00000005", "step-00000010", "step-00000011", "step-00000012"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_zero3_checkpoint_resumes_exactly_and_continues_under_zero1(tmp_path, precision):
    """ZeRO-3 keeps a DP partition of every weight: the checkpoint holds whole tensors all the same."""
    common = [*BASE, "train.steps=6", "parallel.zero_stage=3", f"train.precision={precision}"]
    ref = tmp_path / "ref"
    assert launch(2, ref, *common)[0] == 0
    run = tmp_path / "killed"
    rc, _ = launch(2, run, *common, stop_at=3, sig=signal.SIGKILL)
    assert rc != 0 and max(history(run)) < 6
    rc, out = launch(2, run, *common)
    assert rc == 0 and "ZeRO-3)" in out and "resumed from" in out, out[-3000:]
    assert losses(run) == losses(ref)
    other = rewound_copy(run, tmp_path / "zero1", step=4)
    rc, out = launch(2, other, *common, "parallel.zero_stage=1")
    assert rc == 0, out[-3000:]
    assert_resumed(out, other, 4, 6)
    got, want = losses(other)[4:], losses(ref)[4:]
    tol = 1e-5 if precision == "fp32" else 1e-2  # bf16: ZeRO-1 and -3 round gradients differently
    assert len(got) == 2 and all(abs(g - w) <= tol * abs(w) for g, w in zip(got, want)), (got, want)


def test_async_saves_survive_kill9_and_resume_bit_exact(reference, tmp_path):
    """Files written by a forked writer while training goes on: killed mid-flight, the run
    resumes from the last sealed checkpoint, and the checkpoints equal synchronous ones."""
    run = tmp_path / "async"
    rc, out = launch(2, run, *BASE, *LAYOUT, "checkpoint.async_save=true", stop_at=5, sig=signal.SIGKILL)
    assert rc != 0 and max(history(run)) < 8
    assert "files written in the background" in out, out[-3000:]
    rc, out = launch(2, run, *BASE, *LAYOUT, "checkpoint.async_save=true")
    assert rc == 0 and "resumed from" in out, out[-3000:]
    assert losses(run) == losses(reference)
    for step in ("00000007", "00000008"):  # 7: written in the background; 8: the last save blocks
        a = consolidate(run / f"checkpoints/step-{step}")
        b = consolidate(reference / f"checkpoints/step-{step}")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert verify(run / f"checkpoints/step-{step}") is None


@pytest.mark.parametrize("async_save", ["false", "true"])
def test_storage_losing_files_mid_save_keeps_the_previous_checkpoint(tmp_path, async_save):
    """The files of step 4's save vanish while being written (a failing disk): every rank stops
    with the reason, step 2 stays ``latest`` and loadable, nothing half-written is left."""
    run = tmp_path / "run"
    rc, out = launch(2, run, *BASE, "train.steps=6", "checkpoint.interval=2", f"checkpoint.async_save={async_save}",
                     env={"DIST_PRETRAIN_FAULT_LOSE_CHECKPOINT_STEPS": "4"})
    assert rc != 0 and "saving checkpoint step 4 failed" in out and "untouched" in out, out[-3000:]
    assert (run / "checkpoints/latest").read_text().strip() == "step-00000002"
    assert verify(run / "checkpoints/step-00000002") is None
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-00000002"]
