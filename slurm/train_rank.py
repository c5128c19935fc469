"""One training rank as the Slurm scripts start it: ``python slurm/train_rank.py CONFIG [key=value ...]``.

It is ``dist-pretrain train`` with two additions the batch script relies on:

* one line per rank at start-up, ``rank R/W local L node NAME (node index I of N) host H
  via LAUNCHER``, so a job log shows where every rank ran (rank 0 alone prints the rest);
* after a stop for a requeue (a signal or ``checkpoint.exit_after_minutes``: the checkpoint
  is saved and the trainer returns ``checkpoint.exit_code``), it touches the file named by
  ``$DIST_PRETRAIN_REQUEUE_FILE``. Under torchrun that is how the batch script learns it:
  torchrun turns its workers' exit status 99 into its own status 1.

Ranks come from torchrun (``RANK``...) or straight from ``srun`` (``SLURM_PROCID``...), as
``dist_pretrain.runtime`` reads them.
"""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path


def rank_line(env=os.environ) -> str:
    from dist_pretrain.runtime import discover_launch_env

    me = discover_launch_env(env)
    node = env.get("SLURMD_NODENAME", socket.gethostname())
    return (f"rank {me.rank}/{me.world_size} local {me.local_rank} node {node} "
            f"(node index {env.get('SLURM_NODEID', '?')} of {env.get('SLURM_NNODES', '?')}) "
            f"host {socket.gethostname()} via {me.launcher}")


def main(argv: list[str]) -> int:
    from dist_pretrain.cli import main as cli_main
    from dist_pretrain.config import load_config

    # one write() of the whole line: ranks sharing a pipe (torchrun's workers) do not interleave
    sys.stdout.write(rank_line() + "\n")
    sys.stdout.flush()
    code = cli_main(["train", *argv])
    marker = os.environ.get("DIST_PRETRAIN_REQUEUE_FILE")
    if marker and code != 0 and argv:
        try:
            stop_code = load_config(argv[0], argv[1:]).checkpoint.exit_code
        except Exception:  # the config was already rejected by the trainer (status 2)
            stop_code = None
        if code == stop_code:
            Path(marker).parent.mkdir(parents=True, exist_ok=True)
            Path(marker).touch()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
