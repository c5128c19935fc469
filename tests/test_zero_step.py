"""The cheaper ZeRO-1/2 step paths of ``dist_pretrain/zero_step.py`` give DeepSpeed's results.

* The grad norm's bf16 path (cast through a reused fp32 scratch) equals a norm of the whole
  gradient cast at once, bit for bit, across chunk boundaries and with inf.
* At DP=1 (``single_rank_reduction``, and on CPU ``kept_fp32_gradient_cast``) a bf16 ZeRO-2 run
  with four micro-batches per step gives the same losses and grad norms, bit for bit, as the
  same run through DeepSpeed's own bucket / flatten / all-reduce path and its fresh fp32 cast of
  each gradient partition (both replacements switched off in that process).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dist_pretrain.zero_step import CAST_ROWS, ROW, squared_norm

ROOT = Path(__file__).resolve().parents[1]


def norm_cast_at_once(g: torch.Tensor) -> torch.Tensor:
    flat = g.reshape(-1)
    whole = flat.numel() // ROW * ROW
    parts = []
    if whole:
        parts.append(torch.linalg.vector_norm(flat[:whole].view(-1, ROW), 2, dim=1, dtype=torch.float32))
    if whole < flat.numel():
        parts.append(torch.linalg.vector_norm(flat[whole:], 2, dtype=torch.float32).reshape(1))
    return torch.cat(parts).to(torch.float64).pow(2).sum()


@pytest.mark.parametrize("numel", [7, ROW, ROW * CAST_ROWS + 3, ROW * (2 * CAST_ROWS + 5) + 11])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_squared_norm_equals_the_norm_of_a_whole_fp32_copy(numel, dtype):
    g = torch.randn(numel, generator=torch.Generator().manual_seed(numel)).mul(3).to(dtype)
    assert torch.equal(squared_norm(g), norm_cast_at_once(g))
    g[numel // 2] = float("inf")
    assert squared_norm(g).isinf()


# argv: "ours" | "deepspeed", a file that records whether each replacement was installed, train args
RUN = """
import json, sys
import dist_pretrain.engine as engine
from dist_pretrain.cli import main
which, marker, used = sys.argv[1], sys.argv[2], []
for name in ("single_rank_reduction", "kept_fp32_gradient_cast"):
    original = getattr(engine, name)
    setattr(engine, name, lambda opt, original=original: used.append(original(opt) if which == "ours" else False))
code = main(["train", *sys.argv[3:]])
json.dump(used, open(marker, "w"))
sys.exit(code)
"""


def run(tmp_path: Path, which: str) -> tuple[list[dict], list[bool]]:
    run_dir, marker = tmp_path / which, tmp_path / f"{which}.json"
    cmd = [sys.executable, "-c", RUN, which, str(marker), str(ROOT / "configs/gpt/tiny.yaml"), f"run_dir={run_dir}",
           "train.precision=bf16", "parallel.zero_stage=2", "train.steps=3", "train.micro_batch_size=2",
           "train.global_batch_size=8", "train.grad_clip=1.0", "checkpoint.interval=0",
           "monitor.tensorboard=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    return rows, json.loads(marker.read_text())


def test_single_rank_reduction_equals_deepspeeds_path_bf16_zero2_four_microbatches(tmp_path):
    ours, installed = run(tmp_path, "ours")
    deepspeed, not_installed = run(tmp_path, "deepspeed")
    assert installed == [True, True] and not_installed == [False, False]
    keys = ["train/loss", "train/grad_norm"]
    assert len(ours) == len(deepspeed) == 3
    assert [[r[k] for k in keys] for r in ours] == [[r[k] for k in keys] for r in deepspeed]
