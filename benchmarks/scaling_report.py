"""REPORT.md for a fitted scaling sweep: the runs, the fitted exponents beside Kaplan's and
Chinchilla's, and the differences explained from the numbers (nothing in it is typed by hand).

    python -m benchmarks.scaling_report --results runs/scaling-bench/results.jsonl \
        --fit benchmarks/results/scaling --corpus-tokens 18532032 --command "..."
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np


def _ci(block: dict, key: str) -> str:
    ci = block.get("ci95", {}).get(key)
    return f"[{ci[0]:.3g}, {ci[1]:.3g}]" if ci else "-"


def report(rows: list[dict], fit: dict, corpus_tokens: int, command: str, note: str) -> str:
    k, ch, pub = fit["kaplan"], fit["chinchilla"], fit["published"]
    lines = ["# Scaling sweep on this machine", "", note, "",
             f"Machine: {platform.machine()}, {platform.processor() or 'CPU'}, 2 cores shared with other jobs "
             f"(wall times are not comparable between runs).", "", "Command:", "", "```", command, "```", "",
             f"## Runs ({len(rows)}; schedule: {', '.join(sorted({r['schedule'] for r in rows}))})", "",
             "| run | N (non-emb.) | N total | D tokens | D/N | C = 6ND | C Megatron | val loss | s.e. | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["params"], r["tokens"])):
        lines.append(f"| {r['name']} | {r['params']:,} | {r['params_total']:,} | {r['tokens']:,} | "
                     f"{r['tokens'] / r['params']:.2f} | {r['flops_6nd']:.3g} | {r['flops_megatron']:.3g} | "
                     f"{r['loss']:.4f} | {r['loss_se']:.4f} | {r['wall_s']:.0f} |")
    lines += ["", "## Fitted exponents vs the published ones", "",
              "| quantity | here | 95% CI | Kaplan 2020 / Chinchilla 2022 |", "|---|---|---|---|"]
    for key in ("alpha_N", "alpha_D", "alpha_C"):
        lines.append(f"| Kaplan {key} | {k[key]:.4f} | {_ci(k, key)} | {pub['kaplan'][key]} |")
    for key in ("E", "A", "B", "alpha", "beta", "a", "b"):
        lines.append(f"| Chinchilla {key} | {ch[key]:.4g} | {_ci(ch, key)} | {pub['chinchilla'][key]:.4g} |")
    n = np.array([r["params"] for r in rows], float)
    d = np.array([r["tokens"] for r in rows], float)
    tot = np.array([r["params_total"] for r in rows], float)
    se = np.array([r["loss_se"] for r in rows], float)
    spread = max(r["loss"] for r in rows) - min(r["loss"] for r in rows)
    lines += ["", "## Why the numbers differ (computed from the rows above)", "",
              f"- Scale: N spans {n.min():,.0f} to {n.max():,.0f} non-embedding parameters ({n.max() / n.min():.0f}x) "
              f"and D {d.min():,.0f} to {d.max():,.0f} tokens; Kaplan's fits span 10^3 to 10^9 parameters and "
              f"Chinchilla's 7e7 to 1.6e10. Embeddings are {np.median((tot - n) / tot):.0%} of the parameters "
              f"(median), which Kaplan showed bends L(N) when counted; they are excluded here as there.",
              f"- Training length: D/N is {np.min(d / n):.2f} to {np.max(d / n):.2f} tokens per parameter; "
              f"Chinchilla's compute-optimal ratio is about 20. "
              + f"Kaplan's L(N) takes each size's longest run, here {d.max():,.0f} tokens for every size: "
              f"{d.max() / n.max():.1f} tokens per parameter for the largest model. alpha_N = {k['alpha_N']:.3f} is "
              f"{k['alpha_N'] / pub['kaplan']['alpha_N']:.0%} of Kaplan's {pub['kaplan']['alpha_N']}"
              + (f"; the larger models stop before they can use their size (Kaplan's L(N) is for models trained "
                 f"to convergence), so L(N) comes out shallower and the loss is mostly set by the tokens seen "
                 f"(alpha_D = {k['alpha_D']:.3f}, Kaplan's 0.095)."
                 if d.max() / n.max() < 20 and k["alpha_N"] < 0.75 * pub["kaplan"]["alpha_N"] else "."),
              f"- Repeated data: the largest run reads {d.max() / corpus_tokens:.1%} of the {corpus_tokens:,}-token "
              f"training split, so no run sees a token twice; repetition does not explain the differences.",
              f"- Training vs validation loss: at each run's end its training-loss curve is "
              f"{np.median([r['loss'] - r['curve'][-1][1] for r in rows if r.get('curve')]):.2f} nats below its "
              f"validation loss (median over runs). The L(C) frontier is drawn from the training curves, so its "
              f"level is not comparable with the validation losses of L(N) and L(D); its slope is.",
              f"- Noise: the validation standard error is {np.median(se):.4f} (median) against a loss spread of "
              f"{spread:.3f} over all runs; the bootstrap intervals above carry the fit's uncertainty.",
              f"- Chinchilla fit: alpha = {ch['alpha']:.3f} and beta = {ch['beta']:.3f} against 0.34 and 0.28; "
              f"E = {ch['E']:.3g} nats is the irreducible loss of this corpus and 2,048-token vocabulary (not "
              f"comparable with MassiveText's 1.69 under a 32k vocabulary).",
              f"- Kaplan alpha_C = {k['alpha_C']:.3f} (frontier from {k['frontier_from']}) against "
              f"{pub['kaplan']['alpha_C']}: "
              + (f"steeper; at this scale the loss is still in its fast initial fall, so the local slope is "
                 f"steeper than the asymptotic one." if k["alpha_C"] > pub["kaplan"]["alpha_C"] else
                 f"shallower, fitted over a frontier that spans "
                 f"{max(r['flops_6nd'] for r in rows) / min(r['flops_6nd'] for r in rows):.0f}x in compute "
                 f"(Kaplan's: about 10^8x)."),
              ""]
    for adv in fit["compute_optimal"]:
        lines.append(f"Compute-optimal advice from this fit at C = {adv['budget_flops']:.3g} FLOPs: N_opt = "
                     f"{adv['N_opt']:.3g}, D_opt = {adv['D_opt']:.3g} ({adv['tokens_per_param']:.1f} tokens/param), "
                     f"predicted loss {adv['loss']:.3f}.")
    lines += ["", "Plots: `scaling_laws.png` (Figure 11.9.9), `loss_curves.png` (Figure 11.9.10), `chinchilla.png`."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", required=True)
    parser.add_argument("--fit", required=True, help="directory with fit.json; REPORT.md goes there")
    parser.add_argument("--corpus-tokens", type=int, required=True)
    parser.add_argument("--command", required=True)
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    rows = [json.loads(x) for x in Path(args.results).read_text().splitlines() if x.strip()]
    fit = json.loads((Path(args.fit) / "fit.json").read_text())
    (Path(args.fit) / "REPORT.md").write_text(report(rows, fit, args.corpus_tokens, args.command, args.note))
    print((Path(args.fit) / "REPORT.md").read_text())


if __name__ == "__main__":
    main()
