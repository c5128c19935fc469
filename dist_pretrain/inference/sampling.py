"""Choosing the next token from logits: greedy, temperature, top-k and nucleus (top-p), seeded.

Every function works on ``[batch, vocab]`` float logits and never picks an id at or above
``vocab_size``: megatron pads the embedding to a multiple of 128 (and of TP), and those
padded rows have logits too (zero rows give logit 0, which can beat a trained model's
negative logits), but no tokenizer can decode them.

Order of the filters, as in most toolkits: temperature first, then top-k, then top-p on
the tempered, top-k-filtered distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen. ``greedy`` (or ``temperature == 0``) takes the argmax;
    ``top_k == 0`` and ``top_p == 1`` switch those filters off."""

    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 switches it off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 switches it off), got {self.top_p}")

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0.0


def mask_padded_vocab(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Logits with every id at or above ``vocab_size`` set to -inf (padded embedding rows)."""
    if vocab_size > logits.shape[-1]:
        raise ValueError(f"vocab_size {vocab_size} is larger than the logits' last dimension {logits.shape[-1]}")
    out = logits.clone()
    out[..., vocab_size:] = float("-inf")
    return out


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row (and any tied with the k-th), -inf elsewhere."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probabilities sum
    to at least ``p``. The token that crosses ``p`` is kept; the most likely token always is."""
    if p >= 1.0:
        return logits
    ordered, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(ordered.float(), dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # probability of the more likely tokens
    drop_sorted = mass_before >= p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def next_tokens(logits: torch.Tensor, vocab_size: int, params: SamplingParams,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One id per row of ``logits`` [batch, padded vocab], below ``vocab_size``. The padded
    columns are cut off (a view, not a masked copy: this runs once per decode step)."""
    if vocab_size > logits.shape[-1]:
        raise ValueError(f"vocab_size {vocab_size} is larger than the logits' last dimension {logits.shape[-1]}")
    logits = logits[..., :vocab_size].float()
    if params.is_greedy:
        return logits.argmax(dim=-1)
    logits = filter_top_p(filter_top_k(logits / params.temperature, params.top_k), params.top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
