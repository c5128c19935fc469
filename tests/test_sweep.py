"""Scaling sweeps: the plan a sweep file expands to, the WSD schedule, and one real local sweep
(two sizes side by side, each a WSD trunk and a decay branch from its checkpoint) whose rows
``scaling fit`` reads; the parameter count checked against the trained checkpoint's tensors."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from dist_pretrain.config import load_config, validate
from dist_pretrain.errors import ConfigError
from dist_pretrain.lr_schedule import learning_rate

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs/gpt/tiny.yaml"


def sweep_file(tmp: Path, shards: Path, **extra) -> Path:
    spec = {"base": str(TINY),
            "overrides": ["data.synthetic=false", f"data.path={shards}", "model.vocab_size=null",
                          "train.warmup_steps=2", "monitor.peak_tflops=1", "monitor.tensorboard=false",
                          "data.num_workers=0", "train.threads=1"],
            "sweep_dir": str(tmp / "sweep"),
            "sizes": ["gpt-nano", {"num_layers": 2, "hidden_size": 48, "num_attention_heads": 3, "name": "w48"}],
            "tokens": {"explicit": [2560]}, "schedule": {"kind": "wsd", "decay_fraction": 0.25},
            "validation_batches": 4, "executor": {"kind": "local", "parallel": 2}, **extra}
    path = tmp / "sweep.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def test_wsd_schedule_and_its_validation():
    cfg = load_config(TINY, ["train.decay=wsd", "train.steps=20", "train.warmup_steps=2",
                             "train.decay_steps=5", "train.lr=1e-3", "train.min_lr=1e-4"])
    lrs = [learning_rate(s, cfg) for s in range(1, 21)]
    assert lrs[1] == 1e-3 and all(lr == 1e-3 for lr in lrs[1:15])  # stable until step 15
    assert lrs[15] == pytest.approx(1e-4 + 9e-4 * (1 - math.sqrt(1 / 5)))  # 1 - sqrt decay
    assert lrs[-1] == pytest.approx(1e-4)
    # the stable phase does not depend on the run length: a branch can start from any of its checkpoints
    longer = load_config(TINY, ["train.decay=wsd", "train.steps=40", "train.warmup_steps=2", "train.decay_steps=10"])
    assert [learning_rate(s, longer) for s in range(1, 16)] == lrs[:15]
    for bad, message in ((["train.decay=wsd", "train.steps=10", "train.decay_steps=9"], "does not fit"),
                         (["train.decay=cosine", "train.decay_steps=3"], "only used by train.decay=wsd")):
        with pytest.raises(ConfigError, match=message):
            validate(load_config(TINY, bad), 1)


def test_plan_trunk_segments_and_branches(tmp_path, real_lm_shards):
    from dist_pretrain.scaling.sweep import plan

    path = sweep_file(tmp_path, real_lm_shards, tokens={"explicit": [2560, 5120, 10240]})
    sweep = plan(path)
    runs = sweep.tasks[0].runs
    assert [(r.kind, r.steps) for r in runs] == [("trunk", 8), ("branch", 10), ("trunk", 15), ("branch", 20),
                                                ("trunk", 30), ("branch", 40)]
    assert runs[3].resume_from == (runs[2].run_dir, 15) and "train.decay_steps=5" in runs[3].overrides
    cosine = plan(sweep_file(tmp_path, real_lm_shards, schedule={"kind": "cosine"},
                             sizes=[{"num_layers": [2, 4], "aspect_ratio": 16, "head_size": 16}]))
    assert [t.size for t in cosine.tasks] == ["l2-h32", "l4-h64"]
    assert [r.kind for r in cosine.tasks[1].runs] == ["cosine"]
    with pytest.raises(ConfigError, match="before the warm-up ends"):
        plan(sweep_file(tmp_path, real_lm_shards, tokens={"explicit": [256]}))
    with pytest.raises(ConfigError, match="not a preset"):
        plan(sweep_file(tmp_path, real_lm_shards, sizes=["gpt-huge"]))


def test_local_sweep_wsd_rows_and_relaunch(tmp_path, real_lm_shards):
    path = sweep_file(tmp_path, real_lm_shards)
    cmd = [sys.executable, "-m", "dist_pretrain", "sweep", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = tmp_path / "sweep/results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["name"] for r in rows] == ["gpt-nano-s10", "w48-s10"]
    for row in rows:
        assert row["schedule"] == "wsd" and row["tokens"] == 10 * 8 * 32 and row["steps"] == 10
        assert row["flops_6nd"] == 6 * row["params"] * row["tokens"] < row["flops_megatron"]
        assert 0 < row["loss_se"] < 0.05 * row["loss"] and row["val_samples"] == 32
        assert len(row["curve"]) >= 5 and row["curve"][-1][0] == row["tokens"]
        log = (Path(row["run_dir"]) / "train.log").read_text()
        assert "resumed from" in log and "-trunk/checkpoints/step-00000008" in log  # the branch left the trunk at 8
    # N counts the trained model's non-embedding tensors (an independent count: the checkpoint)
    from dist_pretrain.checkpoint import consolidate

    weights = consolidate(Path(rows[1]["run_dir"]) / "checkpoints/step-00000010")
    total = sum(t.numel() for t in weights.values())
    non_embedding = sum(t.numel() for k, t in weights.items() if "embedding" not in k and "output_layer" not in k)
    assert (rows[1]["params"], rows[1]["params_total"]) == (non_embedding, total)
    # relaunched: everything is finished, nothing runs again
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("finished, skipped") == 4, again.stdout
    assert results.read_text().count("\n") == 2
    # the rows fit (2 sizes x 1 budget is too few: a clear error naming what is missing)
    fit = subprocess.run([sys.executable, "-m", "dist_pretrain", "scaling", "fit", str(results), "--output",
                          str(tmp_path / "fit")], capture_output=True, text=True, timeout=120)
    assert fit.returncode == 2 and "one token count" in fit.stderr
