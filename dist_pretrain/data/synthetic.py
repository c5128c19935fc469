"""Deterministic synthetic samples, for tests only (real runs read WebDataset shards).

Samples are indexed globally like the real training stream (``stream.py``): global step
``k`` holds positions ``j = 0..G-1`` and data-parallel rank ``r`` takes its contiguous
``G/D`` slice, so any DP size sees the same global batch and parallel layouts can be
compared step by step. Each raw sample is an arithmetic progression modulo a token range
(random start and stride), which a small model can learn; the task's transform
(masking, span corruption) is seeded by the position, as in the real stream.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

from dist_pretrain.data.examples import lm_sample, sample_seed, stack


def progression(index: int, seed: int, low: int, high: int, length: int) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
    start = int(torch.randint(0, high - low, (1,), generator=gen))
    stride = int(torch.randint(1, 8, (1,), generator=gen))
    return (low + (start + stride * np.arange(length)) % (high - low)).astype(np.int32)


def synthetic_lm_fields(index: int, seed: int, vocab_size: int, seq_len: int) -> dict[str, np.ndarray]:
    return {"tokens": progression(index, seed, 0, vocab_size, seq_len + 1)}


def synthetic_doc_fields(index: int, seed: int, low: int, high: int, length: int) -> dict[str, np.ndarray]:
    """A "document" of sentences of 5-12 tokens, like ``preprocess --format docs`` writes."""
    tokens = progression(index, seed, low, high, length)
    rng = np.random.default_rng(seed + index)
    cuts = np.cumsum(rng.integers(5, 13, size=length))
    cuts = cuts[cuts < length]
    return {"tokens": tokens, "sentences": np.diff(np.concatenate([[0], cuts, [length]])).astype(np.int32)}


def synthetic_batches(fields: Callable[[int], dict], global_batch_size: int, micro_batch_size: int,
                      dp_rank: int, dp_size: int, seed: int, start_step: int = 0,
                      transform: Callable = lm_sample) -> Iterator[dict[str, torch.Tensor]]:
    per_rank = global_batch_size // dp_size
    step = start_step
    while True:
        examples = []
        for j in range(dp_rank * per_rank, (dp_rank + 1) * per_rank):
            previous = fields((step - 1) * global_batch_size + j) if step else None  # same sub-stream
            rng = np.random.default_rng(sample_seed("sample", seed, step, j))
            examples.append(transform(fields(step * global_batch_size + j), rng, previous))
        for m in range(0, per_rank, micro_batch_size):
            yield stack(examples[m:m + micro_batch_size])
        step += 1
