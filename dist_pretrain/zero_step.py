"""Make DeepSpeed's ZeRO-1/2 optimizer step cost about what a fused clip + AdamW costs.

Profiled on the benchmark GPT (``benchmarks/peers.py``, single process, ZeRO-1, fp32; cProfile
of ``DeepSpeedEngine.step``; see /work/notes/17-zero.md for the numbers), three quarters of
DeepSpeed 0.19.8's step went to the global gradient norm: ``get_grad_norm_direct`` casts every
gradient to a new fp64 tensor (``g.to(get_norm_dtype())``), one parameter at a time, before
``vector_norm``. In bf16, ``check_grad_overflow`` then walks every gradient once more for
inf/NaN, which the norm already reveals (a non-finite gradient makes a non-finite norm, and
DeepSpeed's step skips the update on a non-finite norm whenever ``check_grad_overflow`` is on).

* ``foreach_grad_norm`` computes the same fp64 per-parameter norms in one multi-tensor call
  (``torch._foreach_norm(..., dtype=float64)``: accumulated in fp64, no copies), with the same
  choice of gradients (no padding, tied copies counted once, replicated parameters on
  tensor-parallel rank 0 only) and the same reductions over the DP and model-parallel groups.
* ``overflow_from_norm`` leaves inf/NaN detection to that norm when DeepSpeed computes it.

Each touches DeepSpeed internals listed in ``dist_pretrain.versions.INTERNALS``.
"""

from __future__ import annotations

import types

import torch


def foreach_grad_norm(zero_optimizer) -> bool:
    """Replace ZeRO-1/2's ``get_grad_norm_direct`` (L2 only; other norms keep DeepSpeed's)."""
    if not hasattr(zero_optimizer, "get_grad_norm_direct") or not hasattr(zero_optimizer, "averaged_gradients"):
        return False
    from deepspeed import comm as dist
    from deepspeed.runtime.utils import is_model_parallel_parameter, mask_nan_or_inf_with_val_inplace
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
            norms = torch._foreach_norm(counted, 2, dtype=get_norm_dtype())
            total = torch.stack(norms).pow(2.0).sum().float()
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
