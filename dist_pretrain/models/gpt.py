"""Decoder-only GPT architecture: megatron-core ``GPTModel`` with SDPA core attention.

Trained with the causal LM task (``dist_pretrain.tasks.causal_lm``).
"""

from __future__ import annotations

import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_config import TransformerConfig

from dist_pretrain.config import Config
from dist_pretrain.models.attention import SDPAttention
from dist_pretrain.models.flops import lm_flops_per_token


def gpt_layer_spec() -> ModuleSpec:
    """megatron-core's local (no Transformer Engine) GPT layer with our SDPA core attention."""
    spec = get_gpt_layer_local_spec()
    spec.submodules.self_attention.submodules.core_attention = SDPAttention
    return spec


class GPT:
    name = "gpt"

    def build_chunk(self, cfg: Config, tconfig: TransformerConfig, vocab_size: int,
                    pre_process: bool, post_process: bool, vp_stage: int | None) -> torch.nn.Module:
        m = cfg.model
        return GPTModel(
            config=tconfig,
            transformer_layer_spec=gpt_layer_spec(),
            vocab_size=vocab_size,
            max_sequence_length=m.max_positions,
            pre_process=pre_process,
            post_process=post_process,
            share_embeddings_and_output_weights=m.tie_embeddings,
            position_embedding_type="rope" if m.position_embedding == "rope" else "learned_absolute",
            rotary_base=m.rotary_base,
            vp_stage=vp_stage,
        )

    def stage_shared_parameter_names(self, cfg: Config) -> set[str]:
        """Tied embeddings: the first stage's input embedding and the last stage's output layer."""
        return {"embedding.word_embeddings.weight", "output_layer.weight"} if cfg.model.tie_embeddings else set()

    def tied_parameter_names(self, cfg: Config) -> dict[str, str]:
        if cfg.model.tie_embeddings:
            return {"output_layer.weight": "embedding.word_embeddings.weight"}
        return {}

    def head_parameter_names(self, cfg: Config) -> tuple[str, ...]:
        return ()

    def tokens_per_sample(self, cfg: Config) -> int:
        return cfg.model.seq_length

    def flops_per_sample(self, cfg: Config, vocab_size: int) -> float:
        m = cfg.model
        return m.seq_length * lm_flops_per_token(m.num_layers, m.hidden_size, m.ffn, m.seq_length, vocab_size)

