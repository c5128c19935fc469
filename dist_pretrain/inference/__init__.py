"""Inference on pretrained checkpoints: KV-cache generation (``generate``), sampling filters and
the loaded-model wrapper (``load_causal_lm``)."""

from dist_pretrain.inference.generate import Completion, generate
from dist_pretrain.inference.model import CausalLM, InferenceError, load_causal_lm
from dist_pretrain.inference.sampling import SamplingParams

__all__ = ["CausalLM", "Completion", "InferenceError", "SamplingParams", "generate", "load_causal_lm"]
