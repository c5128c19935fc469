"""Initial weights that depend on the seed only, never on the parallel layout, drawn shard by shard.

Every value of a parameter is a function of (run seed, the parameter's global name, the value's
position in the *whole* unsharded tensor). The canonical order of a parameter's values is the
whole tensor, row-major, with its tensor-parallel partition dimension moved first; that sequence
is cut into blocks of ``BLOCK`` values, and block ``b`` is drawn from its own generator, seeded
by (the seed and global name's 64-bit key, ``b``) through numpy's ``SeedSequence`` (``SFC64``,
float32 standard normals). The part a TP rank owns (a block of rows along the partition
dimension, or ``stride`` of them for a gated MLP's ``[gate; up]``) is a few contiguous ranges of
that order, so each rank draws only the blocks its shard touches (at most two partial blocks
too many per range), once: TP1, TP2, PP2, PP2xVPP2 ... start from the same function, the same
seed gives the same loss curve on any layout, and a rank's init time and memory follow its
shard, not the model. (Every value is also independent of the CPU: numpy's generators give the
same bits everywhere, where vectorised float kernels need not.)

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
# values per generator: a block is drawn whole (the same numbers whoever needs part of it)
BLOCK = 1 << 16


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
    """The 64-bit key of a parameter's generators: the run seed and the parameter's global name."""
    return int(hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()[:16], 16)


def normal_range(key: int, start: int, count: int, std: float = 1.0,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """N(0, std) values at canonical positions ``start .. start + count - 1`` of the parameter
    whose key is ``key``, written into ``out`` (a contiguous float32 tensor of ``count``
    values) or a new tensor; only the blocks that overlap the range are drawn."""
    out = torch.empty(count) if out is None else out
    for block in range(start // BLOCK, (start + count - 1) // BLOCK + 1 if count else 0):
        values = np.random.Generator(np.random.SFC64([key, block])).standard_normal(BLOCK, dtype=np.float32)
        lo, hi = max(start, block * BLOCK), min(start + count, (block + 1) * BLOCK)
        chunk = torch.from_numpy(values[lo - block * BLOCK: hi - block * BLOCK])
        out[lo - start: hi - start].copy_(chunk.mul_(std) if std != 1.0 else chunk)
    return out


def fill_normal_shard(param: torch.Tensor, key: int, std: float, dim: int, stride: int,
                      tp: int, rank: int) -> None:
    """Write into ``param`` (this TP rank's shard, split along ``dim``, ``stride`` blocks)
    N(0, std) values of the whole tensor drawn from stream ``key``, generating only the shard.
    A shard split along a later dimension (row-parallel weights) is staged in the canonical
    order and copied in transposed: one parameter's shard of extra memory at most."""
    moved = param.movedim(dim, 0)  # a view: the partition dimension first, as in the canonical order
    target = moved if moved.is_contiguous() and moved.dtype == torch.float32 else torch.empty(moved.shape, dtype=torch.float32)
    flat = target.view(-1)
    part = moved.shape[0] // stride  # rows of one stride block this rank holds
    values = part * math.prod(moved.shape[1:])
    for s in range(stride):
        first = (s * tp + rank) * values  # where this block's slice starts in the whole tensor
        normal_range(key, first, values, std, out=flat[s * values: (s + 1) * values])
    if target is not moved:
        moved.copy_(target)


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
