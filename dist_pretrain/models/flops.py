"""Training FLOPs per token / sample of each architecture, Megatron's conventions.

Used for the MFU the monitor logs; tests/test_flops.py checks each formula against torch's
FlopCounterMode on the real model.
"""

from __future__ import annotations


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


def t5_flops_per_sample(enc_layers: int, dec_layers: int, h: int, ffn: int, se: int, sd: int,
                        vocab: int) -> float:
    """Training FLOPs (3 x forward) of one encoder-decoder sample, Megatron's conventions.

    Encoder, per token and layer: QKV 6h^2, scores + values 4 s_e h, output 2h^2, MLP 4h ffn.
    Decoder, per token and layer: the same self-attention with s_d, plus cross-attention:
    Q and output 4h^2, scores + values 4 s_e h; its K and V projections run over the
    encoder output (4h^2 per encoder token and decoder layer). Logits 2hV per target token.
    """
    encoder = se * enc_layers * (8 * h * h + 4 * se * h + 4 * h * ffn)
    decoder = dec_layers * (sd * (8 * h * h + 4 * sd * h + 4 * h * h + 4 * se * h + 4 * h * ffn)
                            + se * 4 * h * h)
    return 3.0 * (encoder + decoder + sd * 2 * h * vocab)
