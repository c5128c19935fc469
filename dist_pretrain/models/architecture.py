"""What a model architecture provides to the shared training loop.

An architecture (GPT, BERT, T5) builds the megatron-core model, one pipeline chunk at a
time, and says which parameters are tied or have copies on several pipeline stages; the
task (``dist_pretrain.tasks``) decides what it is trained on and how it is scored.
"""

from __future__ import annotations

from typing import Protocol

import torch
from megatron.core.transformer.transformer_config import TransformerConfig

from dist_pretrain.config import Config


class Architecture(Protocol):
    name: str

    def build_chunk(self, cfg: Config, tconfig: TransformerConfig, vocab_size: int,
                    pre_process: bool, post_process: bool, vp_stage: int | None) -> torch.nn.Module:
        """One pipeline chunk of the model (megatron-core module), with the heads ``cfg.task`` needs."""

    def stage_shared_parameter_names(self, cfg: Config) -> set[str]:
        """Parameters with a copy on the first and last pipeline stage (gradients summed)."""

    def tied_parameter_names(self, cfg: Config) -> dict[str, str]:
        """Global parameter name -> the name whose initial value it must share."""

    def head_parameter_names(self, cfg: Config) -> tuple[str, ...]:
        """Patterns (fnmatch) of the parameters ``cfg.task`` adds to the pretrained model."""

    def tokens_per_sample(self, cfg: Config) -> int:
        """Tokens one sample feeds the model (throughput is reported in these)."""

    def flops_per_sample(self, cfg: Config, vocab_size: int) -> float:
        """Model FLOPs for forward + backward of one sample (no recompute)."""


def get_architecture(name: str) -> Architecture:
    if name == "gpt":
        from dist_pretrain.models.gpt import GPT

        return GPT()
    if name == "bert":
        from dist_pretrain.models.bert import Bert

        return Bert()
    if name == "t5":
        from dist_pretrain.models.t5 import T5

        return T5()
    raise ValueError(f"unknown architecture {name!r}; available: gpt, bert, t5")
