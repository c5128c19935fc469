"""Power-law fits of loss against parameters, tokens and compute, and what they advise.

* Kaplan et al. (2020): L(N) = (N_c / N)^alpha_N over the runs with the most tokens per size,
  L(D) = (D_c / D)^alpha_D over the largest size, and L(C) = (C_c / C)^alpha_C over the
  compute-efficient frontier (the lowest loss any run reached at each compute, read off the
  runs' loss curves). Each is a least-squares line in log-log space.
* Hoffmann et al. (2022), approach 3: L(N, D) = E + A / N^alpha + B / D^beta, fitted by
  minimising the Huber loss (delta = 1e-3) between log L and
  log(exp(a - alpha log N) + exp(b - beta log D) + exp(e)) with L-BFGS from a grid of starts,
  keeping the best; A = e^a, B = e^b, E = e^e.
* Bootstrap: the runs are resampled with replacement and everything is fitted again; the
  2.5 / 97.5 percentiles are the 95% intervals.

Compute-optimal allocation under C = 6ND (the paper's): N_opt = G (C/6)^a, D_opt = (C/6)^b / G
with G = (alpha A / (beta B))^(1/(alpha+beta)), a = beta/(alpha+beta), b = alpha/(alpha+beta).
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.optimize import minimize
from scipy.special import huber, logsumexp, softmax

from dist_pretrain.scaling.results import Run, ScalingError, check_fittable

HUBER_DELTA = 1e-3
# Hoffmann et al.'s grid of starting points (appendix D.2)
GRID = {"alpha": np.arange(0.0, 2.01, 0.5), "beta": np.arange(0.0, 2.01, 0.5),
        "e": np.arange(-1.0, 1.01, 0.5), "a": np.arange(0.0, 25.1, 5.0), "b": np.arange(0.0, 25.1, 5.0)}
KAPLAN_PUBLISHED = {"alpha_N": 0.076, "alpha_D": 0.095, "alpha_C": 0.050, "N_c": 8.8e13, "D_c": 5.4e13,
                    "C_c": 3.1e8 * 8.64e19}  # C_c: 3.1e8 PF-days in FLOPs
CHINCHILLA_PUBLISHED = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


# --------------------------------------------------------------------------- Kaplan


def power_law(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(alpha, x_c) of y = (x_c / x)^alpha by least squares on log y = alpha log x_c - alpha log x."""
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    alpha = -slope
    with np.errstate(over="ignore"):
        x_c = float(np.exp(intercept / alpha)) if alpha != 0 else float("inf")
    return float(alpha), x_c


def size_points(runs: list[Run]) -> tuple[np.ndarray, np.ndarray]:
    """(N, L) for L(N): each size's run with the most tokens."""
    best: dict[float, Run] = {}
    for r in runs:
        if r.params not in best or r.tokens > best[r.params].tokens:
            best[r.params] = r
    sizes = sorted(best)
    return np.array(sizes), np.array([best[n].loss for n in sizes])


def data_points(runs: list[Run]) -> tuple[np.ndarray, np.ndarray, float]:
    """(D, L, N) for L(D): the runs of the largest size that has at least two token budgets."""
    for n in sorted({r.params for r in runs}, reverse=True):
        mine = sorted((r for r in runs if r.params == n), key=lambda r: r.tokens)
        by_tokens = {r.tokens: r.loss for r in mine}
        if len(by_tokens) >= 2:
            d = np.array(sorted(by_tokens))
            return d, np.array([by_tokens[t] for t in d]), n
    raise ScalingError("no model size has runs at two or more token budgets: L(D) needs them")


def frontier_points(runs: list[Run], points: int = 40) -> tuple[np.ndarray, np.ndarray, str]:
    """The compute-efficient frontier: at each compute C, the lowest loss any run reached with at
    most C.

    From the loss curves (loss vs tokens, times each run's FLOPs per token), interpolated in
    log-log space on a grid of C between the smallest and the largest run's final compute (below
    that the frontier would be the first steps of the smallest model). Without curves, the final
    points that no cheaper run beats.
    """
    curves = [(r.curve[:, 0] * r.flops_per_token, r.curve[:, 1]) for r in runs if len(r.curve) >= 2]
    if len(curves) >= 2:
        finals = [r.flops for r in runs]
        lo, hi = min(finals), max(finals)
        if hi > lo:
            grid = np.geomspace(lo, hi, points)
            best = np.full(points, np.inf)
            for c, loss in curves:
                inside = (grid >= c[0]) & (grid <= c[-1])
                if inside.any():
                    interp = np.exp(np.interp(np.log(grid[inside]), np.log(c), np.log(loss)))
                    best[inside] = np.minimum(best[inside], interp)
            # C_min(L): the least compute that reaches L, so the frontier never rises with C (a run
            # that reached a loss at less compute has reached it for every larger budget too)
            best = np.minimum.accumulate(best)
            keep = np.isfinite(best)
            if keep.sum() >= 2:
                return grid[keep], best[keep], "loss curves"
    order = sorted(runs, key=lambda r: r.flops)
    c, loss, lowest = [], [], np.inf
    for r in order:
        if r.loss < lowest:
            lowest = r.loss
            c.append(r.flops)
            loss.append(r.loss)
    if len(c) < 2:
        raise ScalingError("the compute frontier has fewer than 2 points: every cheaper run beats the "
                           "more expensive ones, so L(C) is not a power law here")
    return np.array(c), np.array(loss), "final points"


def fit_kaplan(runs: list[Run]) -> dict:
    n, ln = size_points(runs)
    d, ld, n_for_d = data_points(runs)
    c, lc, source = frontier_points(runs)
    alpha_n, n_c = power_law(n, ln)
    alpha_d, d_c = power_law(d, ld)
    alpha_c, c_c = power_law(c, lc)
    return {"alpha_N": alpha_n, "N_c": n_c, "alpha_D": alpha_d, "D_c": d_c, "alpha_C": alpha_c, "C_c": c_c,
            "points": {"N": [n.tolist(), ln.tolist()], "D": [d.tolist(), ld.tolist()],
                       "C": [c.tolist(), lc.tolist()]},
            "D_fit_params": n_for_d, "frontier_from": source}


# --------------------------------------------------------------------------- Chinchilla


def _objective(x: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray) -> tuple[float, np.ndarray]:
    """Sum of Huber(log-sum-exp prediction - log L) and its gradient in (a, b, e, alpha, beta)."""
    a, b, e, alpha, beta = x
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    r = logsumexp(terms, axis=0) - log_l
    p = softmax(terms, axis=0)
    w = np.clip(r, -HUBER_DELTA, HUBER_DELTA)  # d huber / d r
    grad = np.array([(w * p[0]).sum(), (w * p[1]).sum(), (w * p[2]).sum(),
                     -(w * p[0] * log_n).sum(), -(w * p[1] * log_d).sum()])
    return float(huber(HUBER_DELTA, r).sum()), grad


def _minimise(x0, args) -> tuple[float, np.ndarray]:
    res = minimize(_objective, np.asarray(x0, dtype=float), args=args, jac=True, method="L-BFGS-B")
    return float(res.fun), res.x


def grid_starts() -> np.ndarray:
    """Every combination of the paper's grid values, one start a row (a, b, e, alpha, beta)."""
    return np.array(list(itertools.product(GRID["a"], GRID["b"], GRID["e"], GRID["alpha"], GRID["beta"])))


def rank_starts(starts: np.ndarray, args) -> np.ndarray:
    """The starts ordered by their objective value (evaluated all at once, no optimisation)."""
    log_n, log_d, log_l = args
    a, b, e, alpha, beta = (starts[:, i:i + 1] for i in range(5))
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.broadcast_to(e, (len(starts), len(log_n)))])
    values = huber(HUBER_DELTA, logsumexp(terms, axis=0) - log_l).sum(axis=1)
    return starts[np.argsort(values, kind="stable")]


def fit_chinchilla(runs: list[Run], starts: np.ndarray | None = None, top: int = 32, keep: int = 0) -> dict:
    """Approach 3: L-BFGS from the ``top`` best points of the start grid (default: the paper's
    4,500-point grid, ranked by the objective at each point); the best minimum wins. ``keep`` > 0
    also returns that many best end points (the bootstrap's starts)."""
    args = (np.log([r.params for r in runs]), np.log([r.tokens for r in runs]), np.log([r.loss for r in runs]))
    grid = grid_starts() if starts is None else np.asarray(starts, dtype=float)
    chosen = rank_starts(grid, args)[:top]
    results = sorted((_minimise(x0, args) for x0 in chosen), key=lambda t: t[0])
    value, (a, b, e, alpha, beta) = results[0]
    out = {"E": float(np.exp(e)), "A": float(np.exp(a)), "B": float(np.exp(b)), "alpha": float(alpha),
           "beta": float(beta), "objective": value, "huber_delta": HUBER_DELTA,
           "grid_points": len(grid), "lbfgs_starts": len(chosen)}
    out.update(allocation(alpha, beta))
    if keep:
        out["best_starts"] = [x.tolist() for _, x in results[:keep]]
    return out


def predict(fit: dict, n, d):
    return fit["E"] + fit["A"] / np.power(n, fit["alpha"]) + fit["B"] / np.power(d, fit["beta"])


def allocation(alpha: float, beta: float) -> dict:
    """Exponents of N_opt ~ C^a and D_opt ~ C^b."""
    total = alpha + beta
    if total <= 0:
        return {"a": float("nan"), "b": float("nan")}
    return {"a": float(beta / total), "b": float(alpha / total)}


def compute_optimal(fit: dict, budget: float) -> dict:
    """N_opt, D_opt (C = 6ND) and the loss the fitted law predicts there."""
    alpha, beta, big_a, big_b = fit["alpha"], fit["beta"], fit["A"], fit["B"]
    if alpha <= 0 or beta <= 0:
        raise ScalingError(f"the fit has alpha={alpha:.3g}, beta={beta:.3g}: with a non-positive exponent "
                           f"there is no compute-optimal size (loss does not fall with N or D)")
    ab = allocation(alpha, beta)
    g = (alpha * big_a / (beta * big_b)) ** (1.0 / (alpha + beta))
    n_opt = g * (budget / 6.0) ** ab["a"]
    d_opt = (budget / 6.0) ** ab["b"] / g
    return {"budget_flops": budget, "N_opt": n_opt, "D_opt": d_opt, "tokens_per_param": d_opt / n_opt,
            "loss": float(predict(fit, n_opt, d_opt)), **ab}


# --------------------------------------------------------------------------- bootstrap


def bootstrap(runs: list[Run], chinchilla: dict, samples: int, seed: int) -> dict:
    """95% intervals of every exponent (and constant) from refits on resampled runs. The
    Chinchilla refits start from the full fit's best end points, not the whole grid."""
    rng = np.random.default_rng(seed)
    starts = np.array(chinchilla["best_starts"])
    draws: dict[str, list[float]] = {}
    skipped = 0
    for _ in range(samples):
        sample = [runs[i] for i in rng.integers(0, len(runs), len(runs))]
        try:
            check_fittable(sample)
            k = fit_kaplan(sample)
        except ScalingError:
            skipped += 1
            continue
        ch = fit_chinchilla(sample, starts=starts, top=len(starts))
        for key in ("alpha_N", "alpha_D", "alpha_C"):
            draws.setdefault(key, []).append(k[key])
        for key in ("E", "A", "B", "alpha", "beta", "a", "b"):
            draws.setdefault(key, []).append(ch[key])
    intervals = {key: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for key, v in draws.items()}
    return {"intervals": intervals, "samples": samples - skipped, "skipped": skipped}


def fit_all(runs: list[Run], budgets: list[float], samples: int = 100, seed: int = 0, top: int = 32,
            boot_starts: int = 2) -> dict:
    check_fittable(runs)
    kaplan = fit_kaplan(runs)
    chinchilla = fit_chinchilla(runs, top=top, keep=boot_starts)
    boot = bootstrap(runs, chinchilla, samples, seed) if samples else {"intervals": {}, "samples": 0, "skipped": 0}
    ci = boot["intervals"]
    kaplan["ci95"] = {k: ci[k] for k in ("alpha_N", "alpha_D", "alpha_C") if k in ci}
    chinchilla["ci95"] = {k: ci[k] for k in ("E", "A", "B", "alpha", "beta", "a", "b") if k in ci}
    chinchilla.pop("best_starts", None)
    advice = [compute_optimal(chinchilla, c) for c in budgets] if chinchilla["alpha"] > 0 and chinchilla["beta"] > 0 \
        else []
    return {"kaplan": kaplan, "chinchilla": chinchilla, "compute_optimal": advice,
            "bootstrap": {"samples": boot["samples"], "skipped": boot["skipped"], "seed": seed},
            "data": {"runs": len(runs), "sizes": len({r.params for r in runs}),
                     "token_budgets": len({r.tokens for r in runs}),
                     "params_range": [min(r.params for r in runs), max(r.params for r in runs)],
                     "tokens_range": [min(r.tokens for r in runs), max(r.tokens for r in runs)]},
            "published": {"kaplan": KAPLAN_PUBLISHED, "chinchilla": {**CHINCHILLA_PUBLISHED,
                                                                     **allocation(0.34, 0.28)}}}

