"""Optional MPI for the data tools: one code path for ``mpiexec -n N`` and a plain run.

``mpi4py.MPI`` is imported only when the process was started by an MPI launcher (its
environment says so); a plain ``dist-pretrain preprocess`` never initialises MPI, so it
also works where no MPI library is installed or where initialising one would hang
(some clusters' login nodes). :func:`world` returns a :class:`Comm` with the few
collectives the tools need; the single-process one implements them trivially.
"""
from __future__ import annotations

import os
import sys
from typing import Any

# Set by the launchers: MPICH/Hydra and Intel MPI (PMI_*), Open MPI (OMPI_*), PMIx-based
# launchers incl. Open MPI 5 and srun --mpi=pmix (PMIX_RANK).
_MPI_ENV = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")


def launched_by_mpi(environ=None) -> bool:
    environ = os.environ if environ is None else environ
    return any(k in environ for k in _MPI_ENV)


class Comm:
    """A single process: rank 0 of 1."""

    rank, size, local_size = 0, 1, 1

    def bcast(self, obj: Any) -> Any:
        return obj

    def gather(self, obj: Any) -> list | None:
        return [obj]

    def barrier(self) -> None:
        pass

    def abort(self, code: int = 1) -> None:
        sys.exit(code)


class MPIComm(Comm):
    """``MPI.COMM_WORLD`` behind the same interface (pickle-based object collectives)."""

    def __init__(self):
        from mpi4py import MPI  # initialises MPI: only ever imported under a launcher

        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)  # ranks sharing this node's memory
        self.local_size = node.Get_size()
        node.Free()

    def bcast(self, obj: Any) -> Any:
        return self.comm.bcast(obj, root=0)

    def gather(self, obj: Any) -> list | None:
        return self.comm.gather(obj, root=0)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)


def world() -> Comm:
    return MPIComm() if launched_by_mpi() else Comm()


def threads_per_rank(local_size: int) -> int:
    """CPU threads one rank may use so the ranks of a node do not oversubscribe it.

    A rank pinned to a subset of cores by the launcher (``--bind-to core``, Slurm's
    cpu binding) uses its own cores; an unpinned rank takes an equal share of the node.
    """
    try:
        mine = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        mine = os.cpu_count() or 1
    node = os.cpu_count() or mine
    return max(1, mine // local_size) if mine >= node else max(1, mine)
