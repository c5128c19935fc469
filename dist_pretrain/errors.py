"""Errors a user can cause and fix, and how they leave the program.

Anything a user can cause (a bad config value, a missing or broken file, a checkpoint
that does not verify) is a ``UserError``: the commands print its message as ``error:``
lines and exit with ``EXIT_USER_ERROR`` (2), with no Python traceback. A traceback means a
bug; ``DIST_PRETRAIN_DEBUG=1`` shows it for user errors too.

Once the process groups exist, a problem one rank finds must not leave the others waiting
in a collective: ``agree`` runs a phase on every rank and, if any rank failed, raises the
same ``AgreedError`` on all of them, printed once by rank 0 (the other ranks exit quietly).
"""
from __future__ import annotations

import os
import sys
import traceback

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Something a user can cause and fix; the message names the key or file and what would fit."""


class ConfigError(UserError, ValueError):
    """A configuration that cannot work, with the reason."""


class AgreedError(UserError):
    """A user error raised on every rank together; ``report`` is True on the rank that prints it."""

    def __init__(self, message: str, report: bool):
        super().__init__(message)
        self.report = report


def debug() -> bool:
    return os.environ.get("DIST_PRETRAIN_DEBUG", "") not in ("", "0")


def report_user_error(err: BaseException, printing: bool = True) -> int:
    """Print ``err`` as ``error:`` lines on stderr (when ``printing``); the exit status for it."""
    if debug():
        traceback.print_exception(err, file=sys.stderr)
    if printing:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        if len(lines) > 1 and lines[0].endswith(":"):  # "invalid config:" then one problem a line
            lines = lines[1:]
        for line in lines:
            print(f"error: {line}", file=sys.stderr, flush=True)
    return EXIT_USER_ERROR


def agree(fn, what: str):
    """Run ``fn()`` on every rank; if it raised a ``UserError`` on any rank, raise ``AgreedError``
    on all of them with the first failing rank's message (``what`` says which phase failed).
    Other exceptions (bugs) count as failures too, so no rank is left in a collective, and are
    re-raised as they are on the rank that had them."""
    import torch

    ok = torch.ones(1)
    result = error = None
    try:
        result = fn()
    except Exception as err:  # noqa: BLE001 - reported below, on every rank
        ok.zero_()
        error = err
    torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
    if ok.item():
        return result
    messages = [None] * torch.distributed.get_world_size()
    if error is None:
        mine = None
    elif isinstance(error, UserError):
        mine = f"{what}: {error}"
    else:
        mine = f"{what} failed with an internal error ({type(error).__name__}; traceback above)"
    torch.distributed.all_gather_object(messages, mine)
    if error is not None and not isinstance(error, UserError):
        raise error
    rank, first = next(((r, m) for r, m in enumerate(messages) if m is not None), (None, what))
    raise AgreedError(first if rank == 0 else f"{first} (on rank {rank})",
                      report=torch.distributed.get_rank() == 0) from error


class InferenceError(UserError, ValueError):
    """A model, tokenizer or request that inference or evaluation cannot serve (the message says
    which value)."""
