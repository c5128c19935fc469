"""Reading and checking a preprocessed dataset's ``manifest.json`` (no torch, no shard reads).

The pre-flight check (``dist_pretrain.preflight``) and the loaders both read manifests
through here, so a manifest that is not JSON, lacks a key or names a shard that is not on
disk is reported the same way everywhere: one ``DataError`` naming the file and the key.
"""
from __future__ import annotations

import json
import os

from dist_pretrain.errors import UserError

MANIFEST = "manifest.json"
HINT = ("create it with: dist-pretrain preprocess --input 'c4/en/*.json.gz' --tokenizer gpt2 "
        "--seq-len 2048 --output {dir}")


class DataError(UserError, ValueError):
    """A dataset that cannot be used, naming the file and what is wrong with it."""


class MissingDataError(DataError, FileNotFoundError):
    """A data directory, manifest or shard that is not on disk."""


def _require(tree: dict, keys: list[str], where: str, path: str) -> None:
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            raise DataError(f"{path} lacks key {where}{key}: not a manifest written by "
                            f"`dist-pretrain preprocess`; re-run it for {os.path.dirname(path) or '.'}")


def read_manifest(data_dir: str) -> dict:
    """``data_dir/manifest.json``, checked to be JSON with the keys training reads."""
    data_dir = str(data_dir)
    if not os.path.isdir(data_dir):
        raise MissingDataError(f"data directory {data_dir!r} does not exist; {HINT.format(dir=data_dir)}")
    path = os.path.join(data_dir, MANIFEST)
    if not os.path.isfile(path):
        raise MissingDataError(f"{path} not found: {data_dir!r} is not a preprocessed dataset; "
                               f"{HINT.format(dir=data_dir)}")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not a text file ({err.reason}); re-run `dist-pretrain preprocess` "
                        f"for {data_dir}") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON ({err.msg} at line {err.lineno} column {err.colno}); "
                        f"re-run `dist-pretrain preprocess` for {data_dir}") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{path} holds a JSON {type(manifest).__name__}, not an object; re-run "
                        f"`dist-pretrain preprocess` for {data_dir}")
    _require(manifest, ["format", "seq_len", "tokenizer", "splits"], "", path)
    _require(manifest["tokenizer"], ["name", "vocab_size", "vocab_hash"], "tokenizer.", path)
    if not isinstance(manifest["splits"], dict):
        raise DataError(f"{path}: splits must be an object of split name -> shards")
    for name, split in manifest["splits"].items():
        _require(split, ["samples", "shards"], f"splits.{name}.", path)
        for i, shard in enumerate(split["shards"]):
            _require(shard, ["path", "samples"], f"splits.{name}.shards[{i}].", path)
    return manifest


def split_shards(data_dir: str, manifest: dict, split: str) -> list[dict]:
    """The non-empty shards of ``split``; a split with none is an error naming the ones there are."""
    info = manifest["splits"].get(split) or {}
    shards = [s for s in info.get("shards") or [] if s["samples"] > 0]
    if not shards:
        have = sorted(k for k, v in manifest["splits"].items() if v.get("shards"))
        hint = ("validation data comes from input files named *validation* or --val-fraction"
                if split == "valid" else "re-run `dist-pretrain preprocess` with training inputs")
        raise DataError(f"{os.path.join(data_dir, MANIFEST)} has no {split!r} shards (splits with shards: "
                        f"{have}); {hint}")
    return shards


def shard_problems(data_dir: str, shards: list[dict]) -> tuple[list[str], list[str]]:
    """(missing shard paths, 'path: N bytes, manifest says M' for shards of the wrong size)."""
    missing, wrong = [], []
    for s in shards:
        path = os.path.join(data_dir, s["path"])
        if not os.path.isfile(path):
            missing.append(path)
        elif s.get("bytes") is not None and os.path.getsize(path) != s["bytes"]:
            wrong.append(f"{path}: {os.path.getsize(path)} bytes, manifest says {s['bytes']} (truncated?)")
    return missing, wrong


def missing_shards_message(data_dir: str, missing: list[str]) -> str:
    return (f"{len(missing)} shard(s) listed in {os.path.join(data_dir, MANIFEST)} are missing, "
            f"e.g. {missing[:3]}; re-run `dist-pretrain preprocess` for {data_dir}")


def eval_steps_for(eval_steps: int | str, global_batch_size: int, split_samples: int, data_dir: str) -> int:
    """Evaluation steps of ``global_batch_size`` samples each that the validation split of
    ``data_dir`` feeds for ``train.eval_steps`` (a number, or ``all``: every full global batch).
    The same at any DP size: each step evaluates the same ``global_batch_size`` samples."""
    full = split_samples // global_batch_size
    where = f"the validation split of {data_dir} has {split_samples} samples"
    if full == 0:
        raise DataError(f"train.eval_steps={eval_steps}: {where}, fewer than one global batch "
                        f"(train.global_batch_size={global_batch_size}); add validation data, lower "
                        f"train.global_batch_size to at most {split_samples}, or set train.eval_interval=0")
    if eval_steps == "all":
        return full
    if eval_steps > full:
        raise DataError(f"train.eval_steps={eval_steps} needs {eval_steps} x train.global_batch_size="
                        f"{global_batch_size} = {eval_steps * global_batch_size} validation samples, but "
                        f"{where}; use train.eval_steps={full} (or all)")
    return int(eval_steps)
