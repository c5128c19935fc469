"""Multi-node launch on a real Slurm: the project's own sbatch scripts on a 2-node local cluster.

``slurm/local_cluster.sh`` starts slurmctld, munged and two slurmd faking nodes n1 and n2 on
this host (a session fixture; stopped at the end). Jobs are submitted with ``sbatch`` exactly
as a user would and followed with ``scontrol show job`` (``sbatch --wait`` polls slowly):

* torchrun mode: 2 nodes x torchrun --nproc 2, tiny GPT TP2 x DP2; exit 0, the job log,
  TensorBoard events, a verified checkpoint, and where each of the 4 ranks ran;
* preemption: SIGTERM to the job's tasks mid-run (what ``--signal=TERM@120`` sends before the
  time limit); the trainer saves, the script requeues the job, the second run resumes from
  that checkpoint and ends with the loss curve of the uninterrupted job;
* direct mode (``LAUNCH=srun``): Slurm starts the ranks, which read ``SLURM_PROCID``...;
* preprocessing under ``srun --mpi=pmi2`` (pip's MPICH) writes the one-rank manifest.

Needs root (the daemons) and Slurm, which the fixture installs with apt when missing. Where
that cannot be, the tests are skipped with the reason printed, except under CI (``CI`` set),
where that is a failure: CI installs Slurm (``.ci/run``) and must run them.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from launch import run_group

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "slurm/local_cluster.sh"
TINY = str(ROOT / "configs/gpt/tiny.yaml")  # synthetic tokens
CFG = str(ROOT / "configs/gpt/demo.yaml")  # the shipped demo: real shards, loader workers, validation
STEPS = 20
# the same run for the reference and the preempted job: the demo config (TP2) shrunk, TP2 x DP2
# over 2 nodes x 2 workers, on real shards (fixture ``real_lm_shards``) read by 2 loader workers
# per rank, validation every 5 steps
SMALL = ["model.num_layers=2", "model.hidden_size=64", "model.num_attention_heads=4", "model.seq_length=32",
         "train.micro_batch_size=2", "train.global_batch_size=8", "train.warmup_steps=2", "train.eval_interval=5",
         "train.eval_steps=2", "data.num_workers=2", "train.threads=1", "monitor.peak_tflops=1"]
TRAIN = [f"train.steps={STEPS}", "parallel.tensor=2", f"checkpoint.interval={STEPS}", "train.log_interval=5",
         *SMALL]
JOB_TIMEOUT = 240
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
         "DEADLINE", "PREEMPTED"}
RANK_LINE = re.compile(r"rank (\d+)/(\d+) local (\d+) node (\S+) \(node index (\S+) of (\S+)\) host \S+ via (\w+)")


def _unavailable(reason: str):
    """No cluster here: a skip with the reason on the terminal, a failure under CI."""
    sys.__stderr__.write(f"\ntests/test_slurm.py: local Slurm cluster unavailable: {reason}\n")
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the Slurm tests, but: {reason}")
    pytest.skip(reason)


class Cluster:
    def __init__(self, dir: Path):
        self.dir = dir
        self.env = {**os.environ, "SLURM_CONF": str(dir / "slurm.conf"), "PYTHONWARNINGS": "ignore"}

    def run(self, *cmd, timeout=30, check=True, **kw) -> subprocess.CompletedProcess:
        r = subprocess.run(cmd, env={**self.env, **kw.pop("env", {})}, capture_output=True, text=True,
                           timeout=timeout, **kw)
        assert not check or r.returncode == 0, f"{' '.join(map(str, cmd))}: {r.stdout}{r.stderr}"
        return r

    def submit(self, workdir: Path, *args, env=None) -> str:
        (workdir / "logs").mkdir(parents=True, exist_ok=True)
        r = self.run("sbatch", "--parsable", *args, cwd=workdir, env=env or {})
        job = r.stdout.strip().split(";")[0]
        print(f"submitted job {job}: sbatch {' '.join(map(str, args))}")
        return job

    def job(self, job: str) -> dict:
        out = self.run("scontrol", "show", "job", "-o", job).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait(self, job: str, log: Path, timeout=JOB_TIMEOUT) -> dict:
        """Poll until the job reached a final state (through any requeue); cancel it on timeout."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                info = self.job(job)
                if info.get("JobState") in FINAL:
                    print(f"job {job}: {info['JobState']} exit {info.get('ExitCode')} "
                          f"restarts {info.get('Restarts')}")
                    return info
                time.sleep(0.5)
        except BaseException:
            self.run("scancel", job, check=False)
            raise
        self.run("scancel", job, check=False)
        pytest.fail(f"job {job} not done after {timeout} s: {info}\n{_tail(log)}")


def _tail(log: Path, n=60) -> str:
    return "\n".join(log.read_text().splitlines()[-n:]) if log.exists() else f"(no {log})"


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    if os.geteuid() != 0:
        _unavailable("needs root: the local cluster runs slurmctld/slurmd as root")
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        _unavailable("Slurm is not installed and there is no apt-get to install it "
                     "(slurm/local_cluster.sh install)")
    d = tmp_path_factory.mktemp("slurm")
    start = time.monotonic()
    r = run_group(["bash", str(CLUSTER), "start", "--nodes", "2", "--dir", str(d)], timeout=600)
    if r.returncode != 0:
        _unavailable(f"slurm/local_cluster.sh start failed ({r.returncode}): {r.stderr[-2000:]}")
    print(f"local cluster up in {time.monotonic() - start:.1f} s: {r.stderr.strip()}")
    try:
        yield Cluster(d)
    finally:
        stop = run_group(["bash", str(CLUSTER), "stop", "--dir", str(d)], timeout=120)
        assert stop.returncode == 0, stop.stderr


def _ranks(log_text: str) -> list[dict]:
    return [dict(rank=int(m[0]), world=int(m[1]), local=int(m[2]), node=m[3], node_index=m[4],
                 nnodes=m[5], launcher=m[6]) for m in RANK_LINE.findall(log_text)]


def _history(run_dir: Path) -> dict[int, dict]:
    rows = {}
    path = run_dir / "history.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # empty, or the line rank 0 is writing right now
                continue
            rows[row["step"]] = row  # a step redone after a resume replaces the first try
    return rows


def _assert_placement(ranks: list[dict], world: int, per_node: int, launcher: str) -> None:
    """Every rank once, all agree on the world size, per_node ranks on each of n1 and n2."""
    print("\n".join(f"rank {r['rank']}/{r['world']} on {r['node']} (index {r['node_index']}) local "
                    f"{r['local']} via {r['launcher']}" for r in sorted(ranks, key=lambda r: r["rank"])))
    assert sorted(r["rank"] for r in ranks) == list(range(world)), ranks
    assert {r["world"] for r in ranks} == {world} and {r["launcher"] for r in ranks} == {launcher}, ranks
    by_node = {}
    for r in ranks:
        by_node.setdefault(r["node"], []).append(r["local"])
        assert r["nnodes"] == "2" and r["node_index"] == str(int(r["node"][1:]) - 1), r  # n1 -> 0, n2 -> 1
    assert {n: sorted(v) for n, v in by_node.items()} == {"n1": list(range(per_node)), "n2": list(range(per_node))}


@pytest.fixture(scope="module")
def reference(cluster, real_lm_shards, tmp_path_factory):
    """The uninterrupted job: 2 nodes x 2 torchrun workers, TP2 x DP2."""
    work = tmp_path_factory.mktemp("torchrun")
    job = cluster.submit(work, "--nodes=2", "--job-name=ref", str(ROOT / "slurm/pretrain.sbatch"), CFG,
                         *TRAIN, f"data.path={real_lm_shards}", env={"NPROC_PER_NODE": "2"})
    log = work / f"logs/ref_{job}.out"
    info = cluster.wait(job, log)
    return work, job, log, info


def test_torchrun_two_nodes_tp2_dp2(reference):
    from dist_pretrain.checkpoint import verify

    work, job, log, info = reference
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", _tail(log)
    assert info["Restarts"] == "0" and info["NumNodes"] == "2", info
    _assert_placement(_ranks(text), world=4, per_node=2, launcher="torchrun")
    assert "training gpt causal_lm | TP 2 PP 1 VPP 1 DP 2" in text, _tail(log)
    assert "srun exited with status 0" in text
    run_dir = work / "runs/ref"  # run_dir from the job name
    assert sorted(_history(run_dir)) == list(range(1, STEPS + 1))
    ckpt = run_dir / f"checkpoints/step-{STEPS:08d}"
    assert ckpt.is_dir() and verify(ckpt) is None, list((run_dir / "checkpoints").iterdir())
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, STEPS + 1))


def test_preempted_job_requeues_and_resumes_to_the_same_loss(cluster, reference, real_lm_shards, tmp_path):
    work = tmp_path
    job = cluster.submit(work, "--nodes=2", "--job-name=pre", str(ROOT / "slurm/pretrain.sbatch"), CFG,
                         *TRAIN, f"data.path={real_lm_shards}", env={"NPROC_PER_NODE": "2"})
    log, run_dir = work / f"logs/pre_{job}.out", work / "runs/pre"
    deadline = time.monotonic() + JOB_TIMEOUT
    while len(_history(run_dir)) < 2:  # training is under way
        assert time.monotonic() < deadline, _tail(log)
        assert cluster.job(job)["JobState"] in ("PENDING", "RUNNING"), _tail(log)
        time.sleep(0.2)
    # the tasks' signal, as --signal=TERM@120 sends it before the time limit (scancel without
    # --full: with --full srun itself gets SIGTERM and kills the step at once)
    signalled_at = max(_history(run_dir))  # the stop comes at a later step boundary
    cluster.run("scancel", "--signal=TERM", job)
    print(f"SIGTERM sent to job {job} after step {signalled_at}")
    info = cluster.wait(job, log)
    text = log.read_text()
    print(_tail(log, 12))
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", _tail(log)
    assert info["Restarts"] == "1", info  # requeued once, by the script
    # "(SIGTERM)", or "(on another rank)" when rank 0 got its signal after the others agreed
    assert re.search(r"stopping: stop signal \((SIGTERM|on another rank)\)", text), _tail(log)
    assert "requeueing job" in text, _tail(log)
    assert "DataLoader worker" not in text and "Traceback" not in text, _tail(log)  # the workers got it too
    resumed = re.search(r"resumed from \S+step-(\d+) \(step (\d+);", text)
    assert resumed, _tail(log)
    step = int(resumed[2])
    assert signalled_at <= step < STEPS, (signalled_at, step)
    assert f"job {job} (pre) run 2 on" in text and text.count("srun exited with status 0") == 1
    _assert_placement(_ranks(text.split("(pre) run 2 on")[1]), world=4, per_node=2, launcher="torchrun")
    # the checkpoint of the stop and the final one, both verified by the resume / save
    assert (run_dir / f"checkpoints/step-{step:08d}").is_dir()
    assert (run_dir / f"checkpoints/step-{STEPS:08d}").is_dir()
    # the same loss curve as the uninterrupted job, to the last step
    ref, got = _history(reference[0] / "runs/ref"), _history(run_dir)
    assert sorted(got) == list(range(1, STEPS + 1))
    ref_loss, got_loss = [ref[s]["train/loss"] for s in sorted(ref)], [got[s]["train/loss"] for s in sorted(got)]
    print(f"final loss: preempted+resumed {got_loss[-1]!r}, uninterrupted {ref_loss[-1]!r}")
    assert all(abs(g - r) <= 1e-6 * abs(r) for g, r in zip(got_loss, ref_loss)), (got_loss, ref_loss)
    # validation after the resume measures the same samples with the same weights
    assert got[STEPS]["val/loss"] == ref[STEPS]["val/loss"], (got[STEPS], ref[STEPS])


def test_scancel_ends_the_job_without_requeue(cluster, tmp_path):
    """A user's scancel also makes the trainer save and exit 99, but the job must stay cancelled."""
    job = cluster.submit(tmp_path, "--nodes=2", "--job-name=cancel", str(ROOT / "slurm/pretrain.sbatch"), TINY,
                         "train.steps=5000", "parallel.tensor=2", "train.threads=1", "monitor.peak_tflops=1",
                         "train.log_interval=100", env={"NPROC_PER_NODE": "1"})
    log, run_dir = tmp_path / f"logs/cancel_{job}.out", tmp_path / "runs/cancel"
    deadline = time.monotonic() + JOB_TIMEOUT
    while not _history(run_dir):
        assert time.monotonic() < deadline and cluster.job(job)["JobState"] in ("PENDING", "RUNNING"), _tail(log)
        time.sleep(0.2)
    cluster.run("scancel", job)
    info = cluster.wait(job, log)
    text = log.read_text()
    assert info["JobState"] == "CANCELLED" and info["Restarts"] == "0", (info, _tail(log))
    assert "not requeueing" in text and "run 2 on" not in text, _tail(log)


def test_direct_srun_mode_ranks_from_slurm(cluster, reference, real_lm_shards, tmp_path):
    """LAUNCH=srun: Slurm starts the 2 ranks (one per node), no torchrun."""
    job = cluster.submit(tmp_path, "--nodes=2", "--ntasks-per-node=1", "--job-name=direct",
                         str(ROOT / "slurm/pretrain.sbatch"), CFG, *SMALL, "train.steps=2", "parallel.tensor=2",
                         f"data.path={real_lm_shards}", env={"LAUNCH": "srun"})
    log = tmp_path / f"logs/direct_{job}.out"
    info = cluster.wait(job, log)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", _tail(log)
    assert "launch=srun" in text and "training gpt causal_lm | TP 2 PP 1 VPP 1 DP 1" in text, _tail(log)
    _assert_placement(_ranks(text), world=2, per_node=1, launcher="slurm")
    # same weights and global batch as the TP2 x DP2 reference: the same first loss
    got, ref = _history(tmp_path / "runs/direct")[1]["train/loss"], _history(reference[0] / "runs/ref")[1]["train/loss"]
    assert abs(got - ref) <= 1e-5 * abs(ref), (got, ref)


def test_preprocess_under_srun_pmi2_matches_one_rank(cluster, tmp_path):
    from test_preprocess import _args, _manifest, _sha, _without_ranks

    from dist_pretrain.data import demo_corpus

    corpus = Path(demo_corpus.build_demo_corpus(str(tmp_path / "corpus")))
    one = tmp_path / "one"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_"))}
    r = run_group([sys.executable, "-m", "dist_pretrain", "preprocess", *_args(corpus, one)], timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    two = tmp_path / "two"
    job = cluster.submit(tmp_path, "--nodes=2", "--ntasks-per-node=1", str(ROOT / "slurm/preprocess.sbatch"),
                         *_args(corpus, two))
    log = tmp_path / f"logs/preprocess_{job}.out"
    info = cluster.wait(job, log)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", _tail(log)
    assert "manifest written by 2 MPI ranks" in log.read_text(), _tail(log)
    m1, m2 = _manifest(one), _manifest(two)
    assert (m1["ranks"], m2["ranks"]) == (1, 2)
    assert _without_ranks(m2) == _without_ranks(m1)  # same shards, sizes, sha256, counts
    for split in m1["splits"].values():
        for s in split["shards"]:
            assert _sha(one / s["path"]) == _sha(two / s["path"]) == s["sha256"]


@pytest.mark.parametrize("args,env,fragment", [
    (["train.warmup_steps=200"], {}, "train.warmup_steps=200 exceeds train.steps=20"),
    (["parallel.tensor=4"], {"NPROC_PER_NODE": "1"}, "world size 2 is not divisible by parallel.tensor=4"),
    (["checkpoint.resume=runs/gone/checkpoints/step-00000004"], {"LAUNCH": "srun"},
     "checkpoint.resume=runs/gone/checkpoints/step-00000004 does not exist"),
], ids=["cross-field", "world-size-of-the-allocation", "resume-path-missing-direct-srun"])
def test_bad_input_fails_in_the_batch_script_before_any_node_starts(cluster, real_lm_shards, tmp_path, args, env,
                                                                    fragment):
    """The pre-flight runs in the batch script at the job's world size (2 nodes): one error
    line in the job log, exit 2, no srun step, no run directory, no traceback."""
    t0 = time.monotonic()
    job = cluster.submit(tmp_path, "--nodes=2", "--job-name=bad", str(ROOT / "slurm/pretrain.sbatch"), CFG,
                         *TRAIN, f"data.path={real_lm_shards}", *args, env=env)
    log = tmp_path / f"logs/bad_{job}.out"
    info = cluster.wait(job, log, timeout=60)
    text = log.read_text()
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "2:0", _tail(log)
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and fragment in errors[0], text
    assert "Traceback" not in text and "srun exited" not in text and "rank 0/" not in text, text
    assert not (tmp_path / "runs").exists()
    assert time.monotonic() - t0 < 60


def test_sweep_array_requeues_a_preempted_task(cluster, real_lm_shards, tmp_path):
    """`dist-pretrain sweep` with executor slurm: one sbatch --array (two sizes, one cosine run each,
    one task at a time); task 0 is signalled mid-run as before a time limit, saves, is requeued and
    resumes; both rows reach results.jsonl."""
    spec = {"base": str(ROOT / "configs/gpt/tiny.yaml"),
            "overrides": ["data.synthetic=false", f"data.path={real_lm_shards}", "model.vocab_size=null",
                          "train.warmup_steps=2", "monitor.peak_tflops=1", "monitor.tensorboard=false",
                          "data.num_workers=0", "train.threads=1"],
            "sweep_dir": str(tmp_path / "sweep"), "sizes": ["gpt-nano", "gpt-micro"],
            "tokens": {"explicit": [40 * 8 * 32]}, "schedule": {"kind": "cosine"}, "validation_batches": 4,
            "executor": {"kind": "slurm", "throttle": 1}}
    (tmp_path / "sweep.yaml").write_text(json.dumps(spec))
    r = cluster.run(sys.executable, "-m", "dist_pretrain", "sweep", str(tmp_path / "sweep.yaml"), cwd=tmp_path,
                    timeout=120)
    array = r.stdout.strip().splitlines()[-1]
    assert "%1" in r.stdout, r.stdout
    first, log = f"{array}_0", tmp_path / f"sweep/logs/{array}_0.out"
    run_dir = tmp_path / "sweep/gpt-nano-s40"
    deadline = time.monotonic() + JOB_TIMEOUT
    while len(_history(run_dir)) < 2:
        assert time.monotonic() < deadline, _tail(log)
        assert cluster.job(first)["JobState"] in ("PENDING", "RUNNING"), _tail(log)
        time.sleep(0.2)
    cluster.run("scancel", "--signal=TERM", "--batch", first)  # what --signal=B:TERM@120 sends
    # the throttle lets task 1 start in the freed slot; the requeued task 0 runs after it
    assert cluster.wait(f"{array}_1", tmp_path / f"sweep/logs/{array}_1.out", 2 * JOB_TIMEOUT)["JobState"] == "COMPLETED"
    info = cluster.wait(first, log, 2 * JOB_TIMEOUT)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", _tail(log)
    assert "requeueing array task 0" in log.read_text() and "resumed from" in (run_dir / "train.log").read_text()
    rows = [json.loads(x) for x in (tmp_path / "sweep/results.jsonl").read_text().splitlines()]
    assert [row["name"] for row in rows] == ["gpt-nano-s40", "gpt-micro-s40"]
    assert sorted(_history(run_dir)) == list(range(1, 41)) and all(row["schedule"] == "cosine" for row in rows)
