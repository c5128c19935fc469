"""Causal language modelling (GPT): predict every next token of a packed sequence.

Data: ``preprocess --format lm`` samples of ``seq_length + 1`` tokens; the model reads
the first ``seq_length`` and is scored on the last ``seq_length`` (shifted by one).
Loss: the mean cross-entropy over all tokens of the global batch.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Iterator

import torch

from dist_pretrain.config import Config
from dist_pretrain.data.examples import lm_sample
from dist_pretrain.data.synthetic import synthetic_lm_fields
from dist_pretrain.tasks.base import task_batches


class CausalLM:
    name = "causal_lm"
    loss_key = "lm loss"

    def metric_keys(self, cfg: Config) -> list[str]:
        return [self.loss_key]

    def forward_step(self, data_iterator: Iterator[dict], model) -> tuple[torch.Tensor, Callable]:
        tokens = next(data_iterator)["tokens"]
        inputs, labels = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
        positions = torch.arange(inputs.shape[1], device=inputs.device).unsqueeze(0).expand_as(inputs)
        # attention_mask=None: the SDPA core attention applies the causal mask itself;
        # with labels, GPTModel returns the per-token (vocab-parallel) cross-entropy
        output = model(inputs, positions, None, labels=labels)
        return output, partial(causal_lm_loss, torch.ones_like(labels, dtype=torch.float32))

    def batches(self, cfg: Config, split: str, dp_rank: int, dp_size: int, micro_batch_size: int,
                seed: int, vocab_size: int, start_step: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        return task_batches(cfg, split, dp_rank, dp_size, micro_batch_size, seed, start_step,
                            transform=lm_sample,
                            synthetic_fields=partial(synthetic_lm_fields, vocab_size=vocab_size,
                                                     seq_len=cfg.model.seq_length))


def causal_lm_loss(loss_mask: torch.Tensor, per_token_loss: torch.Tensor):
    """(loss sum, token count, logged [sum, count] pairs): megatron's schedule divides the
    sum by the tokens and by the number of micro-batches."""
    per_token_loss = per_token_loss.float()
    loss_sum = (per_token_loss * loss_mask).sum()
    num_tokens = loss_mask.sum().to(torch.int)
    return loss_sum, num_tokens, {"lm loss": torch.stack([loss_sum.detach(), num_tokens.float()])}
