"""The DeepSpeed and megatron-core versions this code was tested with, and the private
internals of each that it relies on (kept here, in one place).

``check()`` runs when a ``Trainer`` starts, before any process group: another installed
version is an error naming the internals at risk, because those can change or vanish in
any release without notice, and some failures would be silent (wrong gradients, not a
crash). ``DIST_PRETRAIN_ALLOW_UNTESTED_VERSIONS=1`` turns the error into a printed warning
(then run ``python -m dist_pretrain.tools.equivalence`` and the checkpoint tests).
"""

from __future__ import annotations

import os
import sys
from importlib import metadata

from dist_pretrain.errors import ConfigError

OVERRIDE_ENV = "DIST_PRETRAIN_ALLOW_UNTESTED_VERSIONS"

# the versions pinned in pyproject.toml (tests/test_versions.py checks that they agree)
PINNED = {"deepspeed": "0.19.8", "megatron-core": "0.16.1"}

INTERNALS = {
    "deepspeed": [
        "DeepSpeedEngine._backward_prologue (wrapped: reset backward flags and set the boundary per backward)",
        "ZeROOptimizer.clear_backward_seen_flag / set_gradient_accumulation_boundary under 1F1B",
        "DeepSpeedEngine._step_applied (was the update skipped?)",
        "stage_1_and_2 single_partition_of_fp32_groups, stage3 fp32_partitioned_groups_flat / grad_position / "
        "get_param_id (AdamW state of the flat fp32 partitions)",
        "ZeROOptimizer._hp_optimizer_states_linked / _lazy_init_hp_params_optimizer_state (moment links)",
        "DeepSpeedZeroOptimizer_Stage3._reassign_or_swap_out_partitioned_parameters (ZeRO-3 restore)",
        "parameter attributes ds_id / ds_shape / ds_pipe_replicated",
        "deepspeed.comm.torch.build_shm_op (skipped on CPU by cpu_compat)",
        "stage_1_and_2 _use_compact_grad_partition_buffer (replaced: reduce into one flat partition for every "
        "dtype), _is_muon_group, params_in_partition, cpu_offload (zero_memory.py)",
        "stage_1_and_2 parallel_partitioned_bit16_groups / real_dp_process_group / _link_all_hp_params and "
        "stage3 fp16_partitioned_groups_flat / offload_optimizer (fp32 master aliased to fp32 weights)",
        "stage3 sub_group_size and stage3_* live/prefetch/persistence keys set from the model when the JSON "
        "is silent; DeepSpeedEngine.zero_max_live_parameters (memory benchmark)",
        "stage_1_and_2 get_grad_norm_direct (replaced by a foreach fp64 norm: model_parallel_rank, "
        "dp_process_group, _model_parallel_all_reduce, _zero_padding; runtime.utils is_model_parallel_parameter / "
        "mask_nan_or_inf_with_val_inplace; zero.utils get_norm_dtype) and check_overflow (left to the norm when "
        "compute_grad_norm and check_grad_overflow) (zero_step.py)",
        "stage_1_and_2 at DP=1: contiguous_gradients turned off after init and "
        "_buffered_reduce_fallback_preserving_fp32 replaced (_get_compact_grad_partition_slice), "
        "_build_compact_grad_partition_buffer reused (GradPartitionBufferGroup.flat_partition) (zero_step.py)",
        "stage_1_and_2 bf16 at DP=1 on CPU: _get_preflattened_grad_partition wrapped to cast into a kept fp32 buffer "
        "(partition_size, single_partition_of_fp32_groups, dtype, dp_process_group) (zero_step.py)",
    ],
    "megatron-core": [
        "tensor_parallel.random._get_cuda_rng_state / _set_cuda_rng_state (redirected on CPU by cpu_compat)",
        "the ~40 device='cuda' sites and Tensor.type() checks in megatron.core.optimizer that cpu_compat maps",
        "MixedPrecisionOptimizer float16_groups / fp32_from_float16_groups / fp32_from_fp32_groups and "
        "ChainedOptimizer.chained_optimizers (fp32 master weights for checkpoints at ZeRO-0)",
        "MegatronOptimizer.prepare_grads / get_grad_norm called before step (skip non-finite steps)",
        "dist_checkpointing.strategies.async_utils.AsyncCallsQueue (background saves)",
        "ShardedTensor.replica_id layout and sharded_state_dict keys (checkpoint resharding)",
    ],
}


class UntestedVersionError(ConfigError):
    """An installed DeepSpeed / megatron-core version other than the pinned one."""


def installed(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def mismatches(found: dict[str, str | None] | None = None) -> list[str]:
    """One message per package whose installed version differs from ``PINNED``."""
    found = found if found is not None else {name: installed(name) for name in PINNED}
    out = []
    for name, pinned in PINNED.items():
        version = found.get(name)
        if version is not None and version != pinned:
            out.append(f"{name} {version} is installed but dist_pretrain was tested with {pinned}; it relies on "
                       f"these {name} internals, which may have changed: " + "; ".join(INTERNALS[name]))
    return out


def check(found: dict[str, str | None] | None = None, env: dict | None = None) -> list[str]:
    """Raise ``UntestedVersionError`` on a version mismatch, unless ``$DIST_PRETRAIN_ALLOW_UNTESTED_VERSIONS``
    is 1, in which case print each mismatch as a warning; returns the mismatches."""
    problems = mismatches(found)
    if not problems:
        return []
    env = os.environ if env is None else env
    if env.get(OVERRIDE_ENV, "") not in ("", "0"):
        for problem in problems:
            print(f"warning: {problem} ({OVERRIDE_ENV} is set: going on)", file=sys.stderr, flush=True)
        return problems
    raise UntestedVersionError(
        " | ".join(problems) + f". Install the pinned versions, or set {OVERRIDE_ENV}=1 to run anyway "
        "and check the result with `python -m dist_pretrain.tools.equivalence` and tests/test_checkpoint.py")
