"""Encoder-decoder T5 architecture: megatron-core ``T5Model`` with SDPA core attention.

Pretrained with the span corruption task (``dist_pretrain.tasks.span_corruption``).
"""

from __future__ import annotations

import copy

import torch
from megatron.core import parallel_state
from megatron.core.models.T5.t5_model import T5Model
from megatron.core.models.T5.t5_spec import decoder_model_with_local_spec, encoder_model_with_local_spec
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.transformer_config import TransformerConfig

from dist_pretrain.config import Config
from dist_pretrain.models.attention import SDPAttention
from dist_pretrain.models.flops import t5_flops_per_sample


def t5_layer_specs() -> tuple[ModuleSpec, ModuleSpec]:
    """megatron-core's local encoder / decoder layers with SDPA core attention.

    These are *layer* specs: TransformerBlock then adds its final LayerNorm.
    ``get_t5_{encoder,decoder}_with_local_block_spec`` would set that norm to ``TENorm``,
    which is None without Transformer Engine: the final norm would silently vanish.
    """
    encoder, decoder = encoder_model_with_local_spec(), decoder_model_with_local_spec()
    encoder.submodules.self_attention.submodules.core_attention = SDPAttention
    decoder.submodules.self_attention.submodules.core_attention = SDPAttention
    decoder.submodules.cross_attention.submodules.core_attention = SDPAttention
    return encoder, decoder


def _uneven(config: TransformerConfig, num_layers: int, first: int, last: int) -> TransformerConfig:
    """A copy of ``config`` for one T5 block, all its layers on one pipeline stage.

    Set after copying: TransformerConfig's validation rejects a stage with 0 layers,
    which is what the other stage has here. Without PP the split fields stay unset.
    """
    out = copy.copy(config)
    out.num_layers = num_layers
    if config.pipeline_model_parallel_size > 1:
        out.num_layers_in_first_pipeline_stage = first
        out.num_layers_in_last_pipeline_stage = last
    return out


class StagedT5Model(T5Model):
    """megatron-core's ``T5Model`` on our encoder stage / decoder stage pipeline split.

    With relative position bias megatron's forward builds the encoder's bias on every stage,
    reading the encoder block even where this stage has none (the decoder stage): there the
    encoder's output arrives as the pipeline input (``set_input_tensor``) and is passed on as
    ``encoder_hidden_states``, so the encoder path (its embedding and bias) is skipped. Each
    stage keeps only its own stack's bias table, so no parameter sits unused and untrained
    on a stage (it would be saved twice with different values).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.position_embedding_type == "relative":
            if not self.add_encoder:
                self.encoder_relative_pos_emb = None
            if not self.add_decoder:
                self.decoder_relative_pos_emb = None

    def forward(self, encoder_input_ids, decoder_input_ids, encoder_attn_mask, decoder_attn_mask,
                encoder_decoder_attn_mask, lm_labels=None, encoder_hidden_states=None, **kwargs):
        if encoder_hidden_states is None and not self.add_encoder:
            encoder_hidden_states = self.encoder_hidden_state
        return super().forward(encoder_input_ids, decoder_input_ids, encoder_attn_mask, decoder_attn_mask,
                               encoder_decoder_attn_mask, lm_labels=lm_labels,
                               encoder_hidden_states=encoder_hidden_states, **kwargs)


def decoder_length(cfg: Config) -> int:
    return cfg.model.decoder_length


def key_padding_mask(real: torch.Tensor) -> torch.Tensor:
    """[b, s] with 1 = real token -> megatron's boolean [b, 1, 1, s] mask, True = masked."""
    return (real == 0)[:, None, None, :]


class T5:
    name = "t5"

    def build_chunk(self, cfg: Config, tconfig: TransformerConfig, vocab_size: int,
                    pre_process: bool, post_process: bool, vp_stage: int | None) -> torch.nn.Module:
        """With PP=2 the encoder is stage 0 and the decoder stage 1 (megatron-core 0.16 has no
        encoder/decoder pipeline split of its own: both blocks would be cut in halves and the
        decoder would cross-attend to half an encoder). Stage 1 embeds the decoder input
        itself and receives the encoder output as its pipeline input."""
        enc_layers, dec_layers = cfg.model.encoder_num_layers or cfg.model.num_layers, cfg.model.num_layers
        encoder_config = _uneven(tconfig, enc_layers, first=enc_layers, last=0)
        decoder_config = _uneven(tconfig, dec_layers, first=0, last=dec_layers)
        stage = parallel_state.get_pipeline_model_parallel_rank() if cfg.parallel.pipeline > 1 else None
        encoder_spec, decoder_spec = t5_layer_specs()
        m = cfg.model
        model = StagedT5Model(
            config=decoder_config, encoder_config=encoder_config,
            transformer_encoder_layer_spec=encoder_spec, transformer_decoder_layer_spec=decoder_spec,
            vocab_size=vocab_size,
            max_sequence_length=max(cfg.model.max_positions, decoder_length(cfg)),
            pre_process=True if stage is not None else pre_process,
            post_process=post_process,
            add_encoder=stage in (None, 0), add_decoder=stage in (None, 1),
            share_embeddings_and_output_weights=m.tie_embeddings, parallel_output=True,
            position_embedding_type="relative" if m.position_embedding == "relative" else "learned_absolute",
            relative_attention_num_buckets=m.relative_attention_num_buckets,
            relative_attention_max_distance=m.relative_attention_max_distance,
        )
        if stage == 0:  # the encoder ends here: it needs its final norm on this stage
            block = model.encoder
            block.final_layernorm = build_module(block.submodules.layer_norm, config=encoder_config,
                                                 hidden_size=encoder_config.hidden_size,
                                                 eps=encoder_config.layernorm_epsilon)
        return model

    def stage_shared_parameter_names(self, cfg: Config) -> set[str]:
        """Parameters with a copy on both T5 stages (PP=2): word and position embeddings."""
        return {"embedding.word_embeddings.weight", "embedding.position_embeddings.weight"}

    def tied_parameter_names(self, cfg: Config) -> dict[str, str]:
        return {"lm_head.output_layer.weight": "embedding.word_embeddings.weight"} if cfg.model.tie_embeddings else {}

    def head_parameter_names(self, cfg: Config) -> tuple[str, ...]:
        return ()

    def tokens_per_sample(self, cfg: Config) -> int:
        return cfg.model.seq_length + decoder_length(cfg)

    def flops_per_sample(self, cfg: Config, vocab_size: int) -> float:
        return t5_flops_per_sample(cfg.model.encoder_num_layers or cfg.model.num_layers, cfg.model.num_layers,
                                   cfg.model.hidden_size, cfg.model.ffn, cfg.model.seq_length,
                                   decoder_length(cfg), vocab_size)
