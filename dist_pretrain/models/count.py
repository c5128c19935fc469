"""Parameters per pipeline stage and tensor-parallel rank, without allocating a weight.

The model is built once at TP = PP = 1 on the ``meta`` device (shapes only, megatron-core's
initialisation is off); every parameter's share of a layout then follows from its name and
megatron's tensor-parallel attributes: a TP-split weight holds 1/TP of its values on each rank,
a transformer layer lives on the pipeline stage of its global index (``L / (PP x VPP)`` layers
per virtual chunk, chunks dealt round-robin over the stages), the embedding on the first stage,
the final norm and output layer on the last, and a tied output layer is a copy of the word
embedding on the last stage when PP > 1. T5 at PP2 puts its encoder on stage 0, its decoder on
stage 1 and the shared embeddings on both (``models/t5.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from dist_pretrain.config import Config

_LAYER = re.compile(r"^(?:.*\.)?(encoder|decoder)\.layers\.(\d+)\.")


@dataclass(frozen=True)
class Param:
    name: str
    numel: int
    tp_split: bool  # 1/TP of the values on each TP rank (else replicated)
    no_decay: bool = False  # a bias or a vector: the engines' AdamW group without weight decay


def model_parameters(cfg: Config, vocab_size: int) -> list[Param]:
    """Every parameter of ``cfg``'s whole model (TP = PP = 1), from a meta-device build."""
    from dist_pretrain.models.architecture import get_architecture
    from dist_pretrain.models.init import mark_tensor_parallel
    from dist_pretrain.models.load import init_single_process, one_process_config
    from dist_pretrain.models.megatron_config import transformer_config

    init_single_process()
    one = one_process_config(cfg)
    tconfig = transformer_config(one, on_gpu=False)
    tconfig.perform_initialization = False
    with torch.device("meta"):
        chunk = get_architecture(one.model.arch).build_chunk(one, tconfig, vocab_size, pre_process=True,
                                                   post_process=True, vp_stage=None)
    mark_tensor_parallel([chunk])
    return [Param(n, p.numel(), bool(getattr(p, "tensor_model_parallel", False)),
                  p.dim() == 1 or n.endswith("bias"))
            for n, p in chunk.named_parameters()]


def stage_parameters(params: list[Param], cfg: Config, tp: int, pp: int, vpp: int | None) -> list[int]:
    """Parameters one TP rank of each pipeline stage holds (a list of ``pp`` counts)."""
    counts = [0] * pp
    for stage, _, share in stage_shares(params, cfg, tp, pp, vpp):
        counts[stage] += share
    return counts


def stage_groups(params: list[Param], cfg: Config, tp: int, pp: int, vpp: int | None) -> list[list[list[int]]]:
    """Per pipeline stage, the engines' AdamW groups (weight decay, then none) as lists of
    per-parameter sizes on one TP rank, in model order (``optim_groups.param_groups`` without a
    fine-tuning head): what the ZeRO engines partition and cut into sub-groups."""
    groups: list[list[list[int]]] = [[[], []] for _ in range(pp)]
    for stage, param, share in stage_shares(params, cfg, tp, pp, vpp):
        groups[stage][int(param.no_decay)].append(share)
    return [[g for g in stage if g] for stage in groups]


def stage_shares(params: list[Param], cfg: Config, tp: int, pp: int, vpp: int | None):
    """(pipeline stage, parameter, values on one TP rank) for every parameter copy in the layout."""
    from dist_pretrain.models.architecture import get_architecture

    arch = get_architecture(cfg.model.arch)
    tied = arch.tied_parameter_names(cfg) if pp > 1 else {}
    shared = arch.stage_shared_parameter_names(cfg) if pp > 1 else set()
    layers = {"encoder": cfg.model.encoder_num_layers or cfg.model.num_layers, "decoder": cfg.model.num_layers}
    per_chunk = {k: max(1, v // (pp * (vpp or 1))) for k, v in layers.items()}
    for p in params:
        share = p.numel // tp if p.tp_split else p.numel
        match = _LAYER.match(p.name)
        if cfg.model.arch == "t5" and pp > 1:
            stages = list(range(pp)) if p.name in shared else \
                [0] if p.name.startswith("encoder.") else [pp - 1]
        elif match:
            stages = [(int(match.group(2)) // per_chunk[match.group(1)]) % pp]
        elif p.name.startswith("embedding."):
            stages = [0]
        else:
            stages = [pp - 1]
        for s in stages:
            yield s, p, share
        if p.name in tied.values() and cfg.model.arch != "t5":  # the last stage's copy of a tied embedding
            yield pp - 1, p, share
