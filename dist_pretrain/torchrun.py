"""``python -m dist_pretrain.torchrun [torchrun arguments]``: torchrun, ending in one line.

torchrun reports any worker that exits non-zero with a ``ChildFailedError`` traceback and
exits 1 itself. Here a job whose ranks stopped on a user error (exit status 2: rank 0
already printed the problem) ends with nothing more, and any other failure with one line
naming the first rank that failed and how; a worker's own traceback (a bug) is printed by
that worker above it. The exit status is the first failed worker's: 2 for a user error,
``checkpoint.exit_code`` after a stop for a requeue, 128 + N for a worker killed by signal N.
Everything else (arguments, signals, rendezvous) is torchrun's own.
"""
from __future__ import annotations

import sys

from dist_pretrain.errors import EXIT_USER_ERROR


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

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
    return 0


if __name__ == "__main__":
    sys.exit(main())
