"""AdamW state restored from a checkpoint, placed where torch's AdamW would have put it.

Checkpoints load on the CPU (``dist_checkpointing`` fills CPU templates). On a GPU the
moments must move to their parameter's device (torch's foreach/fused kernels refuse a CPU
moment next to a CUDA parameter), and the ``step`` counter must follow torch's own rule in
``Adam._init_group``: a float32 tensor on the parameter's device for ``fused`` or
``capturable`` groups, a CPU scalar otherwise.
"""

from __future__ import annotations

import torch


def group_of(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> dict:
    """The param group of ``optimizer`` that holds ``param``."""
    for group in optimizer.param_groups:
        if any(p is param for p in group["params"]):
            return group
    raise KeyError(f"parameter of shape {tuple(param.shape)} is in none of the optimizer's groups")


def adam_step_tensor(group: dict, param: torch.Tensor, step: int) -> torch.Tensor:
    """AdamW's ``state["step"]`` for ``param`` at ``step`` (torch's placement), given the options of
    its param group (or the optimizer's ``defaults`` when every group shares them)."""
    if group.get("fused") or group.get("capturable"):
        return torch.tensor(float(step), dtype=torch.float32, device=param.device)
    return torch.tensor(float(step), dtype=torch.get_default_dtype())


def moment_on(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A loaded moment as a fresh tensor with ``param``'s device and dtype."""
    return value.detach().to(device=param.device, dtype=param.dtype, copy=True)
