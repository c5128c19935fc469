"""Encoder-only BERT: megatron-core ``BertModel`` + masked LM (80/10/10) on document samples."""

from __future__ import annotations

import copy
from functools import partial
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.models.bert.bert_layer_specs import bert_layer_local_spec
from megatron.core.models.bert.bert_model import BertModel
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_config import TransformerConfig

from dist_pretrain.config import Config
from dist_pretrain.data.synthetic import synthetic_doc_fields
from dist_pretrain.families.base import family_batches, tokenizer_for
from dist_pretrain.families.gpt import lm_flops_per_token
from dist_pretrain.models.attention import SDPAttention
from dist_pretrain.objectives.mlm import MLMConfig, bert_example, wordpiece_continuation_mask

# special ids of the bert-base-uncased vocab; synthetic runs (tests) use the same
BERT_SPECIALS = {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}


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


def masked_accuracy(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Correct predictions at ``mask`` positions, from vocab-parallel logits [..., V/TP]."""
    with torch.no_grad():
        sel = mask.bool()
        if not sel.any():
            return torch.zeros((), dtype=torch.float32, device=logits.device)
        full = tensor_parallel.gather_from_tensor_model_parallel_region(logits[sel].float())
        return (full.argmax(-1) == labels[sel]).sum().float()


def bert_sample(fields: dict, rng: np.random.Generator, previous: dict | None, *, seq_len: int,
                special_ids: dict, vocab_size: int, mlm: MLMConfig, is_subword) -> dict:
    other = None
    if mlm.nsp:
        other = previous or fields  # the sub-stream's previous document serves as "random B"
        other = (other["tokens"], other["sentences"])
    return bert_example(fields["tokens"], fields["sentences"], seq_len, special_ids, vocab_size, rng,
                        mlm, other=other, is_subword=is_subword)


class BertFamily:
    name = "bert"
    loss_key = "lm loss"

    def metric_keys(self, cfg: Config) -> list[str]:
        keys = [self.loss_key, "mlm accuracy"]
        return keys + (["nsp loss", "nsp accuracy"] if cfg.objective.next_sentence_prediction else [])

    def build_chunk(self, cfg: Config, tconfig: TransformerConfig, vocab_size: int,
                    pre_process: bool, post_process: bool, vp_stage: int | None) -> torch.nn.Module:
        return SDPABertModel(
            config=tconfig, num_tokentypes=2, transformer_layer_spec=bert_layer_spec(),
            vocab_size=vocab_size, max_sequence_length=cfg.model.max_positions,
            pre_process=pre_process, post_process=post_process,
            share_embeddings_and_output_weights=True, parallel_output=True,
            add_binary_head=cfg.objective.next_sentence_prediction, vp_stage=vp_stage,
        )

    def stage_shared_parameter_names(self, cfg: Config) -> set[str]:
        """Tied embeddings: the first stage's input embedding and the last stage's output layer."""
        return {"embedding.word_embeddings.weight", "output_layer.weight"}

    def tied_parameter_names(self, cfg: Config) -> dict[str, str]:
        return {"output_layer.weight": "embedding.word_embeddings.weight"}

    def forward_step(self, data_iterator: Iterator[dict], model) -> tuple[Any, Any]:
        batch = next(data_iterator)
        output = model(batch["tokens"], batch["padding_mask"], tokentype_ids=batch["token_types"],
                       lm_labels=None)
        return output, partial(self._loss, batch)

    @staticmethod
    def _loss(batch: dict, output):
        logits, binary_logits = output
        loss_mask = batch["loss_mask"]
        per_token = tensor_parallel.vocab_parallel_cross_entropy(logits.float(), batch["labels"])
        lm_sum = (per_token * loss_mask).sum()
        n = loss_mask.sum()
        logged = {"lm loss": torch.stack([lm_sum.detach(), n]),
                  "mlm accuracy": torch.stack([masked_accuracy(logits, batch["labels"], loss_mask), n])}
        loss_sum = lm_sum
        if binary_logits is not None:
            nsp = F.cross_entropy(binary_logits.float(), batch["nsp_label"])
            loss_sum = loss_sum + nsp * n  # megatron divides by n: lm mean + nsp mean
            b = torch.tensor(float(batch["nsp_label"].numel()), device=nsp.device)  # stacked with nsp
            correct = (binary_logits.argmax(-1) == batch["nsp_label"]).sum().float()
            logged["nsp loss"] = torch.stack([nsp.detach() * b, b])
            logged["nsp accuracy"] = torch.stack([correct, b])
        return loss_sum, n.to(torch.int), logged

    def batches(self, cfg: Config, split: str, dp_rank: int, dp_size: int, micro_batch_size: int,
                seed: int, vocab_size: int, start_step: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        obj = cfg.objective
        mlm = MLMConfig(mask_prob=obj.mask_prob, whole_word=obj.whole_word_masking,
                        nsp=obj.next_sentence_prediction)
        if cfg.data.synthetic:
            specials, real_vocab, is_subword = BERT_SPECIALS, vocab_size, None
            fields = partial(synthetic_doc_fields, low=110, high=vocab_size, length=cfg.model.seq_length)
        else:
            tok = tokenizer_for(cfg)
            specials, real_vocab = tok.special_ids, tok.vocab_size
            is_subword = wordpiece_continuation_mask(tok) if obj.whole_word_masking else None
            fields = None
        transform = partial(bert_sample, seq_len=cfg.model.seq_length, special_ids=specials,
                            vocab_size=real_vocab, mlm=mlm, is_subword=is_subword)
        return family_batches(cfg, split, dp_rank, dp_size, micro_batch_size, seed, start_step,
                              transform=transform, synthetic_fields=fields)

    def tokens_per_sample(self, cfg: Config) -> int:
        return cfg.model.seq_length

    def flops_per_sample(self, cfg: Config, vocab_size: int) -> float:
        """Encoder layers as GPT's (full bidirectional attention) + the MLM head's dense
        h x h transform and the logits, per token; forward + backward = 3 x forward."""
        m = cfg.model
        encoder = lm_flops_per_token(m.num_layers, m.hidden_size, m.ffn, m.seq_length, vocab_size)
        return m.seq_length * (encoder + 3.0 * 2 * m.hidden_size * m.hidden_size)
