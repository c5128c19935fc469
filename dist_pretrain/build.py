"""What a training run is built from: this rank's model chunks and the engine that updates them.

The chunks come from the architecture (``models/``) at the current pipeline layout with
layout-independent initial weights; the engine is DeepSpeed ZeRO (stages 1-3, ``engine.py``)
or megatron-core's DDP and optimizer (stage 0, ``megatron_engine.py``). Both take the same
parameter groups (``optim_groups.py``) and are hooked into megatron's pipeline schedule here.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.transformer.module import Float16Module
from megatron.core.utils import get_model_config

from dist_pretrain.config import Config, deepspeed_config
from dist_pretrain.lr_schedule import head_lr_mult
from dist_pretrain.models.init import init_layout_independent
from dist_pretrain.runtime import Runtime


def build_model_chunks(cfg: Config, arch, tconfig, vocab_size: int) -> list[torch.nn.Module]:
    """This rank's pipeline chunks (several with a virtual pipeline), seed-only initial weights."""
    vpp = parallel_state.get_virtual_pipeline_model_parallel_world_size()
    chunks = []
    for vp_stage in range(vpp or 1):
        stage = vp_stage if vpp else None
        chunks.append(arch.build_chunk(
            cfg, tconfig, vocab_size,
            pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage),
            post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage),
            vp_stage=stage,
        ))
    init_layout_independent(chunks, cfg.seed, cfg.model.init_std, cfg.model.num_layers,
                            arch.tied_parameter_names(cfg))
    mark_stage_shared(chunks, arch.stage_shared_parameter_names(cfg))
    if tconfig.bf16:
        chunks = [Float16Module(tconfig, c) for c in chunks]
    return chunks


def mark_stage_shared(chunks: list[torch.nn.Module], names: set[str]) -> None:
    """Flag parameters that have a copy on another pipeline stage (their gradients are summed
    over the embedding group); copies after the first stage's are ``shared``, which megatron's
    and DeepSpeed's grad norms count once."""
    if parallel_state.get_pipeline_model_parallel_world_size() == 1:
        return
    first_stage = parallel_state.is_pipeline_first_stage(ignore_virtual=True)
    for chunk in chunks:
        for name, p in chunk.named_parameters():
            if name in names:
                p.stage_shared = True
                if not first_stage:
                    p.shared = True


def build_engine(cfg: Config, rt: Runtime, chunks, tconfig, num_microbatches: int, head: tuple[str, ...] = ()):
    """The engine for ``parallel.zero_stage``, with ``head`` (a fine-tuning task's new layers) in
    groups of their own when ``task.head_lr`` is set; megatron's schedule gets its hooks."""
    mult = head_lr_mult(cfg)
    if cfg.parallel.zero_stage == 0:
        from dist_pretrain.megatron_engine import MegatronDDPEngine

        # megatron's DDP builds its grad buffers where the parameters are (DeepSpeed moves
        # the model itself): built on the CPU, the chunks go to the training device first
        engine = MegatronDDPEngine([c.to(rt.device) for c in chunks], cfg.train, tconfig, head, mult)
    else:
        from dist_pretrain.engine import ZeroEngine

        ds_cfg = deepspeed_config(cfg, rt.dp, num_microbatches)
        engine = ZeroEngine(chunks, ds_cfg, cfg.train, num_microbatches, head, mult)
    for chunk in chunks:  # the schedule reads its hooks from the chunk's own config
        chunk_config = get_model_config(chunk)
        chunk_config.no_sync_func = engine.no_sync
        chunk_config.finalize_model_grads_func = engine.finalize_grads
    return engine
