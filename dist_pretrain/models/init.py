"""Initial weights that depend on the seed only, never on the parallel layout.

Every parameter is drawn *whole* (its unsharded shape) from a generator seeded by the
run seed and the parameter's global name (with the global layer index), then the
slice this tensor-parallel rank owns is kept. TP1, TP2, PP2, PP2xVPP2 ... therefore
start from the same function, so the same seed gives the same loss curve on any layout
and a user's bug report reproduces on one process.
"""

from __future__ import annotations

import hashlib
import math
import re

import torch
from megatron.core import parallel_state

_LAYER = re.compile(r"(^|\.)layers\.(\d+)\.")


def _global_name(chunk: torch.nn.Module, name: str, block_attr: str) -> str:
    """Replace the chunk-local layer index in ``name`` by the global one (``layer_number``)."""
    match = _LAYER.search(name)
    if not match:
        return name
    block_path = name[: match.start(2) - len("layers.")].rstrip(".")
    block = chunk.get_submodule(block_path) if block_path else chunk
    layer = block.layers[int(match.group(2))]
    return name[: match.start(2)] + str(layer.layer_number - 1) + name[match.end(2):]


def _seed_for(seed: int, name: str) -> int:
    return int(hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()[:15], 16)


def _full_shape(param: torch.Tensor, tp: int) -> list[int]:
    shape = list(param.shape)
    if getattr(param, "tensor_model_parallel", False):
        shape[param.partition_dim] *= tp
    return shape


def tp_slice(full: torch.Tensor, dim: int, stride: int, tp: int, rank: int) -> torch.Tensor:
    """The part of a whole tensor that TP rank ``rank`` holds. With ``stride`` > 1 (a gated MLP's
    ``linear_fc1``: ``[gate; up]``, stride 2) the tensor is ``stride`` blocks along ``dim`` and
    the rank holds its slice of each block, concatenated (``[gate_r; up_r]``), as megatron's
    ``_initialize_affine_weight_cpu`` places it."""
    blocks = full.unflatten(dim, (stride, full.shape[dim] // stride))
    return blocks.chunk(tp, dim=dim + 1)[rank].flatten(dim, dim + 1)


@torch.no_grad()
def init_layout_independent(
    chunks: list[torch.nn.Module], seed: int, std: float, num_layers: int,
    tied_names: dict[str, str] | None = None,
) -> None:
    """Overwrite megatron's (layout-dependent) initial values, following its scheme.

    Weights ~ N(0, std); the two output projections of every layer (``linear_proj``,
    ``linear_fc2``) ~ N(0, std / sqrt(2 * num_layers)) as megatron's
    ``scaled_init_method_normal``; biases 0; norm weights 1. ``tied_names`` maps a
    parameter name to the one it must equal (the output layer of a tied embedding).
    """
    tp = parallel_state.get_tensor_model_parallel_world_size()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    scaled_std = std / math.sqrt(2.0 * num_layers)
    tied_names = tied_names or {}
    for chunk in chunks:
        for name, param in chunk.named_parameters():
            gname = _global_name(chunk, name, "layers")
            gname = tied_names.get(gname, gname)
            if name.endswith("bias"):
                param.zero_()
                continue
            if param.dim() == 1 and ("norm" in name or "layernorm" in name):
                param.fill_(1.0)
                continue
            sigma = scaled_std if re.search(r"(linear_proj|linear_fc2)\.weight$", name) else std
            gen = torch.Generator().manual_seed(_seed_for(seed, gname))
            full = torch.randn(_full_shape(param, tp), generator=gen, dtype=torch.float32) * sigma
            if getattr(param, "tensor_model_parallel", False) and tp > 1:
                full = tp_slice(full, param.partition_dim, getattr(param, "partition_stride", 1), tp, tp_rank)
            param.copy_(full.to(param.dtype))
