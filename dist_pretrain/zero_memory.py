"""Make DeepSpeed ZeRO-1/2 hold the model-state bytes the ZeRO paper promises.

Measured with ``benchmarks/memory.py`` (DP=2, DeepSpeed 0.19.8), before these changes ZeRO-2
held 4.18 bytes/param of gradients in fp32 (the paper: 2.00) and 6.00 of optimizer state
(the paper: 4.00); one or four micro-batches per step gave the same bytes, so the
accumulation boundaries ``engine.py`` sets were not the cause. Three DeepSpeed choices were:

1. **Reduced gradients kept per whole parameter, then flattened again.** Without
   ``gradient_accumulation_dtype`` fp32 != the weights' dtype, ZeRO-1/2 copies each reduced
   gradient of its partition into ``grads_in_partition``, a buffer sized by every parameter
   that *touches* the partition (2.19 bytes/param here: the tied embedding straddles the
   two partitions), and at the step flattens those views into a second, new partition
   (1.99). DeepSpeed already has the layout the paper means, a flat buffer of exactly the
   partition that reductions add into and that the step uses in place
   (``_build_compact_grad_partition_buffer``), but enables it only for bf16 weights with fp32
   accumulation. ``use_compact_gradient_partitions`` enables it for every dtype.
2. **An fp32 master copy of fp32 weights.** ZeRO-1/2 clones the rank's weight partition
   into ``single_partition_of_fp32_groups`` even when the weights are fp32, then copies it
   back after every update. ``alias_fp32_master`` makes the master *be* the weight
   partition (ZeRO-3 does the same by itself for fp32 weights).
3. **bf16: the fp32 gradient for AdamW is made one parameter group at a time**
   (``flat_grad_partition.to(float32)``), so its transient size is that of the largest group.
   ``split_param_groups`` cuts the decay / no-decay groups into sub-groups of about 1/8 of
   the model (one parameter is never split), largest last, so at most one small fp32
   gradient exists next to the bf16 partitions still waiting. ZeRO-3 has the same idea
   built in (``sub_group_size``).

ZeRO-3 (``stage3.py``) keeps reduced gradients in one flat partition buffer already, but:

4. **It clones fp32 weights into an fp32 master too**: it means to alias them when the
   dtypes and devices agree, but compares ``tensor.device == self.device`` where
   ``self.device`` is a string (``'cpu'``, ``'cuda:0'``), which is never equal to a
   ``torch.device``. ``alias_fp32_master`` aliases them (2.00 bytes/param in fp32).
5. **The step flattens each sub-group's gradient views into a new fp32 tensor**
   (``_prepare_fp32_grad_for_sub_group``); with DeepSpeed's default ``sub_group_size`` (1e9)
   one sub-group is the whole model, so that copy is another full gradient partition.
   ``zero3_sub_group_size`` sizes sub-groups to ~1/8 of the rank's partition instead.

Each function touches DeepSpeed internals listed in ``dist_pretrain.versions.INTERNALS``.
"""

from __future__ import annotations

import types

import torch

SUB_GROUPS = 8  # bf16 ZeRO-1/2: the fp32 gradient copy made at the step is ~1/8 of the model


def split_param_groups(groups: list[dict], parts: int = SUB_GROUPS) -> list[dict]:
    """Cut each AdamW group into consecutive sub-groups of at most ~1/``parts`` of all
    parameters (same hyper-parameters), ordered smallest first.

    The update is element-wise, so the result is the same; only the size of the largest
    group, and with it DeepSpeed's transient fp32 gradient, shrinks.
    """
    total = sum(p.numel() for g in groups for p in g["params"])
    limit = max(1, -(-total // parts))
    out = []
    for group in groups:
        current: list[torch.nn.Parameter] = []
        size = 0
        for p in group["params"]:
            if current and size + p.numel() > limit:
                out.append({**group, "params": current})
                current, size = [], 0
            current.append(p)
            size += p.numel()
        if current:
            out.append({**group, "params": current})
    return sorted(out, key=lambda g: sum(p.numel() for p in g["params"]))


def use_compact_gradient_partitions(zero_optimizer) -> bool:
    """Reduce ZeRO-1/2 gradients straight into one flat buffer per group holding exactly
    the rank's partition, which the step hands to AdamW without another copy.

    DeepSpeed's compact path (``_use_compact_grad_partition_buffer``) is otherwise only on
    for bf16 weights with fp32 accumulation. Left off with CPU offload (it has its own
    fp32 buffers) and for Muon groups (DeepSpeed's own exclusion). Returns whether it is on.
    """
    if zero_optimizer.cpu_offload or not hasattr(zero_optimizer, "_use_compact_grad_partition_buffer"):
        return False

    def use_compact(self, group_idx):
        params = self.params_in_partition[group_idx]
        return not (len(params) > 0 and self._is_muon_group(params))

    zero_optimizer._use_compact_grad_partition_buffer = types.MethodType(use_compact, zero_optimizer)
    return True


def alias_fp32_master(zero_optimizer) -> bool:
    """fp32 ZeRO-1/2: let the fp32 "master" partition share storage with the rank's
    partition of the (fp32) weights instead of being a clone of it.

    AdamW then updates the weight partition in place and DeepSpeed's copy back
    (``bit16_partitions[rank].copy_(fp32_partition)``) copies a tensor onto itself. The
    tensor objects stay (AdamW's state and param groups are keyed by them); the
    parameter-to-fragment links are rebuilt on the new storage. Returns whether it applied.
    """
    opt = zero_optimizer
    if hasattr(opt, "fp32_partitioned_groups_flat"):  # ZeRO-3
        if opt.offload_optimizer:
            return False
        pairs = list(zip(opt.fp32_partitioned_groups_flat, opt.fp16_partitioned_groups_flat))
    elif hasattr(opt, "single_partition_of_fp32_groups"):
        if opt.cpu_offload:
            return False
        pairs = [(master, opt.parallel_partitioned_bit16_groups[i][
            torch.distributed.get_rank(group=opt.real_dp_process_group[i])])
            for i, master in enumerate(opt.single_partition_of_fp32_groups)]
    else:
        return False
    applied = False
    for master, weights in pairs:
        if weights is None or weights.dtype != master.dtype or weights.device != master.device \
                or weights.shape != master.shape or weights.data_ptr() == master.data_ptr():
            continue
        master.data = weights.data
        applied = True
    if applied and hasattr(opt, "single_partition_of_fp32_groups"):
        opt._link_all_hp_params()  # ZeRO-1/2's per-parameter views of the master partition
    return applied


def zero3_defaults(chunks: list[torch.nn.Module], dp_size: int, parts: int = SUB_GROUPS) -> dict:
    """ZeRO-3 settings sized by the model, for the keys a user's DeepSpeed JSON leaves out.

    * ``sub_group_size``: ~1/``parts`` of the rank's partition, so the fp32 gradient the step
      flattens per sub-group is small (DeepSpeed's default, 1e12, makes one sub-group).
    * Parameters released after use, as ZeRO-3 promises: DeepSpeed's defaults keep up to 1e9
      gathered parameters alive (``stage3_max_live_parameters``, ``max_reuse_distance``), i.e.
      every model below 1B parameters stays whole after its first forward. Here at most
      the largest parameter (the one DeepSpeed must gather whole anyway) stays gathered or is
      prefetched, and only vectors (norm weights, biases) stay resident
      (``stage3_param_persistence_threshold`` = the largest one-dimensional parameter).
    """
    params = [p for chunk in chunks for p in chunk.parameters() if p.requires_grad]
    local = sum(p.numel() for p in params)
    largest = max(p.numel() for p in params)
    largest_vector = max((p.numel() for p in params if p.dim() == 1), default=0)
    return {
        "sub_group_size": max(1, -(-local // (dp_size * parts))),
        "stage3_max_live_parameters": largest,
        "stage3_max_reuse_distance": largest,
        "stage3_prefetch_bucket_size": largest,
        "stage3_param_persistence_threshold": largest_vector,
    }
