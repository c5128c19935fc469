"""DeepSpeed ZeRO over the data-parallel group, driven by megatron-core's pipeline schedules.

Megatron-DeepSpeed and GPT-NeoX cannot combine ZeRO-2 with pipeline parallelism
(DeepSpeed's own ``PipelineEngine`` asserts against it). Here megatron-core's schedules
(no pipelining, 1F1B, interleaved) run the step and DeepSpeed only reduces, shards and
updates. The wiring, and each DeepSpeed 0.19.8 internal it relies on:

* One engine owns every local model chunk (``_Chunks`` container), so there is one
  optimizer, one global gradient norm and one clipping for all interleaved chunks.
  Megatron sees one ``EngineChunk`` per chunk; calling it goes through
  ``DeepSpeedEngine.forward``, which installs DeepSpeed's output backward hooks
  (``register_output_backward_hooks``), so megatron's
  ``torch.autograd.backward(output, grad)`` on any stage triggers ZeRO's
  reduction (DeepSpeed's "torch-style backward", ``_support_torch_style_backward``).
* To DeepSpeed a whole global step is one micro-batch: ``gradient_accumulation_steps``
  is 1 and its micro-batch size is micro x num_microbatches (config.deepspeed_config).
  Megatron already divides each micro-batch loss by their number; letting DeepSpeed
  accumulate too would divide gradients twice.
* DeepSpeed resets its per-backward bookkeeping (``ZeROOptimizer.clear_backward_seen_flag``,
  i.e. ``BackwardHookStateManager.reset_for_new_step``) only in ``engine.forward``,
  assuming forward and backward alternate. Under 1F1B a stage runs F,F,B,F,B,B: the
  last backward then finds a stale "post-backward callback queued" flag and never
  reduces (``KeyError: 0`` in ``averaged_gradients`` at step). We wrap
  ``engine._backward_prologue`` to reset before every backward.
* The same wrapper sets the accumulation boundary (``set_gradient_accumulation_boundary``):
  False for every backward of the step but the last. ZeRO-2 reduce-scatters on every
  backward and must know which one is final; left at DeepSpeed's default (always a
  boundary with gas=1) its gradients are silently wrong. Counting backwards, rather
  than following megatron's per-chunk ``no_sync_func``, keeps exactly one boundary per
  step even with several interleaved chunks in one engine.
* ``mpu``: DeepSpeed needs data- and model-parallel groups. megatron's
  ``parallel_state`` lacks ``get_model_parallel_world_size``, and with no ``mpu``
  DeepSpeed would treat tensor-parallel ranks as data parallel. ``MegatronMPU`` exposes
  megatron's DP group and its model-parallel group (TP x PP, so the grad norm spans
  stages); DeepSpeed counts replicated parameters on tensor-parallel rank 0 only.
* Parameters with a copy on the first and last stage (tied input/output embeddings,
  T5's embeddings): their full gradients are summed over megatron's embedding group after
  the last backward (``safe_get_full_grad``/``safe_set_full_grad``); the later copy is
  marked ``ds_pipe_replicated`` so the grad norm counts it once.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from megatron.core import parallel_state

from dist_pretrain.optim_groups import pad_group_count, param_groups
from dist_pretrain.optim_state import adam_step_tensor
from dist_pretrain.zero_memory import (
    alias_fp32_master,
    split_param_groups,
    use_compact_gradient_partitions,
    zero3_defaults,
)
from dist_pretrain.zero_step import (
    foreach_grad_norm,
    kept_fp32_gradient_cast,
    overflow_from_norm,
    single_rank_reduction,
)


class MegatronMPU:
    """The ``mpu`` interface DeepSpeed expects, backed by megatron-core's parallel_state."""

    get_data_parallel_group = staticmethod(parallel_state.get_data_parallel_group)
    get_data_parallel_rank = staticmethod(parallel_state.get_data_parallel_rank)
    get_data_parallel_world_size = staticmethod(parallel_state.get_data_parallel_world_size)
    # megatron's "model parallel" group is tensor x pipeline
    get_model_parallel_group = staticmethod(parallel_state.get_model_parallel_group)
    get_tensor_model_parallel_group = staticmethod(parallel_state.get_tensor_model_parallel_group)
    get_tensor_model_parallel_rank = staticmethod(parallel_state.get_tensor_model_parallel_rank)
    get_tensor_model_parallel_world_size = staticmethod(
        parallel_state.get_tensor_model_parallel_world_size
    )
    get_pipeline_model_parallel_group = staticmethod(parallel_state.get_pipeline_model_parallel_group)
    get_pipeline_model_parallel_rank = staticmethod(parallel_state.get_pipeline_model_parallel_rank)
    get_pipeline_model_parallel_world_size = staticmethod(
        parallel_state.get_pipeline_model_parallel_world_size
    )

    @staticmethod
    def get_model_parallel_world_size() -> int:
        return torch.distributed.get_world_size(parallel_state.get_model_parallel_group())

    @staticmethod
    def get_model_parallel_rank() -> int:
        return torch.distributed.get_rank(parallel_state.get_model_parallel_group())

    @staticmethod
    def get_tensor_model_parallel_src_rank() -> int:
        return parallel_state.get_tensor_model_parallel_src_rank()


class _Chunks(torch.nn.Module):
    """All local pipeline chunks under one DeepSpeed engine; forward picks one."""

    def __init__(self, chunks: list[torch.nn.Module]):
        super().__init__()
        self.chunks = torch.nn.ModuleList(chunks)

    def forward(self, chunk_id: int, *args, **kwargs):
        return self.chunks[chunk_id](*args, **kwargs)


class EngineChunk(torch.nn.Module):
    """What megatron's schedule sees as one model chunk.

    Calling it runs the chunk through the DeepSpeed engine; ``.module`` lets megatron's
    ``get_attr_wrapped_model`` find ``set_input_tensor`` and ``config`` on the chunk.
    The engine is held outside ``nn.Module`` registration (it already owns the chunk).
    """

    def __init__(self, engine, chunk_id: int):
        super().__init__()
        object.__setattr__(self, "_engine", engine)
        self.chunk_id = chunk_id
        self.module = engine.module.chunks[chunk_id]

    def forward(self, *args, **kwargs):
        return self._engine(self.chunk_id, *args, **kwargs)


class ZeroEngine:
    """Megatron chunks + DeepSpeed ZeRO (stages 1-3): backward hooks, reduction, update."""

    def __init__(self, chunks: list[torch.nn.Module], ds_config: dict, train_cfg, num_microbatches: int,
                 head: tuple[str, ...] = (), head_lr_mult: float = 1.0):
        import deepspeed  # its version is checked at start-up (dist_pretrain.versions)

        self.num_chunks = len(chunks)
        self._evaluated = False  # in eval mode since the last train(True)
        self.num_microbatches = num_microbatches
        self._mark_tied_copies(chunks)
        groups = param_groups(chunks, train_cfg.weight_decay, head, head_lr_mult)
        stage = ds_config["zero_optimization"]["stage"]
        # a small transient fp32 gradient (zero_memory.py), where every pipeline stage gets as many
        # groups: DeepSpeed all-reduces each group's grad norm over the model-parallel group, and
        # stages with different counts hang (a T5 at PP2 did)
        if train_cfg.precision == "bf16" and stage in (1, 2):
            split = split_param_groups(groups)
            counts = [None] * parallel_state.get_pipeline_model_parallel_world_size()
            torch.distributed.all_gather_object(counts, len(split),
                                                group=parallel_state.get_pipeline_model_parallel_group())
            if len(set(counts)) == 1:
                groups = split
        if parallel_state.get_pipeline_model_parallel_world_size() > 1:  # e.g. a head's groups on the last stage
            counts = [None] * parallel_state.get_pipeline_model_parallel_world_size()
            torch.distributed.all_gather_object(counts, len(groups),
                                                group=parallel_state.get_pipeline_model_parallel_group())
            groups = pad_group_count(groups, max(counts))
        if stage == 3:  # sized by the model where the user's JSON is silent (zero_memory.py)
            defaults = zero3_defaults(chunks, parallel_state.get_data_parallel_world_size())
            ds_config = {**ds_config, "zero_optimization": {**defaults, **ds_config["zero_optimization"]}}
        optimizer = torch.optim.AdamW(
            groups,
            lr=train_cfg.lr,
            betas=(train_cfg.adam_beta1, train_cfg.adam_beta2),
            eps=train_cfg.adam_eps,
            fused=True,  # one kernel over all of a flat ZeRO partition: 10x faster than the loop on CPU
        )
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=_Chunks(chunks), optimizer=optimizer, config=ds_config, mpu=MegatronMPU()
        )
        # hold the bytes the ZeRO paper promises (zero_memory.py)
        if stage in (1, 2):
            use_compact_gradient_partitions(self.engine.optimizer)
            # and a step as cheap as fused clip + AdamW (zero_step.py)
            foreach_grad_norm(self.engine.optimizer)
            overflow_from_norm(self.engine.optimizer)
            single_rank_reduction(self.engine.optimizer)
            kept_fp32_gradient_cast(self.engine.optimizer)
        alias_fp32_master(self.engine.optimizer)
        self._backwards_this_step = 0
        self._wrap_backward_prologue()
        self.model_chunks = [EngineChunk(self.engine, i) for i in range(self.num_chunks)]

    # ------------------------------------------------------------------ DeepSpeed internals

    def _wrap_backward_prologue(self) -> None:
        engine = self.engine
        original = engine._backward_prologue
        per_step = self.num_chunks * self.num_microbatches

        def prologue():
            self._backwards_this_step += 1
            engine.optimizer.clear_backward_seen_flag()
            engine.set_gradient_accumulation_boundary(self._backwards_this_step == per_step)
            original()

        engine._backward_prologue = prologue

    @staticmethod
    def _mark_tied_copies(chunks: list[torch.nn.Module]) -> None:
        for chunk in chunks:
            for p in chunk.parameters():
                if getattr(p, "shared", False):  # set by megatron on the last stage's copy
                    p.ds_pipe_replicated = True

    # ------------------------------------------------------------------ hooks for megatron

    def no_sync(self):
        """megatron's ``config.no_sync_func``: boundaries are set per backward instead."""
        return contextlib.nullcontext()

    def finalize_grads(self, model_chunks, num_tokens=None, **_: Any) -> None:
        """megatron's ``config.finalize_model_grads_func``: parameters with a copy on two
        pipeline stages (tied embeddings; T5's embeddings on its encoder and decoder stage,
        marked ``stage_shared`` when the model is built) get the sum of their gradients."""
        from deepspeed.utils import safe_get_full_grad, safe_set_full_grad

        if parallel_state.get_pipeline_model_parallel_world_size() == 1:
            return
        if not parallel_state.is_rank_in_embedding_group(ignore_virtual=True):
            return
        shared = [p for chunk in self.engine.module.chunks
                  for _, p in sorted(chunk.named_parameters()) if getattr(p, "stage_shared", False)]
        for weight in shared:
            grad = safe_get_full_grad(weight)
            grad = grad.clone() if grad is not None else torch.zeros_like(weight, dtype=torch.float32)
            torch.distributed.all_reduce(grad, group=parallel_state.get_embedding_group())
            safe_set_full_grad(weight, grad)

    # ------------------------------------------------------------------ the step

    def step(self, lr: float) -> tuple[float, bool]:
        """Apply the update for this global step: (pre-clip global grad norm, applied?).

        With an inf/NaN grad norm ZeRO skips the update and clears the gradients
        (``bf16.check_grad_overflow`` makes it do so in bf16 too); ``_step_applied`` says so.
        """
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        self.engine.step()
        self._backwards_this_step = 0
        norm = self.engine.get_global_grad_norm()
        return (float(norm) if norm is not None else float("nan")), bool(self.engine._step_applied)

    # ------------------------------------------------------------------ checkpoint state

    @property
    def zero3(self) -> bool:
        return self.engine.zero_optimization_stage() == 3

    def _fp32_flats(self) -> list[torch.Tensor]:
        """The flat fp32 partitions AdamW updates (its state is keyed by them)."""
        opt = self.engine.optimizer
        return opt.fp32_partitioned_groups_flat if self.zero3 else opt.single_partition_of_fp32_groups

    def master_state(self, p: torch.nn.Parameter) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
        """fp32 master value and AdamW moments of ``p`` (ZeRO partitions gathered over DP;
        moments are None before the first step)."""
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

        adam = self.engine.optimizer.optimizer
        if self.zero3:  # AdamW state is lazy: a flat group without state has no moments yet
            group = self.engine.optimizer.grad_position[self.engine.optimizer.get_param_id(p)][0]
            has_state = bool(adam.state.get(self.engine.optimizer.fp32_partitioned_groups_flat[group]))
        else:
            if adam.state and not self._state_linked:
                self._relink_optimizer_state()
            has_state = True
        moments = {m: safe_get_full_optimizer_state(p, m) if has_state else None for m in ("exp_avg", "exp_avg_sq")}
        return safe_get_full_fp32_param(p).view(p.ds_shape if self.zero3 else p.shape), \
            {m: (v.view(p.ds_shape if self.zero3 else p.shape) if v is not None else None) for m, v in moments.items()}

    def load_master_state(self, values: list[tuple[torch.nn.Parameter, torch.Tensor, dict]], step: int) -> None:
        """Set master values and AdamW moments (and the model copy) of the given parameters."""
        from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

        adam = self.engine.optimizer.optimizer  # the torch AdamW inside DeepSpeed's ZeRO optimizer
        for flat in self._fp32_flats():  # AdamW state is lazy
            state = adam.state[flat]
            # fused AdamW: on the flat's device (every group shares the constructor's fused/capturable)
            state["step"] = adam_step_tensor(adam.defaults, flat, step)
            for moment in ("exp_avg", "exp_avg_sq"):
                state.setdefault(moment, torch.zeros_like(flat))
        if not self.zero3:
            self._relink_optimizer_state()
        for p, master, moments in values:
            if not self.zero3:  # ZeRO-3's model copy is refreshed from the fp32 partitions below
                p.data.copy_(master.to(p.dtype))
            safe_set_full_fp32_param(p, master)
            for name, value in moments.items():
                safe_set_full_optimizer_state(p, value, name)
        if self.zero3:  # the partitioned model weights (bf16 or fp32) from the fp32 masters
            for group in range(len(self._fp32_flats())):
                self.engine.optimizer._reassign_or_swap_out_partitioned_parameters(group)

    _state_linked = False

    def _relink_optimizer_state(self) -> None:
        """Point every parameter's ZeRO fragment at the current AdamW state.

        DeepSpeed links them once, right after the first param group's first step
        (``_lazy_init_hp_params_optimizer_state``), when the other groups (our no-decay
        group) have no state yet: their moments would read as missing.
        """
        self.engine.optimizer._hp_optimizer_states_linked = False
        self.engine.optimizer._lazy_init_hp_params_optimizer_state()
        self._state_linked = True

    def zero_grad(self) -> None:
        """ZeRO clears its own gradients after each step."""

    def train(self, mode: bool = True) -> None:
        """Back to training after an evaluation, ZeRO-3 releases every gathered parameter: forward
        passes without a backward (a fine-tuning evaluation generates with one pass per position)
        can leave prefetched ones in flight, and a checkpoint's gather would then fail on them."""
        if mode and self.zero3 and self._evaluated:
            self.engine.empty_partition_cache()
        self._evaluated = not mode
        self.engine.train(mode)
