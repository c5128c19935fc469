"""Expand a sweep into runs, run a task's runs in order, and write each finished run's row.

Every run is an ordinary ``dist-pretrain train`` under ``dist_pretrain.torchrun`` with its own
``run_dir`` (checkpoints, TensorBoard, ``history.jsonl``). A run is finished when its run_dir
holds ``sweep_row.json`` (a trunk segment: when the trunk has a checkpoint at or past its
step), so a relaunched sweep skips it; an unfinished run resumes from its newest checkpoint.
A decay branch that has none of its own yet starts from its trunk's checkpoint.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from dist_pretrain.checkpoint_files import step_dirs
from dist_pretrain.config import Config, load_config, padded_vocab_size
from dist_pretrain.errors import ConfigError, UserError
from dist_pretrain.scaling.sweep_spec import (
    RunPlan,
    Sweep,
    Task,
    budgets_for,
    gpt_param_counts,
    learning_rate_for,
    load_sweep,
    shapes,
)

ROW_FILE = "sweep_row.json"


def plan(path: str | Path) -> Sweep:
    """The sweep's tasks (one per size) with their runs; validates every run's config."""
    from dist_pretrain.preflight import check

    sweep = load_sweep(path)
    spec = sweep.spec
    vocab = None
    for size, model in shapes(spec):
        model_over = [f"model.{k}={v}" for k, v in model.items()]
        cfg = load_config(sweep.base, [*spec.overrides, *model_over])
        if (cfg.model.arch, cfg.task.name) != ("gpt", "causal_lm"):  # N is counted for decoder-only GPT
            raise ConfigError(f"sweep base {sweep.base}: scaling sweeps pretrain GPT (model.arch=gpt, "
                              f"task.name=causal_lm); got model.arch={cfg.model.arch}, task.name={cfg.task.name}")
        if vocab is None:
            report = check(cfg, cfg.parallel.nproc, verify_checkpoint=False)
            report.raise_errors()
            vocab = report.vocab_size
        n_params, _ = gpt_param_counts(cfg.model, padded_vocab_size(cfg, vocab))
        lr = learning_rate_for(spec, cfg, cfg.model.hidden_size)
        common = [*spec.overrides, *model_over, f"train.lr={lr}", f"train.min_lr={min(cfg.train.min_lr, lr)}"]
        tokens_per_step = cfg.train.global_batch_size * cfg.model.seq_length  # GPT: a sample is seq_length tokens
        steps = sorted({max(1, round(d / tokens_per_step)) for d in budgets_for(spec, size, n_params)})
        sweep.tasks.append(_task(sweep, size, cfg, common, steps))
    return sweep


def _task(sweep: Sweep, size: str, cfg: Config, common: list[str], steps: list[int]) -> Task:
    spec, task = sweep.spec, Task(size)
    final = [f"train.eval_steps={spec.validation_batches}", "checkpoint.interval=0", "checkpoint.save_final=true"]
    warm = cfg.train.warmup_steps
    if spec.schedule.kind == "cosine":
        for s in steps:
            if s <= warm:
                raise ConfigError(f"sweep size {size}: a budget of {s} steps is inside the warm-up "
                                  f"(train.warmup_steps={warm}); raise the token budget or lower the warm-up")
            run_dir = sweep.dir / f"{size}-s{s}"
            task.runs.append(RunPlan(f"{size}-s{s}", run_dir, [*common, f"run_dir={run_dir}", f"train.steps={s}",
                                     "train.decay=cosine", f"train.eval_interval={s}", *final], s, size, "cosine"))
        return task
    trunk, trunk_at = sweep.dir / f"{size}-trunk", 0
    for s in steps:
        decay = max(1, round(spec.schedule.decay_fraction * s))
        start = s - decay
        if start < max(1, warm):
            raise ConfigError(f"sweep size {size}: the {s}-step budget would start its decay at step {start}, "
                              f"before the warm-up ends (train.warmup_steps={warm}); raise the token budget, "
                              f"or lower schedule.decay_fraction or the warm-up")
        if start > trunk_at:
            task.runs.append(RunPlan(f"{size}-trunk-{start}", trunk, [*common, f"run_dir={trunk}", f"train.steps={start}",
                                     "train.decay=constant", "train.eval_interval=0", "checkpoint.interval=0",
                                     "checkpoint.save_final=true", "checkpoint.keep=2"], start, size, "trunk"))
            trunk_at = start
        run_dir = sweep.dir / f"{size}-s{s}"
        task.runs.append(RunPlan(f"{size}-s{s}", run_dir, [*common, f"run_dir={run_dir}", f"train.steps={s}",
                                 "train.decay=wsd", f"train.decay_steps={decay}", f"train.eval_interval={s}", *final],
                                 s, size, "branch", resume_from=(trunk, start), trunk_dir=trunk))
    return task


# --------------------------------------------------------------------------- running


def finished(run: RunPlan) -> bool:
    if run.kind == "trunk":
        return any(s >= run.steps for s, _ in step_dirs(run.run_dir / "checkpoints"))
    return (run.run_dir / ROW_FILE).is_file()


def _launch(sweep: Sweep, run: RunPlan, threads: int | None, log) -> int:
    over = list(run.overrides)
    if run.resume_from and not step_dirs(run.run_dir / "checkpoints"):
        trunk, step = run.resume_from
        over.append(f"checkpoint.resume={trunk / 'checkpoints' / f'step-{step:08d}'}")
    if threads:
        over.append(f"train.threads={threads}")
    cfg = load_config(sweep.base, over)
    # as launchers/torchrun.sh: torchrun forwards stop signals to the ranks and waits for their save
    cmd = [sys.executable, "-m", "dist_pretrain.torchrun", "--standalone", "--nproc-per-node",
           str(cfg.parallel.nproc), "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
           f"--shutdown-timeout={os.environ.get('TORCHRUN_SHUTDOWN_TIMEOUT', '100')}",
           "-m", "dist_pretrain", "train", str(sweep.base), *over]
    run.run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS", "ignore")}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.time()
    with open(run.run_dir / "train.log", "a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        forward = {sig: signal.signal(sig, lambda s, _f: proc.send_signal(s))
                   for sig in (signal.SIGTERM, signal.SIGUSR1)} if _main_thread() else {}
        try:
            code = proc.wait()
        finally:
            for sig, old in forward.items():
                signal.signal(sig, old)
    with open(run.run_dir / "sweep_wall.jsonl", "a") as f:
        f.write(json.dumps({"wall_s": time.time() - t0, "exit": code}) + "\n")
    log(f"{run.name}: exit {code} after {time.time() - t0:.0f}s (log: {run.run_dir / 'train.log'})")
    return code


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def run_task(sweep: Sweep, task: Task, threads: int | None = None, log=print) -> int:
    """Run the task's unfinished runs in order; 0, or the first failing run's exit status
    (99 after a stop for a requeue: the run saved a checkpoint)."""
    for run in task.runs:
        if finished(run):
            log(f"{run.name}: finished, skipped")
            continue
        log(f"{run.name}: training to step {run.steps} ({run.kind}) in {run.run_dir}")
        code = _launch(sweep, run, threads, log)
        if code != 0:
            return code
        if run.kind != "trunk":
            row = result_row(sweep, run)
            (run.run_dir / ROW_FILE).write_text(json.dumps(row))
            log(f"{run.name}: N={row['params']:.3g} D={row['tokens']:.3g} val loss {row['loss']:.4f} "
                f"+- {row['loss_se']:.4f}")
            collect(sweep)
    return 0


def collect(sweep: Sweep) -> Path:
    """Rewrite SWEEP_DIR/results.jsonl from every finished run's row (under a lock: Slurm array
    tasks finish concurrently)."""
    sweep.dir.mkdir(parents=True, exist_ok=True)
    out = sweep.dir / "results.jsonl"
    with open(sweep.dir / ".results.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = [(r.run_dir / ROW_FILE).read_text().strip() for t in sweep.tasks for r in t.runs
                if r.kind != "trunk" and (r.run_dir / ROW_FILE).is_file()]
        tmp = out.with_suffix(".tmp")
        tmp.write_text("".join(row + "\n" for row in rows))
        tmp.replace(out)
    return out


# --------------------------------------------------------------------------- rows


def _history(run_dir: Path, upto: int | None = None) -> dict[int, dict]:
    """Steps of history.jsonl (the last entry wins where a resumed run repeated a step)."""
    path = run_dir / "history.jsonl"
    if not path.is_file():
        return {}
    steps = {}
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            if upto is None or entry["step"] <= upto:
                steps[entry["step"]] = entry
    return steps


def _curve(history: dict[int, dict], tokens_per_step: int, points: int) -> list[list[float]]:
    """Training loss against tokens at ``points`` log-spaced steps, each the mean over the steps
    since the previous point (a smoothed curve; the frontier of ``scaling fit`` reads it)."""
    steps = sorted(s for s, e in history.items() if np.isfinite(e.get("train/loss", np.nan)))
    if not steps:
        return []
    marks = sorted({int(round(x)) for x in np.geomspace(1, steps[-1], points)})
    loss = {s: history[s]["train/loss"] for s in steps}
    curve, prev = [], 0
    for m in marks:
        window = [loss[s] for s in steps if prev < s <= m]
        if window:
            curve.append([m * tokens_per_step, float(np.mean(window))])
        prev = m
    return curve


def result_row(sweep: Sweep, run: RunPlan) -> dict:
    from dist_pretrain.models.architecture import get_architecture
    from dist_pretrain.preflight import check

    cfg = load_config(sweep.base, run.overrides)
    report = check(cfg, cfg.parallel.nproc, verify_checkpoint=False)
    vocab = padded_vocab_size(cfg, report.vocab_size)
    family = get_architecture("gpt")
    tokens_per_step = cfg.train.global_batch_size * family.tokens_per_sample(cfg)
    history = _history(run.trunk_dir, run.resume_from[1]) if run.trunk_dir else {}
    history.update(_history(run.run_dir))
    last = history.get(run.steps, {})
    if "val/loss" not in last:
        raise UserError(f"sweep run {run.name}: no validation loss at its last step {run.steps} in "
                        f"{run.run_dir}/history.jsonl; remove {run.run_dir} to rerun it")
    n_params, total = gpt_param_counts(cfg.model, vocab)
    tokens = run.steps * tokens_per_step
    walls = [json.loads(x)["wall_s"] for x in (run.run_dir / "sweep_wall.jsonl").read_text().splitlines()]
    return {"name": run.name, "size": run.size, "params": n_params, "params_total": total, "tokens": tokens,
            "flops": 6.0 * n_params * tokens, "flops_6nd": 6.0 * n_params * tokens,
            "flops_megatron": run.steps * cfg.train.global_batch_size * family.flops_per_sample(cfg, vocab),
            "loss": last["val/loss"], "loss_se": last.get("val/loss_se"),
            "val_samples": cfg.train.eval_steps * cfg.train.global_batch_size,
            "schedule": "wsd" if run.kind == "branch" else "cosine",
            "steps": run.steps, "lr": cfg.train.lr, "num_layers": cfg.model.num_layers,
            "hidden_size": cfg.model.hidden_size, "num_attention_heads": cfg.model.num_attention_heads,
            "train_s": float(sum(e.get("time/step_s", 0.0) for e in history.values())),
            "wall_s": float(sum(walls)), "run_dir": str(run.run_dir),
            "curve": _curve(history, tokens_per_step, sweep.spec.curve_points)}
