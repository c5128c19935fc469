"""Model build + initialisation per rank: time and peak RSS, sharded init against the old whole draw.

For each model (GPT 355M: 24 x 1024; GPT 1.3B: 24 x 2048; GPT-2 vocab 50257, seq 1024) and
tensor-parallel size (1, 2), one ``torchrun`` job of TP processes builds this rank's model with
``dist_pretrain.models.load.build_model`` (megatron-core build + seed-only init, no engine) and
reports per rank: wall and CPU seconds of the build, RSS before it, peak RSS during it (VmHWM
after resetting it through ``/proc/self/clear_refs``) and the bytes of the rank's own fp32
parameters. The same jobs run twice in one invocation: once with this tree's ``dist_pretrain``
and once with a baseline revision's (default: the commit before sharded init, exported with
``git archive``), so "before" is measured, not remembered. One intra-op thread per rank
(the ranks of a TP2 job share the machine's cores); CPU seconds are what a rank itself spent.

    python -m benchmarks.init_scaling                  # both models, TP1 and TP2, new and old
    python -m benchmarks.init_scaling --models 355M --baseline none
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, free_port, machine

MODELS = {"355M": (24, 1024, 16), "1.3B": (24, 2048, 16)}
BASELINE = "cea2479"  # main before sharded initialisation (whole draw after megatron's own init)


def overrides(model: str, tp: int) -> list[str]:
    layers, hidden, heads = MODELS[model]
    return [f"model.num_layers={layers}", f"model.hidden_size={hidden}", f"model.num_attention_heads={heads}",
            "model.seq_length=1024", "model.vocab_size=50257", "model.tie_embeddings=true",
            f"parallel.tensor={tp}", f"parallel.nproc={tp}", "data.synthetic=true"]


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(model: str) -> None:
    """One rank: build and initialise the model, print one JSON line."""
    import torch
    from megatron.core import parallel_state

    from dist_pretrain import cpu_compat
    from dist_pretrain.config import load_config, padded_vocab_size
    from dist_pretrain.models.load import build_model

    torch.set_num_threads(1)
    cpu_compat.enable()
    torch.distributed.init_process_group("gloo")
    tp = torch.distributed.get_world_size()
    parallel_state.initialize_model_parallel(tp, 1)
    cfg = load_config(None, overrides(model, tp))
    vocab = padded_vocab_size(cfg, cfg.model.vocab_size)
    torch.distributed.barrier()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (the peak RSS) to the current RSS
    rss_before = _status_kib("VmRSS") * 1024
    wall, cpu = time.perf_counter(), time.process_time()
    chunks = build_model(cfg, vocab)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = _status_kib("VmHWM") * 1024
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for c in chunks for p in c.parameters()}
    print("RESULT " + json.dumps({"rank": torch.distributed.get_rank(), "wall_s": wall, "cpu_s": cpu,
                                  "rss_before": rss_before, "peak_rss": peak, "param_bytes": sum(storages.values())}),
          flush=True)
    torch.distributed.destroy_process_group()


def run_job(model: str, tp: int, pythonpath: str) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={tp}", "--master-addr=127.0.0.1",
           f"--master-port={free_port()}", "-m", "benchmarks.init_scaling", "--worker", model]
    proc = subprocess.run(cmd, cwd=pythonpath, env=env, capture_output=True, text=True, timeout=1800, check=False)
    rows = [json.loads(line.split("RESULT ", 1)[1]) for line in proc.stdout.splitlines() if "RESULT " in line]
    if proc.returncode or len(rows) != tp:
        raise RuntimeError(f"{model} TP{tp} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return sorted(rows, key=lambda r: r["rank"])


def memory_needed(model: str, tp: int, whole_draw: bool) -> float:
    """Bytes a job may peak at: the ranks' fp32 parameters x the peak ratio measured for the
    code (3.0 whole draw, 1.6 sharded at 355M) + 0.6 GiB of imports per rank."""
    layers, hidden, _ = MODELS[model]
    params = 12 * layers * hidden**2 + (50304 + 1024) * hidden
    return tp * (4 * params / tp * (3.0 if whole_draw else 1.6) + 0.6 * 2**30)


def available_memory() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return float("inf")


def export_baseline(rev: str) -> str:
    """``dist_pretrain`` of ``rev`` in a temporary directory (next to this tree's benchmarks)."""
    out = Path(tempfile.mkdtemp(prefix="init-baseline-"))
    archive = subprocess.run(["git", "archive", rev, "dist_pretrain"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    (out / "benchmarks").symlink_to(ROOT / "benchmarks")
    return str(out)


def table(results: dict, load: list[float]) -> str:
    gib = 2**30
    lines = [("| code | model | TP | wall s / rank | CPU s / rank | CPU vs TP1 | rank's fp32 params | "
              "peak RSS during build | peak / params | (peak - RSS before) / params |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (code, model, tp), rows in results.items():
        worst = max(rows, key=lambda r: r["peak_rss"])
        cpu = max(r["cpu_s"] for r in rows)
        tp1 = results.get((code, model, 1))
        vs = f"{cpu / max(r['cpu_s'] for r in tp1):.2f}x" if tp1 and tp > 1 else "-"
        lines.append(
            f"| {code} | {model} | {tp} | {max(r['wall_s'] for r in rows):.1f} | {cpu:.1f} | {vs} | "
            f"{worst['param_bytes'] / gib:.2f} GiB | {worst['peak_rss'] / gib:.2f} GiB | "
            f"{worst['peak_rss'] / worst['param_bytes']:.2f} | "
            f"{(worst['peak_rss'] - worst['rss_before']) / worst['param_bytes']:.2f} |")
    lines.append("")
    lines.append(f"Load average (1 min) before / after: {load[0]:.1f} / {load[1]:.1f} on {os.cpu_count()} cores "
                 "(the machine is shared; compare rows of one run).")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--tp", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--baseline", default=BASELINE, help="git revision measured as 'before' ('none' to skip)")
    ap.add_argument("--json", help="write the raw rows here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker)
    codes = {"sharded (this tree)": str(ROOT)}
    if args.baseline != "none":
        codes[f"whole draw ({args.baseline})"] = export_baseline(args.baseline)
    load = [os.getloadavg()[0]]
    results, skipped = {}, []
    for model in args.models:
        for code, path in codes.items():
            for tp in args.tp:
                need, free = memory_needed(model, tp, path != str(ROOT)), available_memory()
                if need > free:  # the machine is shared: never push other jobs into the OOM killer
                    skipped.append(f"{code} {model} TP{tp}: needs ~{need / 2**30:.1f} GiB, "
                                   f"{free / 2**30:.1f} GiB available")
                    continue
                results[(code, model, tp)] = run_job(model, tp, path)
                print(f"done: {code} {model} TP{tp}", file=sys.stderr, flush=True)
    load.append(os.getloadavg()[0])
    print(f"Machine: {json.dumps(machine())}")
    print(f"Command: python -m benchmarks.init_scaling {' '.join(sys.argv[1:])}\n")
    print(table(results, load))
    for line in skipped:
        print(f"skipped (memory): {line}")
    if args.json:
        Path(args.json).write_text(json.dumps([{"code": c, "model": m, "tp": t, "ranks": r}
                                               for (c, m, t), r in results.items()], indent=1))


if __name__ == "__main__":
    main()
