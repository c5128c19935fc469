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
* ``single_rank_reduction``: with one rank in the data-parallel group, ZeRO's reduction is the
  identity, yet DeepSpeed 0.19.8 still copies every gradient into a contiguous bucket, divides
  the bucket by 1, flattens it again (``allreduce_bucket``: a ``cat``), all-reduces it over one
  rank, adds it into the flat partition through a temporary and copies it back into the
  bucket: six passes over every gradient, most of the 0.10 s of copies per fp32 step that the
  peers do not make (``benchmarks/peers.py``, 44.8M parameters, /work/notes/17.md). At DP=1
  the bucket is not made contiguous (``contiguous_gradients`` off: each gradient stays where
  autograd wrote it) and each gradient is added straight into its slice of the flat partition
  the step reads: the zeroing of that partition and one add remain. That partition is kept
  between steps and zeroed in place, not allocated afresh (a fresh buffer this large costs
  page faults on every step; the peers keep their ``.grad`` tensors between steps too). The values are the same
  bit for bit (x/1 = x, and the add into the partition's dtype is the one DeepSpeed makes):
  ``tests/test_zero_step.py`` compares with DeepSpeed's path; the equivalence tests with DP=2.

* ``kept_fp32_gradient_cast`` (bf16 on CPU): DeepSpeed's step casts each sub-group's bf16
  gradient partition to a new fp32 tensor (``flat_grad_partition.to(fp32)``) for AdamW. The
  largest sub-group is at least the largest parameter (the benchmark GPT's 25.8M-element
  embedding: 103 MB); glibc serves an allocation over 32 MB with a fresh ``mmap``, so that
  cast paid its page faults on every step (profiled: ~30 ms of a 113 ms engine step, where
  the same cast into a kept buffer takes ~5 ms). At DP=1 the cast now goes into one fp32
  buffer the size of the largest sub-group, kept between steps: on a GPU, PyTorch's caching
  allocator keeps that block reserved the same way, so the buffer is only installed on CPU.
  Not at DP>1, where ZeRO-2 promises partitioned gradients between steps
  (``tests/test_zero_memory.py`` counts a kept buffer as gradient bytes). The values are the
  same bit for bit (the same exact bf16 -> fp32 cast).

Each touches DeepSpeed internals listed in ``dist_pretrain.versions.INTERNALS``.
"""

from __future__ import annotations

import types

import torch

ROW = 4096  # elements per fp32 partial norm; the partials are squared and summed in fp64


CAST_ROWS = 4096  # rows of a bf16 gradient cast to fp32 at a time (64 MiB of fp32 scratch)
_scratch: dict[torch.device, torch.Tensor] = {}  # per device, kept between steps


def fp32_scratch(rows: int, device: torch.device) -> torch.Tensor:
    """A reused [rows, ROW] fp32 buffer. A fresh allocation this large is served by mmap and
    paid in page faults on every step: on this machine ~10x the cost of the cast itself."""
    buf = _scratch.get(device)
    if buf is None or buf.shape[0] < rows:
        buf = _scratch[device] = torch.empty(rows, ROW, dtype=torch.float32, device=device)
    return buf[:rows]


def squared_norm(g: torch.Tensor, accumulate: torch.dtype = torch.float64) -> torch.Tensor:
    """Sum of squares of ``g``: fp32 norms of ``ROW``-element rows, squared and summed in
    ``accumulate`` (fp64): as exact as an fp64 copy at fp32 speed. inf/NaN stay non-finite.

    A bf16 gradient is cast to fp32 ``CAST_ROWS`` rows at a time into a reused scratch buffer
    (``vector_norm(dtype=float32)`` would allocate an fp32 copy of the whole gradient): the
    same rows and fp32 values, so the same result."""
    flat = g.detach().reshape(-1)
    whole = flat.numel() // ROW * ROW
    parts = []
    if whole and flat.dtype == torch.float32:
        parts.append(torch.linalg.vector_norm(flat[:whole].view(-1, ROW), 2, dim=1))
    elif whole:
        rows = flat[:whole].view(-1, ROW)
        for start in range(0, rows.shape[0], CAST_ROWS):
            chunk = rows[start:start + CAST_ROWS]
            cast = fp32_scratch(chunk.shape[0], g.device)
            cast.copy_(chunk)
            parts.append(torch.linalg.vector_norm(cast, 2, dim=1))
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


def single_rank_reduction(zero_optimizer) -> bool:
    """ZeRO-1/2 with one data-parallel rank: add each gradient into its slice of the flat
    partition, without DeepSpeed's bucket copy, divide, flatten, all-reduce and copy-back."""
    opt = zero_optimizer
    needed = ("contiguous_gradients", "_buffered_reduce_fallback_preserving_fp32", "_build_compact_grad_partition_buffer",
              "dp_process_group",
              "bit16_groups", "param_dict", "_use_compact_grad_partition_buffer", "_get_compact_grad_partition_slice")
    if not all(hasattr(opt, name) for name in needed) or getattr(opt, "cpu_offload", True) \
            or getattr(opt, "overlap_comm", True):
        return False
    if torch.distributed.get_world_size(group=opt.dp_process_group) != 1 \
            or getattr(opt, "sequence_parallel_size", 1) != 1 \
            or not all(opt._use_compact_grad_partition_buffer(i) for i in range(len(opt.bit16_groups))):
        return False

    def add_into_partition(self, grads, grad_params, communication_data_type, elements_per_buffer):
        for grad, (group, _, param_id) in zip(grads, grad_params):
            # one rank: its partition 0 is the whole group; slice (fp32, or bf16 in bf16) += gradient
            self._get_compact_grad_partition_slice(group, 0, param_id, grad.numel()).add_(grad.reshape(-1))

    build = opt._build_compact_grad_partition_buffer
    kept: dict[int, object] = {}

    def build_or_reuse(self, group_idx):
        group = kept.get(group_idx)
        if group is None:
            group = kept[group_idx] = build(group_idx)
        else:
            group.flat_partition.zero_()
        return group

    opt.contiguous_gradients = False  # read at each reduction: gradients stay in param.grad
    opt._buffered_reduce_fallback_preserving_fp32 = types.MethodType(add_into_partition, opt)
    opt._build_compact_grad_partition_buffer = types.MethodType(build_or_reuse, opt)
    return True


def kept_fp32_gradient_cast(zero_optimizer) -> bool:
    """bf16 ZeRO-1/2 at DP=1 on CPU: cast each sub-group's gradient partition to fp32 into one kept
    buffer (the size of the largest sub-group) instead of a fresh tensor per sub-group and step.

    DeepSpeed's step calls ``_get_preflattened_grad_partition(i).to(fp32)``; returning the
    fp32 copy already makes that ``.to`` the identity. The buffer is the AdamW ``.grad`` of one
    sub-group at a time (DeepSpeed steps them one after another and drops ``.grad`` after each).
    """
    opt = zero_optimizer
    needed = ("_get_preflattened_grad_partition", "single_partition_of_fp32_groups", "partition_size",
              "dp_process_group")
    if not all(hasattr(opt, name) for name in needed) or getattr(opt, "cpu_offload", True) \
            or torch.distributed.get_world_size(group=opt.dp_process_group) != 1:
        return False
    master = opt.single_partition_of_fp32_groups
    if not master or master[0].device.type != "cpu" or getattr(opt, "dtype", None) != torch.bfloat16 \
            or master[0].dtype != torch.float32:
        return False
    buffer = torch.empty(max(int(n) for n in opt.partition_size), dtype=torch.float32, device=master[0].device)
    original = opt._get_preflattened_grad_partition

    def cast_into_kept_buffer(self, group_idx):
        flat = original(group_idx)
        if flat is None or flat.dtype == torch.float32:
            return flat
        return buffer[:flat.numel()].copy_(flat)

    opt._get_preflattened_grad_partition = types.MethodType(cast_into_kept_buffer, opt)
    return True
