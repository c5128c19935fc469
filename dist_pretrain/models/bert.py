"""Encoder-only BERT architecture: megatron-core ``BertModel`` with SDPA core attention.

Pretrained with the masked LM task (``dist_pretrain.tasks.masked_lm``).
"""

from __future__ import annotations

import copy

import torch
from megatron.core.models.bert.bert_layer_specs import bert_layer_local_spec
from megatron.core.models.bert.bert_model import BertModel
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_config import TransformerConfig

from dist_pretrain.config import Config
from dist_pretrain.models.attention import SDPAttention
from dist_pretrain.models.flops import lm_flops_per_token


def bert_layer_spec() -> ModuleSpec:
    """megatron-core's local BERT layer (bidirectional, padding mask) with SDPA core attention.

    ``bert_layer_local_spec`` is a module-level object: copy it before changing it.
    """
    spec = copy.deepcopy(bert_layer_local_spec)
    spec.submodules.self_attention.submodules.core_attention = SDPAttention
    return spec


class SDPABertModel(BertModel):
    """``BertModel`` whose attention-mask layout check knows our SDPA core attention.

    megatron picks the mask layout from Transformer Engine's version (and fails without
    TE); SDPA takes a key-padding mask [b, 1, 1, s] and broadcasts it over queries.
    """

    def _sanity_check_attention_and_get_attn_mask_dimension(self) -> str:
        return "b11s"


class Bert:
    name = "bert"

    def build_chunk(self, cfg: Config, tconfig: TransformerConfig, vocab_size: int,
                    pre_process: bool, post_process: bool, vp_stage: int | None) -> torch.nn.Module:
        return SDPABertModel(
            config=tconfig, num_tokentypes=2, transformer_layer_spec=bert_layer_spec(),
            vocab_size=vocab_size, max_sequence_length=cfg.model.max_positions,
            pre_process=pre_process, post_process=post_process,
            share_embeddings_and_output_weights=True, parallel_output=True,
            add_binary_head=cfg.task.next_sentence_prediction, vp_stage=vp_stage,
        )

    def stage_shared_parameter_names(self, cfg: Config) -> set[str]:
        """Tied embeddings: the first stage's input embedding and the last stage's output layer."""
        return {"embedding.word_embeddings.weight", "output_layer.weight"}

    def tied_parameter_names(self, cfg: Config) -> dict[str, str]:
        return {"output_layer.weight": "embedding.word_embeddings.weight"}

    def tokens_per_sample(self, cfg: Config) -> int:
        return cfg.model.seq_length

    def flops_per_sample(self, cfg: Config, vocab_size: int) -> float:
        """Encoder layers as GPT's (full bidirectional attention) + the MLM head's dense
        h x h transform and the logits, per token; forward + backward = 3 x forward."""
        m = cfg.model
        encoder = lm_flops_per_token(m.num_layers, m.hidden_size, m.ffn, m.seq_length, vocab_size)
        return m.seq_length * (encoder + 3.0 * 2 * m.hidden_size * m.hidden_size)
