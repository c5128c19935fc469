"""The learning-rate schedule, one function of the step for every engine.

The engines receive the schedule's value each step (``engine.step(lr)``) rather than owning a
scheduler, so a resumed run, a decay branch (``dist-pretrain sweep``) and the reference
implementations in ``tools/oracle.py`` all read the same numbers. A fine-tuning head with its
own rate (``task.head_lr``) follows the same shape scaled by ``head_lr_mult``.
"""

from __future__ import annotations

import math

from dist_pretrain.config import Config


def wsd_decay_steps(cfg: Config) -> int:
    """Steps of the final decay of a warmup-stable-decay schedule (default 20% of the run)."""
    tr = cfg.train
    return tr.decay_steps if tr.decay_steps is not None else max(1, round(0.2 * (tr.steps - tr.warmup_steps)))


def learning_rate(step: int, cfg: Config) -> float:
    """Linear warm-up to ``train.lr``, then cosine / linear decay to ``train.min_lr``, constant, or
    warmup-stable-decay (Hagele et al. 2024): constant until the last ``decay_steps``, which fall
    to ``min_lr`` as 1 - sqrt(progress). The stable phase does not depend on ``train.steps``, so a
    checkpoint from it can start decay branches of any length (``dist-pretrain sweep``)."""
    tr = cfg.train
    if tr.warmup_steps and step <= tr.warmup_steps:
        return tr.lr * step / tr.warmup_steps
    if tr.decay == "constant" or tr.steps == tr.warmup_steps:
        return tr.lr
    if tr.decay == "wsd":
        decay = wsd_decay_steps(cfg)
        start = tr.steps - decay
        if step <= start:
            return tr.lr
        return tr.min_lr + (tr.lr - tr.min_lr) * (1.0 - math.sqrt((step - start) / decay))
    progress = (step - tr.warmup_steps) / (tr.steps - tr.warmup_steps)
    if tr.decay == "linear":
        return tr.min_lr + (tr.lr - tr.min_lr) * (1.0 - progress)
    return tr.min_lr + 0.5 * (tr.lr - tr.min_lr) * (1.0 + math.cos(math.pi * progress))


def head_lr_mult(cfg: Config) -> float:
    """``task.head_lr`` / ``train.lr``: the factor on the schedule for a fine-tuning head's groups.

    Every phase of ``learning_rate`` is linear in (``lr``, ``min_lr``), so scaling its value is the
    same schedule run from ``head_lr`` down to ``min_lr * head_lr / lr``: DeepSpeed's groups apply
    the factor (``lr_mult``), megatron's carry that peak and floor (``max_lr`` / ``min_lr``)."""
    return cfg.task.head_lr / cfg.train.lr if cfg.task.head_lr else 1.0
