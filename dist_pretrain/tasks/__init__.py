"""Tasks: what an architecture is trained to do. One file per task holds its batches,
forward step, loss and metrics; the training loop (``dist_pretrain.train``) is the same
for all of them.
"""

from __future__ import annotations

from dist_pretrain.tasks.base import Task


def get_task(name: str) -> Task:
    if name == "causal_lm":
        from dist_pretrain.tasks.causal_lm import CausalLM

        return CausalLM()
    if name == "masked_lm":
        from dist_pretrain.tasks.masked_lm import MaskedLM

        return MaskedLM()
    if name == "span_corruption":
        from dist_pretrain.tasks.span_corruption import SpanCorruption

        return SpanCorruption()
    if name == "classification":
        from dist_pretrain.tasks.classification import Classification

        return Classification()
    if name == "text_to_text":
        from dist_pretrain.tasks.text_to_text import TextToText

        return TextToText()
    raise ValueError(f"unknown task {name!r}; available: causal_lm, masked_lm, span_corruption, classification, "
                     "text_to_text")
