"""Batches of the fine-tuning tasks: a labelled split read whole, in epochs (training) or
once in order (evaluation); see ``dist_pretrain.data.epochs``."""

from __future__ import annotations

import functools
from typing import Iterator

import torch

from dist_pretrain.config import Config


@functools.lru_cache(maxsize=8)
def split_examples(path: str, split: str) -> tuple[list, list]:
    """(examples, original records) of a split; read once per process."""
    from dist_pretrain.data.epochs import read_split

    return read_split(path, split)


def labelled_batches(task, cfg: Config, split: str, dp_rank: int, dp_size: int, micro_batch_size: int,
                     seed: int, start_step: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """``split``: train (epochs from ``start_step``), valid or test (one ordered pass)."""
    from dist_pretrain.data.epochs import EpochBatches, evaluation_batches

    examples, _ = split_examples(cfg.data.path, split)
    if split == "train":
        return EpochBatches(examples, cfg.train.global_batch_size, micro_batch_size, dp_rank, dp_size, seed,
                            start_step, task.transform(cfg))
    return evaluation_batches(examples, cfg.train.global_batch_size, micro_batch_size, dp_rank, dp_size, seed,
                              task.transform(cfg))[1]
