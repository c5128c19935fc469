"""Reading and checking a results file (one JSON object a line, one finished run each).

A row needs ``params`` (non-embedding parameters N), ``tokens`` (training tokens D) and
``loss`` (final validation loss); ``flops`` (training FLOPs C) defaults to 6ND, and
``curve`` (``[[tokens, loss], ...]``, the run's loss as training went on) feeds the
compute-efficient frontier. Anything else in a row is kept and ignored, so users can fit
rows from their own cluster. Every problem names the line and the value.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dist_pretrain.errors import UserError


class ScalingError(UserError):
    """Results that cannot be fitted, with the reason."""


@dataclass
class Run:
    params: float
    tokens: float
    loss: float
    flops: float
    curve: np.ndarray = field(default_factory=lambda: np.empty((0, 2)))  # columns: tokens, loss
    name: str = ""

    @property
    def flops_per_token(self) -> float:
        return self.flops / self.tokens


def _positive(row: dict, key: str, where: str, allow_missing: bool = False) -> float | None:
    if key not in row or row[key] is None:
        if allow_missing:
            return None
        raise ScalingError(f"{where}: no {key!r} (each row needs params, tokens and loss; got keys "
                           f"{', '.join(sorted(row)) or 'none'})")
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ScalingError(f"{where}: {key}={value!r} is not a number")
    if not math.isfinite(value) or value <= 0:
        raise ScalingError(f"{where}: {key}={value!r}; it must be a finite number > 0 "
                           f"(a NaN or non-positive loss means the run diverged or was not measured: "
                           f"drop the row or rerun it)")
    return float(value)


def _curve(row: dict, where: str) -> np.ndarray:
    raw = row.get("curve")
    if raw is None:
        return np.empty((0, 2))
    try:
        arr = np.asarray(raw, dtype=float)
    except (TypeError, ValueError):
        raise ScalingError(f"{where}: curve must be a list of [tokens, loss] pairs") from None
    if arr.size == 0:
        return np.empty((0, 2))
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ScalingError(f"{where}: curve must be a list of [tokens, loss] pairs, got shape {arr.shape}")
    keep = np.isfinite(arr).all(axis=1) & (arr > 0).all(axis=1)  # a skipped step's NaN is not a point
    arr = arr[keep]
    return arr[np.argsort(arr[:, 0], kind="stable")]


def parse_rows(rows: list[dict], source: str = "results") -> list[Run]:
    runs = []
    for i, row in enumerate(rows, 1):
        where = f"{source} row {i}"
        if not isinstance(row, dict):
            raise ScalingError(f"{where}: not a JSON object")
        params, tokens, loss = (_positive(row, k, where) for k in ("params", "tokens", "loss"))
        flops = _positive(row, "flops", where, allow_missing=True) or 6.0 * params * tokens
        runs.append(Run(params, tokens, loss, flops, _curve(row, where), str(row.get("name", f"row{i}"))))
    return runs


def load_results(path: str | Path) -> list[Run]:
    p = Path(path)
    if not p.is_file():
        raise ScalingError(f"results file {str(p)!r} does not exist (the JSONL a sweep writes: "
                           f"SWEEP_DIR/results.jsonl)")
    rows = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ScalingError(f"{p} line {n}: not JSON ({err.msg})") from None
    if not rows:
        raise ScalingError(f"results file {p} has no rows")
    return parse_rows(rows, str(p))


def check_fittable(runs: list[Run]) -> None:
    """At least two model sizes and two token counts, or no exponent is defined."""
    sizes = sorted({r.params for r in runs})
    budgets = sorted({r.tokens for r in runs})
    if len(sizes) < 2:
        raise ScalingError(f"all {len(runs)} rows have one model size (params={sizes[0]:.4g}): a scaling "
                           f"law needs at least 2 sizes (3 or more for a meaningful fit)")
    if len(budgets) < 2:
        raise ScalingError(f"all {len(runs)} rows have one token count (tokens={budgets[0]:.4g}): the "
                           f"data exponent needs at least 2 token budgets")
    if len(runs) < 5:
        raise ScalingError(f"{len(runs)} rows: the Chinchilla fit has 5 parameters and needs at least 5 "
                           f"runs (more sizes and token budgets)")
