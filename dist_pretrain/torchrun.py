"""``python -m dist_pretrain.torchrun [torchrun arguments]``: torchrun, ending in one line.

torchrun reports any worker that exits non-zero with a ``ChildFailedError`` traceback and
exits 1 itself. Here a job whose ranks stopped on a user error (exit status 2: rank 0
already printed the problem) ends with nothing more, and any other failure with one line
naming the first rank that failed and how; a worker's own traceback (a bug) is printed by
that worker above it. The exit status is the first failed worker's: 2 for a user error,
``checkpoint.exit_code`` after a stop for a requeue, 128 + N for a worker killed by signal N.
Everything else (arguments, signals, rendezvous) is torchrun's own.

When one rank exits first, torchrun logs that it sends the others SIGTERM and which worker
failed; for a user error (the ranks stop together, one just a little earlier) those two log
lines are dropped, for anything else they are printed as torchrun would.
"""
from __future__ import annotations

import logging
import sys

from dist_pretrain.errors import EXIT_USER_ERROR


class _QuietUserErrors(logging.Filter):
    """Holds back torchrun's "Sending process N closing signal" lines until it is known why the
    workers are closed: dropped after a user error (exit status 2), released otherwise."""

    def __init__(self):
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg.startswith("Sending process"):
            self.held.append(record)
            return False
        if record.msg.startswith("failed (exitcode"):
            held, self.held = self.held, []
            if record.args and record.args[0] == EXIT_USER_ERROR:
                return False
            self.release(held)
        return True

    def release(self, records: list[logging.LogRecord] | None = None) -> None:
        records = self.held if records is None else records
        for record in records:
            logging.getLogger(record.name).callHandlers(record)  # its handlers, past this filter
        records.clear()


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing import api
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    quiet = _QuietUserErrors()
    api.logger.addFilter(quiet)
    try:
        torchrun_main(argv)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        code = failure.exitcode
        if code != EXIT_USER_ERROR:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            print(f"error: rank {rank} (local rank {failure.local_rank}) {how}; its output is above",
                  file=sys.stderr, flush=True)
        return 128 - code if code < 0 else code
    finally:
        api.logger.removeFilter(quiet)
        quiet.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
