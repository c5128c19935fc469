"""Weights-only loading: an architecture's model at the current layout, filled from a checkpoint.

Every later use of a pretrained model (fine-tuning, generation, evaluation, export)
starts here, without a ``Trainer``: no optimizer, no step, no RNG, no data state, no
DeepSpeed engine. The weights are keyed by megatron's global names
(``decoder.layers.mlp.linear_fc1.weight`` with the layers stacked on a leading axis,
vocab rows padded), the same in every source:

* a checkpoint directory (``step-N``, or a run directory: its newest good checkpoint),
  saved at any TP / PP / VPP / DP layout and ZeRO stage: read with megatron's
  ``dist_checkpointing``, which reshards to this rank's slices;
* the consolidated file written by ``dist-pretrain checkpoint convert``;
* a state dict in memory (``dist-pretrain import`` builds one from a HF model).

Mismatches are explicit: a parameter the model has and the weights lack (a new head), or
the reverse (a dropped head), is an error listing the names unless the caller allows them
by pattern (``allow_missing=["binary_head.*"]``); a shape that differs is always an error.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from megatron.core import dist_checkpointing, parallel_state

from dist_pretrain.checkpoint import (
    CheckpointError,
    find_resumable,
    parameter_shards,
    verify,
)
from dist_pretrain.config import Config
from dist_pretrain.errors import UserError


class WeightsError(UserError, ValueError):
    """Weights that do not fit the model (names or shapes), or a source that holds none."""


Weights = Mapping[str, torch.Tensor]


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a step directory or a run directory (its newest good one)."""
    path = Path(path)
    if (path / "checkpoints").is_dir():
        found, warnings = find_resumable(path / "checkpoints")
        for warning in warnings:
            print(f"warning: {warning}", flush=True)
        if found is None:
            raise CheckpointError(f"no usable checkpoint under {path}/checkpoints")
        return found
    if path.is_dir():
        problem = verify(path)
        if problem:
            raise CheckpointError(f"checkpoint {path}: {problem}")
        return path
    raise CheckpointError(f"{path} is neither a checkpoint directory (step-N with meta.json) nor a run "
                          "directory (with checkpoints/); a consolidated .pt file is loaded with "
                          "load_weights(chunks, torch.load(path, weights_only=True))")


def checkpoint_meta(directory: str | Path) -> dict:
    return json.loads((Path(directory) / "meta.json").read_text())


def checkpoint_shapes(directory: str | Path) -> dict[str, tuple[int, ...]]:
    """Global shape of every weight stored in a checkpoint directory (optimizer moments left out)."""
    metadata = dist_checkpointing.load_tensors_metadata(str(directory))
    return {k[len("model."):]: tuple(v.global_shape) for k, v in metadata.items() if k.startswith("model.")}


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _model_shapes(shards) -> dict[str, tuple[int, ...]]:
    """Global name -> global shape of every parameter of the whole model (all ranks' parts)."""
    local = {st.key: tuple(st.global_shape) for _, st in shards}
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return local
    every: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(every, local)
    return {k: v for part in every for k, v in part.items()}


def check_names_and_shapes(model: dict[str, tuple], stored: dict[str, tuple], allow_missing: Iterable[str] = (),
                           allow_unexpected: Iterable[str] = (), source: str = "the weights") -> list[str]:
    """Raise ``WeightsError`` for disallowed missing / unexpected names or any differing shape;
    return the names the model has and ``stored`` lacks (allowed: they keep their initial values)."""
    allow_missing, allow_unexpected = list(allow_missing), list(allow_unexpected)
    missing = sorted(k for k in model if k not in stored)
    unexpected = sorted(k for k in stored if k not in model)
    problems = []
    bad_missing = [k for k in missing if not _matches(k, allow_missing)]
    bad_unexpected = [k for k in unexpected if not _matches(k, allow_unexpected)]
    if bad_missing:
        problems.append(f"in the model but not in {source}: {', '.join(bad_missing)} "
                        "(allow with allow_missing=[pattern, ...], e.g. a new head)")
    if bad_unexpected:
        problems.append(f"in {source} but not in the model: {', '.join(bad_unexpected)} "
                        "(allow with allow_unexpected=[pattern, ...], e.g. a dropped head)")
    for k in sorted(set(model) & set(stored)):
        if tuple(model[k]) != tuple(stored[k]):
            problems.append(f"{k}: the model has shape {list(model[k])}, {source} {list(stored[k])}")
    if problems:
        raise WeightsError("weights do not fit the model:\n  " + "\n  ".join(problems))
    return missing


def _local_slice(full: torch.Tensor, st) -> torch.Tensor:
    """This rank's part of a whole tensor, as megatron's ShardedTensor places it."""
    return full[st.global_slice()]


@torch.no_grad()
def load_weights(chunks: list[torch.nn.Module], source: str | Path | Weights, allow_missing: Iterable[str] = (),
                 allow_unexpected: Iterable[str] = ()) -> list[str]:
    """Fill this rank's model chunks (any layout, wrappers allowed) with weights only.

    ``source``: a checkpoint or run directory, or a state dict of whole tensors under global
    names (``checkpoint.consolidate``, ``torch.load`` of a converted file, an import). All
    ranks call this together. Returns the allowed missing names (they keep their values).
    """
    shards = parameter_shards(chunks)
    model = _model_shapes(shards)
    if isinstance(source, (str, Path)):
        directory = resolve_checkpoint(source)
        missing = check_names_and_shapes(model, checkpoint_shapes(directory), allow_missing, allow_unexpected,
                                         source=f"checkpoint {directory}")
        wanted = [(p, st) for p, st in shards if st.key not in missing]
        template = {f"{i}": dataclasses.replace(st, key=f"model.{st.key}", dtype=torch.float32,
                                                data=torch.empty(st.local_shape, dtype=torch.float32))
                    for i, (_, st) in enumerate(wanted)}
        loaded = dist_checkpointing.load(template, str(directory)) if template else {}
        values = [(p, loaded[f"{i}"]) for i, (p, _) in enumerate(wanted)]
    else:
        missing = check_names_and_shapes(model, {k: tuple(v.shape) for k, v in source.items()}, allow_missing,
                                         allow_unexpected, source="the state dict")
        values = [(p, _local_slice(source[st.key], st)) for p, st in shards if st.key not in missing]
    for p, value in values:
        p.data.copy_(value.reshape(p.shape).to(p.dtype))
    return missing


@torch.no_grad()
def model_weights(chunks: list[torch.nn.Module]) -> dict[str, torch.Tensor]:
    """Whole fp32 tensors under global names from a model held by one process (TP = PP = 1),
    the layout of ``checkpoint.consolidate`` (layers stacked, padded vocab rows kept)."""
    if parallel_state.get_tensor_model_parallel_world_size() * \
            parallel_state.get_pipeline_model_parallel_world_size() != 1:
        raise WeightsError("model_weights needs the whole model on one process (TP = PP = 1)")
    out: dict[str, torch.Tensor] = {}
    for p, st in parameter_shards(chunks):
        full = out.setdefault(st.key, torch.zeros(st.global_shape, dtype=torch.float32))
        full[st.global_slice()] = p.detach().float().reshape(st.local_shape)
    return out


def init_single_process() -> None:
    """A one-process gloo group and megatron's parallel state at TP = PP = 1 (export, import,
    notebooks), unless a process group already exists."""
    from dist_pretrain import cpu_compat

    if not torch.cuda.is_available():
        cpu_compat.enable()
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(1, 1)


def one_process_config(cfg: Config) -> Config:
    """``cfg`` with the whole model on one process (no TP / PP, one engine-free replica)."""
    par = cfg.parallel.model_copy(update={"tensor": 1, "pipeline": 1, "virtual_pipeline": None, "nproc": 1})
    return cfg.model_copy(update={"parallel": par})


def build_model(cfg: Config, vocab_size: int) -> list[torch.nn.Module]:
    """This rank's chunks of ``cfg``'s model at the current layout, seed-only initial weights, in
    fp32 (no engine, no optimizer). ``vocab_size`` is the padded size (the embedding's rows)."""
    from dist_pretrain.models.architecture import get_architecture
    from dist_pretrain.models.megatron_config import transformer_config
    from dist_pretrain.runtime import seed_everything
    from dist_pretrain.build import build_model_chunks

    seed_everything(cfg.seed)
    fp32 = cfg.model_copy(update={"train": cfg.train.model_copy(update={"precision": "fp32"})})
    tconfig = transformer_config(fp32, torch.cuda.is_available())
    return build_model_chunks(fp32, get_architecture(cfg.model.arch), tconfig, vocab_size)


def load_pretrained(path: str | Path, allow_missing: Iterable[str] = (),
                    allow_unexpected: Iterable[str] = ()) -> tuple[Config, list[torch.nn.Module]]:
    """The model of a checkpoint (or run) directory on one process, weights only: its config
    (from ``meta.json``, parallel sizes reset to 1) and its chunk, in eval mode."""
    directory = resolve_checkpoint(path)
    cfg = one_process_config(Config.model_validate(checkpoint_meta(directory)["config"]))
    init_single_process()
    vocab = checkpoint_shapes(directory)["embedding.word_embeddings.weight"][0]
    chunks = build_model(cfg, vocab)
    load_weights(chunks, directory, allow_missing, allow_unexpected)
    for chunk in chunks:
        chunk.eval()
    return cfg, chunks
