"""Activation memory of one micro-batch on one pipeline stage and tensor-parallel rank, for
``dist-pretrain plan``: what autograd saves for backward, per layer and around the stack.

Every term was measured on its own against the storages a real forward saves
(``benchmarks.activations.count_saved``; ``benchmarks/plan_check.py`` and
``tests/test_plan.py`` hold the plan to within 10% of it): the GPT layer by
``benchmarks.activations``, T5's encoder / decoder stacks with cross-attention by the
``activations ... T5`` cases of ``benchmarks/plan_check.py``.
"""

from __future__ import annotations

from dist_pretrain.config import Config


def norm_bytes(cfg: Config) -> float:
    """Bytes per token one norm saves besides its input: LayerNorm its mean and rstd; torch's
    RMSNorm (megatron's fallback without Apex) its rstd and the normalised input before the
    weight, plus a fp32 copy of the input under bf16 (measured)."""
    e = 2 if cfg.train.precision == "bf16" else 4
    if cfg.model.normalization == "rmsnorm":
        return e + cfg.model.hidden_size * e + (4 * cfg.model.hidden_size if e == 2 else 0)
    return 2 * e


def layer_activation_bytes(cfg: Config, tp: int, micro_batch: int, seq: int) -> float:
    """Bytes one transformer layer saves for backward for one micro-batch on one TP rank:
    16 sbh values for a plain GPT layer at TP1 (``memory.flash_no_dropout_layer_bytes``,
    validated by ``benchmarks/activations.py``); in general the two norm inputs and the QKV and
    fc1 inputs (whole on every TP rank) and, split over TP, Q K V (K and V expanded to every
    head under GQA), the attention output and the MLP's inner tensors (2 ffn; 5 ffn gated);
    the norms' statistics, the fused attention's fp32 log-sum-exp; rotary embeddings add the
    rotated Q and K and their cos / sin tables; hidden dropout two e-byte tensors per layer;
    attention dropout makes SDPA take its unfused path, (14 + e/2) bytes per score. Each
    feature was measured on its own against saved tensors (``benchmarks.activations``)."""
    m = cfg.model
    e = 2 if cfg.train.precision == "bf16" else 4
    h, a = m.hidden_size, m.num_attention_heads
    kv = h * (m.num_query_groups or a) // a
    tokens = micro_batch * seq
    gated = m.activation in ("swiglu", "geglu")
    split = 3 * h + h + (5 if gated else 2) * m.ffn + (h + kv if m.position_embedding == "rope" else 0)
    total = tokens * (e * (4 * h + split / tp) + 2 * norm_bytes(cfg)) + 4 * a * tokens / tp
    if m.position_embedding == "rope":
        total += 4 * seq * (h // a) * e
    if m.hidden_dropout > 0:  # measured: two e-byte tensors per layer
        total += 2 * tokens * h * e
    if m.attention_dropout > 0:  # SDPA's unfused path: s x s scores, softmax, mask, output; no LSE (measured)
        total += ((14 + e / 2) * a * seq * seq * micro_batch - 4 * a * tokens) / tp
    return total


def micro_batch_activations(cfg: Config, tp: int, layers: int, first: bool, last: bool,
                            vocab: int) -> dict[str, float]:
    """Activation bytes of one micro-batch on a stage holding ``layers`` layers: ``saved`` at the
    end of its forward and ``peak`` during its backward (recomputation re-runs one layer)."""
    m = cfg.model
    e = 2 if cfg.train.precision == "bf16" else 4
    b, s, h = cfg.train.micro_batch_size, m.seq_length, m.hidden_size
    layer = layer_activation_bytes(cfg, tp, b, s)
    recompute = m.recompute != "none"
    stack = layers * (s * b * h * e if recompute else layer)
    outside = 0.0
    if last:  # final norm input and its own, output-layer input, fp32 logits kept by the loss, labels
        outside += s * b * (2 * h * e + norm_bytes(cfg) + 4 * vocab / tp + 16)
    if first:  # token and position ids
        outside += 8 * s * b
    saved = stack + outside
    return {"saved": saved, "peak": saved + (layer if recompute and layers else 0.0), "per_layer": layer}

def cross_attention_bytes(cfg: Config, tp: int, micro_batch: int, dec_seq: int, enc_seq: int) -> float:
    """What a T5 decoder layer's cross-attention adds for backward (measured, no dropout): per
    decoder token its norm input, the query projection's input (whole on every TP rank), Q and
    the attention output (split), the norm's statistics and the fp32 log-sum-exp; per encoder
    token K and V (split). The encoder output that every layer projects to K / V is one
    storage for the whole stack (``t5_micro_batch_activations``). Dropout terms follow the GPT
    layer's measured ones: one more hidden-dropout tensor; SDPA's unfused path over the
    decoder x encoder scores."""
    m = cfg.model
    e = 2 if cfg.train.precision == "bf16" else 4
    h, a = m.hidden_size, m.num_attention_heads
    kv = h * (m.num_query_groups or a) // a
    dec, enc = micro_batch * dec_seq, micro_batch * enc_seq
    total = dec * (e * (2 * h + 2 * h / tp) + norm_bytes(cfg)) + 4 * a * dec / tp + enc * e * 2 * kv / tp
    if m.hidden_dropout > 0:
        total += dec * h * e
    if m.attention_dropout > 0:
        total += ((14 + e / 2) * a * dec_seq * enc_seq * micro_batch - 4 * a * dec) / tp
    return total


def t5_micro_batch_activations(cfg: Config, tp: int, stage: int, pp: int, vocab: int) -> dict[str, float]:
    """T5's ``micro_batch_activations``: the encoder's layers at ``seq_length``, the decoder's at
    the decoder length with cross-attention over the encoder output, each stack with its final
    norm; the encoder on stage 0 and the decoder on stage 1 at PP=2 (config_rules), both on
    one stage at PP=1. The last stage keeps the logits of the decoder tokens only."""
    m = cfg.model
    e = 2 if cfg.train.precision == "bf16" else 4
    b, h = cfg.train.micro_batch_size, m.hidden_size
    s_enc, s_dec = m.seq_length, m.decoder_length
    has_encoder, has_decoder = stage == 0, stage == pp - 1
    enc_layers = (m.encoder_num_layers or m.num_layers) if has_encoder else 0
    dec_layers = m.num_layers if has_decoder else 0
    enc_layer = layer_activation_bytes(cfg, tp, b, s_enc)
    dec_layer = layer_activation_bytes(cfg, tp, b, s_dec) + cross_attention_bytes(cfg, tp, b, s_dec, s_enc)
    relative = m.position_embedding == "relative"
    if relative:  # the position bias as SDPA's attention mask: measured 7.5 (bf16) / 8.6 (fp32) bytes
        # per score of each self-attention, modelled as 5 + e; the bucket ids (int64) once per stack
        enc_layer += (5 + e) * m.num_attention_heads * s_enc * s_enc * b / tp
        dec_layer += (5 + e) * m.num_attention_heads * s_dec * s_dec * b / tp
    recompute = m.recompute != "none"
    stack = (enc_layers * (s_enc * b * h * e if recompute else enc_layer)
             + dec_layers * (s_dec * b * h * e if recompute else dec_layer))
    outside = 0.0
    if has_encoder:  # the encoder's final norm
        outside += s_enc * b * (h * e + norm_bytes(cfg))
    if has_decoder:  # the encoder output (K / V input of every layer), the decoder's final norm,
        # the output layer's input, fp32 logits kept by the loss, labels
        outside += s_enc * b * h * e + s_dec * b * (2 * h * e + norm_bytes(cfg) + 4 * vocab / tp + 16)
    if stage == 0:  # token and position ids
        outside += 8 * (s_enc + s_dec) * b
    if relative:
        outside += 8 * ((s_enc * s_enc if enc_layers else 0) + (s_dec * s_dec if dec_layers else 0))
    saved = stack + outside
    largest = max(enc_layer if enc_layers else 0.0, dec_layer if dec_layers else 0.0)
    return {"saved": saved, "peak": saved + (largest if recompute else 0.0), "per_layer": largest}


def stage_activations(cfg: Config, tp: int, pp: int, stage: int, vocab: int) -> dict[str, float]:
    """One micro-batch's activations on ``stage`` of ``pp``, for any architecture."""
    if cfg.model.arch == "t5":
        return t5_micro_batch_activations(cfg, tp, stage, pp, vocab)
    return micro_batch_activations(cfg, tp, cfg.model.num_layers // pp, stage == 0, stage == pp - 1, vocab)
