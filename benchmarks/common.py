"""Shared pieces of the benchmarks: the benchmark GPT's size, the machine, in-process and
torchrun-launched training runs of *our* system, medians.

Every "ours" number comes from ``dist_pretrain.train.Trainer`` itself (its ``train_step``:
megatron-core schedule, forward, backward, engine reduction and AdamW update), never from
a bare model, so what is measured is what a user's run does.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class GPTSize:
    """One GPT shape, given identically to ours and to the peers."""

    layers: int
    hidden: int
    heads: int
    seq: int
    vocab: int
    micro_batch: int

    @property
    def tokens_per_micro_batch(self) -> int:
        return self.micro_batch * self.seq


# ~45M parameters (25.8M of them the tied GPT-2 embedding, vocab padded to 50304 as
# nanoGPT and Megatron do) at sequence 256: the size issue 7 asks for.
FULL = GPTSize(layers=6, hidden=512, heads=8, seq=256, vocab=50304, micro_batch=4)
SMOKE = GPTSize(layers=2, hidden=64, heads=4, seq=32, vocab=512, micro_batch=2)


def gpt_overrides(size: GPTSize, precision: str, global_batch: int | None = None, zero_stage: int = 1,
                  run_dir: str | None = None, steps: int = 1000) -> list[str]:
    """Config overrides for our GPT at ``size``: synthetic tokens, no dropout, no TensorBoard,
    no checkpoints, constant LR after one warm-up step (the schedule costs nothing either way)."""
    return [
        f"model.num_layers={size.layers}", f"model.hidden_size={size.hidden}",
        f"model.num_attention_heads={size.heads}", f"model.seq_length={size.seq}",
        f"model.vocab_size={size.vocab}", "model.tie_embeddings=true",
        "model.hidden_dropout=0.0", "model.attention_dropout=0.0",
        "data.synthetic=true", f"train.micro_batch_size={size.micro_batch}",
        f"train.global_batch_size={global_batch or size.micro_batch}",
        f"train.precision={precision}", f"parallel.zero_stage={zero_stage}",
        f"train.steps={steps}", "train.warmup_steps=1", "train.decay=constant", "train.grad_clip=1.0",
        "train.log_interval=1000000", "monitor.tensorboard=false", "monitor.peak_tflops=1",
        "checkpoint.resume=none", "checkpoint.save_final=false", f"run_dir={run_dir or tempfile.mkdtemp(prefix='bench-')}",
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_process_env() -> None:
    """torch.distributed env of a one-rank job (gloo), for Trainers built in this process."""
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))


def build_trainer(overrides: list[str], config: str | Path | None = None):
    """Our Trainer at TP=PP=DP=1 in this process (the real engine, DeepSpeed or megatron)."""
    single_process_env()
    from dist_pretrain.config import load_config
    from dist_pretrain.train import Trainer

    return Trainer(load_config(config, overrides))


def median(xs) -> float:
    return statistics.median(list(xs))


def cpu_model() -> str:
    """``lscpu``'s model name (falls back to /proc/cpuinfo, then platform)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def machine() -> dict:
    import torch

    flags = cpu_flags()
    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
        "python": platform.python_version(), "load_1min": os.getloadavg()[0],
        "bf16_isa": ", ".join(f for f in ("amx_bf16", "avx512_bf16") if f in flags) or "none",
    }


def launch_worker(world: int, cases: list[dict], threads: int, timeout: float = 900) -> dict:
    """Run ``cases`` in one ``python -m torch.distributed.run`` job of ``world`` processes with
    ``threads`` intra-op threads each (``benchmarks.worker``); returns rank 0's results.

    One launch serves many cases (parallel_state is rebuilt between them, as in
    ``dist_pretrain.tools.equivalence``): importing megatron-core and DeepSpeed costs ~10 s
    per launch on this machine.
    """
    with tempfile.TemporaryDirectory(prefix="bench-worker-") as tmp:
        case_file, out = Path(tmp) / "cases.json", Path(tmp) / "out.json"
        case_file.write_text(json.dumps(cases))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
               "-m", "benchmarks.worker", str(case_file), str(out)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(key, None)  # this process's own one-rank group must not leak into torchrun's
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # torchrun and the ranks it started, nothing else
            stdout, stderr = proc.communicate()
            raise RuntimeError(f"torchrun with {world} processes ran over {timeout:.0f} s:\n{stderr[-4000:]}")
        if proc.returncode != 0:
            causes = [line for line in stderr.splitlines() if "Error:" in line and "ChildFailedError" not in line]
            raise RuntimeError(f"torchrun with {world} processes failed:\n{stdout[-3000:]}\n{stderr[-6000:]}\n"
                               f"cause: {causes[0] if causes else 'see above'}")
        return json.loads(out.read_text())


def size_dict(size: GPTSize) -> dict:
    return asdict(size)
