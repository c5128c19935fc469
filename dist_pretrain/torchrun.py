"""``python -m dist_pretrain.torchrun [torchrun options] -m dist_pretrain train CONFIG ...``

torchrun itself (``torch.distributed.run``, same options, signals and rendezvous), with an
exit status and an ending a user or a scheduler can act on. Plain torchrun reports any
worker that exits non-zero with a ``ChildFailedError`` traceback and exits 1, and dies with a
``SignalException`` traceback when it is signalled. Here:

* after a stop for a requeue (a stop signal or ``checkpoint.exit_after_minutes``) the ranks
  write their stop status to ``$DIST_PRETRAIN_REQUEUE_FILE`` (``faults.record_stop``; a
  private temporary file unless the caller set one, as ``slurm/pretrain.sbatch`` does), and
  this launcher exits with that status (99): the checkpoint is saved, run the same command
  again to resume;
* ranks that stopped on a user error (exit status 2: rank 0 already printed the problem)
  end the job with nothing more;
* any other failure ends with one line naming the first rank that failed and how (a worker's
  own traceback, a bug, is printed by that worker above it); the exit status is that
  worker's, 128 + N for a worker killed by signal N, 128 + N when the launcher itself was
  signalled and no checkpoint was written.

When one rank exits first, torchrun logs that it sends the others SIGTERM and which worker
failed; after a user error or a stop for a requeue (the ranks end together, one a little
earlier) those log lines are dropped, for anything else they are printed as torchrun would.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

from dist_pretrain.errors import EXIT_USER_ERROR
from dist_pretrain.faults import STOP_FILE_ENV


class _QuietExpectedEnds(logging.Filter):
    """Holds back torchrun's "Sending process N closing signal" lines until it is known why the
    workers are closed: dropped after a user error or a stop for a requeue, released otherwise."""

    def __init__(self, marker: Path):
        super().__init__()
        self.marker = marker
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg.startswith("Sending process"):
            self.held.append(record)
            return False
        if record.msg.startswith("failed (exitcode"):
            held, self.held = self.held, []
            if (record.args and record.args[0] == EXIT_USER_ERROR) or self.marker.exists():
                return False
            self.release(held)
        return True

    def release(self, records: list[logging.LogRecord] | None = None) -> None:
        records = self.held if records is None else records
        for record in records:
            logging.getLogger(record.name).callHandlers(record)  # its handlers, past this filter
        records.clear()


def _read_stop(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing import api
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
    quiet = _QuietExpectedEnds(marker)
    api.logger.addFilter(quiet)
    code, what = 0, ""
    try:
        run(args)
    except SignalException as err:
        code, what = 128 + int(err.sigval), f"the launcher got {err.sigval.name}"
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        code = 128 - failure.exitcode if failure.exitcode < 0 else failure.exitcode
        how = f"was killed by signal {-failure.exitcode}" if failure.exitcode < 0 else f"exited with status {code}"
        what = f"rank {rank} (local rank {failure.local_rank}) {how}; its output is above"
    finally:
        api.logger.removeFilter(quiet)
        quiet.release()
    stopped = _read_stop(marker)
    if private:
        marker.unlink(missing_ok=True)
    if stopped is not None:
        print(f"launcher: training stopped with a checkpoint; exit {stopped}: run the same command "
              "again to resume", file=sys.stderr, flush=True)
        return stopped
    if code and code != EXIT_USER_ERROR:
        print(f"error: {what}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
