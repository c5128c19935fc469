"""``dist-pretrain sweep SWEEP.yaml [--dry-run] [--task I] [--executor local|slurm]``.

* ``local``: the tasks one after another, or ``executor.parallel`` of them side by side, each
  with its share of the cores (``train.threads``);
* ``slurm``: one ``sbatch --array=0-(T-1)%throttle slurm/sweep.sbatch SWEEP.yaml``; each array
  task runs ``dist-pretrain sweep SWEEP.yaml --task I`` and is requeued after a preemption;
* ``--task I``: run task I here (what an array task does).

Rows go to ``SWEEP_DIR/results.jsonl``; fit them with ``dist-pretrain scaling fit``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dist_pretrain.errors import ConfigError
from dist_pretrain.scaling.sweep import collect, finished, plan, run_task

SBATCH = Path(__file__).resolve().parents[2] / "slurm" / "sweep.sbatch"


def _printer(prefix: str = ""):
    lock = threading.Lock()

    def log(message: str) -> None:
        with lock:
            print(f"[sweep]{prefix} {message}", flush=True)
    return log


def local(sweep, parallel: int) -> int:
    cores = os.cpu_count() or 1
    threads = max(1, cores // parallel) if parallel > 1 else None
    log = _printer()
    if parallel == 1:
        codes = [run_task(sweep, t, None, log) for t in sweep.tasks]
    else:
        with ThreadPoolExecutor(parallel) as pool:
            codes = list(pool.map(lambda t: run_task(sweep, t, threads, log), sweep.tasks))
    out = collect(sweep)
    bad = [(t.size, c) for t, c in zip(sweep.tasks, codes) if c]
    print(f"[sweep] {sum(1 for _ in out.read_text().splitlines())} rows in {out}"
          + (f"; unfinished (rerun to resume): {', '.join(f'{s} (exit {c})' for s, c in bad)}" if bad else ""),
          flush=True)
    return bad[0][1] if bad else 0


def slurm(sweep, sweep_file: str) -> int:
    ex = sweep.spec.executor
    sweep.dir.mkdir(parents=True, exist_ok=True)
    (sweep.dir / "logs").mkdir(exist_ok=True)
    cmd = ["sbatch", "--parsable", f"--array=0-{len(sweep.tasks) - 1}%{ex.throttle}",
           f"--output={sweep.dir.resolve()}/logs/%A_%a.out", *ex.sbatch, str(SBATCH), str(Path(sweep_file).resolve())]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise ConfigError(f"sbatch failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    job = proc.stdout.strip().split(";")[0]
    print(f"[sweep] submitted array job {job}: {len(sweep.tasks)} tasks, at most {ex.throttle} at once "
          f"({' '.join(cmd)}); rows go to {sweep.dir / 'results.jsonl'}", flush=True)
    print(job, flush=True)
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dist-pretrain sweep", description="Scaling-law sweep")
    parser.add_argument("sweep", help="sweep YAML file")
    parser.add_argument("--dry-run", action="store_true", help="print the runs and exit")
    parser.add_argument("--task", type=int, help="run only task I here (Slurm array tasks do this)")
    parser.add_argument("--executor", choices=["local", "slurm"], help="override executor.kind")
    args = parser.parse_args(argv)
    sweep = plan(args.sweep)
    if args.dry_run:
        for i, task in enumerate(sweep.tasks):
            for run in task.runs:
                state = "done" if finished(run) else "todo"
                print(f"task {i} {run.name:<24} {run.kind:<7} steps {run.steps:>7} {state}  {run.run_dir}")
        return 0
    if args.task is not None:
        if not 0 <= args.task < len(sweep.tasks):
            raise ConfigError(f"--task {args.task}: the sweep has tasks 0..{len(sweep.tasks) - 1}")
        code = run_task(sweep, sweep.tasks[args.task], None, _printer(f" task {args.task}"))
        collect(sweep)
        return code
    kind = args.executor or sweep.spec.executor.kind
    return slurm(sweep, args.sweep) if kind == "slurm" else local(sweep, sweep.spec.executor.parallel)
