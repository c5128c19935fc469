"""Deterministic synthetic token batches, for tests only (real runs read WebDataset shards).

Samples are indexed globally: global step ``k`` holds samples ``[k*G, (k+1)*G)`` and
data-parallel rank ``r`` takes its contiguous ``G/D`` slice, so any DP size sees the same
global batch and parallel layouts can be compared step by step. Each sample is an
arithmetic progression modulo the vocabulary (random start and stride), which a small
model can learn, so the loss falls.
"""

from __future__ import annotations

from typing import Iterator

import torch


def synthetic_sample(index: int, seed: int, vocab_size: int, seq_len: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
    start = int(torch.randint(0, vocab_size, (1,), generator=gen))
    stride = int(torch.randint(1, 8, (1,), generator=gen))
    return (start + stride * torch.arange(seq_len + 1)) % vocab_size


def synthetic_lm_batches(vocab_size: int, seq_len: int, global_batch_size: int,
                         micro_batch_size: int, dp_rank: int, dp_size: int,
                         seed: int, start_step: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    per_rank = global_batch_size // dp_size
    step = start_step
    while True:
        first = step * global_batch_size + dp_rank * per_rank
        for m in range(0, per_rank, micro_batch_size):
            ids = range(first + m, first + m + micro_batch_size)
            yield {"tokens": torch.stack([synthetic_sample(i, seed, vocab_size, seq_len) for i in ids])}
        step += 1
