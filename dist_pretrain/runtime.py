"""Where am I running: launcher discovery, backend choice, process groups, parallel_state.

Ranks come from whichever launcher started us: torchrun (``RANK/WORLD_SIZE/LOCAL_RANK``),
Slurm's ``srun`` (``SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID``), Open MPI
(``OMPI_COMM_WORLD_*``) or MPICH/PMI (``PMI_RANK/PMI_SIZE``). NCCL + CUDA when a GPU is
present, gloo + CPU otherwise (with ``cpu_compat`` redirects).
"""

from __future__ import annotations

import datetime
import os
import random
import re
import socket
import subprocess
from dataclasses import dataclass

import numpy as np
import torch

from dist_pretrain import cpu_compat

# MPI before Slurm: mpirun inside an sbatch allocation inherits the batch step's
# SLURM_PROCID/SLURM_NTASKS, which would give every MPI rank the same rank.
_RANK_VARS = [
    ("RANK", "WORLD_SIZE", "LOCAL_RANK"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
    ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
]


@dataclass(frozen=True)
class LaunchEnv:
    rank: int
    world_size: int
    local_rank: int
    launcher: str


def discover_launch_env(environ: dict | None = None) -> LaunchEnv:
    """Rank, world size and local rank from the first launcher whose variables are set."""
    env = os.environ if environ is None else environ
    names = {"RANK": "torchrun", "SLURM_PROCID": "slurm", "OMPI_COMM_WORLD_RANK": "openmpi",
             "PMI_RANK": "pmi"}
    for rank_var, size_var, local_var in _RANK_VARS:
        if rank_var in env and size_var in env:
            rank, size = int(env[rank_var]), int(env[size_var])
            # srun --mpi=pmi2 sets PMI_RANK but no PMI local rank: Slurm's is the right one
            local = int(env.get(local_var, env.get("SLURM_LOCALID", rank)))
            return LaunchEnv(rank, size, local, names[rank_var])
    return LaunchEnv(0, 1, 0, "single")


def rendezvous_address(launch: LaunchEnv, environ: dict | None = None) -> tuple[str, str]:
    """Where rank 0 listens when the launcher did not say (``MASTER_ADDR/PORT`` unset).

    Under a bare ``srun python -m dist_pretrain ...`` every rank derives the same answer on
    its own: the first node of the step, through its ``NodeAddr`` (node names need not
    resolve), and a port from the job id (the formula ``slurm/pretrain.sbatch`` starts from).
    Otherwise (one node) 127.0.0.1:29500.
    """
    env = os.environ if environ is None else environ
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
    if launch.launcher != "slurm" or not nodes:
        return "127.0.0.1", "29500"
    try:
        first = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True,
                               timeout=30, check=True).stdout.split()[0]
        info = subprocess.run(["scontrol", "show", "node", first], capture_output=True, text=True,
                              timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError, IndexError) as err:
        raise RuntimeError(f"launched by srun without MASTER_ADDR, and `scontrol` cannot name the first "
                           f"node of {nodes!r} ({err}): export MASTER_ADDR and MASTER_PORT") from err
    match = re.search(r"NodeAddr=(\S+)", info)
    addr = match.group(1) if match else first
    try:
        addr = socket.gethostbyname(addr)
    except OSError:
        pass
    return addr, str(15000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)


def world_size_from_env() -> int:
    return discover_launch_env().world_size


@dataclass(frozen=True)
class Runtime:
    env: LaunchEnv
    device: torch.device
    backend: str
    tp: int
    pp: int
    vpp: int | None
    dp: int
    tp_rank: int
    pp_rank: int
    dp_rank: int

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def is_logging_rank(self) -> bool:
        return self.env.rank == 0


def init_distributed(tp: int, pp: int, vpp: int | None, timeout_minutes: float = 10) -> Runtime:
    """Start torch.distributed (+ DeepSpeed comm) and megatron-core's parallel_state."""
    from megatron.core import parallel_state

    env = discover_launch_env()
    on_gpu = torch.cuda.is_available()
    backend = "nccl" if on_gpu else "gloo"
    if on_gpu:
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        cpu_compat.enable()
        device = torch.device("cpu")
    # DeepSpeed asserts on LOCAL_RANK whatever launched us (srun, mpirun)
    os.environ.setdefault("LOCAL_RANK", str(env.local_rank))
    if "MASTER_ADDR" not in os.environ:
        addr, port = rendezvous_address(env)
        os.environ["MASTER_ADDR"] = addr
        os.environ.setdefault("MASTER_PORT", port)
    os.environ.setdefault("MASTER_PORT", "29500")
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if on_gpu else "cpu")
    timeout = datetime.timedelta(minutes=timeout_minutes)
    if not torch.distributed.is_initialized():
        # on GPUs, small CPU-side agreements (stop signals, checkpoint status) go over gloo
        torch.distributed.init_process_group(
            backend="cpu:gloo,cuda:nccl" if on_gpu else "gloo", rank=env.rank, world_size=env.world_size,
            timeout=timeout,
        )
    if not on_gpu:
        cpu_compat.disable_deepspeed_shm_comm()
    import deepspeed

    deepspeed.init_distributed(dist_backend=backend, timeout=timeout)
    if parallel_state.model_parallel_is_initialized():  # a new layout in the same process group
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=vpp if pp > 1 else None,
        distributed_timeout_minutes=timeout_minutes,
    )
    return Runtime(
        env=env, device=device, backend=backend, tp=tp, pp=pp, vpp=vpp if pp > 1 else None,
        dp=parallel_state.get_data_parallel_world_size(),
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
        dp_rank=parallel_state.get_data_parallel_rank(),
    )


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy, torch and megatron's model-parallel RNG tracker (dropout)."""
    from megatron.core import tensor_parallel

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def shutdown() -> None:
    from megatron.core import parallel_state

    if torch.distributed.is_initialized():
        parallel_state.destroy_model_parallel()
        torch.distributed.destroy_process_group()
