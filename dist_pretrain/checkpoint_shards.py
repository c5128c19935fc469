"""Which parameter is which sharded tensor: every local parameter with its global key and TP / PP
placement, as megatron's ``sharded_state_dict`` describes it, for checkpoints and weights-only loading.

Only plain ``ShardedTensor`` entries map one to one onto parameters; a gated MLP's ``linear_fc1``
comes as a ``ShardedTensorFactory`` and is described here as one ``[2, ffn, ...]`` tensor."""

from __future__ import annotations

import contextlib
import dataclasses

import torch
from megatron.core import parallel_state
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory


def bare_model(chunk: torch.nn.Module) -> torch.nn.Module:
    """The megatron model inside EngineChunk / DDP / Float16Module wrappers."""
    while hasattr(chunk, "module"):
        chunk = chunk.module
    return chunk


def parameter_shards(chunks: list[torch.nn.Module]) -> list[tuple[torch.nn.Parameter, ShardedTensor]]:
    """(parameter, its ShardedTensor under the global key) for every local parameter.

    A parameter copied on another pipeline stage (``shared``: tied output layer, T5's
    decoder-stage embeddings) becomes a non-zero replica so that only one copy is written.
    A gated MLP's ``linear_fc1`` (megatron describes it by a ``ShardedTensorFactory``) is
    stored as ``[2, ffn, hidden]`` (``gated_shard``): ``local_shape`` is then not the
    parameter's shape, so values go in with ``reshape(st.local_shape)`` and come back with
    ``reshape`` to the parameter's.
    """
    metadata = {"dp_cp_group": parallel_state.get_data_parallel_group(with_context_parallel=True)}
    by_id = {}
    out = []
    for chunk in chunks:
        model = bare_model(chunk)
        for p in model.parameters():
            by_id[id(p)] = p
        with whole_parameters(model):  # a factory's pieces are built from the whole (ZeRO-3: gathered) weight
            for st in model.sharded_state_dict(prefix="", metadata=metadata).values():
                if not isinstance(st, (ShardedTensor, ShardedTensorFactory)) or id(st.data) not in by_id:
                    continue
                p = by_id[id(st.data)]
                if isinstance(st, ShardedTensorFactory):
                    st = gated_shard(st)
                # only the key, shape and offsets are used: drop the reference to the weights
                st = dataclasses.replace(st, data=torch.empty(st.local_shape, dtype=st.dtype, device="meta"))
                if getattr(p, "shared", False) and isinstance(st.replica_id, tuple):
                    st = dataclasses.replace(st, replica_id=(1, *st.replica_id[1:]))
                out.append((p, st))
    return out


def gated_shard(factory: ShardedTensorFactory) -> ShardedTensor:
    """A gated ``linear_fc1`` weight or bias as one ShardedTensor of global shape ``[2, ffn, ...]``.

    Each TP rank holds ``[gate_r; up_r]`` (its slice of the gate rows, then of the up rows);
    megatron's factory saves the two halves as separate pieces of the ``[gate; up]`` tensor,
    which our ``ShardedTensor``-only code paths would skip. Viewed as ``[2, ffn / tp, ...]``
    the local tensor is the TP slice along axis 1 of ``[2, ffn, ...]``, so resharding to
    another TP size takes matching halves of gate and up, and the whole tensor reshaped to
    ``[2 ffn, ...]`` is the TP = 1 parameter.
    """
    gate = factory.build()[0]
    if not isinstance(gate, ShardedTensor) or gate.key != factory.key or gate.flattened_range is not None:
        raise NotImplementedError(f"{factory.key}: unexpected megatron sharded-tensor factory")
    n = gate.prepend_axis_num
    data = factory.data.reshape(2, *gate.local_shape)
    return dataclasses.replace(
        gate, data=data, local_shape=tuple(data.shape),
        global_shape=(*gate.global_shape[:n], 2, gate.global_shape[n] // 2, *gate.global_shape[n + 1:]),
        global_offset=(*gate.global_offset[:n], 0, *gate.global_offset[n:]),
        axis_fragmentations=(*gate.axis_fragmentations[:n], 1, gate.axis_fragmentations[n] // 2,
                             *gate.axis_fragmentations[n + 1:]),
    )


def parameter_shape(p: torch.nn.Parameter) -> tuple[int, ...]:
    """``p``'s TP-local shape (ZeRO-3 keeps it in ``ds_shape``; ``p.shape`` is a DP partition)."""
    return tuple(p.ds_shape) if hasattr(p, "ds_id") else tuple(p.shape)


def whole_parameters(model: torch.nn.Module):
    """ZeRO-3 keeps only a DP partition of each parameter (``p.shape`` is empty): gather the
    TP-local weights while megatron describes their shapes and TP/PP placement."""
    params = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
