"""The seed's figures, from a fit and its runs (PNG, matplotlib's Agg backend, no display).

* ``scaling_laws.png`` (Figure 11.9.9): three log-log panels, loss against compute (the
  efficient frontier), dataset size (the largest model) and parameters (the most tokens per
  size), points and fitted power laws, each with its law written on it.
* ``loss_curves.png`` (Figure 11.9.10): loss against tokens processed, one curve per run
  coloured by model size; loss against compute for every run with the efficient frontier.
* ``chinchilla.png``: each run's loss against the Chinchilla fit's prediction, and the
  fitted L(N, D) lines per size over D.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.ticker import FormatStrFormatter  # noqa: E402

from dist_pretrain.scaling.fit import predict  # noqa: E402
from dist_pretrain.scaling.results import Run  # noqa: E402


def plain_loss_axis(ax) -> None:
    """Loss ticks as 3.5, not 3.5x10^0 (a log axis over less than a decade)."""
    ax.yaxis.set_major_formatter(FormatStrFormatter("%.1f"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%.1f"))


def _law_panel(ax, x, y, alpha, x_c, var: str, xlabel: str, colour: str) -> None:
    x, y = np.asarray(x), np.asarray(y)
    ax.loglog(x, y, "o", color=colour, ms=5, label="measured")
    xs = np.geomspace(x.min() / 1.5, x.max() * 1.5, 100)
    ax.loglog(xs, (x_c / xs) ** alpha, "--", color="black", lw=1.2,
              label=f"L = ({var}$_c$/{var})$^{{{alpha:.3f}}}$\n{var}$_c$ = {x_c:.2e}")
    ax.set_xlabel(xlabel)
    ax.legend(loc="upper right", fontsize=9, framealpha=0.9)
    ax.grid(True, which="both", alpha=0.25)
    plain_loss_axis(ax)


def scaling_laws(fit: dict, out: Path) -> Path:
    k = fit["kaplan"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), sharey=True)
    c, lc = k["points"]["C"]
    _law_panel(axes[0], c, lc, k["alpha_C"], k["C_c"], "C", "Compute C (training FLOPs)", "tab:blue")
    axes[0].set_title(f"Loss vs compute (frontier from {k['frontier_from']})", fontsize=10)
    d, ld = k["points"]["D"]
    _law_panel(axes[1], d, ld, k["alpha_D"], k["D_c"], "D", "Dataset size D (tokens)", "tab:green")
    axes[1].set_title(f"Loss vs tokens (N = {k['D_fit_params']:.3g} non-embedding)", fontsize=10)
    n, ln = k["points"]["N"]
    _law_panel(axes[2], n, ln, k["alpha_N"], k["N_c"], "N", "Parameters N (non-embedding)", "tab:red")
    axes[2].set_title("Loss vs parameters (most tokens per size)", fontsize=10)
    # the compute frontier may come from the runs' training-loss curves; D and N are validation losses
    axes[0].set_ylabel("Loss (nats/token): validation for D and N")
    fig.tight_layout()
    path = out / "scaling_laws.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def loss_curves(fit: dict, runs: list[Run], out: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    norm = LogNorm(min(r.params for r in runs), max(r.params for r in runs) * 1.0001)
    cmap = plt.get_cmap("viridis")
    for r in sorted(runs, key=lambda r: (r.params, r.tokens)):
        colour = cmap(norm(r.params))
        if len(r.curve):
            axes[0].loglog(r.curve[:, 0], r.curve[:, 1], color=colour, lw=1, alpha=0.8)
            axes[1].loglog(r.curve[:, 0] * r.flops_per_token, r.curve[:, 1], color=colour, lw=1, alpha=0.8)
        axes[0].plot(r.tokens, r.loss, "o", color=colour, ms=4)
        axes[1].plot(r.flops, r.loss, "o", color=colour, ms=4)
    k = fit["kaplan"]
    c, lc = (np.asarray(v) for v in k["points"]["C"])
    axes[1].loglog(c, lc, color="black", lw=2.5, alpha=0.35, label="efficient frontier")
    axes[1].loglog(c, (k["C_c"] / c) ** k["alpha_C"], "--", color="black", lw=1.2,
                   label=f"L = (C$_c$/C)$^{{{k['alpha_C']:.3f}}}$")
    axes[0].set_xlabel("Tokens processed")
    axes[1].set_xlabel("Compute (training FLOPs)")
    axes[0].set_ylabel("Loss (nats/token)")
    axes[0].set_title("Loss vs tokens, one curve per run (dots: final validation loss)", fontsize=10)
    axes[1].set_title("Loss vs compute and the compute-efficient frontier", fontsize=10)
    axes[1].legend(loc="upper right", fontsize=9)
    for ax in axes:
        ax.grid(True, which="both", alpha=0.25)
        plain_loss_axis(ax)
    bar = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes, fraction=0.03, pad=0.02)
    bar.set_label("Parameters N (non-embedding)")
    path = out / "loss_curves.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def chinchilla(fit: dict, runs: list[Run], out: Path) -> Path:
    ch = fit["chinchilla"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    sizes = sorted({r.params for r in runs})
    norm = LogNorm(sizes[0], sizes[-1] * 1.0001)
    cmap = plt.get_cmap("viridis")
    for n in sizes:
        mine = sorted((r for r in runs if r.params == n), key=lambda r: r.tokens)
        d = np.array([r.tokens for r in mine])
        axes[0].plot(d, [r.loss for r in mine], "o", color=cmap(norm(n)), ms=5)
        ds = np.geomspace(d.min() / 1.3, d.max() * 1.3, 50)
        axes[0].plot(ds, predict(ch, n, ds), "-", color=cmap(norm(n)), lw=1, label=f"N = {n:.3g}")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("Tokens D")
    axes[0].set_ylabel("Validation loss")
    axes[0].set_title(f"L = {ch['E']:.3g} + {ch['A']:.3g}/N$^{{{ch['alpha']:.3f}}}$ + "
                      f"{ch['B']:.3g}/D$^{{{ch['beta']:.3f}}}$", fontsize=10)
    axes[0].legend(fontsize=7, ncol=2)
    measured = np.array([r.loss for r in runs])
    fitted = predict(ch, np.array([r.params for r in runs]), np.array([r.tokens for r in runs]))
    axes[1].plot(fitted, measured, "o", ms=4)
    lims = [min(measured.min(), fitted.min()), max(measured.max(), fitted.max())]
    axes[1].plot(lims, lims, "--", color="black", lw=1)
    axes[1].set_xlabel("Chinchilla fit (approach 3)")
    axes[1].set_ylabel("Measured")
    axes[1].set_title("Measured vs fitted loss, every run", fontsize=10)
    for ax in axes:
        ax.grid(True, which="both", alpha=0.25)
    fig.tight_layout()
    path = out / "chinchilla.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def all_plots(fit: dict, runs: list[Run], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    return [scaling_laws(fit, out), loss_curves(fit, runs, out), chinchilla(fit, runs, out)]
