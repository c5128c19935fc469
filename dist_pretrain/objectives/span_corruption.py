"""T5 span corruption ("random spans" denoising, Raffel et al. 2020, section 3.1.4).

**Noise mask** (:func:`random_spans_noise_mask`), for a segment of ``length`` tokens:

* ``num_noise_tokens = round(length * noise_density)``, clipped to ``[1, length - 1]``;
* ``num_noise_spans = round(num_noise_tokens / mean_noise_span_length)``, at least 1
  (and never more than there are noise or non-noise tokens);
* the noise tokens are cut into ``num_noise_spans`` non-empty runs of random lengths, and
  so are the non-noise tokens (each cut uniform over the compositions of n into k
  positive parts); the runs alternate non-noise, noise, non-noise, ..., so a mask always
  starts with a non-noise run and ends with a noise run.

Rounding is round-half-to-even, like T5's ``tf.round``. A segment of one token has no
noise (T5 computes the mask for length 2 and keeps the first, non-noise, position).

**Corruption** (:func:`corrupt`): in the inputs, each noise span is replaced by one
sentinel, ``sentinel_ids[0]``, ``[1]``, ... in order; the targets are, for each span, its
sentinel followed by the span's tokens, then the next unused sentinel. EOS is appended to
both, last. The paper's example: "I love this red car" with "love" and "red car" noised::

    inputs  = I <X> this <Y> EOS
    targets = <X> love <Y> red car <Z> EOS

So a segment with ``k`` spans needs ``k + 1`` sentinels; ``len(inputs) = non-noise + k +
1`` and ``len(targets) = noise + k + 2``. (T5's own code writes no final sentinel when
the text ends in a noise span, which its masks always do, so its targets are one token
shorter: 568 raw tokens give 512 inputs and 114 targets there, 115 here.)

**Lengths** (:func:`t5_lengths`, :func:`t5_raw_length`): the counts above depend only on
the segment length, and grow with it, so the longest segment whose corrupted inputs (and
targets) fit is found exactly; every shorter segment fits too.

**Examples** (:func:`t5_example`): a window of at most ``t5_raw_length(enc_len, dec_len)``
tokens of the segment (at a random start when the segment is longer), corrupted and
padded to fixed shapes. The decoder input is the targets shifted right by one, starting
with the decoder start id, which is the pad id as in T5.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np


@dataclass
class SpanConfig:
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0

    def __post_init__(self):
        if not 0.0 < self.noise_density < 1.0:
            raise ValueError(f"noise_density must be in (0, 1), got {self.noise_density}")
        if self.mean_noise_span_length < 1.0:
            raise ValueError(f"mean_noise_span_length must be >= 1, got {self.mean_noise_span_length}")


def _noise_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """(num_noise_tokens, num_noise_spans) of a segment of ``length`` tokens."""
    if length < 2:
        return 0, 0
    num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
    num_spans = max(int(round(num_noise / mean_noise_span_length)), 1)
    return num_noise, min(num_spans, num_noise, length - num_noise)


def _corrupted_lengths(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """(len(inputs), len(targets)) after :func:`corrupt`, EOS included."""
    noise, spans = _noise_counts(length, noise_density, mean_noise_span_length)
    return length - noise + spans + 1, noise + spans + 2


def _random_segmentation(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Lengths of ``k`` non-empty runs covering ``n`` items, uniform over all such splits:
    ``k - 1`` distinct cut points among the ``n - 1`` gaps."""
    if k == 1:
        return np.array([n], np.int64)
    cuts = np.sort(rng.choice(n - 1, k - 1, replace=False)) + 1
    return np.diff(np.concatenate([[0], cuts, [n]])).astype(np.int64)


def random_spans_noise_mask(length: int, noise_density: float = 0.15,
                            mean_noise_span_length: float = 3.0, *,
                            rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of ``length`` (True = noise), T5's random spans (module docstring)."""
    length = int(length)
    if length <= 0:
        return np.zeros(0, bool)
    full = max(length, 2)
    num_noise, num_spans = _noise_counts(full, noise_density, mean_noise_span_length)
    noise = _random_segmentation(num_noise, num_spans, rng)
    nonnoise = _random_segmentation(full - num_noise, num_spans, rng)
    runs = np.stack([nonnoise, noise], axis=1).reshape(-1)
    mask = np.repeat(np.tile(np.array([False, True]), num_spans), runs)
    return mask[:length]


def corrupt(tokens, noise_mask, sentinel_ids: Sequence[int], eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """T5 span corruption of ``tokens`` by ``noise_mask``: ``(inputs, targets)``, int64.

    ``inputs``: the tokens with each noise span replaced by its sentinel, then EOS.
    ``targets``: for each span its sentinel then its tokens, then the next sentinel, then
    EOS. Span ``i`` (in order) uses ``sentinel_ids[i]``; ``k`` spans need ``k + 1``
    sentinels (ValueError otherwise).
    """
    tokens = np.asarray(tokens, np.int64).reshape(-1)
    mask = np.asarray(noise_mask, bool).reshape(-1)
    if mask.shape != tokens.shape:
        raise ValueError(f"noise_mask length {len(mask)} != tokens length {len(tokens)}")
    starts = mask & ~np.concatenate([[False], mask[:-1]])
    num_spans = int(starts.sum())
    sentinels = np.asarray(sentinel_ids, np.int64).reshape(-1)
    if len(sentinels) < num_spans + 1:
        raise ValueError(f"{num_spans} noise spans need {num_spans + 1} sentinel ids, the "
                         f"tokenizer has {len(sentinels)}: use a shorter sequence, a lower "
                         "noise_density or longer spans, or a vocabulary with more <extra_id_N>")
    span_of = np.cumsum(starts) - 1                  # span index at noise positions

    keep = ~mask | starts                            # a span's first token becomes its sentinel
    inputs = np.where(starts, sentinels[np.maximum(span_of, 0)], tokens)[keep]
    inputs = np.concatenate([inputs, [eos_id]])

    noise_tokens = tokens[mask]
    noise_starts = starts[mask]
    targets = np.empty(len(noise_tokens) + num_spans + 2, np.int64)
    at = np.arange(len(noise_tokens)) + np.cumsum(noise_starts)   # shifted past the sentinels
    targets[at] = noise_tokens
    targets[at[noise_starts] - 1] = sentinels[:num_spans]
    targets[-2] = sentinels[num_spans]
    targets[-1] = eos_id
    return inputs.astype(np.int64), targets


@functools.lru_cache(maxsize=256)
def t5_raw_length(enc_len: int, dec_len: Optional[int] = None, noise_density: float = 0.15,
                  mean_noise_span_length: float = 3.0) -> int:
    """Longest segment whose corrupted inputs fit ``enc_len`` and targets fit ``dec_len``
    (EOS included; ``dec_len=None``: no limit on the targets)."""
    if not 0.0 < noise_density < 1.0 or mean_noise_span_length < 1.0:
        raise ValueError(f"need 0 < noise_density < 1 and mean_noise_span_length >= 1, got "
                         f"{noise_density} and {mean_noise_span_length}")

    def fits(n: int) -> bool:
        i, t = _corrupted_lengths(n, noise_density, mean_noise_span_length)
        return i <= enc_len and (dec_len is None or t <= dec_len)

    if not fits(0):
        raise ValueError(f"enc_len={enc_len}, dec_len={dec_len}: too short for even an empty "
                         "segment (inputs need 1 token: EOS; targets 2: a sentinel and EOS)")
    lo, hi = 0, max(1, int(enc_len))      # fits(lo); find hi that does not fit
    while fits(hi):
        lo, hi = hi, 2 * hi
    while hi - lo > 1:                    # both lengths grow with n: bisect
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def t5_lengths(inputs_length: int, noise_density: float = 0.15,
               mean_noise_span_length: float = 3.0) -> tuple[int, int]:
    """``(raw_tokens_length, targets_length)``: the longest segment whose corrupted inputs
    (EOS included) fit ``inputs_length``, and the length of its targets (EOS included).
    E.g. ``t5_lengths(512) == (568, 115)``."""
    raw = t5_raw_length(int(inputs_length), None, noise_density, mean_noise_span_length)
    return raw, _corrupted_lengths(raw, noise_density, mean_noise_span_length)[1]


def t5_example(tokens, enc_len: int, dec_len: int, sentinel_ids: Sequence[int],
               special_ids: Mapping[str, int], rng: np.random.Generator,
               cfg: Optional[SpanConfig] = None) -> dict[str, np.ndarray]:
    """One T5 example from a docs sample's ``tokens`` (module docstring).

    The window is at most ``t5_raw_length(enc_len, dec_len, ...)`` tokens, so inputs and
    targets always fit. ``special_ids`` needs ``pad`` (also the decoder start id) and
    ``eos``. Returns ``enc_tokens enc_mask`` (``[enc_len]``), ``dec_input labels
    dec_mask`` (``[dec_len]``), all int64 (masks: 1 = real token, 0 = padding), and
    ``loss_mask`` (float32 ``[dec_len]``, 1.0 on every target token: sentinels and EOS
    included). ``dec_input = [pad] + labels[:-1]`` on the real positions.
    """
    cfg = cfg or SpanConfig()
    tokens = np.asarray(tokens, np.int64).reshape(-1)
    pad, eos = int(special_ids["pad"]), int(special_ids["eos"])
    raw = t5_raw_length(int(enc_len), int(dec_len), cfg.noise_density, cfg.mean_noise_span_length)
    if len(tokens) > raw:
        start = int(rng.integers(0, len(tokens) - raw + 1))
        tokens = tokens[start:start + raw]
    mask = random_spans_noise_mask(len(tokens), cfg.noise_density, cfg.mean_noise_span_length, rng=rng)
    inputs, targets = corrupt(tokens, mask, sentinel_ids, eos)
    assert len(inputs) <= enc_len and len(targets) <= dec_len, (len(inputs), len(targets))
    dec_input = np.concatenate([[pad], targets[:-1]])
    ne, nd = len(inputs), len(targets)
    return {
        "enc_tokens": np.pad(inputs, (0, enc_len - ne), constant_values=pad),
        "enc_mask": np.pad(np.ones(ne, np.int64), (0, enc_len - ne)),
        "dec_input": np.pad(dec_input, (0, dec_len - nd), constant_values=pad).astype(np.int64),
        "labels": np.pad(targets, (0, dec_len - nd), constant_values=pad),
        "loss_mask": np.pad(np.ones(nd, np.float32), (0, dec_len - nd)),
        "dec_mask": np.pad(np.ones(nd, np.int64), (0, dec_len - nd)),
    }
