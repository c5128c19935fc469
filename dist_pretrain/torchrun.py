"""``python -m dist_pretrain.torchrun [torchrun options] -m dist_pretrain train CONFIG ...``

torchrun itself (``torch.distributed.run``, same options), with an exit status a user or a
scheduler can act on. Plain torchrun reports a preemption badly: on SIGTERM it forwards the
signal, waits for the workers, then dies with a ``SignalException`` traceback and status 1;
when the workers stop for a requeue with ``checkpoint.exit_code`` (99) it prints a
``ChildFailedError`` report and exits 1 as well. Here:

* the ranks write their stop status to ``$DIST_PRETRAIN_REQUEUE_FILE`` after saving
  (``faults.record_stop``; a private temporary file unless the caller set one, as
  ``slurm/pretrain.sbatch`` does), and this launcher exits with that status (99): the
  checkpoint is saved, run the same command again to resume;
* a signal with no checkpoint behind it exits 128 + the signal number, a failed rank with
  that rank's exit status, each with one line naming what happened instead of a traceback
  (the rank's own error is printed above it by the rank).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from dist_pretrain.faults import STOP_FILE_ENV


def _read_stop(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(sys.argv[1:] if argv is None else argv)
    private = STOP_FILE_ENV not in os.environ
    if private:
        fd, name = tempfile.mkstemp(prefix="dist_pretrain_stop.")
        os.close(fd)
        os.unlink(name)
        os.environ[STOP_FILE_ENV] = name  # the workers inherit it
    marker = Path(os.environ[STOP_FILE_ENV])
    try:
        run(args)
        code, what = 0, ""
    except SignalException as err:
        code, what = 128 + int(err.sigval), f"launcher got {err.sigval.name}"
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        code = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode
        what = f"rank {rank} exited with status {failure.exitcode}"
        if failure.exitcode < 0:
            what = f"rank {rank} was killed by {failure.signal_name()}"
    stopped = _read_stop(marker)
    if private:
        marker.unlink(missing_ok=True)
    if stopped is not None:
        print(f"launcher: training stopped with a checkpoint ({what or 'signal'}); exit {stopped}: "
              "run the same command again to resume", file=sys.stderr, flush=True)
        return stopped
    if code:
        print(f"launcher: {what}; exit {code}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
