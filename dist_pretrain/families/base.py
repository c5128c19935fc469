"""What a model family provides to the shared training loop."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Protocol

import torch
from megatron.core.transformer.transformer_config import TransformerConfig

from dist_pretrain.config import Config


class Family(Protocol):
    name: str

    def build_chunk(
        self, cfg: Config, tconfig: TransformerConfig, vocab_size: int,
        pre_process: bool, post_process: bool, vp_stage: int | None,
    ) -> torch.nn.Module:
        """One pipeline chunk of the model (megatron-core module)."""

    def tied_parameter_names(self, cfg: Config) -> dict[str, str]:
        """Global parameter name -> the name whose initial value it must share."""

    def forward_step(
        self, batch: dict[str, torch.Tensor], model: torch.nn.Module
    ) -> tuple[torch.Tensor, Callable[[torch.Tensor], tuple]]:
        """Run one micro-batch through a chunk; return (output, loss_func) as megatron expects."""

    def batches(self, cfg: Config, split: str, dp_rank: int, dp_size: int, micro_batch_size: int,
                seed: int, vocab_size: int, start_step: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Collated micro-batches for this data-parallel rank, from global step ``start_step``."""

    def flops_per_token(self, cfg: Config, vocab_size: int) -> float:
        """Model FLOPs for forward + backward of one token (no recompute)."""

    loss_key: str
    """Key of the [loss sum, token count] pair in the dicts loss_func returns."""
