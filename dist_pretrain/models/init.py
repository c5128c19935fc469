"""Initial weights that depend on the seed only, never on the parallel layout, drawn shard by shard.

Every value of a parameter is a function of (run seed, the parameter's global name, the value's
position in the *whole* unsharded tensor): a counter-based generator (Philox 4x64, numpy's
``Philox`` bit generator, whose counter can be set to any position) is keyed by the seed and
the global name (with the global layer index), and the value at canonical position ``i`` comes
from counter draw ``i // 2`` (one 64-bit draw gives two normals, Box-Muller). The canonical
order is the whole tensor, row-major, with its tensor-parallel partition dimension moved first,
so the part a TP rank owns (a block of rows along that dimension, or ``stride`` blocks for a
gated MLP's ``[gate; up]``) is a few contiguous counter ranges. Each rank therefore generates
exactly its own shard, once, in bounded chunks: TP1, TP2, PP2, PP2xVPP2 ... start from the same
function, so the same seed gives the same loss curve on any layout, and a rank's init cost and
memory follow its shard, not the model.

Megatron-core's own initialisation is switched off (``perform_initialization=False`` in
``megatron_config``): it would draw every weight whole on each rank only for us to overwrite
it. It then leaves the tensor-parallel attributes of the weights unset, so
``mark_tensor_parallel`` sets them as megatron would (``partition_dim``, ``partition_stride``).
The values are drawn on the CPU (the same numbers on any device) and copied into the parameter
where it lives.
"""

from __future__ import annotations

import hashlib
import math
import re

import numpy as np
import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel.layers import (
    ColumnParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
    set_tensor_model_parallel_attributes,
)
from megatron.core.transformer.mlp import MLP

_LAYER = re.compile(r"(^|\.)layers\.(\d+)\.")
# values generated per call: bounds the transient memory of a draw (~40 bytes per value)
CHUNK_VALUES = 1 << 20


def _global_name(chunk: torch.nn.Module, name: str) -> str:
    """Replace the chunk-local layer index in ``name`` by the global one (``layer_number``)."""
    match = _LAYER.search(name)
    if not match:
        return name
    block_path = name[: match.start(2) - len("layers.")].rstrip(".")
    block = chunk.get_submodule(block_path) if block_path else chunk
    layer = block.layers[int(match.group(2))]
    return name[: match.start(2)] + str(layer.layer_number - 1) + name[match.end(2):]


def parameter_key(seed: int, name: str) -> int:
    """The 64-bit Philox key of a parameter: the run seed and the parameter's global name."""
    return int(hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()[:16], 16)


def normal_range(key: int, start: int, count: int) -> np.ndarray:
    """Standard normals at canonical positions ``start .. start + count - 1`` of stream ``key``
    (float64). Position ``i`` comes from 64-bit draw ``i // 2``: its high and low 32 bits are
    the two uniforms of a Box-Muller pair, cosine for even ``i``, sine for odd."""
    first, stop = start // 2, (start + count + 1) // 2
    # Philox 4x64 gives 4 draws per counter value: start at the block holding draw ``first``
    skip = first % 4
    raw = np.random.Philox(key=key, counter=first // 4).random_raw(stop - first + skip)[skip:]
    u1 = ((raw >> np.uint64(32)) + np.uint64(1)).astype(np.float64) * 2.0**-32  # (0, 1]
    u2 = (raw & np.uint64(0xFFFFFFFF)).astype(np.float64) * (2.0 * math.pi * 2.0**-32)
    del raw
    radius = np.sqrt(-2.0 * np.log(u1))
    del u1
    out = np.empty((stop - first, 2))
    np.multiply(radius, np.cos(u2), out=out[:, 0])
    np.multiply(radius, np.sin(u2), out=out[:, 1])
    offset = start - 2 * first
    return out.reshape(-1)[offset: offset + count]


def fill_normal_shard(param: torch.Tensor, key: int, std: float, dim: int, stride: int,
                      tp: int, rank: int) -> None:
    """Write into ``param`` (this TP rank's shard, split along ``dim``, ``stride`` blocks)
    N(0, std) values of the whole tensor drawn from stream ``key``, generating only the shard."""
    moved = param.movedim(dim, 0)  # a view: the partition dimension first, as in the canonical order
    part = moved.shape[0] // stride  # rows of one stride block this rank holds
    row_values = math.prod(moved.shape[1:])
    rows_per_chunk = max(1, CHUNK_VALUES // max(row_values, 1))
    for block in range(stride):
        first_row = (block * tp + rank) * part  # where the block's slice starts in the whole tensor
        for r in range(0, part, rows_per_chunk):
            n = min(rows_per_chunk, part - r)
            values = normal_range(key, (first_row + r) * row_values, n * row_values)
            values *= std
            local = block * part + r
            moved[local: local + n].copy_(torch.from_numpy(values).view(n, *moved.shape[1:]))


def mark_tensor_parallel(chunks: list[torch.nn.Module]) -> None:
    """Set the tensor-parallel attributes megatron-core sets only when it initialises weights
    itself: ``VocabParallelEmbedding`` and ``ColumnParallelLinear`` split dimension 0 (a gated
    MLP's ``linear_fc1`` with stride 2, ``[gate; up]``), ``RowParallelLinear`` dimension 1."""
    for chunk in chunks:
        for name, module in chunk.named_modules():
            weight = getattr(module, "weight", None)
            if not isinstance(weight, torch.nn.Parameter) or hasattr(weight, "tensor_model_parallel"):
                continue
            if isinstance(module, VocabParallelEmbedding):
                dim, stride = 0, 1
            elif isinstance(module, ColumnParallelLinear):
                parent = chunk.get_submodule(name.rpartition(".")[0])
                gated = (isinstance(parent, MLP) and name.endswith("linear_fc1")
                         and parent.config.gated_linear_unit and not parent.config.use_kitchen)
                dim, stride = 0, 2 if gated else 1
            elif isinstance(module, RowParallelLinear):
                dim, stride = 1, 1
            else:
                continue
            set_tensor_model_parallel_attributes(weight, True, dim, stride)


@torch.no_grad()
def init_layout_independent(
    chunks: list[torch.nn.Module], seed: int, std: float, num_layers: int,
    tied_names: dict[str, str] | None = None,
) -> None:
    """Give every parameter its seed-only initial value, following megatron's scheme.

    Weights ~ N(0, std); the two output projections of every layer (``linear_proj``,
    ``linear_fc2``) ~ N(0, std / sqrt(2 * num_layers)) as megatron's
    ``scaled_init_method_normal``; biases 0; norm weights 1. ``tied_names`` maps a
    parameter name to the one it must equal (the output layer of a tied embedding).
    """
    mark_tensor_parallel(chunks)
    tp = parallel_state.get_tensor_model_parallel_world_size()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    scaled_std = std / math.sqrt(2.0 * num_layers)
    tied_names = tied_names or {}
    for chunk in chunks:
        for name, param in chunk.named_parameters():
            gname = _global_name(chunk, name)
            gname = tied_names.get(gname, gname)
            if name.endswith("bias"):
                param.zero_()
                continue
            if param.dim() == 1 and ("norm" in name or "layernorm" in name):
                param.fill_(1.0)
                continue
            sigma = scaled_std if re.search(r"(linear_proj|linear_fc2)\.weight$", name) else std
            sharded = getattr(param, "tensor_model_parallel", False)
            fill_normal_shard(param, parameter_key(seed, gname), sigma,
                              dim=param.partition_dim if sharded else 0,
                              stride=getattr(param, "partition_stride", 1) if sharded else 1,
                              tp=tp if sharded else 1, rank=tp_rank if sharded else 0)
