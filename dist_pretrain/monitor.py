"""Throughput, MFU and TensorBoard logging (rank 0 writes; every rank measures its own step)."""

from __future__ import annotations

import math
import resource
import statistics
import time
from pathlib import Path
from typing import Iterator, Optional

import torch


class TimedIterator:
    """Wraps a batch iterator and accumulates the time spent waiting for data."""

    def __init__(self, iterator: Iterator):
        self.iterator = iterator
        self.wait_s = 0.0

    def __iter__(self):
        return self

    def __next__(self):
        t0 = time.perf_counter()
        try:
            return next(self.iterator)
        finally:
            self.wait_s += time.perf_counter() - t0

    def take_wait(self) -> float:
        wait, self.wait_s = self.wait_s, 0.0
        return wait


def measure_gemm_tflops(dtype: torch.dtype, device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """This device's dense matmul throughput (median of ``repeats`` n^3 products), TFLOP/s."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.matmul(a, b)  # warm-up (and AMX / cuBLAS kernel selection)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.matmul(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e12


def memory_gb(device: torch.device) -> float:
    """Peak accelerator memory on GPU; peak resident set size of this process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class Monitor:
    """Console line every ``log_interval`` steps and TensorBoard scalars on rank 0."""

    def __init__(self, run_dir: str, enabled: bool, tensorboard: bool, log_interval: int):
        self.enabled = enabled
        self.log_interval = log_interval
        self.writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb_dir = Path(run_dir) / "tensorboard"
            self.writer = SummaryWriter(log_dir=str(self.tb_dir))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is None:
            return
        for tag, value in values.items():
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(tag, value, step)

    def console(self, step: int, total: int, v: dict[str, float]) -> None:
        if not self.enabled or (step % self.log_interval and step != total):
            return
        print(
            f"step {step:>6}/{total} | loss {v['train/loss']:.4f} | lr {v['train/lr']:.2e} | "
            f"grad norm {v['train/grad_norm']:.3f} | {v['throughput/tokens_per_s']:,.0f} tok/s | "
            f"{v['throughput/tflops_per_device']:.3f} TFLOP/s/dev | MFU {100 * v['throughput/mfu']:.1f}% | "
            f"step {v['time/step_s']:.3f}s | data wait {100 * v['time/data_wait_share']:.1f}% | "
            f"mem {v['memory/peak_gb']:.2f} GB"
            + "".join(f" | {k[6:]} {x:.3f}" for k, x in v.items() if k.startswith("train/") and "accuracy" in k),
            flush=True,
        )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


def throughput(tokens: int, flops: float, step_s: float, world_size: int,
               peak_tflops: Optional[float]) -> dict[str, float]:
    """Tokens/s of the whole job, model TFLOP/s per device and MFU, for one step."""
    tflops = flops / step_s / world_size / 1e12
    return {
        "throughput/tokens_per_s": tokens / step_s,
        "throughput/tflops_per_device": tflops,
        "throughput/mfu": tflops / peak_tflops if peak_tflops else float("nan"),
    }
