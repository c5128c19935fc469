"""Scaling-law fits: recover known parameters from synthetic runs, the published Chinchilla
allocation, the CLI's outputs, and clear errors for data that cannot be fitted."""
import json
import subprocess
import sys

import numpy as np
import pytest

from dist_pretrain.scaling.fit import CHINCHILLA_PUBLISHED, allocation, compute_optimal, fit_chinchilla
from dist_pretrain.scaling.results import ScalingError, check_fittable, load_results, parse_rows

P = CHINCHILLA_PUBLISHED


def chinchilla_rows(noise: float, seed: int = 0) -> list[dict]:
    """6 sizes x 4 token budgets from L = E + A/N^alpha + B/D^beta, multiplicative noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in np.geomspace(1e6, 1e9, 6):
        for d in np.geomspace(1e8, 1e11, 4):
            law = lambda t: P["E"] + P["A"] / n ** P["alpha"] + P["B"] / t ** P["beta"]  # noqa: E731
            curve = [[t, law(t)] for t in np.geomspace(d / 30, d, 12)]
            rows.append({"params": n, "tokens": d, "loss": law(d) * (1 + noise * rng.standard_normal()),
                         "curve": curve})
    return rows


def test_published_chinchilla_allocation_is_about_046():
    ab = allocation(P["alpha"], P["beta"])
    assert ab["a"] == pytest.approx(0.46, abs=0.01) and ab["a"] + ab["b"] == pytest.approx(1.0)
    # the paper's unrounded exponents give its 0.46 (Table 2, approach 3)
    assert allocation(0.3392, 0.2849)["a"] == pytest.approx(0.46, abs=0.005)
    adv = compute_optimal(P, 5.76e23)  # Chinchilla's own budget: ~70B params, ~1.4T tokens
    assert 2e10 < adv["N_opt"] < 1.5e11 and 6 * adv["N_opt"] * adv["D_opt"] == pytest.approx(5.76e23)


def test_recovers_chinchilla_exponents_from_noisy_runs():
    """1% noise: alpha and beta within 0.03 of the truth (measured: about 0.01)."""
    fit = fit_chinchilla(parse_rows(chinchilla_rows(0.01)), top=8)
    assert fit["alpha"] == pytest.approx(P["alpha"], abs=0.03)
    assert fit["beta"] == pytest.approx(P["beta"], abs=0.03)
    assert fit["E"] == pytest.approx(P["E"], rel=0.05)


def test_cli_writes_fit_json_table_and_plots(tmp_path):
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in chinchilla_rows(0.0)))
    out = tmp_path / "fit"
    proc = subprocess.run([sys.executable, "-m", "dist_pretrain", "scaling", "fit", str(results), "--output",
                           str(out), "--budget", "1e21", "--bootstrap", "4", "--starts", "4"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    fit = json.loads((out / "fit.json").read_text())
    assert set(fit["chinchilla"]) >= {"E", "A", "B", "alpha", "beta", "a", "b", "ci95"}
    assert set(fit["kaplan"]) >= {"alpha_N", "alpha_D", "alpha_C", "N_c", "D_c", "C_c", "ci95"}
    assert fit["chinchilla"]["alpha"] == pytest.approx(P["alpha"], abs=0.01)  # noiseless
    assert fit["kaplan"]["frontier_from"] == "loss curves" and fit["kaplan"]["alpha_C"] > 0
    assert fit["compute_optimal"][0]["budget_flops"] == 1e21
    assert "Chinchilla alpha" in proc.stdout and "N_opt" in proc.stdout
    for png in ("scaling_laws.png", "loss_curves.png", "chinchilla.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("rows, message", [
    ([{"params": 1e6, "tokens": t, "loss": 3.0 - t / 1e10} for t in (1e8, 2e8, 4e8, 8e8, 1.6e9)],
     "one model size"),
    ([{"params": 1e6, "tokens": 1e8, "loss": -1.0}], "loss=-1.0"),
    ([{"params": 1e6, "tokens": 1e8, "loss": float("nan")}], "loss=nan"),
    ([{"params": 1e6, "loss": 3.0}], "no 'tokens'"),
    ([{"params": "big", "tokens": 1e8, "loss": 3.0}], "params='big' is not a number"),
])
def test_degenerate_inputs_get_clear_errors(rows, message):
    with pytest.raises(ScalingError, match=message):
        check_fittable(parse_rows(rows))


def test_cli_reports_bad_file_without_traceback(tmp_path):
    bad = tmp_path / "r.jsonl"
    bad.write_text('{"params": 1e6, "tokens": 1e8, "loss": NaN}\n')
    proc = subprocess.run([sys.executable, "-m", "dist_pretrain", "scaling", "fit", str(bad), "--output",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "error:" in proc.stderr and "loss=nan" in proc.stderr
    assert "Traceback" not in proc.stderr
    with pytest.raises(ScalingError, match="does not exist"):
        load_results(tmp_path / "missing.jsonl")
