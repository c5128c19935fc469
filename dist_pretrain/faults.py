"""Leaving training on purpose or by necessity: stop signals and time limits (save, then exit
for a requeue), repeated non-finite steps (abort), and NaN fault injection for drills."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
import time

import torch


class TrainingAborted(RuntimeError):
    """Training cannot go on (e.g. repeated non-finite losses); checkpoints are left as they were."""


def _fault_steps(name: str) -> set[int]:
    raw = os.environ.get(name, "")
    return {int(s) for s in raw.split(",") if s.strip()}


def fault_nan_steps() -> set[int]:
    """Fault injection for tests and drills: DIST_PRETRAIN_FAULT_NAN_STEPS=3,4 makes the loss
    of those steps NaN on every rank (as a diverging run would)."""
    return _fault_steps("DIST_PRETRAIN_FAULT_NAN_STEPS")


def fault_lost_checkpoint_steps() -> set[int]:
    """DIST_PRETRAIN_FAULT_LOSE_CHECKPOINT_STEPS=4: the storage loses the files of that step's
    checkpoint while they are being written (as a full or failing disk would)."""
    return _fault_steps("DIST_PRETRAIN_FAULT_LOSE_CHECKPOINT_STEPS")


def fault_slow_save_seconds() -> float:
    """DIST_PRETRAIN_FAULT_SLOW_SAVE_S=3: every checkpoint write takes 3 s longer (slow storage),
    in the rank for a blocking save and in the forked writer for a background one, so drills
    can land a signal while a save is under way."""
    return float(os.environ.get("DIST_PRETRAIN_FAULT_SLOW_SAVE_S") or 0)


def slowed(fn, seconds: float):
    """``fn`` preceded by ``seconds`` of sleep (see ``fault_slow_save_seconds``)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        time.sleep(seconds)
        return fn(*args, **kwargs)

    return run


def poisoned(forward_step):
    def step(data_iterator, model):
        output, loss_func = forward_step(data_iterator, model)

        def nan_loss(out):
            loss, tokens, logged = loss_func(out)
            # poison the sums, keep the counts; on the logged values' device (a GPU's, in training)
            return loss * float("nan"), tokens, {
                k: v * torch.tensor([float("nan"), 1.0], dtype=v.dtype, device=v.device) for k, v in logged.items()}

        return output, nan_loss

    return step


def _obey_only_the_parent(names: tuple[str, ...], worker_id: int) -> None:
    signals = {getattr(signal, name) for name in names}
    parent = os.getppid()
    # a forked worker has one thread: blocked here, the signals stay blocked in every thread it
    # starts, so only the waiter below receives them
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)

    def wait() -> None:
        while True:
            if signal.sigwaitinfo(signals).si_pid == parent:  # the DataLoader ending its worker
                os._exit(0)

    threading.Thread(target=wait, name="stop-signals", daemon=True).start()


class StopSignalsInWorkers:
    """A DataLoader ``worker_init_fn`` that makes the stop signals from anyone but the rank
    harmless in loader workers.

    Launchers signal whole process groups (torch's elastic agent ``killpg``s each worker) and
    Slurm signals every process of a step, so the loader workers get the SIGTERM meant for the
    trainer too. torch's workers die on it (their C handler re-raises SIGTERM from anyone but
    the parent), and the rank's DataLoader then raises before the step boundary where the
    trainer would save. Here the signals are blocked and a thread takes them with their
    sender: the rank's own SIGTERM (``Process.terminate`` when a DataLoader or the interpreter
    shuts its workers down) still ends the worker at once, anyone else's is dropped. The
    workers otherwise end when the rank closes its loaders, or through their watchdog if the
    rank is killed.
    """

    def __init__(self, names: list[str]):
        self.names = tuple(names)

    def __call__(self, worker_id: int) -> None:
        _obey_only_the_parent(self.names, worker_id)

    @contextlib.contextmanager
    def forking(self):
        """Block the stop signals in the thread that forks the workers, for as long as it does.
        A worker is born with its parent thread's mask, so the signals stay blocked from its
        first instruction; without this, a SIGTERM to every process that lands between a
        worker's fork and its ``worker_init_fn`` kills it (measured: a signal sent as soon as
        validation's workers appeared). A signal meant for the rank meanwhile waits, pending,
        and is handled as soon as the workers exist."""
        signals = {getattr(signal, name) for name in self.names}
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def loader_worker_init(names: list[str]) -> StopSignalsInWorkers:
    """The DataLoader ``worker_init_fn`` of the trainer's loaders (``StopSignalsInWorkers``)."""
    return StopSignalsInWorkers(names)


class StopTraining(SystemExit):
    """Leave training after a stop signal or time limit, with the exit status for requeueing."""

    def __init__(self, code: int, reason: str):
        super().__init__(code)
        self.reason = reason


STOP_FILE_ENV = "DIST_PRETRAIN_REQUEUE_FILE"


def record_stop(code: int) -> None:
    """Write ``code`` to the file named by ``$DIST_PRETRAIN_REQUEUE_FILE`` (if set) after a stop
    with a checkpoint. torchrun turns a worker's exit status into its own 1, and Slurm's
    ``srun`` into whatever the first task returned, so launchers (``dist_pretrain.torchrun``,
    ``slurm/pretrain.sbatch``) learn from this file that the run stopped to be resumed."""
    path = os.environ.get(STOP_FILE_ENV)
    if path:
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(f"{code}\n")
        os.replace(tmp, path)  # ranks write the same file: each write is whole


class StopSignals:
    """Records stop signals (Slurm sends SIGTERM/SIGUSR1 before it kills a job) and the time
    limit; ``agreed()`` is a collective: every rank learns whether any rank must stop."""

    def __init__(self, names: list[str], exit_after_minutes: float | None):
        self.received: str | None = None
        self.deadline = time.monotonic() + 60 * exit_after_minutes if exit_after_minutes else None
        self.reason = ""
        self._previous = {}
        for name in names:
            sig = getattr(signal, name)
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name

    def agreed(self) -> bool:
        local = 1.0 if self.received else 0.0
        timeout = 1.0 if self.deadline is not None and time.monotonic() > self.deadline else 0.0
        flags = torch.tensor([local, timeout])
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        if flags[0]:
            self.reason = f"stop signal ({self.received or 'on another rank'})"
        elif flags[1]:
            self.reason = "checkpoint.exit_after_minutes reached"
        return bool(flags.any())

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
