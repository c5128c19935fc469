"""Preemption on the real data path: the shipped GPT demo config launched the way the README
says (``launchers/torchrun.sh``), streaming real WebDataset shards through DataLoader workers,
with validation on. Every stop must end in a verified checkpoint, exit ``checkpoint.exit_code``
(99) and leave no process behind; resumed runs must give the uninterrupted loss curve.

Signals are delivered the ways schedulers and users do: to torchrun (``kill -TERM PID``), to its
process group, and to every process of the job at once, loader workers and checkpoint writers
included (Slurm signals every process of a step; ``tests/test_slurm.py`` does it through
``scancel``)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from launch import job_processes, kill_job, signal_job, start_job

from dist_pretrain.checkpoint import find_resumable, verify

ROOT = Path(__file__).resolve().parents[1]
STEPS = 12
SMALL = ["model.num_layers=2", "model.hidden_size=64", "model.num_attention_heads=4", "model.seq_length=32",
         f"train.steps={STEPS}", "train.warmup_steps=2", "train.micro_batch_size=2", "train.global_batch_size=8",
         "train.log_interval=1", "train.eval_interval=4", "train.eval_steps=2", "monitor.peak_tflops=1",
         "monitor.tensorboard=false", "data.num_workers=2", "checkpoint.interval=0"]


def history(run_dir) -> dict[int, dict]:
    path = Path(run_dir) / "history.jsonl"
    rows = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[row["step"]] = row
    return rows


def tmp_saves(run_dir) -> list[Path]:
    return list((Path(run_dir) / "checkpoints").glob("tmp-step-*"))


def run_demo(data, run_dir, *overrides, when=None, act=None, timeout=240, env=None):
    """``launchers/torchrun.sh configs/gpt/demo.yaml`` on ``data``; once ``when(run_dir)`` holds,
    ``act(proc)`` is called once (it sends the signals). Returns (exit status, output); checks
    that no process of the job outlives the launcher by more than a few seconds."""
    cmd = ["bash", str(ROOT / "launchers/torchrun.sh"), "configs/gpt/demo.yaml", f"data.path={data}",
           f"run_dir={run_dir}", *SMALL, *overrides]
    env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    proc = start_job(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    try:
        if when is not None:
            while proc.poll() is None and time.monotonic() < deadline and not when(run_dir):
                time.sleep(0.05)
            assert proc.poll() is None, "the run ended before the signal could be sent"
            act(proc)
        out, _ = proc.communicate(timeout=max(1, deadline - time.monotonic()))
        left = job_processes(proc.job_tag)
        for _ in range(100):  # loader workers and writers end with their rank
            if not left:
                break
            time.sleep(0.1)
            left = job_processes(proc.job_tag)
        assert not left, f"processes outlived the launcher: {[(p.pid, p.name()) for p in left]}\n{out[-3000:]}"
    finally:
        kill_job(proc)
    return proc.returncode, out


def after_step(n):
    return lambda run_dir: n in history(run_dir)


def to_launcher(sig):
    return lambda proc: os.kill(proc.pid, sig)


def to_every_process(sig):
    def act(proc):
        names = signal_job(proc, sig)
        assert sum("python" in n or "pt_data_worker" in n for n in names) >= 4, names  # launcher, 2 ranks, workers
    return act


def assert_stopped_with_a_checkpoint(rc, out, run_dir, after: int) -> int:
    """Exit 99, no loader-worker death, a verified checkpoint at a step >= ``after``; returns its step."""
    assert "DataLoader worker" not in out and "Traceback" not in out, out[-4000:]
    assert rc == 99, out[-4000:]
    assert "launcher: training stopped with a checkpoint" in out, out[-2000:]
    saved, _ = find_resumable(Path(run_dir) / "checkpoints")
    assert saved is not None and verify(saved) is None, out[-3000:]
    assert (Path(run_dir) / "checkpoints/latest").read_text().strip() == saved.name
    assert not tmp_saves(run_dir), tmp_saves(run_dir)
    step = int(saved.name.split("-")[1])
    assert after <= step < STEPS, (after, step)
    return step


def assert_resumes_to_the_reference(data, run_dir, reference, step):
    rc, out = run_demo(data, run_dir)
    assert rc == 0, out[-3000:]
    assert f"resumed from {run_dir}/checkpoints/step-{step:08d}" in out, out[-3000:]
    got, want = history(run_dir), history(reference)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert [got[s]["train/loss"] for s in sorted(got)] == [want[s]["train/loss"] for s in sorted(want)]
    # validation cut short by the signal logs nothing at that step; the later ones must agree
    validated = [s for s in sorted(got) if "val/loss" in got[s]]
    assert validated and validated[-1] == STEPS, validated
    assert [got[s]["val/loss"] for s in validated] == [want[s]["val/loss"] for s in validated]


@pytest.fixture(scope="module")
def reference(real_lm_shards, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("preempt") / "reference"
    rc, out = run_demo(real_lm_shards, run_dir)
    assert rc == 0, out[-3000:]
    assert "validation at step 4" in out
    return run_dir


def test_sigterm_to_torchrun_saves_exits_99_and_resumes_exactly(real_lm_shards, reference, tmp_path):
    """The README drill: ``kill -TERM <torchrun>``; torchrun forwards it to its ranks' groups."""
    run_dir = tmp_path / "run"
    rc, out = run_demo(real_lm_shards, run_dir, when=after_step(3), act=to_launcher(signal.SIGTERM))
    step = assert_stopped_with_a_checkpoint(rc, out, run_dir, after=3)
    assert "stopping: stop signal (SIGTERM)" in out
    assert_resumes_to_the_reference(real_lm_shards, run_dir, reference, step)


def test_sigterm_to_every_process_like_slurm_resumes_exactly(real_lm_shards, reference, tmp_path):
    run_dir = tmp_path / "run"
    rc, out = run_demo(real_lm_shards, run_dir, when=after_step(2), act=to_every_process(signal.SIGTERM))
    step = assert_stopped_with_a_checkpoint(rc, out, run_dir, after=2)
    assert_resumes_to_the_reference(real_lm_shards, run_dir, reference, step)


def test_sigterm_to_the_process_group_and_sigusr1(real_lm_shards, tmp_path):
    """What a container runtime sends (the launcher's group), and Slurm's other stop signal."""
    rc, out = run_demo(real_lm_shards, tmp_path / "group", "train.steps=400",
                       when=after_step(2), act=lambda proc: os.killpg(proc.pid, signal.SIGTERM))
    assert rc == 99 and "DataLoader worker" not in out, out[-3000:]
    assert verify(find_resumable(tmp_path / "group/checkpoints")[0]) is None
    rc, out = run_demo(real_lm_shards, tmp_path / "usr1", "train.steps=400",
                       when=after_step(2), act=to_every_process(signal.SIGUSR1))
    assert rc == 99 and "stopping: stop signal (SIGUSR1)" in out and "DataLoader worker" not in out, out[-3000:]
    assert verify(find_resumable(tmp_path / "usr1/checkpoints")[0]) is None


def test_signal_during_validation_cuts_it_short_and_saves(real_lm_shards, tmp_path):
    """Validation at step 3 reads the whole split (251 global batches) through a loader with
    its own workers: once those workers exist, validation is under way, and every process of
    the job gets SIGTERM."""
    run_dir = tmp_path / "run"

    def act(proc):
        training = len(job_processes(proc.job_tag))  # launcher, ranks, training loader workers
        deadline = time.monotonic() + 60
        while len(job_processes(proc.job_tag)) <= training and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(job_processes(proc.job_tag)) > training, "validation never started its loader workers"
        to_every_process(signal.SIGTERM)(proc)

    rc, out = run_demo(real_lm_shards, run_dir, "train.steps=400", "train.eval_interval=3",
                       "train.eval_steps=all", when=after_step(2), act=act)
    assert rc == 99 and "DataLoader worker" not in out, out[-3000:]
    assert "validation at step 3" not in out  # cut short, not finished
    saved, _ = find_resumable(run_dir / "checkpoints")
    assert saved is not None and saved.name == "step-00000003" and verify(saved) is None, out[-3000:]


def test_signal_while_a_background_save_is_in_flight(real_lm_shards, tmp_path):
    """Every process, the forked checkpoint writers included, gets SIGTERM while step 2's files
    are being written (slow storage, 3 s): that save completes and is sealed, then the stop's
    own checkpoint is written, and ``latest`` points at it."""
    run_dir = tmp_path / "run"
    rc, out = run_demo(real_lm_shards, run_dir, "train.steps=400", "checkpoint.interval=2",
                       "checkpoint.async_save=true", when=lambda d: bool(tmp_saves(d)),
                       act=to_every_process(signal.SIGTERM), env={"DIST_PRETRAIN_FAULT_SLOW_SAVE_S": "3"})
    assert rc == 99 and "DataLoader worker" not in out and "failed" not in out, out[-3000:]
    assert "(files written in the background)" in out
    step2 = run_dir / "checkpoints/step-00000002"
    assert step2.is_dir() and verify(step2) is None, out[-3000:]
    saved, _ = find_resumable(run_dir / "checkpoints")
    assert saved.name > step2.name and verify(saved) is None
    assert (run_dir / "checkpoints/latest").read_text().strip() == saved.name
    assert not tmp_saves(run_dir)


def test_a_second_sigterm_while_saving(real_lm_shards, tmp_path):
    """SIGTERM, then another while the stop's checkpoint is being written (slow storage, 4 s)."""
    run_dir = tmp_path / "run"

    def act(proc):
        os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while not tmp_saves(run_dir) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert tmp_saves(run_dir), "the stop's save never started"
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGTERM)

    rc, out = run_demo(real_lm_shards, run_dir, "train.steps=400", when=after_step(2), act=act,
                       env={"DIST_PRETRAIN_FAULT_SLOW_SAVE_S": "4"})
    assert rc == 99 and "DataLoader worker" not in out, out[-3000:]
    saved, _ = find_resumable(run_dir / "checkpoints")
    assert saved is not None and verify(saved) is None and not tmp_saves(run_dir), out[-3000:]
