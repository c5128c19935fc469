"""launchers/mpirun.sh: MPI starts the ranks (the venv's pip MPICH: PMI_RANK/PMI_SIZE), gloo meets
at the MASTER_ADDR/MASTER_PORT the script exports; tiny GPT TP2 on 2 ranks trains to the end."""
import json
import os
import re
from pathlib import Path

from launch import run_group

ROOT = Path(__file__).resolve().parents[1]


def test_mpirun_launcher_trains_tp2_on_two_mpi_ranks(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_", "MASTER_"))}
    r = run_group(["bash", str(ROOT / "launchers/mpirun.sh"), str(ROOT / "configs/gpt/tiny.yaml"),
                   f"run_dir={tmp_path}", "parallel.tensor=2", "train.steps=3", "train.threads=1",
                   "monitor.peak_tflops=1", "monitor.tensorboard=false", "-n", "2"], timeout=300, env=env)
    print(r.stderr[-1500:])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    launched = re.search(r"mpirun\.sh: (\S+) -n 2 .*\(rendezvous 127\.0\.0\.1:(\d+)\)", r.stderr)
    assert launched and launched[1].endswith("/mpiexec"), r.stderr[-2000:]
    # one job of 2 ranks (TP 2 needs both), not 2 one-rank jobs
    assert "training gpt causal_lm | TP 2 PP 1 VPP 1 DP 1" in r.stdout, r.stdout[-3000:]
    assert r.stdout.count("training gpt") == 1
    steps = [json.loads(line)["step"] for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
