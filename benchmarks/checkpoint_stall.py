"""How long does a checkpoint stop training? Synchronous vs background (async) saves.

    python benchmarks/checkpoint_stall.py [--layers 8 --hidden 768 --steps 13 --interval 4]

Two identical runs of a GPT (GPT-2 vocab, synthetic tokens, fp32, 2 processes,
DP=2 ZeRO-2), one with ``checkpoint.async_save=false`` and one with ``=true``, each saving
every ``--interval`` steps (the last step's save always blocks). For every periodic save it
adds up the stalls the trainer reports: the save call itself (gathering the state, and for
a synchronous save all the writing) and, for an async save, the step boundary where it is
finalized. It also compares step times of steps that ran while a background write was in
flight with steps that did not. A checkpoint holds fp32 master
weights and both AdamW moments: 12 bytes per parameter. Prints a Markdown table with the
machine and the command.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STALL = re.compile(r"checkpoint of step (\d+): training stalled ([0-9.]+)s")
FINALIZE = re.compile(r"background checkpoint finalized after step (\d+): training stalled ([0-9.]+)s")


def run(run_dir: Path, args, async_save: bool) -> tuple[dict[int, float], dict[int, float], int]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "dist_pretrain", "train", str(ROOT / "configs/gpt/tiny.yaml"), f"run_dir={run_dir}",
           "parallel.nproc=2", "parallel.zero_stage=2", f"model.num_layers={args.layers}",
           f"model.hidden_size={args.hidden}", f"model.num_attention_heads={args.hidden // 64}",
           "model.seq_length=128", "model.vocab_size=50257", "train.micro_batch_size=2",
           "train.global_batch_size=4", f"train.steps={args.steps}", "monitor.tensorboard=false",
           "monitor.peak_tflops=1", f"checkpoint.interval={args.interval}", "checkpoint.keep=1",
           f"checkpoint.async_save={str(async_save).lower()}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    stalls = {int(s): float(t) for s, t in STALL.findall(out)}
    for s, t in FINALIZE.findall(out):  # the save in flight is finalized at a later boundary
        saved = max(k for k in stalls if k < int(s))
        stalls[saved] += float(t)
    steps = {}
    for line in (run_dir / "history.jsonl").read_text().splitlines():
        row = json.loads(line)
        steps[row["step"]] = row["time/step_s"]
    size = sum(p.stat().st_size for p in (run_dir / "checkpoints").rglob("*") if p.is_file())
    return stalls, steps, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--steps", type=int, default=13)
    parser.add_argument("--interval", type=int, default=4)
    args = parser.parse_args()
    params = 12 * args.layers * args.hidden ** 2 + 50304 * args.hidden + 128 * args.hidden
    tmp = Path(tempfile.mkdtemp(prefix="ckpt-stall-"))
    try:
        results = {mode: run(tmp / mode, args, mode == "async") for mode in ("sync", "async")}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    periodic = [s for s in range(args.interval, args.steps, args.interval)]
    # steps right after an async save run while its files are written
    overlapped = [s + 1 for s in periodic]
    quiet = [s for s in range(3, args.steps) if s not in periodic and s not in overlapped]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {__import__('torch').__version__}")
    print(f"command: python benchmarks/checkpoint_stall.py --layers {args.layers} --hidden {args.hidden} "
          f"--steps {args.steps} --interval {args.interval}")
    print(f"model: ~{params / 1e6:.0f}M parameters, checkpoint {results['sync'][2] / 2**20:.0f} MiB on disk\n")
    print("| save mode | median stall per periodic save (s) | median step (s), no save in flight "
          "| median step (s), right after a save |")
    print("|---|---|---|---|")
    for mode, (stalls, steps, _) in results.items():
        stall = statistics.median(stalls[s] for s in periodic)
        print(f"| {mode} | {stall:.2f} | {statistics.median(steps[s] for s in quiet):.2f} | "
              f"{statistics.median(steps[s] for s in overlapped):.2f} |")
    sync = statistics.median(results["sync"][0][s] for s in periodic)
    asy = statistics.median(results["async"][0][s] for s in periodic)
    print(f"\nasync saves stall training {sync / max(asy, 1e-9):.1f}x less than synchronous saves "
          f"({sync:.2f}s -> {asy:.2f}s per save)")


if __name__ == "__main__":
    main()
