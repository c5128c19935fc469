"""Starting a DataLoader's worker processes.

``iter(loader)`` forks the workers. A ``worker_init_fn`` with a ``forking()`` context
(``faults.StopSignalsInWorkers``) gets it around that fork, so the workers are born with the
stop signals blocked instead of only blocking them once their init function runs.
"""

from __future__ import annotations

from typing import Iterator

from torch.utils.data import DataLoader


def start_iteration(loader: DataLoader) -> Iterator:
    """``iter(loader)``, its workers forked inside the ``worker_init_fn``'s ``forking()`` context."""
    forking = getattr(loader.worker_init_fn, "forking", None)
    if forking is None or not loader.num_workers:
        return iter(loader)
    with forking():
        return iter(loader)
