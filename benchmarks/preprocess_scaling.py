"""Strong scaling of ``dist-pretrain preprocess`` over MPI ranks on one machine.

    python benchmarks/preprocess_scaling.py [--files 8] [--copies 3] [--ranks 1 2] [--seq-len 2048]
        [--format lm|docs] [--single-thread-baseline]

Builds a C4-layout corpus of ``--files`` equal train files (every file holds the demo
corpus's real Wikipedia articles ``--copies`` times, rotated and with distinct URLs, so
the files are alike in size and content), then runs the same preprocessing command under
``mpiexec -n R`` for each R into a fresh output directory and prints a Markdown table.

Two timings per run: *wall* = the whole ``mpiexec`` command (interpreter start-up,
imports, tokenizer load, MPI init included), and *in-process* = rank 0's clock from the
moment every rank has its work list to the manifest being written (``seconds`` in
``DIR/preprocess_stats.json``); tokens/s and the speedup use the in-process time.
Under MPI every rank gets ``RAYON_NUM_THREADS = cores / ranks on the node`` for the
tokenizer's thread pool unless you set it; a plain (non-MPI) run uses all cores.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dist_pretrain.data.demo_corpus import build_demo_corpus

MPIEXEC = Path(sys.executable).parent / "mpiexec"


def build_corpus(root: Path, files: int, copies: int) -> Path:
    """``files`` train files + 1 validation file, each train file ~``copies`` x the demo text."""
    demo = Path(build_demo_corpus(str(root / "demo")))
    docs = [json.loads(line) for f in sorted(demo.glob("c4-train.*")) for line in gzip.open(f, "rt")]
    out = root / "c4" / "en"
    out.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        name = out / f"c4-train.{i:05d}-of-{files:05d}.json.gz"
        if name.exists():
            continue
        shift = i * len(docs) // files
        rotated = docs[shift:] + docs[:shift]
        with gzip.open(name, "wt", encoding="utf-8", compresslevel=6) as f:
            for c in range(copies):
                for d in rotated:
                    f.write(json.dumps({**d, "url": f"{d['url']}?copy={i}.{c}"}) + "\n")
    shutil.copy(next(demo.glob("c4-validation.*")), out)
    return out


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run(ranks: int, corpus: Path, out: Path, args, env_extra: dict) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(MPIEXEC), "-n", str(ranks), sys.executable, "-m", "dist_pretrain", "preprocess",
           "--input", str(corpus / "*.json.gz"), "--tokenizer", args.tokenizer, "--seq-len", str(args.seq_len),
           "--format", args.format, "--output", str(out), "--quiet"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_"))}
    env.update(env_extra)
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, timeout=3600)
    wall = time.perf_counter() - t0
    stats = json.loads((out / "preprocess_stats.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    tokens = sum(stats["processed"][s]["tokens"] for s in ("train", "valid"))
    return {"ranks": ranks, "threads": stats["threads_per_rank"], "files": stats["files"],
            "tokens": tokens, "total_tokens": manifest["total_tokens"], "wall": wall,
            "seconds": stats["seconds"], "busy": stats["rank_busy_seconds"],
            "shards": sorted((s["path"], s["sha256"]) for sp in manifest["splits"].values() for s in sp["shards"]),
            "cmd": " ".join(cmd[:3]) + " python -m dist_pretrain preprocess " + " ".join(cmd[7:])}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default=None, help="corpus + outputs (default: a temp dir, removed)")
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--copies", type=int, default=3, help="demo train text per file (x ~0.56M GPT-2 tokens)")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--tokenizer", default="gpt2")
    p.add_argument("--format", choices=("lm", "docs"), default="lm")
    p.add_argument("--repeat", type=int, default=1, help="runs per rank count (best is kept)")
    p.add_argument("--single-thread-baseline", action="store_true",
                   help="also time 1 rank with RAYON_NUM_THREADS=1 (tokenizer on one core)")
    args = p.parse_args(argv)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="pp_scaling_"))
    try:
        t0 = time.perf_counter()
        corpus = build_corpus(work, args.files, args.copies)
        mb = sum(f.stat().st_size for f in corpus.glob("*.json.gz")) / 1e6
        print(f"corpus: {args.files} train files + 1 valid, {mb:.1f} MB gzip in {corpus} "
              f"({time.perf_counter() - t0:.1f}s to build)", file=sys.stderr)
        configs = [(r, {}) for r in args.ranks]
        if args.single_thread_baseline:
            configs.insert(0, (1, {"RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}))
        rows = []
        for ranks, env in configs:
            best = min((run(ranks, corpus, work / f"out{ranks}", args, env) for _ in range(args.repeat)),
                       key=lambda r: r["seconds"])
            rows.append(best)
            print(f"ranks={ranks} threads={best['threads']}: {best['seconds']:.2f}s in-process, "
                  f"{best['wall']:.2f}s wall, busy per rank {best['busy']}", file=sys.stderr)
        single = rows[0] if args.single_thread_baseline else None
        base = next(r for r in rows if r is not single and r["ranks"] == 1)
        same = all(r["shards"] == rows[0]["shards"] and r["total_tokens"] == rows[0]["total_tokens"] for r in rows)
        print(f"\nmachine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {cpu_model()}; "
              f"Python {platform.python_version()}; --format {args.format}, --seq-len {args.seq_len}")
        print(f"command: `{rows[-1]['cmd']}`\n")
        head = ("| ranks | threads/rank | files | tokens | seconds (in-process) | seconds (wall) | tokens/s "
                "| speedup vs 1 rank | speedup (wall) |")
        print(head + (" speedup vs 1 rank x 1 thread |" if single else ""))
        print("|---:" * (head.count("|") - 1 + bool(single)) + "|")
        for r in rows:
            line = (f"| {r['ranks']} | {r['threads']} | {r['files']} | {r['tokens']:,} | {r['seconds']:.2f} "
                    f"| {r['wall']:.2f} | {r['tokens'] / r['seconds']:,.0f} | {base['seconds'] / r['seconds']:.2f}x "
                    f"| {base['wall'] / r['wall']:.2f}x |")
            print(line + (f" {single['seconds'] / r['seconds']:.2f}x |" if single else ""))
        print(f"\nidentical shards (sha256) and total_tokens across runs: {same}")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
