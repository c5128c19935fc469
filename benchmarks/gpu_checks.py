"""Every GPU check in one command, for one H100 / H200 within ~8 minutes (``bash benchmarks/gpu.sh --all``).

1. ``equivalence``: the tiny GPT (fp32, and bf16 at ZeRO-1) at TP1/PP1 with ZeRO 0, 1, 2, 3 in one
   torchrun process on the GPU (NCCL) against the same runs on the CPU (gloo, ``CUDA_VISIBLE_DEVICES=``),
   and the ZeRO stages against ZeRO-0 on the GPU; per-step loss and grad norm.
2. ``resume``: stop after step 3 with a checkpoint, resume in a fresh process, compare steps 4-6 with
   an uninterrupted run (bit-exact expected; a repeated uninterrupted run measures kernel noise).
3. ``nan``: ``DIST_PRETRAIN_FAULT_NAN_STEPS=3``: step 3 is skipped, counted, and training goes on.
4. ``demo``: ``configs/gpt/demo.yaml`` on the demo shards, one GPU, ``--demo-steps`` steps.
5. ``gpt13b``: ``benchmarks/gpu.py`` (GPT ~1.3B bf16 tokens/s and MFU vs 989 TFLOP/s).
6. ``generation``: not implemented in dist_pretrain yet (reported as such).

Each check has its own time limit and is reported pass / fail with its numbers; one failing does not
stop the others. ``--device cpu`` runs the same checks on the CPU (gloo; the 1.3B run only plans), and
``--dry-run`` prints the plan. The Markdown report, the JSON and the log go to
``benchmarks/results/<date>-gpu.md`` (``-gpu.json``, ``-gpu.log``) and to ``$OUT`` when it is set.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dist_pretrain.tools.equivalence import launch, rel_dev

ROOT = Path(__file__).resolve().parents[1]
# the known GPU-only bugs first, the headline numbers before the demo: a run out of budget loses the least
CHECKS = ["nan", "resume", "equivalence", "gpt13b", "demo", "generation"]
TIMEOUTS = {"equivalence": 150, "resume": 150, "nan": 90, "demo": 150, "gpt13b": 300, "generation": 1}
CPU_ENV = {"CUDA_VISIBLE_DEVICES": ""}
TINY = ["train.precision=fp32", "train.log_interval=1000"]
EQUIV_CASES = {f"ZeRO-{z}": [f"parallel.zero_stage={z}"] for z in range(4)}
EQUIV_CASES["ZeRO-1 bf16"] = ["parallel.zero_stage=1", "train.precision=bf16"]
RTOL = {"gpu_vs_cpu_fp32": 1e-4, "gpu_vs_cpu_bf16": 5e-2, "stages_fp32": 1e-5}
RESUME_CASES = {"ZeRO-0 fp32": ["parallel.zero_stage=0"],
                "ZeRO-0 bf16": ["parallel.zero_stage=0", "train.precision=bf16"],
                "ZeRO-1 bf16": ["parallel.zero_stage=1", "train.precision=bf16"],
                "ZeRO-2 fp32": ["parallel.zero_stage=2"],
                "ZeRO-3 bf16": ["parallel.zero_stage=3", "train.precision=bf16"]}
NAN_CASES = {"ZeRO-0 fp32": ["parallel.zero_stage=0"],
             "ZeRO-1 bf16": ["parallel.zero_stage=1", "train.precision=bf16"],
             "ZeRO-3 fp32": ["parallel.zero_stage=3"]}


def device_env(args) -> dict:
    return CPU_ENV if args.device == "cpu" else {}


def expect_device(args, results: dict) -> list[str]:
    """Problems if a run did not train where it should have (e.g. silently on the CPU)."""
    want = "cpu" if args.device == "cpu" else "cuda"
    return [f"{name} ran on {r['device']}, not {want}" for name, r in results.items()
            if not r["device"].startswith(want)]


def check_equivalence(args, work: Path, timeout: float) -> dict:
    cases = [{"name": n, "overrides": TINY + o} for n, o in EQUIV_CASES.items()]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # the CPU reference runs meanwhile
        dev = pool.submit(launch, 1, cases, args.tiny_steps, work, device_env(args), timeout, "-dev")
        cpu = pool.submit(launch, 1, cases, args.tiny_steps, work, CPU_ENV, timeout, "-cpu")
        dev, cpu = dev.result(), cpu.result()
    rows, problems = [], expect_device(args, dev)
    for name in EQUIV_CASES:
        tol = RTOL["gpu_vs_cpu_bf16" if "bf16" in name else "gpu_vs_cpu_fp32"]
        row = {"case": name, "loss_vs_cpu": rel_dev(dev[name]["loss"], cpu[name]["loss"]),
               "grad_norm_vs_cpu": rel_dev(dev[name]["grad_norm"], cpu[name]["grad_norm"]), "tol_vs_cpu": tol,
               "loss": dev[name]["loss"], "cpu_loss": cpu[name]["loss"]}
        if "bf16" not in name:
            row["loss_vs_zero0"] = rel_dev(dev[name]["loss"], dev["ZeRO-0"]["loss"])
            row["grad_norm_vs_zero0"] = rel_dev(dev[name]["grad_norm"], dev["ZeRO-0"]["grad_norm"])
            if max(row["loss_vs_zero0"], row["grad_norm_vs_zero0"]) > RTOL["stages_fp32"]:
                problems.append(f"{name} deviates from ZeRO-0 by more than {RTOL['stages_fp32']:g}")
        if not max(row["loss_vs_cpu"], row["grad_norm_vs_cpu"]) <= tol:  # NaN fails too
            problems.append(f"{name} deviates from the CPU run by more than {tol:g}")
        rows.append(row)
    worst = max(r["loss_vs_cpu"] for r in rows if "bf16" not in r["case"])
    return {"ok": not problems, "problems": problems, "rows": rows,
            "summary": f"{len(rows)} layouts, {args.tiny_steps} steps; fp32 loss vs CPU max rel dev {worst:.1e}"}


def check_resume(args, work: Path, timeout: float) -> dict:
    common = TINY + ["train.decay=constant", "train.steps=6"]  # lr(step) does not depend on train.steps
    first, second = [], []
    for name, o in RESUME_CASES.items():
        run = work / f"resume-{name.replace(' ', '-')}"
        first += [{"name": f"{name} full", "overrides": common + o + [f"run_dir={run}-full"]},
                  {"name": f"{name} to 3", "overrides": common + o + [f"run_dir={run}", "train.steps=3",
                                                                     "checkpoint.interval=3"]}]
        second += [{"name": f"{name} resumed", "overrides": common + o + [f"run_dir={run}"]},
                   {"name": f"{name} repeat", "overrides": common + o + [f"run_dir={run}-repeat"]}]
    env = device_env(args)
    out = launch(1, first, 6, work, env, timeout, "-resume1")
    out.update(launch(1, second, 6, work, env, timeout, "-resume2"))  # a fresh process resumes
    rows, problems = [], expect_device(args, out)
    for name in RESUME_CASES:
        full, resumed, repeat = out[f"{name} full"], out[f"{name} resumed"], out[f"{name} repeat"]
        exact = resumed["loss"] == full["loss"][3:] and resumed["grad_norm"] == full["grad_norm"][3:]
        dev = max(rel_dev(resumed["loss"], full["loss"][3:]), rel_dev(resumed["grad_norm"], full["grad_norm"][3:]))
        noise = max(rel_dev(repeat["loss"], full["loss"]), rel_dev(repeat["grad_norm"], full["grad_norm"]))
        # without bit-exact kernels (e.g. SDPA backward atomics) a resume can only be as exact as a rerun
        ok = exact or (noise > 0 and dev <= 10 * noise)
        if len(resumed["loss"]) != 3:
            ok = False
            problems.append(f"{name}: the resumed run trained {len(resumed['loss'])} steps, not 3 (no resume?)")
        elif not ok:
            problems.append(f"{name}: resumed steps 4-6 deviate by {dev:.2e} (rerun noise {noise:.2e})")
        rows.append({"case": name, "bit_exact": exact, "resume_dev": dev, "rerun_noise": noise,
                     "full_loss": full["loss"], "resumed_loss": resumed["loss"]})
    n_exact = sum(r["bit_exact"] for r in rows)
    return {"ok": not problems, "problems": problems, "rows": rows,
            "summary": f"{n_exact}/{len(rows)} engines resume bit-exact after step 3"}


def check_nan(args, work: Path, timeout: float) -> dict:
    cases = [{"name": n, "overrides": TINY + o} for n, o in NAN_CASES.items()]
    env = {**device_env(args), "DIST_PRETRAIN_FAULT_NAN_STEPS": "3"}
    out = launch(1, cases, 5, work, env, timeout, "-nan")
    rows, problems = [], expect_device(args, out)
    for name, r in out.items():
        loss, skipped = r["loss"], r["skipped_steps"]
        ok = (math.isnan(loss[2]) and skipped == [0, 0, 1, 1, 1]
              and all(math.isfinite(x) for x in loss[:2] + loss[3:]))
        if not ok:
            problems.append(f"{name}: losses {loss}, skipped {skipped}")
        rows.append({"case": name, "loss": loss, "skipped_steps": skipped, "grad_norm": r["grad_norm"]})
    return {"ok": not problems, "problems": problems, "rows": rows,
            "summary": f"{len(rows)} engines: step 3 NaN, skipped and counted, steps 4-5 finite"}


def check_demo(args, work: Path, timeout: float) -> dict:
    data = Path(args.demo_data)
    if not (data / "manifest.json").exists():
        return {"ok": False, "problems": [f"no demo shards at {data} (bash benchmarks/gpu.sh --download builds them)"],
                "summary": "demo shards missing"}
    run_dir = work / "demo"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", "-m",
           "dist_pretrain", "train", str(ROOT / "configs/gpt/demo.yaml"), f"data.path={data}",
           "parallel.tensor=1", "parallel.nproc=1", f"train.steps={args.demo_steps}", f"run_dir={run_dir}",
           f"train.eval_interval={args.demo_steps}", "train.log_interval=10",
           f"train.warmup_steps={max(1, args.demo_steps // 10)}"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **device_env(args)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"demo exit {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    history = json.loads((run_dir / "history.json").read_text())
    steady = history[min(5, len(history) - 1):]
    tps = sorted(h["throughput/tokens_per_s"] for h in steady)[len(steady) // 2]
    banner = next((line for line in proc.stdout.splitlines() if line.startswith("training ")), "")
    last = history[-1]
    ok = math.isfinite(last["train/loss"]) and last["train/loss"] < history[0]["train/loss"]
    if args.device != "cpu" and "nccl" not in banner:
        ok = False
    return {"ok": ok, "problems": [] if ok else [f"loss {history[0]['train/loss']} -> {last['train/loss']}; {banner}"],
            "banner": banner, "tokens_per_s": tps, "first_loss": history[0]["train/loss"],
            "final_loss": last["train/loss"], "val_loss": last.get("val/loss"),
            "mfu_vs_measured_gemm": sorted(h["throughput/mfu"] for h in steady)[len(steady) // 2],
            "peak_gb": last["memory/peak_gb"],
            "summary": f"{args.demo_steps} steps: loss {history[0]['train/loss']:.3f} -> {last['train/loss']:.3f}, "
                       f"{tps:,.0f} tokens/s"}


def check_gpt13b(args, work: Path, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.gpu", "--compile", args.compile, "--steps", str(args.bench_steps),
           "--warmup", "3", "--out", str(work / "gpt13b")]
    if args.device == "cpu":
        cmd.append("--dry-run")  # no GPU: validate the plan only
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        raise RuntimeError(f"benchmarks.gpu exit {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    if args.device == "cpu":
        return {"ok": None, "summary": "no GPU: plan validated only (--dry-run)", "plan": proc.stdout[-2000:]}
    result = json.loads(next((work / "gpt13b").glob("*-gpu.json")).read_text())
    good = [r for r in result["rows"] if "error" not in r]
    best = max(good, key=lambda r: r["tokens_per_s"]) if good else None
    return {"ok": bool(good) and len(good) == len(result["rows"]), "result": result,
            "problems": [r["error"] for r in result["rows"] if "error" in r], "table": result["table"],
            "summary": (f"{best['tokens_per_s']:,.0f} tokens/s, {best['tflops']:.0f} TFLOP/s, "
                        f"MFU {100 * best['tflops'] / 989:.1f}% of 989" if best else "every variant failed")}


def check_generation(args, work: Path, timeout: float) -> dict:
    return {"ok": None, "summary": "not measured: dist_pretrain has no generation (inference) path yet"}


RUNNERS = {"equivalence": check_equivalence, "resume": check_resume, "nan": check_nan, "demo": check_demo,
           "gpt13b": check_gpt13b, "generation": check_generation}


def run_checks(args, work: Path, log) -> dict:
    deadline = time.monotonic() + args.budget_s
    results = {}
    for name in args.only:
        left = deadline - time.monotonic()
        timeout = min(TIMEOUTS[name] * args.timeout_scale, left)
        if timeout < 20 and name != "generation":
            results[name] = {"ok": False, "summary": f"skipped: {left:.0f} s of the budget left", "seconds": 0}
            log(f"[{name}] skipped (budget)")
            continue
        log(f"[{name}] start (limit {timeout:.0f} s)")
        t0 = time.monotonic()
        try:
            res = RUNNERS[name](args, work, timeout)
        except subprocess.TimeoutExpired:
            res = {"ok": False, "summary": f"ran over its limit of {timeout:.0f} s"}
        except Exception as err:  # noqa: BLE001 - one failing check must not stop the others
            res = {"ok": False, "summary": f"{type(err).__name__}", "error": str(err)[-6000:]}
        res["seconds"] = round(time.monotonic() - t0, 1)
        results[name] = res
        log(f"[{name}] {'PASS' if res['ok'] else 'info' if res['ok'] is None else 'FAIL'} "
            f"({res['seconds']} s): {res['summary']}" + "".join(f"\n    {p}" for p in res.get("problems", [])))
        if res.get("error"):
            log(res["error"])
    return results


def environment(args) -> dict:
    import torch

    from dist_pretrain import versions

    env = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
           "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu (--device cpu)",
           **{name: versions.installed(name) for name in versions.PINNED},
           "version_mismatches": versions.mismatches()}
    if args.device == "cuda":
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return env


def _fmt(x) -> str:
    return f"{x:.2e}" if isinstance(x, float) else str(x)


def report(env: dict, results: dict, args, wall_s: float) -> str:
    verdict = {True: "pass", False: "**FAIL**", None: "info"}
    lines = [f"# GPU checks, {datetime.date.today().isoformat()}", "",
             f"`bash benchmarks/gpu.sh --all {' '.join(args.argv)}`".replace(" `", "`"), "",
             f"- device: {env['device']}" + (f" ({env['gpu_memory_gib']} GiB)" if "gpu_memory_gib" in env else ""),
             f"- python {env['python']}, torch {env['torch']} (CUDA {env['cuda']}), deepspeed {env['deepspeed']}, "
             f"megatron-core {env['megatron-core']}; total {wall_s:.0f} s", "",
             "| check | result | numbers | seconds |", "|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {verdict[r['ok']]} | {r['summary']} | {r['seconds']} |")
    for name, r in results.items():
        lines += ["", f"## {name}", ""] + [f"- problem: {p}" for p in r.get("problems", [])]
        if r.get("error"):
            lines += ["```", r["error"][-1500:], "```"]
        if name == "equivalence" and "rows" in r:
            lines += [f"Tolerances: fp32 vs CPU {RTOL['gpu_vs_cpu_fp32']:g}, bf16 vs CPU {RTOL['gpu_vs_cpu_bf16']:g}, "
                      f"ZeRO stages vs ZeRO-0 on the device {RTOL['stages_fp32']:g} (max relative deviation per step).",
                      "", "| case | loss vs CPU | grad norm vs CPU | loss vs ZeRO-0 | grad norm vs ZeRO-0 |",
                      "|---|---|---|---|---|"]
            lines += [f"| {x['case']} | {_fmt(x['loss_vs_cpu'])} | {_fmt(x['grad_norm_vs_cpu'])} | "
                      f"{_fmt(x.get('loss_vs_zero0', '-'))} | {_fmt(x.get('grad_norm_vs_zero0', '-'))} |" for x in r["rows"]]
        if name == "resume" and "rows" in r:
            lines += ["| engine | bit-exact | resumed vs uninterrupted | rerun vs uninterrupted |", "|---|---|---|---|"]
            lines += [f"| {x['case']} | {'yes' if x['bit_exact'] else 'no'} | {_fmt(x['resume_dev'])} | "
                      f"{_fmt(x['rerun_noise'])} |" for x in r["rows"]]
        if name == "nan" and "rows" in r:
            lines += ["| engine | losses | skipped (cumulative) |", "|---|---|---|"]
            lines += [f"| {x['case']} | {', '.join(f'{v:.4f}' for v in x['loss'])} | {x['skipped_steps']} |"
                      for x in r["rows"]]
        if name == "demo" and "tokens_per_s" in r:
            lines += [f"`{r['banner']}`", "", f"- tokens/s (median of steps 6+): {r['tokens_per_s']:,.0f}; "
                      f"MFU vs the GEMM measured at start-up: {100 * r['mfu_vs_measured_gemm']:.2f}%",
                      f"- loss {r['first_loss']:.4f} -> {r['final_loss']:.4f}; validation loss {r['val_loss']}; "
                      f"peak memory {r['peak_gb']:.2f} GB"]
        if name == "gpt13b" and r.get("table"):
            lines += [r["table"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print the plan; run nothing")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: the same checks on gloo (a smoke test of this script without a GPU)")
    parser.add_argument("--only", nargs="+", choices=CHECKS, default=CHECKS)
    parser.add_argument("--compile", choices=["off", "on", "both"], default="off",
                        help="torch.compile variant of the 1.3B benchmark (compiling takes minutes)")
    parser.add_argument("--tiny-steps", type=int, default=5)
    parser.add_argument("--demo-steps", type=int, default=30)
    parser.add_argument("--bench-steps", type=int, default=8)
    parser.add_argument("--budget-s", type=float, default=450, help="stop starting checks after this")
    parser.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every check's limit")
    parser.add_argument("--demo-data", default=str(ROOT / ".gpu_data" / "gpt2-seq256"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if args.dry_run:
        plan = {"device": args.device, "checks": {n: {"limit_s": TIMEOUTS[n] * args.timeout_scale} for n in args.only},
                "equivalence": EQUIV_CASES, "resume": RESUME_CASES, "nan": NAN_CASES, "tolerances": RTOL,
                "demo_data": args.demo_data, "demo_data_present": (Path(args.demo_data) / "manifest.json").exists(),
                "budget_s": args.budget_s}
        print(json.dumps(plan, indent=1))
        return 0
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU machine, or pass --device cpu / --dry-run", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{datetime.date.today().isoformat()}-gpu" if args.device == "cuda" else out / "gpu-checks-cpu"
    logfile = open(f"{stem}.log", "w")

    def log(msg: str) -> None:
        print(msg, flush=True)
        logfile.write(msg + "\n")
        logfile.flush()

    t0 = time.monotonic()
    env = environment(args)
    log(json.dumps(env))
    with tempfile.TemporaryDirectory(prefix="gpu-checks-") as work:
        results = run_checks(args, Path(work), log)
    text = report(env, results, args, time.monotonic() - t0)
    Path(f"{stem}.md").write_text(text)
    Path(f"{stem}.json").write_text(json.dumps({"environment": env, "results": results}, indent=1, default=str))
    log(text)
    logfile.close()
    if os.environ.get("OUT") and Path(os.environ["OUT"]).is_dir():
        for suffix in (".md", ".json", ".log"):
            shutil.copy(f"{stem}{suffix}", os.environ["OUT"])
    return 0 if all(r["ok"] is not False for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
