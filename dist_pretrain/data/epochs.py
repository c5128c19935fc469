"""Labelled examples read in epochs: every example once per epoch, any DP size, resumable.

Fine-tuning sets are small and are seen many times, so unlike the pretraining stream
(``stream.py``: resampled shards, no epochs) they are read whole into memory and walked
in epochs:

* **Order.** Epoch ``e`` visits the split in the order of a permutation seeded by (run
  seed, ``e``). Global step ``k`` (0-based) of an epoch of ``n`` examples and global batch
  ``G`` takes positions ``[k G, (k + 1) G)`` of that order. An epoch is ``ceil(n / G)``
  steps.
* **The last, partial batch** of an epoch is filled to ``G`` with copies of the first
  example that have ``weight`` 0. They count nowhere: not in the loss, the metrics or the
  predictions. Every rank runs the same micro-batches, so none waits on another.
* **Data parallel.** Rank ``r`` of ``D`` takes its contiguous ``G / D`` slice of each
  global batch, as the pretraining stream does: any ``D`` that divides ``G`` sees the
  same global batches.
* **Resume** needs only the global step: the epoch and the position follow from it.
* **Evaluation** (:func:`evaluation_batches`) walks a split once in file order, padded
  the same way. Each example carries its ``index`` in the split, which the predictions
  are keyed by.
"""
from __future__ import annotations

import io
import json
import math
import os
import tarfile
from typing import Callable, Iterator

import numpy as np
import torch

from dist_pretrain.data.examples import sample_seed, stack
from dist_pretrain.data.manifest import read_manifest, split_shards


def read_split(path: str, split: str) -> tuple[list[dict[str, np.ndarray]], list[dict]]:
    """All examples of a split (``.npy`` fields as arrays) and their original records, in
    manifest shard order and the order within each shard."""
    examples, records = [], []
    for shard in split_shards(path, read_manifest(path), split):
        current: dict[str, dict] = {}
        with tarfile.open(os.path.join(path, shard["path"])) as tar:
            for member in tar:
                key, _, field = member.name.partition(".")
                data = tar.extractfile(member).read()
                current.setdefault(key, {})[field] = data
        for key in current:  # dicts keep the tar's order
            fields = current[key]
            examples.append({name[:-4]: np.load(io.BytesIO(data), allow_pickle=False)
                             for name, data in fields.items() if name.endswith(".npy")})
            records.append(json.loads(fields["record.json"]) if "record.json" in fields else {})
    return examples, records


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    return math.ceil(num_examples / global_batch_size)


def _slots(order: np.ndarray, start: int, global_batch_size: int, dp_rank: int, dp_size: int) -> np.ndarray:
    """This rank's example indices of the global batch at ``start`` of ``order`` (-1: padding)."""
    batch = np.full(global_batch_size, -1, np.int64)
    part = order[start:start + global_batch_size]
    batch[:len(part)] = part
    per_rank = global_batch_size // dp_size
    return batch[dp_rank * per_rank:(dp_rank + 1) * per_rank]


def _micro_batches(examples: list, slots: np.ndarray, micro_batch_size: int, transform: Callable,
                   rng_key: tuple) -> Iterator[dict[str, torch.Tensor]]:
    built = []
    for slot in slots.tolist():
        real = slot >= 0
        ex = dict(transform(examples[slot if real else 0], np.random.default_rng(sample_seed(*rng_key, slot))))
        ex["weight"] = np.float32(1.0 if real else 0.0)
        ex["index"] = np.int64(slot)
        built.append(ex)
    for m in range(0, len(built), micro_batch_size):
        yield stack(built[m:m + micro_batch_size])


class EpochBatches:
    """The training micro-batches of this DP rank, epoch after epoch, from a global step."""

    def __init__(self, examples: list, global_batch_size: int, micro_batch_size: int, dp_rank: int,
                 dp_size: int, seed: int, start_step: int, transform: Callable):
        if not examples:
            raise ValueError("the training split has no examples")
        self.examples, self.global_batch_size, self.micro_batch_size = examples, global_batch_size, micro_batch_size
        self.dp_rank, self.dp_size, self.seed, self.transform = dp_rank, dp_size, seed, transform
        self.steps_per_epoch = steps_per_epoch(len(examples), global_batch_size)
        self.step = start_step
        self._pending: Iterator = iter(())
        self._order: tuple[int, np.ndarray] | None = None

    def order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            rng = np.random.default_rng(sample_seed("epoch", self.seed, epoch))
            self._order = (epoch, rng.permutation(len(self.examples)))
        return self._order[1]

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        batch = next(self._pending, None)
        if batch is None:
            epoch, k = divmod(self.step, self.steps_per_epoch)
            slots = _slots(self.order(epoch), k * self.global_batch_size, self.global_batch_size,
                           self.dp_rank, self.dp_size)
            self._pending = _micro_batches(self.examples, slots, self.micro_batch_size, self.transform,
                                           ("train", self.seed, epoch))
            self.step += 1
            batch = next(self._pending)
        return batch

    def state_dict(self) -> dict:
        """Global steps handed out (the next step's epoch and position follow from it)."""
        return {"step": self.step, "epoch": self.step // self.steps_per_epoch,
                "steps_per_epoch": self.steps_per_epoch}


def evaluation_batches(examples: list, global_batch_size: int, micro_batch_size: int, dp_rank: int,
                       dp_size: int, seed: int, transform: Callable) -> tuple[int, Iterator[dict[str, torch.Tensor]]]:
    """(steps, micro-batches) of one pass over a split in order, the last batch padded."""
    steps = steps_per_epoch(len(examples), global_batch_size)
    order = np.arange(len(examples))

    def batches():
        for k in range(steps):
            slots = _slots(order, k * global_batch_size, global_batch_size, dp_rank, dp_size)
            yield from _micro_batches(examples, slots, micro_batch_size, transform, ("eval", seed))

    return steps, batches()
