"""Encoder-only BERT architecture: megatron-core ``BertModel`` with SDPA core attention.

Pretrained with the masked LM task (``dist_pretrain.tasks.masked_lm``).
"""

from __future__ import annotations

import copy

import torch
from megatron.core.models.bert.bert_layer_specs import bert_layer_local_spec
from megatron.core.models.bert.bert_model import BertModel
from megatron.core.models.bert.pooler import Pooler
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


class BertClassifier(SDPABertModel):
    """BERT for sequence classification: encoder -> pooler (dense + tanh on ``[CLS]``) ->
    dropout -> linear to ``num_labels``. The last stage has no MLM head.

    The pooler is megatron's, under the name NSP pretraining gives it (``pooler.dense``),
    so a checkpoint pretrained with NSP supplies it; otherwise it starts from the seed
    like the classifier. Both are plain ``Linear`` layers replicated over tensor-parallel
    ranks, like megatron's NSP head: they see the same (all-reduced) hidden states on
    every rank, draw the same dropout mask (the default generator is seeded alike on all
    TP ranks) and so compute the same logits and gradients.
    """

    def __init__(self, *, num_labels: int, classifier_dropout: float, **kwargs):
        super().__init__(add_binary_head=False, share_embeddings_and_output_weights=False, **kwargs)
        if self.post_process:
            del self.lm_head, self.output_layer  # an untrained vocab-sized layer nobody uses
            self.pooler = Pooler(self.config.hidden_size, self.config.init_method, self.config,
                                 self.config.sequence_parallel)
            self.classifier_dropout = torch.nn.Dropout(classifier_dropout)
            self.classifier = torch.nn.Linear(self.config.hidden_size, num_labels)

    def sharded_state_dict(self, *args, **kwargs):
        """megatron's description of the weights, without the output layer it expects of a last stage."""
        post_process, self.post_process = self.post_process, False
        try:
            return super().sharded_state_dict(*args, **kwargs)
        finally:
            self.post_process = post_process

    def forward(self, input_ids, attention_mask, tokentype_ids=None):
        """Logits [b, num_labels] on the last stage, hidden states [s, b, h] elsewhere."""
        post_process, self.post_process = self.post_process, False  # BertModel: stop after the encoder
        try:
            hidden = super().forward(input_ids, attention_mask, tokentype_ids=tokentype_ids)
        finally:
            self.post_process = post_process
        if not post_process:
            return hidden
        return self.classifier(self.classifier_dropout(self.pooler(hidden, 0)))


class Bert:
    name = "bert"

    def build_chunk(self, cfg: Config, tconfig: TransformerConfig, vocab_size: int,
                    pre_process: bool, post_process: bool, vp_stage: int | None) -> torch.nn.Module:
        if cfg.task.name == "classification":
            return BertClassifier(
                num_labels=len(cfg.task.labels or ()), classifier_dropout=cfg.task.classifier_dropout,
                config=tconfig, num_tokentypes=2, transformer_layer_spec=bert_layer_spec(),
                vocab_size=vocab_size, max_sequence_length=cfg.model.max_positions,
                pre_process=pre_process, post_process=post_process, parallel_output=True, vp_stage=vp_stage,
            )
        return SDPABertModel(
            config=tconfig, num_tokentypes=2, transformer_layer_spec=bert_layer_spec(),
            vocab_size=vocab_size, max_sequence_length=cfg.model.max_positions,
            pre_process=pre_process, post_process=post_process,
            share_embeddings_and_output_weights=True, parallel_output=True,
            add_binary_head=cfg.task.next_sentence_prediction, vp_stage=vp_stage,
        )

    def stage_shared_parameter_names(self, cfg: Config) -> set[str]:
        """Tied embeddings: the first stage's input embedding and the last stage's output layer
        (a classifier has no output layer)."""
        if cfg.task.name == "classification":
            return set()
        return {"embedding.word_embeddings.weight", "output_layer.weight"}

    def tied_parameter_names(self, cfg: Config) -> dict[str, str]:
        if cfg.task.name == "classification":
            return {}
        return {"output_layer.weight": "embedding.word_embeddings.weight"}

    def head_parameter_names(self, cfg: Config) -> tuple[str, ...]:
        """Patterns of the parameters a fine-tuning task adds (initialised from the seed when a
        pretrained checkpoint lacks them; ``task.head_lr``; trained alone with ``task.freeze_encoder``)."""
        return ("pooler.*", "classifier.*") if cfg.task.name == "classification" else ()

    def tokens_per_sample(self, cfg: Config) -> int:
        return cfg.model.seq_length

    def flops_per_sample(self, cfg: Config, vocab_size: int) -> float:
        """Encoder layers as GPT's (full bidirectional attention) + the MLM head's dense
        h x h transform and the logits, per token; forward + backward = 3 x forward.
        A classifier has no logits over the vocabulary: its pooler and classifier are
        counted once per sample."""
        m = cfg.model
        encoder = lm_flops_per_token(m.num_layers, m.hidden_size, m.ffn, m.seq_length, vocab_size)
        if cfg.task.name == "classification":
            per_token = encoder - 3.0 * 2 * m.hidden_size * vocab_size
            head = 3.0 * 2 * m.hidden_size * (m.hidden_size + len(cfg.task.labels or ()))
            return m.seq_length * per_token + head
        return m.seq_length * (encoder + 3.0 * 2 * m.hidden_size * m.hidden_size)
