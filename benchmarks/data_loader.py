"""Is the data path ever the bottleneck? Loader throughput alone vs what training consumes.

    python benchmarks/data_loader.py [--steps 200] [--train-steps 20]

1. The training stream (``dist_pretrain.data.stream``) alone, on the demo shards
   (GPT-2 BPE, seq 256), global batch 16 in micro-batches of 4, one DP rank, with 0, 1
   and 2 DataLoader workers: tokens/s over ``--steps`` global steps after a warm-up step.
2. The demo training run (``configs/gpt/demo.yaml``: ~17M-parameter GPT, TP=2, bf16, 2
   processes) for ``--train-steps`` steps: the median tokens/s it consumes and the
   median share of step time spent waiting for data, from its ``history.json``.
Prints a Markdown table with the machine and the commands.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data/demo/gpt2-seq256"
G, M, SEQ = 16, 4, 256


def ensure_demo_data() -> None:
    if (DATA / "manifest.json").exists():
        return
    py = [sys.executable, "-m", "dist_pretrain"]
    subprocess.run(py + ["demo-corpus", "--output", str(ROOT / "data/demo")], check=True)
    subprocess.run(py + ["preprocess", "--input", str(ROOT / "data/demo/c4/en/*.json.gz"), "--tokenizer",
                         "gpt2", "--seq-len", str(SEQ), "--samples-per-shard", "128", "--output",
                         str(DATA), "--quiet"], check=True)


def loader_tokens_per_s(workers: int, steps: int) -> float:
    from dist_pretrain.data.stream import build_train_stream

    stream = build_train_stream([(str(DATA), 1.0)], G, M, 0, 1, seed=1, num_workers=workers)
    for _ in range(G // M):  # warm-up step: worker start, first shards opened
        next(stream)
    t0 = time.perf_counter()
    for _ in range(steps * G // M):
        next(stream)
    seconds = time.perf_counter() - t0
    stream.close()
    return steps * G * SEQ / seconds


def training(train_steps: int) -> tuple[float, float, str]:
    run_dir = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    cmd = ["bash", str(ROOT / "launchers/torchrun.sh"), "configs/gpt/demo.yaml", f"train.steps={train_steps}",
           "train.eval_interval=0", "checkpoint.save_final=false", f"run_dir={run_dir}", f"data.path={DATA}"]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env={**os.environ, "PYTHON": sys.executable})
    history = json.loads((run_dir / "history.json").read_text())[3:]  # after warm-up steps
    return (statistics.median(h["throughput/tokens_per_s"] for h in history),
            statistics.median(h["time/data_wait_share"] for h in history), " ".join(cmd[1:]))


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--train-steps", type=int, default=20)
    args = parser.parse_args()
    ensure_demo_data()
    loader = {w: loader_tokens_per_s(w, args.steps) for w in (0, 1, 2)}
    train_tps, wait_share, train_cmd = training(args.train_steps)
    print(f"machine: {os.cpu_count()} cores, {cpu_model()}; python {platform.python_version()}")
    print(f"loader: `python benchmarks/data_loader.py --steps {args.steps}`; training: `{train_cmd}`\n")
    print("| what | tokens/s | x training consumption |")
    print("|---|---|---|")
    for w, tps in loader.items():
        print(f"| training stream alone, {w} worker(s), G={G} m={M} seq={SEQ} | {tps:,.0f} | {tps / train_tps:.1f}x |")
    print(f"| demo training (TP2, bf16, 2 procs) consumes | {train_tps:,.0f} | 1.0x |")
    print(f"\ndata wait during training: {100 * wait_share:.2f}% of step time (goal <= 1%)")


if __name__ == "__main__":
    main()
