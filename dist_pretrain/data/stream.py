"""The training sample stream: WebDataset shards, resampled, blended, resumable to the sample.

Design, and why:

* **One global stream, independent of the data-parallel size.** It is made of ``G``
  interleaved sub-streams (``G`` = global batch size): sub-stream ``j`` supplies sample
  ``j`` of every global batch. DP rank ``r`` of ``D`` owns sub-streams
  ``[r*G/D, (r+1)*G/D)`` (its contiguous slice of the global batch) and splits them over
  its DataLoader workers. The whole loader state is therefore "global steps consumed":
  resuming at step ``k`` with any ``D`` that divides ``G`` continues the same global stream
  without repeating or skipping a sample. (Megatron-LM, torchtitan and Energon resume
  data only at the same DP size.)
* **Resampled shards with a deterministic seed** (the WebDataset maintainers' advice for
  multi-node pretraining): each sub-stream draws shards with replacement from a
  ``random.Random`` seeded by (seed, sub-stream, dataset), so there is no epoch end at
  which ranks could wait on each other, whatever the shard counts and sizes.
* **Shuffle buffer reset per shard**: samples of a shard go through WebDataset's
  ``shuffle`` buffer seeded by (seed, sub-stream, dataset, draw). A position inside a
  shard can thus be re-created by replaying that one shard, which makes resume exact.
* **Blending**: the dataset for position ``p`` of sub-stream ``j`` is chosen by a Weyl
  sequence ``frac(phi_j + p * golden)`` against the cumulative weights. It is equidistributed
  with bounded discrepancy (the mixture matches the weights to a few samples, not just
  in expectation), and position ``p``'s choice (and the count per dataset before it) is
  computed directly, with no history to replay.
* **Corrupt shards**: a shard whose size differs from the manifest (truncated) is found
  before reading and skipped whole, so skipping stays deterministic and resumable; a
  shard that fails while being read (bad tar or .npy) ends early. ``on_corrupt="skip"``
  counts and names them (logged to TensorBoard); ``"fail"`` raises naming the shard.
"""

from __future__ import annotations

import io
import os
import random
import sys
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dist_pretrain.data.examples import lm_sample, sample_seed, stack
from dist_pretrain.data.manifest import (
    MissingDataError,
    missing_shards_message,
    read_manifest,
    shard_problems,
    split_shards,
)
from dist_pretrain.data.workers import start_iteration
from dist_pretrain.errors import UserError

GOLDEN = (5**0.5 - 1) / 2


class CorruptShardError(UserError, RuntimeError):
    """A shard that cannot be read, with on_corrupt='fail'."""

    @classmethod
    def from_worker(cls, err: "CorruptShardError") -> "CorruptShardError":
        """The error as the shard reader raised it: a DataLoader worker's copy carries the
        worker's traceback in its message, with the original message on the last line."""
        last = str(err).rstrip().splitlines()[-1]
        return cls(last.split("CorruptShardError: ", 1)[-1])


@dataclass(frozen=True)
class Shard:
    url: str
    samples: int
    bytes: int | None


@dataclass(frozen=True)
class Source:
    """One dataset of the blend."""

    path: str
    weight: float
    shards: tuple[Shard, ...]


def load_source(path: str, weight: float, split: str = "train") -> Source:
    """A preprocessed dataset (``manifest.json``), its shard paths checked up front."""
    manifest = read_manifest(path)
    entries = split_shards(path, manifest, split)
    shards = tuple(Shard(os.path.join(path, s["path"]), int(s["samples"]), s.get("bytes")) for s in entries)
    missing, _ = shard_problems(path, entries)
    if missing:
        raise MissingDataError(missing_shards_message(path, missing))
    return Source(path, float(weight), shards)


def blend_choices(weights: list[float], phase: float, start: int, stop: int) -> np.ndarray:
    """Dataset index for positions [start, stop) of a sub-stream with the given phase."""
    cum = np.cumsum(np.asarray(weights, dtype=np.float64) / sum(weights))
    u = np.mod(phase + np.arange(start, stop, dtype=np.float64) * GOLDEN, 1.0)
    return np.minimum(np.searchsorted(cum, u, side="right"), len(weights) - 1)


class SubStream:
    """Sub-stream ``index`` of the global stream, as an iterator of (key, tokens)."""

    def __init__(self, sources: list[Source], seed: int, index: int, start: int,
                 shuffle_buffer: int, on_corrupt: str, skipped: list[str]):
        self.sources, self.seed, self.index = sources, seed, index
        self.shuffle_buffer, self.on_corrupt, self.skipped = shuffle_buffer, on_corrupt, skipped
        self.phase = random.Random(sample_seed("phase", seed, index)).random()
        self.position = start
        weights = [s.weight for s in sources]
        counts = np.bincount(blend_choices(weights, self.phase, 0, start), minlength=len(sources))
        self.iters = [self._source_iter(d, int(counts[d])) for d in range(len(sources))]

    def _readable(self, shard: Shard) -> bool:
        if shard.bytes is None or os.path.getsize(shard.url) == shard.bytes:
            return True
        self._corrupt(shard, f"size {os.path.getsize(shard.url)} != {shard.bytes} bytes in the manifest "
                             "(truncated?)")
        return False

    def _corrupt(self, shard: Shard, why: str) -> None:
        if self.on_corrupt == "fail":
            raise CorruptShardError(f"corrupt shard {shard.url}: {why}")
        # printed, not warnings.warn: launchers silence Python warnings, an operator must see this
        print(f"warning: skipping corrupt shard {shard.url}: {why}", file=sys.stderr, flush=True)
        self.skipped.append(shard.url)

    def _source_iter(self, d: int, skip: int) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        """Samples of dataset ``d`` for this sub-stream, starting after ``skip`` of them."""
        source = self.sources[d]
        draws = random.Random(sample_seed("draws", self.seed, self.index, d))
        draw = 0
        while True:
            shard = source.shards[draws.randrange(len(source.shards))]
            draw += 1
            if not self._readable(shard):
                continue
            if skip >= shard.samples:  # fast-forward on resume without opening the shard
                skip -= shard.samples
                continue
            yield from self._read(shard, sample_seed("shuffle", self.seed, self.index, d, draw), skip)
            skip = 0

    def _read(self, shard: Shard, shuffle_seed: int, skip: int) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        pipeline = wds.DataPipeline(
            wds.SimpleShardList([shard.url]),
            wds.tarfile_to_samples(),
            wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, seed=shuffle_seed),
        )
        n = 0
        try:
            for n, sample in enumerate(pipeline, start=1):
                if n > skip:
                    fields = {name[:-4]: np.load(io.BytesIO(data), allow_pickle=False)
                              for name, data in sample.items() if name.endswith(".npy")}
                    yield sample["__key__"], fields
        except (CorruptShardError, GeneratorExit):
            raise
        except Exception as err:  # tarfile.ReadError, ValueError from np.load, KeyError, ...
            self._corrupt(shard, f"{type(err).__name__}: {err}")
            return
        if n < shard.samples:  # a tar cut at a member boundary just ends early
            self._corrupt(shard, f"ended after {n} of {shard.samples} samples (truncated?)")

    def __next__(self) -> tuple[str, dict[str, np.ndarray], int]:
        d = int(blend_choices([s.weight for s in self.sources], self.phase, self.position,
                              self.position + 1)[0])
        self.position += 1
        key, fields = next(self.iters[d])
        return key, fields, d


class _RankStreams(IterableDataset):
    """Per global step, one block of samples from each sub-stream this worker owns.

    ``transform(fields, rng, previous)`` turns a raw sample into fixed-shape arrays (masking,
    span corruption...) in the worker; ``rng`` is seeded by (seed, step, sub-stream), i.e. by
    the sample's place in the global stream, and ``previous`` is the sub-stream's previous
    raw sample (BERT's "random next sentence"), so the result never depends on the layout.
    """

    def __init__(self, sources, streams: list[int], seed, start_step, shuffle_buffer, on_corrupt,
                 transform: Callable = lm_sample):
        self.sources, self.streams, self.seed = sources, streams, seed
        self.start_step, self.shuffle_buffer, self.on_corrupt = start_step, shuffle_buffer, on_corrupt
        self.transform = transform

    def __iter__(self):
        info = get_worker_info()
        wid, nworkers = (info.id, info.num_workers) if info else (0, 1)
        mine = self.streams[wid::nworkers]
        skipped: list[str] = []
        start = max(self.start_step - 1, 0)  # one step back: each sub-stream's previous sample
        subs = [SubStream(self.sources, self.seed, j, start, self.shuffle_buffer,
                          self.on_corrupt, skipped) for j in mine]
        previous = [next(s)[1] for s in subs] if self.start_step else [None] * len(subs)
        step = self.start_step
        while True:
            samples = [next(s) for s in subs]
            examples = [self.transform(f, np.random.default_rng(sample_seed("sample", self.seed, step, j)), prev)
                        for j, (_, f, _), prev in zip(mine, samples, previous)]
            previous = [f for _, f, _ in samples]
            yield {"step": step, "streams": mine, "keys": [k for k, _, _ in samples],
                   "examples": examples, "sources": [d for _, _, d in samples], "skipped": skipped[:]}
            skipped.clear()
            step += 1


@dataclass
class _Progress:
    step: int
    skipped_shards: list[str]


def _micro_batches(loader: DataLoader, workers: int, micro_batch_size: int, progress: _Progress):
    """Reassemble each step's blocks from the workers into micro-batches, in sub-stream order.

    A free function (not a method) so the stream object is not in a reference cycle with
    its generator: dropping the stream then stops the DataLoader workers at once.
    """
    blocks = start_iteration(loader)
    while True:
        try:
            parts = [next(blocks) for _ in range(workers)]
        except CorruptShardError as err:
            raise CorruptShardError.from_worker(err) from None
        assert all(p["step"] == progress.step for p in parts), "workers out of step"
        order = sorted(((j, p, i) for p in parts for i, j in enumerate(p["streams"])),
                       key=lambda item: item[0])
        for p in parts:
            progress.skipped_shards.extend(p["skipped"])
        examples = [p["examples"][i] for _, p, i in order]
        keys = [p["keys"][i] for _, p, i in order]
        sources = [p["sources"][i] for _, p, i in order]
        m = micro_batch_size
        for i in range(0, len(order), m):
            if i + m >= len(order):
                progress.step += 1  # the step is handed out with its last micro-batch
            yield {**stack(examples[i:i + m]), "keys": keys[i:i + m], "sources": sources[i:i + m]}


class TrainStream:
    """Micro-batches ``{"tokens": LongTensor[m, L], "keys": [...], "sources": [...]}`` for one DP rank.

    ``keys`` are the samples' WebDataset keys, ``sources`` the blend index of each.
    ``state_dict()`` is the number of global steps fully handed out; a stream built with
    that ``start_step`` (at any DP size dividing the global batch) continues exactly.
    """

    def __init__(self, sources: list[Source], global_batch_size: int, micro_batch_size: int,
                 dp_rank: int, dp_size: int, seed: int, num_workers: int = 1,
                 shuffle_buffer: int = 256, on_corrupt: str = "skip", start_step: int = 0,
                 transform: Callable = lm_sample, worker_init_fn: Callable | None = None):
        if global_batch_size % dp_size or (global_batch_size // dp_size) % micro_batch_size:
            raise ValueError(f"global batch {global_batch_size} must split into {dp_size} ranks x "
                             f"micro-batches of {micro_batch_size}")
        if on_corrupt not in ("skip", "fail"):
            raise ValueError(f"on_corrupt={on_corrupt!r}: use 'skip' or 'fail'")
        per_rank = global_batch_size // dp_size
        streams = list(range(dp_rank * per_rank, (dp_rank + 1) * per_rank))
        self.seed, self.global_batch_size, self.sources = seed, global_batch_size, sources
        workers = max(1, min(num_workers, per_rank))
        dataset = _RankStreams(sources, streams, seed, start_step, shuffle_buffer, on_corrupt, transform)
        loader = DataLoader(dataset, batch_size=None, num_workers=num_workers and workers,
                            worker_init_fn=worker_init_fn)
        self._progress = _Progress(start_step, [])
        self._batches = _micro_batches(loader, workers, micro_batch_size, self._progress)

    @property
    def step(self) -> int:
        return self._progress.step

    @property
    def skipped_shards(self) -> list[str]:
        return self._progress.skipped_shards

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return next(self._batches)

    def close(self) -> None:
        """Stop the DataLoader workers now."""
        self._batches.close()

    def __del__(self):
        self.close()

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed, "global_batch_size": self.global_batch_size,
                "sources": [[s.path, s.weight] for s in self.sources]}


def build_train_stream(blend: list[tuple[str, float]], global_batch_size: int, micro_batch_size: int,
                       dp_rank: int, dp_size: int, seed: int, num_workers: int = 1,
                       shuffle_buffer: int = 256, on_corrupt: str = "skip",
                       start_step: int = 0, transform: Callable = lm_sample,
                       worker_init_fn: Callable | None = None) -> TrainStream:
    """The training stream over one dataset or a weighted blend ``[(path, weight), ...]``.

    ``transform(fields, rng)`` makes the model's fixed-shape arrays from a raw sample;
    ``worker_init_fn`` runs in each DataLoader worker (the trainer's makes stop signals
    harmless there, see ``faults.loader_worker_init``)."""
    sources = [load_source(path, weight) for path, weight in blend]
    return TrainStream(sources, global_batch_size, micro_batch_size, dp_rank, dp_size, seed,
                       num_workers, shuffle_buffer, on_corrupt, start_step, transform, worker_init_fn)
