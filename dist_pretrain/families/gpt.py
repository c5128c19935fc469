"""Decoder-only GPT: megatron-core ``GPTModel`` + causal LM objective + packed-sequence batches."""

from __future__ import annotations

import itertools
from functools import partial
from typing import Any, Iterator

import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_config import TransformerConfig

from dist_pretrain.config import Config
from dist_pretrain.data.stream import lm_sample
from dist_pretrain.data.synthetic import synthetic_lm_fields
from dist_pretrain.families.base import family_batches
from dist_pretrain.models.attention import SDPAttention


def gpt_layer_spec() -> ModuleSpec:
    """megatron-core's local (no Transformer Engine) GPT layer with our SDPA core attention."""
    spec = get_gpt_layer_local_spec()
    spec.submodules.self_attention.submodules.core_attention = SDPAttention
    return spec


def lm_flops_per_token(num_layers: int, hidden: int, ffn: int, seq: int, vocab: int,
                       kv_hidden: int | None = None) -> float:
    """Training FLOPs per token (forward + backward = 3 x forward), Megatron's convention.

    Per layer and token, forward: QKV 2h(h + 2 kv_h), attention scores and values 2 x 2sh
    (full s x s, as Megatron counts it), output projection 2h^2, MLP 2 x 2h ffn;
    plus the logits 2hV. With ffn = 4h this is Narayanan et al.'s
    72 l h^2 (1 + s/(6h) + V/(12 l h)) per token.
    """
    kv_hidden = hidden if kv_hidden is None else kv_hidden
    per_layer = 2 * hidden * (hidden + 2 * kv_hidden) + 4 * seq * hidden + 2 * hidden * hidden \
        + 4 * hidden * ffn
    return 3.0 * (num_layers * per_layer + 2 * hidden * vocab)


class GPTFamily:
    name = "gpt"
    loss_key = "lm loss"

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

    def metric_keys(self, cfg: Config) -> list[str]:
        return [self.loss_key]

    def stage_shared_parameter_names(self, cfg: Config) -> set[str]:
        """Tied embeddings: the first stage's input embedding and the last stage's output layer."""
        return {"embedding.word_embeddings.weight", "output_layer.weight"} if cfg.model.tie_embeddings else set()

    def tied_parameter_names(self, cfg: Config) -> dict[str, str]:
        if cfg.model.tie_embeddings:
            return {"output_layer.weight": "embedding.word_embeddings.weight"}
        return {}

    def forward_step(self, data_iterator: Iterator[dict], model) -> tuple[torch.Tensor, Any]:
        tokens = next(data_iterator)["tokens"]
        inputs, labels = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
        positions = torch.arange(inputs.shape[1], device=inputs.device).unsqueeze(0).expand_as(inputs)
        # attention_mask=None: the SDPA core attention applies the causal mask itself
        output = model(inputs, positions, None, labels=labels)
        return output, partial(self._loss, torch.ones_like(labels, dtype=torch.float32))

    @staticmethod
    def _loss(loss_mask: torch.Tensor, per_token_loss: torch.Tensor):
        per_token_loss = per_token_loss.float()
        loss_sum = (per_token_loss * loss_mask).sum()
        num_tokens = loss_mask.sum().to(torch.int)
        # (sum, tokens, logged): megatron divides by tokens and by the number of micro-batches
        return loss_sum, num_tokens, {"lm loss": torch.stack([loss_sum.detach(), num_tokens.float()])}

    def batches(self, cfg: Config, split: str, dp_rank: int, dp_size: int, micro_batch_size: int,
                seed: int, vocab_size: int, start_step: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        return family_batches(cfg, split, dp_rank, dp_size, micro_batch_size, seed, start_step,
                              transform=lm_sample,
                              synthetic_fields=partial(synthetic_lm_fields, vocab_size=vocab_size,
                                                       seq_len=cfg.model.seq_length))

    def tokens_per_sample(self, cfg: Config) -> int:
        return cfg.model.seq_length

    def flops_per_sample(self, cfg: Config, vocab_size: int) -> float:
        m = cfg.model
        return m.seq_length * lm_flops_per_token(m.num_layers, m.hidden_size, m.ffn, m.seq_length, vocab_size)


def fan_out(iterator: Iterator, n: int) -> list[Iterator]:
    """The same micro-batch stream for each of ``n`` interleaved chunks on this rank."""
    return list(itertools.tee(iterator, n)) if n > 1 else [iterator]
