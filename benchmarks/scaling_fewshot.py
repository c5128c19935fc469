"""Few-shot accuracy of a sweep's final models against their size (the seed's Figure 11.9.8 at
our scale): ``dist-pretrain evaluate`` at 0/1/5 shots on the built-in tasks for each size's
longest-trained run, then one panel per task with accuracy vs non-embedding parameters per k.

    python -m benchmarks.scaling_fewshot --results runs/scaling-bench/results.jsonl \
        --output benchmarks/results/scaling [--limit 200]

Writes ``fewshot.json`` (every evaluate row plus params) and ``fewshot.png``. Prompts longer than
the model's context are cut from the left; the ``truncated`` column of each row says how often.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

TASKS = ["lambada-demo", "analogies", "polarity"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--shots", default="0,1,5")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--plot-only", action="store_true", help="redraw fewshot.png from fewshot.json")
    args = parser.parse_args(argv)
    if args.plot_only:
        plot(json.loads((Path(args.output) / "fewshot.json").read_text()), Path(args.output))
        return
    rows = [json.loads(x) for x in Path(args.results).read_text().splitlines() if x.strip()]
    final = {}
    for r in rows:
        if r["size"] not in final or r["tokens"] > final[r["size"]]["tokens"]:
            final[r["size"]] = r
    out = []
    for r in sorted(final.values(), key=lambda r: r["params"]):
        with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
            cmd = [sys.executable, "-m", "dist_pretrain", "evaluate", r["run_dir"], *sum((["--task", t] for t in TASKS), []),
                   "--shots", args.shots, "--limit", str(args.limit), "--output", tmp.name]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                print(f"{r['name']}: evaluate failed: {proc.stderr[-1000:]}", file=sys.stderr)
                continue
            for e in json.load(open(tmp.name)):
                out.append({**e, "run": r["name"], "params": r["params"], "tokens": r["tokens"]})
        print(f"{r['name']}: evaluated", flush=True)
    Path(args.output).mkdir(parents=True, exist_ok=True)
    (Path(args.output) / "fewshot.json").write_text(json.dumps(out, indent=1))
    plot(out, Path(args.output))


def plot(out: list[dict], directory: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    tasks = sorted({e["task"] for e in out})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        mine = [e for e in out if e["task"] == task and e["metric"] in ("acc", "exact_match")]
        metric = mine[0]["metric"] if mine else "acc"
        for k in sorted({e["shots"] for e in mine}):
            pts = sorted((e["params"], e["value"]) for e in mine if e["shots"] == k and e["metric"] == metric)
            ax.plot([p for p, _ in pts], [v for _, v in pts], "o-", label=f"{k}-shot")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("Parameters N (non-embedding)")
        ax.set_ylabel(metric)
        truncated = sum(e["truncated"] for e in mine if e["shots"] == max(e["shots"] for e in mine)) if mine else 0
        ax.set_title(f"{task} ({truncated} of {sum(e['n'] for e in mine if e['shots'] == max(x['shots'] for x in mine))} "
                     f"prompts truncated at the most shots)" if mine else task, fontsize=9)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend()
    fig.tight_layout()
    fig.savefig(directory / "fewshot.png", dpi=110)
    print(f"wrote {directory / 'fewshot.png'}")


if __name__ == "__main__":
    main()
