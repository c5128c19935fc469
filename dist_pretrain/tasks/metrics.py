"""Metrics shared by tasks, computed inside the loss function on vocab-parallel logits."""

from __future__ import annotations

import torch
from megatron.core import tensor_parallel


def masked_accuracy(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Correct predictions at ``mask`` positions, from vocab-parallel logits [..., V/TP]."""
    with torch.no_grad():
        sel = mask.bool()
        if not sel.any():
            return torch.zeros((), dtype=torch.float32, device=logits.device)
        full = tensor_parallel.gather_from_tensor_model_parallel_region(logits[sel].float())
        return (full.argmax(-1) == labels[sel]).sum().float()
