"""Pretraining objectives that turn document segments into model examples.

Inputs are the samples of ``preprocess --format docs``: ``tokens`` (int32 ids of a
document segment's sentences back to back, no special tokens) and ``sentences`` (int32
token count of each sentence).

* :mod:`.mlm` -- BERT masked language modelling (80/10/10 masking, whole-word masking,
  optional next-sentence prediction): :func:`bert_example`.
* :mod:`.span_corruption` -- T5 span corruption: :func:`random_spans_noise_mask`,
  :func:`corrupt`, :func:`t5_lengths`, :func:`t5_example`.

Pure numpy. Every random choice is drawn from a
``numpy.random.Generator`` passed in by the caller, which seeds it per sample from (run
seed, global sample position): an example never depends on the parallel layout, and the
global RNGs are never touched.
"""
from .mlm import (MLMConfig, bert_example, mask_tokens, truncate_seq_pair,
                  wordpiece_continuation_mask)
from .span_corruption import (SpanConfig, corrupt, random_spans_noise_mask,
                              t5_example, t5_lengths, t5_raw_length)

__all__ = [
    "MLMConfig", "bert_example", "mask_tokens", "truncate_seq_pair",
    "wordpiece_continuation_mask",
    "SpanConfig", "corrupt", "random_spans_noise_mask", "t5_example",
    "t5_lengths", "t5_raw_length",
]
