"""In-context evaluation during pretraining: a tiny GPT on real English (BPE 1,000) at PP=2 under
torchrun logs ``icl/<task>/<k>shot_<metric>`` to TensorBoard at the interval and after the last
step, and the last values equal ``dist-pretrain evaluate`` of the final checkpoint on one process
(the same model scored at the training layout and alone); config rules reject what cannot run."""

import json
import os
import subprocess
import sys

import pytest

from dist_pretrain.config import Config
from dist_pretrain.config_rules import config_problems

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def test_icl_config_rules():
    cfg = Config.model_validate({"family": "t5", "data": {"synthetic": True}, "parallel": {"zero_stage": 3},
                                 "eval": {"icl_tasks": [{"task": "no-such-task"}]}})
    problems = "\n".join(config_problems(cfg, 1))
    for part in ("eval.icl_interval=0", "model.arch=t5", "ZeRO-3", "data.synthetic=true", "'no-such-task'"):
        assert part in problems, problems
    assert Config.model_validate({"eval": {"icl_tasks": [{"task": "polarity", "shots": 1}]}}).eval.icl_tasks[0].shots == [1]
    with pytest.raises(ValueError, match="number of demonstrations >= 0"):
        Config.model_validate({"eval": {"icl_tasks": [{"task": "polarity", "shots": [0, -1]}]}})


def test_icl_tags_during_training_equal_evaluate_of_the_final_checkpoint(real_lm_shards, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    mc = tmp_path / "mc.jsonl"
    mc.write_text("".join(json.dumps({"query": f"The {w} is", "choices": [" red", " big", " gone"], "gold": i % 3}) + "\n"
                          for i, w in enumerate(["cat", "house", "river", "king", "city", "war", "law"])))
    lm = tmp_path / "lm.jsonl"
    lm.write_text("".join(json.dumps({"context": f"In {y} the city", "continuation": " was"}) + "\n"
                          for y in range(1900, 1905)))
    tasks = f"[{{task: {mc}, shots: [0, 2]}}, {{task: {lm}, shots: 1}}]"
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "dist_pretrain",
           "train", "configs/gpt/tiny.yaml", f"run_dir={run_dir}", f"data.path={real_lm_shards}", "data.synthetic=false",
           "model.vocab_size=null", "parallel.nproc=2", "parallel.pipeline=2", "train.steps=3", "monitor.peak_tflops=1",
           f"eval.icl_tasks={tasks}", "eval.icl_interval=2", "eval.icl_batch_size=4"]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("in-context evaluation at step") == 2  # steps 2 and 3 (the last)
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = {t for t in events.Tags()["scalars"] if t.startswith("icl/")}
    assert tags == {"icl/mc/0shot_acc", "icl/mc/0shot_acc_norm", "icl/mc/2shot_acc", "icl/mc/2shot_acc_norm",
                    "icl/lm/1shot_acc", "icl/lm/1shot_perplexity"}
    assert all([e.step for e in events.Scalars(t)] == [2, 3] for t in tags)
    out = tmp_path / "final.json"
    ev = subprocess.run([sys.executable, "-m", "dist_pretrain", "evaluate", str(run_dir), "--task", str(mc),
                         "--task", str(lm), "--shots", "0,1,2", "--output", str(out)], cwd=ROOT, env=ENV,
                        capture_output=True, text=True, timeout=600, check=False)
    assert ev.returncode == 0, ev.stderr[-3000:]
    alone = {f"icl/{r['task']}/{r['shots']}shot_{r['metric']}": r["value"] for r in json.loads(out.read_text())}
    for tag in tags:
        assert events.Scalars(tag)[-1].value == pytest.approx(alone[tag], rel=1e-5), tag
