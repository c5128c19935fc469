"""Exactly-once evaluation loader over the WebDataset shards written by ``preprocess``.

Training reads through ``stream.py`` (resampled, blended, resumable); validation needs a
fixed set of samples, each read once, that does not depend on the layout:

* **Which samples.** The first ``n`` samples of the split in manifest order (shards in
  manifest order, samples in tar order). The trainer asks for ``n = eval_steps x G``
  (``G`` = global batch size): the same samples at every DP size and worker count, so
  ``val/loss`` is a measurement of the model, not of the layout. ``eval_steps: all`` is
  every full global batch of the split; the last ``N mod G`` samples, which cannot give
  every rank the same number of full micro-batches, are left out (and the trainer says
  how many).
* **Dealt by sample, not by shard.** Evaluation step ``s`` covers samples
  ``[s*G, (s+1)*G)``; DP rank ``r`` of ``D`` takes the contiguous block
  ``[s*G + r*G/D, s*G + (r+1)*G/D)`` of it, exactly as the training stream deals a global
  batch. Every rank thus gets the same number of full micro-batches whatever the shard
  sizes, and micro-batch boundaries fall on the same samples at any DP size.
* **Workers.** The shards holding a rank's samples are dealt round-robin to its DataLoader
  workers; each sample travels with its position in the rank's sequence and the main
  process puts them back in that order (holding early arrivals), so the worker count
  changes nothing but speed.

Sharding uses the *data-parallel* rank and size passed in, never
``torch.distributed.get_rank()``: all TP/PP ranks of one DP replica must see identical
batches.
"""
from __future__ import annotations

import io
import os

import numpy as np
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dist_pretrain.data.manifest import (  # noqa: F401 - read_manifest is part of this API
    DataError,
    MissingDataError,
    missing_shards_message,
    read_manifest,
    shard_problems,
    split_shards,
)
from dist_pretrain.data.workers import start_iteration


def dealt_indices(n: int, block: int, dp_rank: int, dp_size: int) -> list[int]:
    """Global sample indices of DP rank ``dp_rank``, in order: its block of ``block`` samples
    from every group of ``block * dp_size`` consecutive samples among the first ``n``."""
    if not 0 <= dp_rank < dp_size:
        raise ValueError(f"dp_rank={dp_rank} must be in [0, dp_size={dp_size})")
    if block < 1:
        raise ValueError(f"block={block} must be >= 1")
    out: list[int] = []
    for start in range(dp_rank * block, n, block * dp_size):
        out.extend(range(start, min(start + block, n)))
    return out


def _decode(sample: dict) -> dict[str, np.ndarray]:
    """All ``.npy`` fields of a sample (``tokens``; ``sentences`` in the docs format)."""
    return {name[:-4]: np.load(io.BytesIO(data), allow_pickle=False)
            for name, data in sample.items() if name.endswith(".npy")}


class _DealtSamples(IterableDataset):
    """(position in the rank's sequence, global index, fields) of the wanted samples; each
    worker reads its round-robin share of the shards, each shard once."""

    def __init__(self, plan: list[tuple[str, dict[int, tuple[int, int]]]]):
        self.plan = plan  # (shard url, {sample ordinal in shard: (position, global index)})

    def __iter__(self):
        info = get_worker_info()
        wid, nworkers = (info.id, info.num_workers) if info is not None else (0, 1)
        for url, wanted in self.plan[wid::nworkers]:
            last = max(wanted)
            samples = wds.DataPipeline(wds.SimpleShardList([url]), wds.tarfile_to_samples())
            for ordinal, sample in enumerate(samples):
                if ordinal in wanted:
                    position, index = wanted[ordinal]
                    yield position, index, _decode(sample)
                if ordinal == last:
                    break


def _as_is(item):
    """DataLoader collation that keeps NumPy arrays (its default would make tensors)."""
    return item


class LMLoader:
    """Iterable of this DP rank's samples, in order, as ``{"index": global index, "tokens":
    ndarray[, "sentences": ndarray]}``; each ``for`` loop is a fresh pass. ``num_samples`` is
    how many this rank gets, ``split_samples`` how many the split holds."""

    def __init__(self, loader: DataLoader, data_dir: str, split: str, num_samples: int, split_samples: int,
                 manifest: dict):
        self.loader, self.data_dir, self.split = loader, data_dir, split
        self.num_samples, self.split_samples, self.manifest = num_samples, split_samples, manifest
        self.seq_len = manifest["seq_len"]

    def __iter__(self):
        pending: dict[int, tuple[int, dict]] = {}
        expected = 0
        for position, index, fields in start_iteration(self.loader):
            pending[int(position)] = (int(index), fields)
            while expected in pending:
                index, fields = pending.pop(expected)
                yield {"index": index, **fields}
                expected += 1
        if expected != self.num_samples:
            raise DataError(f"the {self.split!r} split of {self.data_dir} gave {expected} of this rank's "
                            f"{self.num_samples} samples: a shard holds fewer samples than its manifest "
                            f"says; re-run `dist-pretrain preprocess` for {self.data_dir}")


def build_lm_loader(data_dir: str, split: str, dp_rank: int, dp_size: int, block: int = 1,
                    num_workers: int = 1, limit: int | None = None, worker_init_fn=None) -> LMLoader:
    """The first ``limit`` samples of ``split`` (all by default), this DP rank's blocks of
    ``block`` (see the module docstring). ``worker_init_fn`` runs in each DataLoader worker
    (the trainer's makes stop signals harmless there, see ``faults.loader_worker_init``)."""
    manifest = read_manifest(data_dir)
    shards = split_shards(data_dir, manifest, split)
    missing, wrong = shard_problems(data_dir, shards)
    if missing:
        raise MissingDataError(missing_shards_message(data_dir, missing))
    if wrong:  # an exactly-once pass cannot skip a shard: every rank must get its samples
        raise DataError(f"the {split!r} split of {data_dir} has shards of the wrong size: {wrong[:3]}; "
                        f"re-run `dist-pretrain preprocess` for {data_dir}")
    total = sum(s["samples"] for s in shards)
    n = total if limit is None else limit
    if n > total:
        raise DataError(f"asked for {n} samples of the {split!r} split of {data_dir}, which holds {total}")
    mine = dealt_indices(n, block, dp_rank, dp_size)
    offsets = np.cumsum([0] + [s["samples"] for s in shards])
    plan: list[tuple[str, dict[int, tuple[int, int]]]] = []
    for position, index in enumerate(mine):
        k = int(np.searchsorted(offsets, index, side="right")) - 1
        url = os.path.join(data_dir, shards[k]["path"])
        if not plan or plan[-1][0] != url:
            plan.append((url, {}))
        plan[-1][1][index - int(offsets[k])] = (position, index)
    num_workers = min(num_workers, len(plan))  # an idle worker would just end at once
    loader = DataLoader(_DealtSamples(plan), batch_size=None, num_workers=num_workers, collate_fn=_as_is,
                        worker_init_fn=worker_init_fn)
    return LMLoader(loader, data_dir, split, len(mine), total, manifest)
