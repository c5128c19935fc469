"""Leaving training on purpose or by necessity: stop signals and time limits (save, then exit
for a requeue), repeated non-finite steps (abort), and NaN fault injection for drills."""

from __future__ import annotations

import os
import signal
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


def poisoned(forward_step):
    def step(data_iterator, model):
        output, loss_func = forward_step(data_iterator, model)

        def nan_loss(out):
            loss, tokens, logged = loss_func(out)
            nan = torch.tensor([float("nan"), 1.0])  # poison the sums, keep the counts
            return loss * float("nan"), tokens, {k: v * nan for k, v in logged.items()}

        return output, nan_loss

    return step


class StopTraining(SystemExit):
    """Leave training after a stop signal or time limit, with the exit status for requeueing."""

    def __init__(self, code: int, reason: str):
        super().__init__(code)
        self.reason = reason


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
