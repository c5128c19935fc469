"""GPT ~1.3B on one H100 / H200: tokens/s, TFLOP/s and MFU of our training step.

    bash benchmarks/gpu.sh [--dry-run] [--micro-batch 4] [--recompute auto|none|full] [--compile both|on|off]

24 layers, hidden 2048, 16 heads, seq 2048, GPT-2 vocab padded to 50304 (~1.3B parameters),
bf16 (DeepSpeed bf16, ZeRO-1 at DP=1, fp32 master weights), SDPA restricted to the flash
kernel, through ``Trainer.train_step`` like every "ours" number. Activation recomputation
is chosen by ``--recompute auto`` from the memory estimate (``estimate_gib``) against the
GPU's memory. ``--compile`` runs the step with each transformer layer under ``torch.compile``
too, where it works (a failure is reported, not fatal). Each variant runs in its own process,
so one's memory (or a failed compile) cannot affect the other. MFU is against 989 TFLOP/s (H100 SXM dense bf16; the H200 has the
same) and against a measured 8192³ bf16 matmul.

``--dry-run`` builds the config and prints the plan and the FLOPs without a GPU (tests use it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT, GPTSize, gpt_overrides
from benchmarks.mfu import gpt_params, megatron_flops_per_token
from dist_pretrain.memory import flash_no_dropout_layer_bytes

H100_BF16_DENSE_TFLOPS = 989.0


def size_from(args) -> GPTSize:
    return GPTSize(layers=args.layers, hidden=args.hidden, heads=args.heads, seq=args.seq, vocab=50304,
                   micro_batch=args.micro_batch)


def estimate_gib(size: GPTSize, recompute: str) -> float:
    """Memory of a step: model states at the ZeRO-1 step (DP=1; bf16 weights and gradients, fp32
    gradient copy, master and moments: 20 bytes/param, as ``benchmarks.memory`` measures),
    activations (16sbh bf16 values per layer, or under full recompute each layer's input plus
    one layer), the logits and their fp32 loss tensors (~12 bytes per s·b·V) and DeepSpeed's
    5e8-element bf16 reduction bucket."""
    psi = gpt_params(size.layers, size.hidden, 4 * size.hidden, size.vocab, size.seq)
    s, b, h, a = size.seq, size.micro_batch, size.hidden, size.heads
    layer = flash_no_dropout_layer_bytes(s, b, h, a, 2)
    acts = size.layers * layer if recompute == "none" else size.layers * s * b * h * 2 + layer
    return (20 * psi + acts + 12 * s * b * size.vocab + 2 * 5e8) / 2**30


def plan(args, gpu_gib: float | None) -> dict:
    size = size_from(args)
    recompute = args.recompute
    if recompute == "auto":
        recompute = "none" if gpu_gib is None or estimate_gib(size, "none") < 0.8 * gpu_gib else "full"
    compile_modes = {"both": [False, True], "on": [True], "off": [False]}[args.compile]
    overrides = gpt_overrides(size, "bf16", zero_stage=args.zero_stage, steps=args.warmup + args.steps) + [
        f"model.recompute={recompute}"]
    return {"size": size, "recompute": recompute, "compile": compile_modes, "overrides": overrides,
            "params": gpt_params(size.layers, size.hidden, 4 * size.hidden, size.vocab, size.seq),
            "flops_per_token": megatron_flops_per_token(size),
            "estimate_gib": {r: estimate_gib(size, r) for r in ("none", "full")}}


def matmul_tflops(n: int = 8192, repeats: int = 10) -> float:
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * n**3 / statistics.median(times) / 1e12


def compile_layers(trainer) -> int:
    """Each transformer layer's forward under torch.compile (parameter names unchanged)."""
    import torch

    # the layers share one code object: let every layer have its own compiled entry if it needs one
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    count = 0
    for chunk in trainer.engine.model_chunks:
        model = chunk
        while not hasattr(model, "decoder"):
            model = model.module
        for layer in model.decoder.layers:
            layer.forward = torch.compile(layer.forward)
            count += 1
    return count


def measure(p: dict, compiled: bool, warmup: int, steps: int) -> dict:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from benchmarks.common import build_trainer

    trainer = build_trainer(p["overrides"])  # its own process group: NCCL + gloo for CPU agreements
    if compiled:
        compile_layers(trainer)
    torch.cuda.reset_peak_memory_stats()
    times = []
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):  # fail loudly rather than fall back
        for step in range(1, warmup + steps + 1):
            values = trainer.train_step(step)  # the loss and grad norm are read: the step is synchronised
            if step > warmup:
                times.append(values["time/step_s"])
    step_s = statistics.median(times)
    tokens = p["size"].tokens_per_micro_batch
    result = {"compiled": compiled, "step_s": step_s, "tokens_per_s": tokens / step_s,
              "tflops": tokens * p["flops_per_token"] / step_s / 1e12,
              "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "loss": values["train/loss"]}
    del trainer
    torch.cuda.empty_cache()
    return result


RESULT = "GPU-BENCH-RESULT "


def run_variant(argv: list[str], compiled: bool, timeout: float = 280) -> dict:
    """``measure`` in a child process (``--variant on|off``): its result, or its error."""
    import subprocess

    cmd = [sys.executable, "-m", "benchmarks.gpu", *argv, "--variant", "on" if compiled else "off"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"compiled": compiled, "error": f"ran over {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"compiled": compiled, "error": f"exit {proc.returncode}: {' | '.join(tail)}"}


def report(p: dict, rows: list[dict], matmul: float, device: str) -> str:
    s = p["size"]
    lines = [f"# GPU benchmark, {datetime.date.today().isoformat()}", "",
             f"- device: {device}; measured 8192³ bf16 matmul: {matmul:.0f} TFLOP/s",
             (f"- GPT {p['params'] / 1e9:.2f}B: {s.layers} layers, hidden {s.hidden}, {s.heads} heads, seq {s.seq}, "
             f"micro-batch {s.micro_batch}, bf16 (DeepSpeed ZeRO-1, fp32 master), flash SDPA, "
             f"recompute {p['recompute']}; Megatron FLOPs/token {p['flops_per_token'] / 1e9:.2f} GFLOP"),
             "", "| torch.compile | step (s) | tokens/s | TFLOP/s | MFU vs 989 | MFU vs measured matmul | peak GiB |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {'on' if r['compiled'] else 'off'} | failed: {r['error'][:120]} | | | | | |")
            continue
        lines.append(f"| {'on' if r['compiled'] else 'off'} | {r['step_s']:.3f} | {r['tokens_per_s']:,.0f} | "
                     f"{r['tflops']:.0f} | {100 * r['tflops'] / H100_BF16_DENSE_TFLOPS:.1f}% | "
                     f"{100 * r['tflops'] / matmul:.1f}% | {r['peak_gib']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print the plan; no GPU needed")
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--recompute", choices=["auto", "none", "full"], default="auto")
    parser.add_argument("--compile", choices=["both", "on", "off"], default="both")
    parser.add_argument("--zero-stage", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--variant", choices=["on", "off"], help=argparse.SUPPRESS)  # child process
    args = parser.parse_args(argv)
    if args.dry_run:
        from dist_pretrain.config import load_config, validate

        p = plan(args, gpu_gib=80.0)
        validate(load_config(None, p["overrides"]), world_size=1, vocab_size=p["size"].vocab)
        print(json.dumps({**p, "size": vars(p["size"])}, indent=1, default=str))
        return 0
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: run on a GPU machine, or pass --dry-run", file=sys.stderr)
        return 2
    props = torch.cuda.get_device_properties(0)
    p = plan(args, gpu_gib=props.total_memory / 2**30)
    if args.variant:
        try:
            result = measure(p, args.variant == "on", args.warmup, args.steps)
        except Exception as err:  # noqa: BLE001 - torch.compile of megatron layers may fail: reported
            result = {"compiled": args.variant == "on", "error": f"{type(err).__name__}: {err}"[:500]}
        print(RESULT + json.dumps(result), flush=True)
        return 0
    matmul = matmul_tflops()
    print(f"{props.name}: 8192^3 bf16 matmul {matmul:.0f} TFLOP/s; plan {p['recompute']=} "
          f"estimate {p['estimate_gib']}", flush=True)
    rows = []  # each variant in a child process: this one only timed the matmul
    for compiled in p["compile"]:
        t0 = time.perf_counter()
        rows.append(run_variant(sys.argv[1:] if argv is None else argv, compiled))
        print(rows[-1], f"({time.perf_counter() - t0:.0f} s)", flush=True)
    text = report(p, rows, matmul, props.name)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{datetime.date.today().isoformat()}-gpu"
    (out / f"{stem}.md").write_text(text + "\n")
    (out / f"{stem}.json").write_text(json.dumps({"device": props.name, "matmul_tflops": matmul, "rows": rows,
                                                  "table": text, "plan": {**p, "size": vars(p["size"])}},
                                                 indent=1, default=str))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
