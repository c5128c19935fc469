"""Every CPU benchmark in one command: a Markdown report and a PNG chart in benchmarks/results/.

    .venv/bin/python -m benchmarks.run_all [--smoke] [--out DIR] [--only peers activations parallel]

1. throughput of a training step against HF transformers and nanoGPT, fp32 and bf16
   (``peers``), with the phases and op categories of each step;
2. MFU against this machine's measured fp32 / bf16 GEMM peak (``mfu``);
3. activation memory per micro-batch, with and without recomputation (``activations``);
4. in two torchrun jobs (``worker``): scaling over the 2 cores (``scaling``), model-state
   memory of ZeRO 0-3 against the ZeRO paper (``memory``), the BERT/T5/GPT demo configs
   (``families``).

``--smoke`` runs all of it at a tiny size (< 60 s); the HF row and the chart are skipped,
saying why, when transformers / matplotlib are not installed (``pip install -e '.[bench]'``).
The full run takes ~10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import warnings
from pathlib import Path

# megatron-core warns at import that Apex / Transformer Engine are absent (they are GPU-only)
warnings.filterwarnings("ignore", message=".*(Apex|Transformer Engine).*")

from benchmarks import activations, families, memory, mfu, notes, peers, scaling
from benchmarks.common import FULL, ROOT, SMOKE, launch_worker, machine


def settings(smoke: bool) -> dict:
    if smoke:
        return {"size": SMOKE, "memory_size": SMOKE, "steps": 2, "warmup": 1, "gemm_n": 256,
                "train_steps": 2, "train_warmup": 1}
    return {"size": FULL, "memory_size": memory.MEMORY_SIZE, "steps": 10, "warmup": 2, "gemm_n": 4096,
            "train_steps": 6, "train_warmup": 2}


def run(smoke: bool, only: set[str]) -> dict:
    """Every selected part; a part that fails is recorded in ``errors`` and the others still run."""
    cfg = settings(smoke)
    out: dict = {"machine_before": machine(), "smoke": smoke, "errors": {}}
    precisions = ["fp32", "bf16"]
    t0 = time.perf_counter()

    def part(name: str, fn) -> None:
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - reported in the results file, exit status 1
            out["errors"][name] = f"{type(err).__name__}: {err}"[-4000:]
        print(f"{name}: {'FAILED' if name in out['errors'] else 'done'} at {time.perf_counter() - t0:.0f} s",
              flush=True)

    def do_peers():
        out["peers"] = peers.run(cfg["size"], precisions, cfg["steps"], cfg["warmup"], cfg["gemm_n"],
                                 peers.hf_available())
        out["mfu"] = mfu.mfu_rows(out["peers"], cfg["size"], precisions)

    def do_activations():
        out["activations"] = activations.run(cfg["size"], ["bf16", "fp32"])

    one, two = scaling.cases(cfg["size"], cfg["train_steps"], cfg["train_warmup"])
    memory_cases = memory.cases(cfg["memory_size"])
    family_cases = families.cases(smoke, cfg["train_steps"], cfg["train_warmup"])

    def do_parallel():
        """One job per world size; a case that failed is named in ``errors`` and left out."""
        got = launch_worker(1, one, threads=2)
        got.update(launch_worker(2, two + memory_cases + family_cases, threads=1))
        for name, r in got.items():
            if "error" in r:
                out["errors"][name] = r["error"]
        ok = {name: r for name, r in got.items() if "error" not in r}
        if all(c["name"] in ok for c in one + two):
            out["scaling"] = {c["name"]: ok[c["name"]] for c in one + two}
        cases_ok = [c for c in memory_cases if c["name"] in ok]
        if cases_ok:
            out["memory"] = memory.rows(ok, cases_ok)
        out["families"] = {c["name"]: ok[c["name"]] for c in family_cases if c["name"] in ok}

    if "peers" in only:
        part("peers", do_peers)
    if "activations" in only:
        part("activations", do_activations)
    def do_memory():
        """Only the model-state memory cases, in one 2-process job."""
        got = launch_worker(2, memory_cases, threads=1)
        out["errors"].update({name: r["error"] for name, r in got.items() if "error" in r})
        cases_ok = [c for c in memory_cases if "error" not in got[c["name"]]]
        if cases_ok:
            out["memory"] = memory.rows(got, cases_ok)

    if "parallel" in only:
        part("torchrun jobs (scaling, memory, families)", do_parallel)
    elif "memory" in only:
        part("torchrun job (memory)", do_memory)
    out["seconds"] = time.perf_counter() - t0
    out["machine_after"] = machine()
    return out


def report(res: dict, command: str) -> str:
    m, after = res["machine_before"], res["machine_after"]
    cfg = settings(res["smoke"])
    size = cfg["size"]
    shared = max(m["load_1min"], after["load_1min"]) > 0.5 * m["cores"] + 0.5
    lines = [
        f"# CPU benchmarks, {datetime.date.today().isoformat()}{' (smoke size)' if res['smoke'] else ''}",
        "",
        (f"- machine: {m['cpu']}, {m['cores']} cores (bf16 instructions: {m['bf16_isa']}); "
        f"torch {m['torch']}, Python {m['python']}"),
        f"- load average (1 min) before / after: {m['load_1min']:.2f} / {after['load_1min']:.2f}"
        + (" — the machine was shared with other jobs during this run; expect noise in the timings"
           if shared else ""),
        f"- command: `{command}` ({res['seconds'] / 60:.1f} min)",
        (f"- GPT: {size.layers} layers, hidden {size.hidden}, {size.heads} heads, seq {size.seq}, "
        f"vocab {size.vocab}, micro-batch {size.micro_batch} ({size.tokens_per_micro_batch} tokens/step), "
        "tied embeddings, no dropout, AdamW + clip 1.0"),
        "",
    ]
    if "peers" in res:
        p = res["peers"]
        precs = [k for k in ("fp32", "bf16") if k in p]
        lines += ["## Throughput against the alternatives (single process, all cores)", "",
                  ("ours = `Trainer.train_step` (megatron-core GPTModel, DeepSpeed ZeRO-1 engine; bf16 = "
                  "DeepSpeed bf16: bf16 weights and grads, fp32 master weights and moments). "
                  "HF = `GPT2LMHeadModel` from a config, SDPA; nanoGPT = plain PyTorch with SDPA; both with "
                  "fp32 weights, `torch.autocast(bf16)` for bf16 and `AdamW(fused=True)`. "
                  f"Median of {cfg['steps']} rounds after {cfg['warmup']} warm-up rounds, systems alternating."), "",
                  peers.table(p, precs), "",
                  ("Where the time goes (phases: median seconds of the measured steps; categories: self CPU time "
                  "of one profiled step):"), "", peers.phase_table(p, precs), ""]
        lines += ["## MFU against this machine's measured peak", "", mfu.table(res["mfu"], size, cfg["gemm_n"]), ""]
    if "activations" in res:
        lines += ["## Activation memory per micro-batch", "", activations.__doc__.split("\n\n", 2)[2].strip(), "",
                  activations.table(res["activations"], size), ""]
    for name, err in res["errors"].items():
        lines += [f"**{name} failed**: `{err.splitlines()[-1] if err else ''}` (full text in the JSON)", ""]
    if "scaling" in res:
        lines += [("## Scaling on the cores of one host (bf16, ZeRO-1, global batch "
                  f"{min(scaling.GLOBAL_BATCH, 4 * size.micro_batch)})"), "", scaling.table(res["scaling"]), ""]
    if "memory" in res:
        lines += ["## Model-state memory per rank against the ZeRO paper (DP=2)", "",
                  memory.__doc__.split("\n\n", 1)[1].strip(), "", memory.table(res["memory"]), "",
                  "Where the measured bytes are (bytes per parameter):", "", memory.where(res["memory"]), ""]
    if res.get("families"):
        bf16_peak = res.get("peers", {}).get("gemm", {}).get("bf16", {}).get("tflops")
        lines += ["## Model families (demo configs, 2 processes x 1 thread)", ""]
        if bf16_peak:
            lines += [families.table(res["families"], bf16_peak), ""]
        else:
            lines += ["(run with peers for the GEMM peak that MFU needs)", ""]
    lines.append(notes.notes(res, size))
    return "\n".join(lines)


def chart(res: dict, path: Path) -> str | None:
    """A PNG bar chart of the ratios; returns why not when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'): no chart"
    panels = []
    if "peers" in res:
        p = res["peers"]
        bars = {f"{prec} ours\n/ {name}": p[prec]["ours"]["tokens_per_s"] / r["tokens_per_s"]
                for prec in ("fp32", "bf16") if prec in p
                for name, r in p[prec].items() if not name.startswith("ours")}
        panels.append(("ours tokens/s / peer tokens/s", bars, 1.0))
        short = {"HF transformers": "HF"}
        panels.append(("MFU (Megatron formula) vs measured GEMM peak (line: the 35% bf16 goal)",
                       {f"{r['precision']}\n{short.get(r['system'], r['system'])}": r["mfu"] for r in res["mfu"]},
                       0.35))
    if "scaling" in res:
        base = res["scaling"]["1 process x 2 threads"]["tokens_per_s"]
        panels.append(("tokens/s vs 1 process x 2 threads",
                       {k.replace(" (ZeRO-1)", ""): v["tokens_per_s"] / base for k, v in res["scaling"].items()}, 1.0))
    if "memory" in res:
        panels.append(("model-state bytes: measured / ZeRO paper",
                       {r["name"].replace(" ZeRO-", "\nZ").replace(", params released", "*"): r["ratio"]
                        for r in res["memory"]}, 1.0))
    if not panels:
        return "nothing to chart"
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.2 * len(panels)))
    for ax, (title, bars, ref) in zip(axes if len(panels) > 1 else [axes], panels):
        ax.bar(range(len(bars)), list(bars.values()), color="tab:blue")
        ax.set_xticks(range(len(bars)), list(bars.keys()), fontsize=7)
        ax.set_title(title, fontsize=10)
        if ref is not None:
            ax.axhline(ref, color="tab:red", lw=1)
        for i, v in enumerate(bars.values()):
            ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    fig.suptitle(f"{res['machine_before']['cpu']}, {res['machine_before']['cores']} cores, "
                 f"torch {res['machine_before']['torch']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def write(res: dict, command: str, out: Path, stem: str) -> str:
    """``<stem>.md`` and ``<stem>.png`` in ``out``; returns the Markdown."""
    text = report(res, command)
    why_not = chart(res, out / f"{stem}.png")
    if why_not:
        print(why_not)
    else:
        text += f"\n![ratios]({stem}.png)\n"
    (out / f"{stem}.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, < 60 s: proves everything runs")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--only", nargs="+", choices=["peers", "activations", "parallel", "memory"],
                        default=["peers", "activations", "parallel"],
                        help="parts to run; 'memory' is the model-state part of 'parallel' alone")
    parser.add_argument("--render", metavar="JSON", help="only re-write the report and chart of a saved run")
    args = parser.parse_args(argv)
    if args.render:
        path = Path(args.render)
        res = json.loads(path.read_text())
        write(res, res["command"], path.parent, path.stem)
        return 0
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    warnings.filterwarnings("ignore")  # megatron-core's "Apex / Transformer Engine not installed", ...
    command = "python -m benchmarks.run_all" + (" --smoke" if args.smoke else "") + \
        (f" --only {' '.join(args.only)}" if set(args.only) != {"peers", "activations", "parallel"} else "")
    res = run(args.smoke, set(args.only))
    res["command"] = command
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    partial = set(args.only) != {"peers", "activations", "parallel"}
    stem = (f"{datetime.date.today().isoformat()}-cpu{'-smoke' if args.smoke else ''}"
            + (f"-{'-'.join(sorted(args.only))}" if partial else ""))
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1, default=str))
    print(write(res, command, out, stem))
    print(f"\nwrote {out / stem}.md ({res['seconds']:.0f} s)")
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
