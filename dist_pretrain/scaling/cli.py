"""``dist-pretrain scaling fit RESULTS.jsonl --output DIR [--budget FLOPS]``: fit, print, plot.

Writes ``DIR/fit.json`` (Kaplan and Chinchilla parameters with bootstrap 95% intervals, the
compute-optimal advice, the published values beside them) and the PNGs of ``plots``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from dist_pretrain.errors import UserError
from dist_pretrain.scaling.fit import fit_all
from dist_pretrain.scaling.results import load_results


def _ci(fit: dict, key: str) -> str:
    lo_hi = fit.get("ci95", {}).get(key)
    return f"[{lo_hi[0]:.3g}, {lo_hi[1]:.3g}]" if lo_hi else "-"


def table(result: dict) -> str:
    k, ch, pub = result["kaplan"], result["chinchilla"], result["published"]
    rows = [("Kaplan L(N) alpha_N", k["alpha_N"], _ci(k, "alpha_N"), pub["kaplan"]["alpha_N"]),
            ("Kaplan L(D) alpha_D", k["alpha_D"], _ci(k, "alpha_D"), pub["kaplan"]["alpha_D"]),
            ("Kaplan L(C) alpha_C", k["alpha_C"], _ci(k, "alpha_C"), pub["kaplan"]["alpha_C"]),
            ("Chinchilla E", ch["E"], _ci(ch, "E"), pub["chinchilla"]["E"]),
            ("Chinchilla A", ch["A"], _ci(ch, "A"), pub["chinchilla"]["A"]),
            ("Chinchilla B", ch["B"], _ci(ch, "B"), pub["chinchilla"]["B"]),
            ("Chinchilla alpha", ch["alpha"], _ci(ch, "alpha"), pub["chinchilla"]["alpha"]),
            ("Chinchilla beta", ch["beta"], _ci(ch, "beta"), pub["chinchilla"]["beta"]),
            ("a = beta/(alpha+beta) (N_opt ~ C^a)", ch["a"], _ci(ch, "a"), pub["chinchilla"]["a"]),
            ("b = alpha/(alpha+beta) (D_opt ~ C^b)", ch["b"], _ci(ch, "b"), pub["chinchilla"]["b"])]
    d = result["data"]
    lines = [f"{d['runs']} runs, {d['sizes']} sizes (N {d['params_range'][0]:.3g} .. {d['params_range'][1]:.3g} "
             f"non-embedding), {d['token_budgets']} token counts (D {d['tokens_range'][0]:.3g} .. "
             f"{d['tokens_range'][1]:.3g}); L(C) frontier from {k['frontier_from']}; "
             f"{result['bootstrap']['samples']} bootstrap resamples",
             f"| {'quantity':<38} | {'fit':>10} | {'95% CI':>22} | {'published':>9} |",
             f"|{'-' * 40}|{'-' * 12}|{'-' * 24}|{'-' * 11}|"]
    lines += [f"| {name:<38} | {value:>10.4g} | {ci:>22} | {ref:>9.4g} |" for name, value, ci, ref in rows]
    for adv in result["compute_optimal"]:
        lines.append(f"compute-optimal at C = {adv['budget_flops']:.3g} FLOPs (C = 6ND): N_opt = {adv['N_opt']:.3g} "
                     f"params, D_opt = {adv['D_opt']:.3g} tokens ({adv['tokens_per_param']:.1f} tokens/param), "
                     f"predicted loss {adv['loss']:.3f}")
    if not result["compute_optimal"]:
        lines.append(f"no compute-optimal advice: the fit's alpha={ch['alpha']:.3g}, beta={ch['beta']:.3g} are "
                     f"not both positive")
    return "\n".join(lines)


def _budget(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--budget {text!r} is not a number of FLOPs (e.g. 1e21)") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"--budget {text!r} must be a positive number of FLOPs")
    return value


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "fit":
        print("usage: dist-pretrain scaling fit RESULTS.jsonl --output DIR [--budget FLOPS]", flush=True)
        return 2
    parser = argparse.ArgumentParser(prog="dist-pretrain scaling fit",
                                     description="Fit Kaplan and Chinchilla scaling laws to sweep results")
    parser.add_argument("results", help="JSONL rows with params (non-embedding N), tokens (D), loss; "
                                        "optional flops (default 6ND) and curve [[tokens, loss], ...]")
    parser.add_argument("--output", required=True, help="directory for fit.json and the PNGs")
    parser.add_argument("--budget", type=_budget, action="append",
                        help="compute budget in FLOPs for the compute-optimal advice (repeatable; "
                             "default: 10x the largest run's compute)")
    parser.add_argument("--bootstrap", type=int, default=100, help="bootstrap resamples (0: no intervals)")
    parser.add_argument("--starts", type=int, default=32,
                        help="L-BFGS starts: the best this many points of the 4,500-point grid")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv[1:])
    if args.bootstrap < 0 or args.starts < 1:
        raise UserError(f"--bootstrap {args.bootstrap} / --starts {args.starts}: use >= 0 resamples and >= 1 start")
    runs = load_results(args.results)
    budgets = args.budget or [10 * max(r.flops for r in runs)]
    result = fit_all(runs, budgets, samples=args.bootstrap, seed=args.seed, top=args.starts)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    result["source"] = str(args.results)
    if not args.no_plots:
        from dist_pretrain.scaling.plots import all_plots

        result["plots"] = [p.name for p in all_plots(result, runs, out)]
    (out / "fit.json").write_text(json.dumps(result, indent=1))
    print(table(result))
    print(f"wrote {out / 'fit.json'}" + (f" and {', '.join(result['plots'])}" if "plots" in result else ""))
    return 0
