"""AdamW parameter groups, the same for both engines.

Biases and norm weights get no weight decay (the usual GPT recipe). A fine-tuning task's new
layers (``Architecture.head_parameter_names``, e.g. BERT's pooler and classifier) get groups of
their own when ``task.head_lr`` differs from ``train.lr``: their learning rate is the schedule's
times ``lr_mult`` (``lr_schedule.head_lr_mult``), at every ZeRO stage.

* DeepSpeed (stages 1-3) takes torch param groups: ``param_groups``.
* megatron-core's optimizer (stage 0) builds its groups itself from ``config_overrides``
  (megatron-core 0.16.1's ``ParamKey`` -> ``ParamGroupOverride``): ``megatron_config_overrides``.
"""

from __future__ import annotations

import fnmatch

import torch

WRAPPER_PREFIX = "module."  # Float16Module and megatron's DDP hold the chunk as ``.module``


def is_head_parameter(name: str, patterns: tuple[str, ...]) -> bool:
    """Whether the parameter ``name`` (as a chunk, or a wrapper around it, names it) matches one
    of the head's fnmatch ``patterns``, which are written relative to the bare chunk."""
    while name.startswith(WRAPPER_PREFIX):
        name = name[len(WRAPPER_PREFIX):]
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def param_groups(chunks: list[torch.nn.Module], weight_decay: float, head: tuple[str, ...] = (),
                 head_lr_mult: float = 1.0) -> list[dict]:
    """Torch AdamW groups for DeepSpeed: decay / no decay, and with ``head_lr_mult`` != 1 the
    parameters matching ``head`` in groups whose learning rate is ``lr_mult`` times the schedule's."""
    groups: dict[tuple[bool, bool], list] = {}
    for chunk in chunks:
        for name, p in chunk.named_parameters():
            if not p.requires_grad:
                continue
            is_head = head_lr_mult != 1.0 and is_head_parameter(name, head)
            groups.setdefault((is_head, p.dim() == 1 or name.endswith("bias")), []).append(p)
    return [{"params": params, "weight_decay": 0.0 if no_decay else weight_decay,
             "lr_mult": head_lr_mult if is_head else 1.0}
            for (is_head, no_decay), params in sorted(groups.items())]


def megatron_config_overrides(opt_config, head: tuple[str, ...] = (), head_lr_mult: float = 1.0) -> dict:
    """``config_overrides`` for megatron-core's ``get_megatron_optimizer``.

    megatron's standard overrides (``wd_mult=0`` on biases and 1-d parameters, the same split as
    ``param_groups``) plus, for the head, megatron's own per-group schedule fields: ``max_lr`` and
    ``min_lr`` scaled by ``head_lr_mult`` (what megatron's ``OptimizerParamScheduler`` reads), and
    ``lr_mult``, the field every megatron group carries, which ``MegatronDDPEngine.step`` applies to
    the schedule's value exactly as DeepSpeed's groups do.
    """
    from megatron.core.optimizer import get_standard_config_overrides
    from megatron.core.optimizer.optimizer_config import ParamKey, ParamWithNamePredicate

    overrides = get_standard_config_overrides(opt_config)
    if head_lr_mult != 1.0 and head:
        key = ParamKey(with_name_predicate=ParamWithNamePredicate(
            name="fine-tuning head " + " ".join(head), fn=lambda _, name: is_head_parameter(name, head)))
        overrides[key] = {"max_lr": opt_config.lr * head_lr_mult, "min_lr": opt_config.min_lr * head_lr_mult,
                          "lr_mult": head_lr_mult}
    return overrides


def pad_group_count(groups: list[dict], count: int) -> list[dict]:
    """``groups`` with the one holding the most parameters halved (same settings, consecutive
    parameters) until there are ``count``. DeepSpeed ZeRO-1/2 all-reduce each group's gradient
    norm over the model-parallel group, so every pipeline stage must hold as many groups; a
    fine-tuning head's groups exist on the last stage only. Halving a group changes no update."""
    groups = list(groups)
    while len(groups) < count:
        index = max(range(len(groups)), key=lambda i: len(groups[i]["params"]))
        group = groups[index]
        if len(group["params"]) < 2:
            raise RuntimeError(f"cannot make {count} AdamW groups out of {sum(len(g['params']) for g in groups)} "
                               "parameters on this pipeline stage")
        half = len(group["params"]) // 2
        groups[index:index + 1] = [{**group, "params": group["params"][:half]},
                                   {**group, "params": group["params"][half:]}]
    return groups
