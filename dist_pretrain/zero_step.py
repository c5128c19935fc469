"""Make DeepSpeed's ZeRO-1/2 optimizer step cost about what a fused clip + AdamW costs.

Profiled on the benchmark GPT (``benchmarks/peers.py``, single process, ZeRO-1, fp32; cProfile
of ``DeepSpeedEngine.step``; see /work/notes/17-zero.md for the numbers), three quarters of
DeepSpeed 0.19.8's step went to the global gradient norm: ``get_grad_norm_direct`` casts every
gradient to a new fp64 tensor (``g.to(get_norm_dtype())``), one parameter at a time, before
``vector_norm``. In bf16, ``check_grad_overflow`` then walks every gradient once more for
inf/NaN, which the norm already reveals (a non-finite gradient makes a non-finite norm, and
DeepSpeed's step skips the update on a non-finite norm whenever ``check_grad_overflow`` is on).

* ``foreach_grad_norm`` (name kept from the first attempt) computes each gradient's sum of
  squares as fp32 norms of 4096-element rows, squared and summed in fp64: no fp64 copy,
  vectorized fp32 work, and fp64 where the error would grow (a plain fp32 ``vector_norm`` of a
  25M-element gradient is 0.17% off; rows of 4096 keep it below 1e-6). Measured with
  /tmp/z17/normbench.py (the benchmark GPT's gradient shapes, 1 thread, min of 7): fp32 292 ms
  (DeepSpeed) -> 18 ms; bf16 135 -> 83 ms; ``torch._foreach_norm(dtype=float64)`` was *slower*
  than DeepSpeed's loop (745 ms), so it is not used. Same choice of gradients (no padding, tied
  copies counted once, replicated parameters on tensor-parallel rank 0 only) and the same
  reductions over the DP and model-parallel groups.
* ``overflow_from_norm`` leaves inf/NaN detection to that norm when DeepSpeed computes it.

Each touches DeepSpeed internals listed in ``dist_pretrain.versions.INTERNALS``.
"""

from __future__ import annotations

import types

import torch

ROW = 4096  # elements per fp32 partial norm; the partials are squared and summed in fp64


def squared_norm(g: torch.Tensor, accumulate: torch.dtype = torch.float64) -> torch.Tensor:
    """Sum of squares of ``g``: fp32 norms of ``ROW``-element rows, squared and summed in
    ``accumulate`` (fp64): as exact as an fp64 copy at fp32 speed. inf/NaN stay non-finite."""
    flat = g.detach().reshape(-1)
    whole = flat.numel() // ROW * ROW
    parts = []
    if whole:
        parts.append(torch.linalg.vector_norm(flat[:whole].view(-1, ROW), 2, dim=1, dtype=torch.float32))
    if whole < flat.numel():
        parts.append(torch.linalg.vector_norm(flat[whole:], 2, dtype=torch.float32).reshape(1))
    if not parts:  # an empty gradient (a zero-size slice of a partition)
        return torch.zeros((), dtype=accumulate, device=g.device)
    return torch.cat(parts).to(accumulate).pow(2).sum()


def foreach_grad_norm(zero_optimizer) -> bool:
    """Replace ZeRO-1/2's ``get_grad_norm_direct`` (L2 only; other norms keep DeepSpeed's)."""
    if not hasattr(zero_optimizer, "get_grad_norm_direct") or not hasattr(zero_optimizer, "averaged_gradients"):
        return False
    from deepspeed import comm as dist
    from deepspeed.runtime.utils import (
        is_model_parallel_parameter,
        mask_nan_or_inf_with_val_inplace,
    )
    from deepspeed.runtime.zero.utils import get_norm_dtype

    original = zero_optimizer.get_grad_norm_direct

    def grad_norm(self, gradients, params, norm_type=2):
        if float(norm_type) != 2.0:
            return original(gradients, params, norm_type)
        grads = (g for g in gradients if not getattr(g, "_zero_padding", False))
        counted = [g.detach() for g, p in zip(grads, params)
                   if not getattr(p, "ds_pipe_replicated", False)
                   and (is_model_parallel_parameter(p) or self.model_parallel_rank == 0)]
        if counted:
            total = torch.stack([squared_norm(g, get_norm_dtype()) for g in counted]).sum().float()
        else:
            total = torch.tensor(0.0, dtype=torch.float32, device=self.device)
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=self.dp_process_group)
        self._model_parallel_all_reduce(tensor=total, op=dist.ReduceOp.SUM)
        total = total.pow(0.5)
        mask_nan_or_inf_with_val_inplace(total, device=self.device)
        return total

    zero_optimizer.get_grad_norm_direct = types.MethodType(grad_norm, zero_optimizer)
    return True


def overflow_from_norm(zero_optimizer) -> bool:
    """Skip ZeRO-1/2's separate inf/NaN pass over the gradients when the grad norm, which
    DeepSpeed then checks for the same thing, is computed anyway (not with CPU offload,
    whose overflow flag is gathered while gradients are copied out)."""
    opt = zero_optimizer
    if not (getattr(opt, "compute_grad_norm", False) and getattr(opt, "check_grad_overflow", False)) \
            or getattr(opt, "cpu_offload", True) or not hasattr(opt, "averaged_gradients"):
        return False

    def check_overflow(self, partition_gradients=True):
        self.overflow = False  # decided by the norm in step(): is_invalid_grad_norm

    opt.check_overflow = types.MethodType(check_overflow, opt)
    return True
