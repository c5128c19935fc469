"""Does pretraining help? The same model fine-tuned from a pretrained checkpoint and from
random initialisation, same config and steps, over several seeds; prints a Markdown table.

    python -m benchmarks.finetune_compare configs/bert/sentiment.yaml --seeds 1 2 3
    python -m benchmarks.finetune_compare configs/bert/sentiment.yaml --seeds 1234 --report-only

Each run is ``launchers/torchrun.sh CONFIG seed=S run_dir=ROOT/{pretrained,scratch}-S``,
the scratch runs with ``checkpoint.init_from=null``; ``seed`` seeds the new head (and,
from scratch, every weight), the dropout and the epoch order. A run already finished in
its run_dir (history.jsonl reaching train.steps) is read, not repeated, if it was trained with
the config this call would use; a finished run of another config (other overrides) is an
error before anything runs, naming the keys that differ. Reported per run:
the best validation value of the config's ``task.best_metric`` and the test metrics of that
checkpoint; then mean ± std (sample std, n - 1) per arm, and the pretraining budget
(steps x global batch x sequence length of the checkpoint fine-tuning started from).
With ``train.eval_interval=0`` a run validates never: its test metrics are those of the final
weights, and the table says so (e.g. ``launchers/demo.sh t5-text2text train.eval_interval=0``).
A metric that only some runs logged (runs of an older version) is averaged over those and
marked ``(n of N)``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _config(config: str, overrides: list[str]):
    sys.path.insert(0, str(ROOT))
    from dist_pretrain.config import load_config

    return load_config(config, overrides)


def command(config: str, run_dir: Path, overrides: list[str]) -> list[str]:
    """The training command of one run. Its run_dir comes last: the overrides may name a
    run_dir too (the root of all runs, as demo.sh does), and the last value wins."""
    return ["bash", str(ROOT / "launchers/torchrun.sh"), config, *overrides, f"run_dir={run_dir}"]


def run(config: str, run_dir: Path, overrides: list[str]) -> float:
    """Train unless run_dir already holds the finished run; returns wall seconds (0 if read)."""
    if _finished(run_dir):
        return 0.0
    t0 = time.perf_counter()
    subprocess.run(command(config, run_dir, overrides), check=True, cwd=ROOT)
    return time.perf_counter() - t0


def _history(run_dir: Path) -> list[dict]:
    path = run_dir / "history.jsonl"
    if not path.is_file():
        return []
    rows = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        rows[row["step"]] = {**rows.get(row["step"], {}), **row}  # a resumed run repeats no step
    return [rows[k] for k in sorted(rows)]


def _finished(run_dir: Path) -> bool:
    meta = run_dir / "checkpoints" / "latest"
    history = _history(run_dir)
    if not history or not meta.is_file():
        return False
    cfg = json.loads((run_dir / "checkpoints" / meta.read_text().strip() / "meta.json").read_text())["config"]
    return history[-1]["step"] == cfg["train"]["steps"]


def result(run_dir: Path, metric: str) -> dict[str, float]:
    """The best validation value (absent when the run validated never: train.eval_interval=0,
    then the test metrics are those of the final weights) and the test metrics."""
    last = _history(run_dir)[-1]
    out = {}
    if f"val/best_{metric}" in last:
        out[f"val/best_{metric}"] = last[f"val/best_{metric}"]
    out.update({k: v for k, v in last.items() if k.startswith("test/")})
    return out


def _mean_std(values: list[float], runs: int) -> str:
    """mean ± std of the runs that logged the metric; ``(n of N)`` when some did not (runs of
    an older version that lacked it); ``-`` when none did."""
    if not values:
        return "-"
    text = f"{values[0]:.4f}" if len(values) == 1 else \
        f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"
    return text if len(values) == runs else f"{text} ({len(values)} of {runs})"


def pretraining_budget(init_from: str | None) -> str:
    if not init_from:
        return "none"
    sys.path.insert(0, str(ROOT))
    from dist_pretrain.errors import UserError
    from dist_pretrain.models.load import checkpoint_meta, resolve_checkpoint

    try:
        directory = resolve_checkpoint(init_from)
    except UserError as err:  # e.g. --report-only after the pretraining run was removed
        return f"{init_from}: not readable ({err})"
    meta = checkpoint_meta(directory)
    cfg = meta["config"]
    tokens = meta["step"] * cfg["train"]["global_batch_size"] * cfg["model"]["seq_length"]
    at = ""
    history = _history(directory.parent.parent)
    rows = [r for r in history if r["step"] == meta["step"]]
    if rows:  # how far pretraining got: its own training metrics at that step
        at = "; at that step " + ", ".join(f"{k.removeprefix('train/')} {v:.3f}" for k, v in rows[0].items()
                                           if k in ("train/loss", "train/mlm_accuracy", "train/span_accuracy"))
    return (f"{directory}: {meta['step']} steps x {cfg['train']['global_batch_size']} sequences x "
            f"{cfg['model']['seq_length']} tokens = {tokens:,} tokens{at}")


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def config_differences(run_dir: Path, wanted) -> list[str]:
    """``key: X there, Y now`` for each setting of the finished run in ``run_dir`` that differs
    from ``wanted`` (the Config this call would train it with). Values the trainer fills in at
    start (``train.steps`` from ``train.epochs``, label names from the data: None in ``wanted``)
    are not compared."""
    meta = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip() / "meta.json"
    there = _flat(json.loads(meta.read_text())["config"])
    now = _flat(wanted.model_dump(mode="json"))
    skip = {"train.steps"} if wanted.train.epochs else set()
    return [f"{key}: {there.get(key)!r} there, {value!r} now" for key, value in now.items()
            if value is not None and key not in skip and there.get(key) != value]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key.sub=value for every run")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--root", default=None, help="run directories (default: the config's run_dir)")
    p.add_argument("--report-only", action="store_true", help="read finished runs, train none")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from dist_pretrain.errors import UserError, report_user_error

    try:  # a bad config or override: one error line, before any run starts
        cfg = _config(args.config, args.overrides)
    except UserError as err:
        return report_user_error(err)
    metric = cfg.task.best_metric or {"classification": "accuracy", "text_to_text": "rouge_l"}[cfg.task.name]
    root = Path(args.root or cfg.run_dir)
    arms = {"pretrained": [], "scratch": ["checkpoint.init_from=null"]}
    for seed in args.seeds:  # a finished run of another config would be reported as this one's
        for arm, extra in arms.items():
            run_dir = root / f"{arm}-{seed}"
            if _finished(run_dir):
                wanted = _config(args.config, [*args.overrides, f"seed={seed}", *extra, f"run_dir={run_dir}"])
                differ = config_differences(run_dir, wanted)
                if differ:
                    print(f"error: {run_dir} holds a finished run of another config ({'; '.join(differ)}); "
                          f"give another run_dir=DIR (or --root DIR), or remove {run_dir}", file=sys.stderr)
                    return 2
    seconds = {}
    for seed in args.seeds:
        for arm, extra in arms.items():
            run_dir = root / f"{arm}-{seed}"
            if not args.report_only:
                seconds[(arm, seed)] = run(args.config, run_dir, [*args.overrides, f"seed={seed}", *extra])
    results = {arm: [result(root / f"{arm}-{s}", metric) for s in args.seeds] for arm in arms}
    keys = list(dict.fromkeys(k for arm in arms for r in results[arm] for k in r))  # every run's, in order
    budget = (f"{cfg.train.epochs} epoch{'s' * (cfg.train.epochs != 1)}" if cfg.train.epochs
              else f"{cfg.train.steps} steps")
    validation = (f"validation every {cfg.train.eval_interval} steps and at each epoch end, test at the best"
                  if cfg.train.eval_interval else "no validation (train.eval_interval=0): test of the final weights")
    lines = [f"## Fine-tuning from the pretrained checkpoint vs from scratch ({cfg.task.name})", "",
             f"config `{args.config}` {' '.join(args.overrides)}; {budget}, {validation}; "
             f"seeds {', '.join(map(str, args.seeds))}; machine {platform.node()} ({os.cpu_count()} CPUs)",
             f"pretraining: {pretraining_budget(cfg.checkpoint.init_from)}", "",
             "| init | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for arm in arms:
        lines.append(f"| {arm} | " + " | ".join(_mean_std([r[k] for r in results[arm] if k in r], len(results[arm])) for k in keys) + " |")
    lines += ["", "per seed:", ""]
    for arm in arms:
        for seed, r in zip(args.seeds, results[arm]):
            took = seconds.get((arm, seed))
            lines.append(f"- {arm} seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in r.items())
                         + (f" ({took:.0f} s)" if took else ""))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
