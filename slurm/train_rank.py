"""One training rank as the Slurm scripts start it: ``python slurm/train_rank.py CONFIG [key=value ...]``.

It is ``dist-pretrain train`` plus one line per rank at start-up, ``rank R/W local L node NAME
(node index I of N) host H via LAUNCHER``, so a job log shows where every rank ran (rank 0
alone prints the rest). After a stop for a requeue the trainer writes its exit status to
``$DIST_PRETRAIN_REQUEUE_FILE`` (``faults.record_stop``), which the batch script reads, since
torchrun turns its workers' exit status 99 into its own status 1.

Ranks come from torchrun (``RANK``...) or straight from ``srun`` (``SLURM_PROCID``...), as
``dist_pretrain.runtime`` reads them.
"""
from __future__ import annotations

import os
import socket
import sys


def rank_line(env=os.environ) -> str:
    from dist_pretrain.runtime import discover_launch_env

    me = discover_launch_env(env)
    node = env.get("SLURMD_NODENAME", socket.gethostname())
    return (f"rank {me.rank}/{me.world_size} local {me.local_rank} node {node} "
            f"(node index {env.get('SLURM_NODEID', '?')} of {env.get('SLURM_NNODES', '?')}) "
            f"host {socket.gethostname()} via {me.launcher}")


def main(argv: list[str]) -> int:
    from dist_pretrain.cli import main as cli_main

    # one write() of the whole line: ranks sharing a pipe (torchrun's workers) do not interleave
    sys.stdout.write(rank_line() + "\n")
    sys.stdout.flush()
    return cli_main(["train", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
