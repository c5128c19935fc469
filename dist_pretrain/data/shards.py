"""Writing WebDataset tar shards and JSON records that readers never see half-written.

Shared by ``preprocess`` (pretraining text) and ``labelled`` (fine-tuning examples): a
shard is written to ``NAME.tmp``, hashed on the fly, fsync'ed and renamed, so a crashed
run leaves no shard that looks complete; its bytes depend only on the samples.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import tarfile

import numpy as np

CRASH_ENV = "DIST_PRETRAIN_PREPROCESS_CRASH_AFTER"


@functools.lru_cache(maxsize=None)
def _npy_header(n: int) -> bytes:
    """The ``np.save`` header of an int32 vector of length ``n`` (data follows it)."""
    buf = io.BytesIO()
    np.save(buf, np.zeros(n, dtype="<i4"), allow_pickle=False)
    return buf.getvalue()[: -4 * n or None]


def npy_bytes(arr: np.ndarray) -> bytes:
    """Exactly ``np.save(f, arr, allow_pickle=False)`` for a 1-D int32 array, without the overhead."""
    return _npy_header(len(arr)) + np.ascontiguousarray(arr, dtype="<i4").tobytes()


_CRASH_AFTER = int(os.environ.get(CRASH_ENV, "0") or 0)
_samples_written = 0


class TarShard:
    """One tar shard written to ``path.tmp``, hashed on the fly, fsync'ed and renamed on close.

    Members are plain USTAR entries (mtime 0, mode 0444) as ``webdataset.TarWriter`` writes
    them, so the bytes depend only on the samples.
    """

    def __init__(self, out_dir: str, name: str):
        self.name, self.path = name, os.path.join(out_dir, name)
        self.file = open(self.path + ".tmp", "wb", buffering=1 << 20)
        self.sha = hashlib.sha256()
        self.bytes = self.samples = self.tokens = 0

    def _put(self, data: bytes) -> None:
        self.file.write(data)
        self.sha.update(data)
        self.bytes += len(data)

    def add(self, key: str, fields: dict[str, bytes], tokens: int) -> None:
        global _samples_written
        for field in sorted(fields):
            data = fields[field]
            info = tarfile.TarInfo(f"{key}.{field}")
            info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o444, "bigdata", "bigdata"
            self._put(info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict") + data + b"\0" * (-len(data) % 512))
        self.samples += 1
        self.tokens += tokens
        _samples_written += 1
        if _CRASH_AFTER and _samples_written >= _CRASH_AFTER:
            self.file.flush()
            os._exit(75)  # simulated kill: leaves this half-written shard behind

    def close(self) -> dict:
        self._put(b"\0" * 1024)                                   # end-of-archive blocks
        self._put(b"\0" * (-self.bytes % tarfile.RECORDSIZE))     # pad to tar's record size
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.path + ".tmp", self.path)
        return {"path": self.name, "samples": self.samples, "tokens": self.tokens,
                "bytes": self.bytes, "sha256": self.sha.hexdigest()}


class ShardSink:
    """One (file, split)'s samples into ``{split}-{file_id}-{k:05d}.tar`` of ``per_shard`` each."""

    def __init__(self, out_dir: str, split: str, file_id: str, per_shard: int):
        self.out_dir, self.split, self.file_id, self.per_shard = out_dir, split, file_id, per_shard
        self.shards: list[dict] = []
        self.index = 0
        self.shard: TarShard | None = None

    def add(self, fields: dict[str, bytes], tokens: int) -> None:
        if self.shard is None:
            self.shard = TarShard(self.out_dir, shard_name(self.split, self.file_id, len(self.shards)))
        self.shard.add(f"{self.file_id}_{self.index:09d}", fields, tokens)
        self.index += 1
        if self.shard.samples == self.per_shard:
            self.shards.append(self.shard.close())
            self.shard = None

    def close(self) -> list[dict]:
        if self.shard is not None:
            self.shards.append(self.shard.close())
            self.shard = None
        return self.shards


def shard_name(split: str, file_id: str, k: int) -> str:
    return f"{split}-{file_id}-{k:05d}.tar"


def write_json_atomic(path: str, obj: dict) -> None:
    """tmp + fsync + rename: readers see the old file or the complete new one, never a part."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
