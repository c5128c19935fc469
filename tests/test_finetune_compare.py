"""benchmarks/finetune_compare.py's table from finished runs (--report-only, no training): with
validation (the shipped configs) and without (the demo's train.eval_interval=0, where the test
metrics are the final weights'). The runs' histories are written here as the trainer writes them."""

import json
from pathlib import Path

from benchmarks.finetune_compare import command, main
from dist_pretrain.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs/t5/text2text.yaml")


def write_run(run_dir: Path, last: dict) -> None:
    run_dir.mkdir(parents=True)
    rows = [{"step": 1, "train/loss": 9.0}, {"step": 2, "train/loss": 8.0, **last}]
    (run_dir / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def table(capsys, root: Path, *overrides: str) -> list[str]:
    assert main([CONFIG, f"run_dir={root}", "checkpoint.init_from=null", *overrides,
                 "--seeds", "1", "--report-only"]) == 0
    return capsys.readouterr().out.splitlines()


def test_table_without_validation_reports_the_final_test(tmp_path, capsys):
    write_run(tmp_path / "pretrained-1", {"test/rouge_l": 0.25, "test/exact_match": 0.0})
    write_run(tmp_path / "scratch-1", {"test/rouge_l": 0.125, "test/exact_match": 0.0})
    out = table(capsys, tmp_path, "train.epochs=null", "train.steps=2", "train.warmup_steps=1",
                "train.eval_interval=0")
    assert any("2 steps, no validation (train.eval_interval=0): test of the final weights" in line for line in out)
    assert "| init | test/rouge_l | test/exact_match |" in out
    assert "| pretrained | 0.2500 | 0.0000 |" in out
    assert "| scratch | 0.1250 | 0.0000 |" in out


def test_table_with_validation_keeps_the_best_validation_value(tmp_path, capsys):
    for arm, value in (("pretrained", 0.5), ("scratch", 0.375)):
        write_run(tmp_path / f"{arm}-1", {"val/rouge_l": value, "val/best_rouge_l": value, "test/rouge_l": value / 2})
    out = table(capsys, tmp_path, "train.epochs=2")
    assert any("2 epochs, validation every 100 steps and at each epoch end" in line for line in out)
    assert "| init | val/best_rouge_l | test/rouge_l |" in out
    assert "| pretrained | 0.5000 | 0.2500 |" in out
    assert "| scratch | 0.3750 | 0.1875 |" in out


def test_each_run_has_its_own_run_dir_whatever_the_overrides_say(tmp_path):
    """demo.sh passes run_dir=ROOT among the overrides; each arm must still train in ROOT/ARM-SEED."""
    cmd = command(CONFIG, tmp_path / "scratch-1", [f"run_dir={tmp_path}", "checkpoint.init_from=null"])
    assert load_config(cmd[2], cmd[3:]).run_dir == str(tmp_path / "scratch-1")


def test_a_bad_override_is_one_error_line_before_any_run(tmp_path, capsys):
    assert main(["configs/bert/sentiment.yaml", "train.stepz=75", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [line for line in err if line.startswith("error: ")] and "train.stepz" in err[0]
    assert "Traceback" not in "".join(err) and not list(tmp_path.iterdir())


def write_finished(run_dir: Path, overrides: list[str]) -> None:
    """A finished run as the trainer leaves it: history to train.steps, checkpoints/latest, meta.json."""
    write_run(run_dir, {"val/rouge_l": 0.5, "val/best_rouge_l": 0.5, "test/rouge_l": 0.25})
    cfg = load_config(CONFIG, [*overrides, f"run_dir={run_dir}"]).model_dump(mode="json")
    cfg["train"]["steps"] = 2  # what the trainer saves: the steps it resolved from train.epochs
    (run_dir / "checkpoints" / "step-00000002").mkdir(parents=True)
    (run_dir / "checkpoints" / "step-00000002" / "meta.json").write_text(json.dumps({"config": cfg}))
    (run_dir / "checkpoints" / "latest").write_text("step-00000002")


def test_finished_runs_are_reused_only_for_the_same_config(tmp_path, capsys, monkeypatch):
    """A rerun with other overrides must not report the old runs as its own (demo.sh reruns in
    the same run_dir): one error line naming the key, before anything trains."""
    for arm, extra in (("pretrained", []), ("scratch", ["checkpoint.init_from=null"])):
        write_finished(tmp_path / f"{arm}-1", ["seed=1", *extra])
    trained = []
    monkeypatch.setattr("benchmarks.finetune_compare.subprocess.run", lambda *a, **k: trained.append(a))
    assert main([CONFIG, "--root", str(tmp_path), "--seeds", "1"]) == 0  # the same config: read, not rerun
    assert "| pretrained | 0.5000 | 0.2500 |" in capsys.readouterr().out and not trained
    assert main([CONFIG, "train.lr=3e-4", "--root", str(tmp_path), "--seeds", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "train.lr: 0.001 there, 0.0003 now" in err[0]
    assert not trained


def test_a_metric_only_some_runs_logged_is_averaged_over_those_and_says_so(tmp_path, capsys):
    """Runs of an older version lack a newer metric: the table keeps every column and marks it."""
    for seed, extra in ((1, {}), (2, {"test/distinct_outputs": 0.5})):
        for arm in ("pretrained", "scratch"):
            write_run(tmp_path / f"{arm}-{seed}", {"test/rouge_l": 0.25 * seed, **extra})
    assert main([CONFIG, f"run_dir={tmp_path}", "checkpoint.init_from=null", "train.eval_interval=0",
                 "--seeds", "1", "2", "--report-only"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "| init | test/rouge_l | test/distinct_outputs |" in out
    assert "| pretrained | 0.3750 ± 0.1768 | 0.5000 (1 of 2) |" in out
