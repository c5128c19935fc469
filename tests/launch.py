"""Start launchers for tests and kill everything they started afterwards.

torchrun starts every worker in a session of its own, and the workers fork checkpoint writers,
so signalling the launcher's process group reaches only torchrun: a test that "kills the job"
that way leaves ranks running (they finish training on their own, or hang holding the output
pipe). ``start_job`` marks a job's processes with an environment variable every descendant
inherits, re-parented orphans included, and ``kill_job`` freezes all of them, then kills them,
like a node that dies. ``kill_tree`` (for ``run_group``) follows parent links instead, so
daemons that a script started and detached (the local Slurm cluster) survive it.
"""

import os
import signal
import subprocess
import sys
import time
import uuid

import psutil

JOB_TAG = "DIST_PRETRAIN_TEST_JOB"


def start_job(cmd, env=None, **kwargs) -> subprocess.Popen:
    tag = uuid.uuid4().hex
    proc = subprocess.Popen(cmd, env={**(env if env is not None else os.environ), JOB_TAG: tag},
                            start_new_session=True, **kwargs)
    proc.job_tag = tag
    return proc


def job_processes(tag: str) -> list[psutil.Process]:
    """Every live process of the job started with tag ``tag`` (orphans included)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(JOB_TAG) == tag and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def pipe_holders(proc: subprocess.Popen) -> list[psutil.Process]:
    """Every other process holding an end of ``proc``'s stdout pipe: whatever keeps the test's
    ``communicate()`` waiting, tagged or not."""
    if proc.stdout is None or proc.stdout.closed:
        return []
    target = f"pipe:[{os.fstat(proc.stdout.fileno()).st_ino}]"
    found = []
    for pid in psutil.pids():
        if pid == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == target for fd in fds):
                found.append(psutil.Process(pid))
        except (OSError, psutil.NoSuchProcess):
            continue
    return found


def kill_job(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Stop every process of the job, then send ``sig``. The job is its tagged processes plus
    any process still holding its output pipe. SIGSTOP lands asynchronously: a rank caught in
    ``fork()`` (megatron's checkpoint writers fork several per save) finishes it, and the child
    does not inherit the stop. So the scan ends only after every frozen process has actually
    stopped and one more scan finds nothing new; a writer missed there would hold the test's
    ``communicate()`` open until its timeout."""
    frozen: dict[int, psutil.Process] = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        tagged = job_processes(proc.job_tag)
        new = [p for p in tagged + pipe_holders(proc) if p.pid not in frozen]
        if not new:
            _wait_stopped(frozen.values(), deadline)
            new = [p for p in job_processes(proc.job_tag) + pipe_holders(proc) if p.pid not in frozen]
            if not new:
                break
        for p in new:
            try:
                p.suspend()
                frozen[p.pid] = p
            except psutil.NoSuchProcess:
                pass
    for p in frozen.values():
        try:
            p.send_signal(sig)
            p.resume()
        except psutil.NoSuchProcess:
            pass


def _wait_stopped(procs, deadline: float) -> None:
    for p in procs:
        while time.monotonic() < deadline:
            try:
                if p.status() in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.005)


def signal_job(proc: subprocess.Popen, sig: int) -> list[str]:
    """Send ``sig`` to every process of the job at once (as Slurm signals every process of a
    step): launcher, ranks, loader workers, checkpoint writers. Returns their names."""
    names = []
    for p in job_processes(proc.job_tag):
        try:
            p.send_signal(sig)
            names.append(p.name())
        except psutil.NoSuchProcess:
            pass
    return names


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal ``pid`` and all its descendants. Each process is frozen (SIGSTOP) before its
    children are listed, so none can fork a new one (a checkpoint writer, say) that escapes."""
    frozen: dict[int, psutil.Process] = {}
    todo = []
    try:
        todo.append(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return
    while todo:
        proc = todo.pop()
        if proc.pid in frozen:
            continue
        try:
            proc.suspend()
            frozen[proc.pid] = proc
            todo.extend(proc.children())
        except psutil.NoSuchProcess:
            continue
    for proc in frozen.values():
        try:
            proc.send_signal(sig)
            proc.resume()
        except psutil.NoSuchProcess:
            pass


def run_group(cmd, timeout, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        kill_tree(proc.pid)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def demo_shards(root, samples_per_shard: int, seq_len: int = 64):
    """The demo corpus (real English, C4 layout) under ``root``, as GPT-2 shards in ``root/shards``."""
    import sys
    from pathlib import Path

    root = Path(root)
    py = [sys.executable, "-m", "dist_pretrain"]
    subprocess.run(py + ["demo-corpus", "--output", str(root)], check=True, capture_output=True)
    subprocess.run(py + ["preprocess", "--input", str(root / "c4/en/*.json.gz"), "--tokenizer", "gpt2",
                         "--seq-len", str(seq_len), "--samples-per-shard", str(samples_per_shard),
                         "--output", str(root / "shards"), "--quiet"], check=True, capture_output=True)
    return root / "shards"


QUIET_ENV = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def run_python(*args, timeout=600) -> str:
    """``python ARGS`` with one thread and warnings off; its stdout, or an AssertionError with both
    streams' tails."""
    proc = subprocess.run([sys.executable, *args], env={**os.environ, **QUIET_ENV}, capture_output=True,
                          text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc.stdout
