"""Inference on pretrained checkpoints: KV-cache generation (``generate``) for GPT and T5,
sampling filters and the loaded-model wrappers (``load_lm``: ``CausalLM`` or ``Seq2SeqLM``)."""

from dist_pretrain.inference.generate import Completion, generate
from dist_pretrain.inference.model import CausalLM, InferenceError, load_causal_lm, load_lm
from dist_pretrain.inference.sampling import SamplingParams
from dist_pretrain.inference.seq2seq import Seq2SeqLM, load_seq2seq_lm

__all__ = ["CausalLM", "Completion", "InferenceError", "SamplingParams", "Seq2SeqLM", "generate",
           "load_causal_lm", "load_lm", "load_seq2seq_lm"]
