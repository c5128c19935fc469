"""Launcher discovery: rank / world size / local rank from torchrun, Slurm, Open MPI or PMI.

Precedence: torchrun, Open MPI, PMI, Slurm (per-process launcher variables before the
Slurm ones an mpirun inside an allocation inherits).

Pure Python on a dict environment: no process group is started, megatron is not imported.
"""
import pytest

from dist_pretrain.runtime import LaunchEnv, discover_launch_env

TORCHRUN = {"RANK": "5", "WORLD_SIZE": "16", "LOCAL_RANK": "1",
            "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "node0", "MASTER_PORT": "29500"}
SLURM = {"SLURM_PROCID": "6", "SLURM_NTASKS": "12", "SLURM_LOCALID": "2",
         "SLURM_JOB_ID": "4242", "SLURM_NODEID": "1"}
OMPI = {"OMPI_COMM_WORLD_RANK": "7", "OMPI_COMM_WORLD_SIZE": "24",
        "OMPI_COMM_WORLD_LOCAL_RANK": "3"}
PMI = {"PMI_RANK": "9", "PMI_SIZE": "10", "MPI_LOCALRANKID": "0"}


@pytest.mark.parametrize(
    "environ, expected",
    [
        (TORCHRUN, LaunchEnv(rank=5, world_size=16, local_rank=1, launcher="torchrun")),
        (SLURM, LaunchEnv(rank=6, world_size=12, local_rank=2, launcher="slurm")),
        (OMPI, LaunchEnv(rank=7, world_size=24, local_rank=3, launcher="openmpi")),
        (PMI, LaunchEnv(rank=9, world_size=10, local_rank=0, launcher="pmi")),
    ],
    ids=["torchrun", "slurm", "openmpi", "pmi"],
)
def test_each_launcher(environ, expected):
    env = discover_launch_env(dict(environ))
    assert env == expected
    assert all(isinstance(v, int) for v in (env.rank, env.world_size, env.local_rank))


def test_no_launcher_is_a_single_process():
    assert discover_launch_env({}) == LaunchEnv(0, 1, 0, "single")
    # unrelated variables change nothing
    assert discover_launch_env({"PATH": "/usr/bin", "HOME": "/root", "CUDA_VISIBLE_DEVICES": "0"}) \
        == LaunchEnv(0, 1, 0, "single")


@pytest.mark.parametrize(
    "environ, launcher, rank",
    [
        ({**SLURM, **OMPI, **PMI, **TORCHRUN}, "torchrun", 5),  # torchrun first
        ({**SLURM, **TORCHRUN}, "torchrun", 5),                 # torchrun inside an srun step
        ({**PMI, **TORCHRUN}, "torchrun", 5),
        ({**OMPI, **TORCHRUN}, "torchrun", 5),
        ({**SLURM, **OMPI, **PMI}, "openmpi", 7),               # then Open MPI
        ({**OMPI, **PMI}, "openmpi", 7),
        ({**SLURM, **OMPI}, "openmpi", 7),                      # mpirun inside an allocation
        ({**SLURM, **PMI}, "pmi", 9),                           # then PMI, Slurm last
    ],
    ids=["all", "slurm+torchrun", "pmi+torchrun", "ompi+torchrun", "slurm+ompi+pmi", "ompi+pmi",
         "slurm+ompi", "slurm+pmi"],
)
def test_precedence(environ, launcher, rank):
    env = discover_launch_env(environ)
    assert (env.launcher, env.rank) == (launcher, rank)


# what mpirun / mpiexec started inside an sbatch allocation leave from the enclosing step:
# the batch script's SLURM_PROCID/SLURM_NTASKS, the same in every rank
INHERITED_SLURM = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0",
                   "SLURM_JOB_ID": "1"}


@pytest.mark.parametrize(
    "mpi, expected",
    [
        (OMPI, LaunchEnv(7, 24, 3, "openmpi")),
        (PMI, LaunchEnv(9, 10, 0, "pmi")),          # MPICH / Intel MPI hydra
    ],
    ids=["openmpi", "pmi"],
)
def test_mpirun_inside_slurm_allocation_uses_mpi_ranks(mpi, expected):
    assert discover_launch_env({**INHERITED_SLURM, **mpi}) == expected


def test_mpirun_ranks_inside_slurm_allocation_are_distinct():
    """Every MPI rank of a node gets its own rank, not the batch step's SLURM_PROCID."""
    envs = [
        discover_launch_env({**INHERITED_SLURM, "OMPI_COMM_WORLD_RANK": str(r),
                             "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": str(r % 4)})
        for r in range(8)
    ]
    assert [e.rank for e in envs] == list(range(8))
    assert [e.local_rank for e in envs] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert {e.world_size for e in envs} == {8}


# srun --mpi=pmi2 sets PMI_RANK/PMI_SIZE per task but no PMI local rank: the local rank must
# come from SLURM_LOCALID, not fall back to the global rank (an invalid GPU ordinal on node 2+)
def test_srun_pmi2_keeps_slurm_local_rank():
    # task 10 of 16, third task on the second node (8 tasks per node), as srun --mpi=pmi2 sets it
    environ = {"SLURM_PROCID": "10", "SLURM_NTASKS": "16", "SLURM_LOCALID": "2",
               "SLURM_JOB_ID": "4242", "SLURM_NODEID": "1",
               "PMI_RANK": "10", "PMI_SIZE": "16", "PMI_FD": "5", "PMI_JOBID": "4242.0"}
    env = discover_launch_env(environ)
    assert (env.rank, env.world_size) == (10, 16)
    assert env.local_rank == 2


@pytest.mark.parametrize(
    "environ, expected",
    [
        # a rank variable without its size variable does not count as that launcher
        ({"RANK": "3"}, LaunchEnv(0, 1, 0, "single")),
        ({"RANK": "3", **SLURM}, LaunchEnv(6, 12, 2, "slurm")),
        ({"WORLD_SIZE": "8", **OMPI}, LaunchEnv(7, 24, 3, "openmpi")),
        ({"SLURM_PROCID": "1"}, LaunchEnv(0, 1, 0, "single")),
        ({"PMI_SIZE": "4"}, LaunchEnv(0, 1, 0, "single")),
    ],
    ids=["rank-only", "rank-only+slurm", "size-only+ompi", "slurm-procid-only", "pmi-size-only"],
)
def test_incomplete_launcher_variables_fall_through(environ, expected):
    assert discover_launch_env(environ) == expected


@pytest.mark.parametrize(
    "environ, launcher",
    [
        ({"RANK": "3", "WORLD_SIZE": "4"}, "torchrun"),
        ({"SLURM_PROCID": "3", "SLURM_NTASKS": "4"}, "slurm"),
        ({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4"}, "openmpi"),
        ({"PMI_RANK": "3", "PMI_SIZE": "4"}, "pmi"),
    ],
)
def test_missing_local_rank_defaults_to_global_rank(environ, launcher):
    assert discover_launch_env(environ) == LaunchEnv(3, 4, 3, launcher)


def test_reads_os_environ_by_default(monkeypatch):
    for var in list(TORCHRUN) + list(SLURM) + list(OMPI) + list(PMI):
        monkeypatch.delenv(var, raising=False)
    assert discover_launch_env() == LaunchEnv(0, 1, 0, "single")
    for key, value in OMPI.items():
        monkeypatch.setenv(key, value)
    assert discover_launch_env() == LaunchEnv(7, 24, 3, "openmpi")
    # an explicit mapping is used instead of os.environ, even an empty one
    assert discover_launch_env(dict(TORCHRUN)).launcher == "torchrun"
    assert discover_launch_env({}).launcher == "single"


def test_environment_is_not_modified():
    environ = {**SLURM, **PMI}
    before = dict(environ)
    discover_launch_env(environ)
    assert environ == before


def test_launch_env_is_frozen():
    env = discover_launch_env(dict(TORCHRUN))
    with pytest.raises(AttributeError):
        env.rank = 0


def test_bare_srun_finds_the_first_node_through_scontrol(tmp_path, monkeypatch):
    """No MASTER_ADDR under srun: every rank asks scontrol for the step's first node and its
    NodeAddr (fake node names need not resolve) and takes the port from the job id."""
    from dist_pretrain.runtime import rendezvous_address

    fake = tmp_path / "scontrol"
    fake.write_text('#!/bin/sh\n'
                    'if [ "$2" = hostnames ]; then echo gpu-a17; echo gpu-a18; fi\n'
                    'if [ "$2" = node ]; then echo "NodeName=$3 Arch=x86_64"; '
                    'echo "   NodeAddr=127.0.0.3 NodeHostName=$3"; fi\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{__import__('os').environ['PATH']}")
    env = {**SLURM, "SLURM_STEP_NODELIST": "gpu-a[17-18]"}
    assert rendezvous_address(discover_launch_env(env), env) == ("127.0.0.3", str(15000 + 4242))
    # torchrun / mpirun exports, or one node: nothing to look up
    assert rendezvous_address(discover_launch_env(TORCHRUN), TORCHRUN) == ("127.0.0.1", "29500")
    assert rendezvous_address(discover_launch_env(SLURM), SLURM) == ("127.0.0.1", "29500")
