"""Per-sample helpers shared by the training stream, validation and the synthetic data.

Every random choice an example needs (masks, spans) is drawn from a generator seeded by
``sample_seed(...)`` of the sample's global position, so an example never depends on the
parallel layout or the worker count; ``stack`` collates equal-shape examples.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def sample_seed(*parts) -> int:
    # sha256, not hash(): str hashing changes per process
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


def lm_sample(fields: dict[str, np.ndarray], rng: np.random.Generator,
              previous: dict | None = None) -> dict[str, np.ndarray]:
    """Packed causal-LM samples go to the model as they are."""
    return {"tokens": fields["tokens"]}


def stack(examples: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Examples of equal shapes -> batch tensors (integers as int64, floats as float32)."""
    out = {}
    for name in examples[0]:
        arr = np.stack([e[name] for e in examples])
        t = torch.from_numpy(arr)
        if t.is_floating_point():
            out[name] = t.float()
        else:
            out[name] = t if t.dtype == torch.bool else t.long()
    return out
