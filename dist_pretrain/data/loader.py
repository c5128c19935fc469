"""Exactly-once evaluation loader over the WebDataset shards written by ``preprocess``.

Training reads through ``stream.py`` (resampled, blended, resumable); validation needs
every sample of the split exactly once instead. Sharding uses the *data-parallel* rank
and size passed in, never ``torch.distributed.get_rank()``: all TP/PP ranks of one DP
replica must see identical batches.

With fewer shards than DP ranks, every rank reads all shards and keeps every
``dp_size``-th sample; with fewer shards than workers, fewer workers are started. So no
rank waits on another at the end of a pass, whatever the shard counts: batches may be
ragged at the end and ranks may get different batch counts (see ``num_samples``), which
is why the trainer runs a fixed number of full evaluation batches on every rank.
"""
from __future__ import annotations

import functools
import io
import json
import os

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, get_worker_info

from dist_pretrain.data.preprocess import MANIFEST


def read_manifest(data_dir: str) -> dict:
    """Load ``data_dir/manifest.json`` or fail with a message that says how to create it."""
    hint = (f"create it with: dist-pretrain preprocess --input 'c4/en/*.json.gz' "
            f"--tokenizer gpt2 --seq-len 2048 --output {data_dir}")
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data directory {data_dir!r} does not exist; {hint}")
    path = os.path.join(data_dir, MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: {data_dir!r} is not a preprocessed dataset; {hint}")
    with open(path) as f:
        return json.load(f)


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def dp_nodesplitter(urls, dp_rank: int, dp_size: int):
    """Shards of one DP rank; every rank gets all of them when there are too few to split."""
    urls = list(urls)
    return urls[dp_rank::dp_size] if len(urls) >= dp_size else urls


def _split_by_worker(src):
    wid, nworkers = _worker()
    for i, item in enumerate(src):
        if i % nworkers == wid:
            yield item


def _every_nth(src, offsets: dict, dp_rank: int, dp_size: int):
    """Keep samples whose dataset-wide ordinal is dp_rank mod dp_size (offsets: url -> first ordinal)."""
    url, pos = None, 0
    for sample in src:
        if sample["__url__"] != url:
            url, pos = sample["__url__"], 0
        if (offsets[url] + pos) % dp_size == dp_rank:
            yield sample
        pos += 1


def _decode(sample: dict) -> dict[str, np.ndarray]:
    """All ``.npy`` fields of a sample (``tokens``; ``sentences`` in the docs format)."""
    return {name[:-4]: np.load(io.BytesIO(data), allow_pickle=False)
            for name, data in sample.items() if name.endswith(".npy")}


def _collate(samples: list[dict[str, np.ndarray]]) -> dict:
    # webdataset's map stage adds "__key__" back to dict samples: keep only the arrays
    return {name: torch.from_numpy(np.stack([s[name] for s in samples])).long()
            for name in samples[0] if not name.startswith("__")}


class LMLoader:
    """Iterable of ``{"tokens": LongTensor[<= micro_batch_size, seq_len + 1]}`` batches; each
    ``for`` loop is a fresh pass. ``num_samples`` is this DP rank's share of the split."""

    def __init__(self, loader: DataLoader, seq_len: int, num_samples: int, manifest: dict):
        self.loader, self.seq_len, self.num_samples, self.manifest = loader, seq_len, num_samples, manifest

    def __iter__(self):
        return iter(self.loader)


def build_lm_loader(data_dir: str, split: str, micro_batch_size: int, dp_rank: int, dp_size: int,
                    num_workers: int = 1, worker_init_fn=None) -> LMLoader:
    """Every sample of ``split`` once, this data-parallel rank's share (see module docstring).
    ``worker_init_fn`` runs in each DataLoader worker (see ``faults.loader_worker_init``)."""
    if not 0 <= dp_rank < dp_size:
        raise ValueError(f"dp_rank={dp_rank} must be in [0, dp_size={dp_size})")
    manifest = read_manifest(data_dir)
    info = manifest["splits"].get(split)
    if not info or not info["shards"]:
        raise ValueError(f"split {split!r} has no shards in {data_dir} (splits: "
                         f"{sorted(k for k, v in manifest['splits'].items() if v['shards'])}); "
                         "validation data comes from files named *validation* or --val-fraction")
    shards = info["shards"]
    urls = [os.path.join(data_dir, s["path"]) for s in shards]
    rank_urls = dp_nodesplitter(urls, dp_rank, dp_size)
    num_workers = min(num_workers, len(rank_urls))  # an idle worker would just end at once
    stages = [wds.SimpleShardList(rank_urls), _split_by_worker, wds.tarfile_to_samples()]
    if len(rank_urls) == len(urls) and dp_size > 1:
        offsets = dict(zip(urls, np.cumsum([0] + [s["samples"] for s in shards]).tolist()))
        stages.append(functools.partial(_every_nth, offsets=offsets, dp_rank=dp_rank, dp_size=dp_size))
        num_samples = len(range(dp_rank, info["samples"], dp_size))
    else:
        num_samples = sum(s["samples"] for s in shards[dp_rank::dp_size])
    stages += [wds.map(_decode), wds.batched(micro_batch_size, collation_fn=_collate, partial=True)]
    loader = DataLoader(wds.DataPipeline(*stages), batch_size=None, num_workers=num_workers,
                        pin_memory=torch.cuda.is_available(), worker_init_fn=worker_init_fn)
    return LMLoader(loader, manifest["seq_len"], num_samples, manifest)
