"""Training FLOPs per token of the GPT family against a hand count and Narayanan et al."""
import pytest

from dist_pretrain.config import load_config
from dist_pretrain.families.gpt import GPTFamily, lm_flops_per_token


def gemm(m: int, n: int, k: int) -> int:
    """Forward FLOPs of an (m x k) @ (k x n) matmul: one multiply and one add per term."""
    return 2 * m * n * k


def test_hand_count_tiny():
    layers, h, ffn, s, vocab = 2, 8, 32, 4, 10
    # per token (m = 1 row of the activation matrix), forward pass, one layer:
    qkv = gemm(1, 3 * h, h)          # [1 x 8] @ [8 x 24]          = 384
    scores = gemm(1, s, h)           # q [1 x 8] @ K^T [8 x 4]     =  64
    context = gemm(1, h, s)          # p [1 x 4] @ V [4 x 8]       =  64
    out_proj = gemm(1, h, h)         # [1 x 8] @ [8 x 8]           = 128
    fc1 = gemm(1, ffn, h)            # [1 x 8] @ [8 x 32]          = 512
    fc2 = gemm(1, h, ffn)            # [1 x 32] @ [32 x 8]         = 512
    per_layer = qkv + scores + context + out_proj + fc1 + fc2
    assert (qkv, scores, context, out_proj, fc1, fc2) == (384, 64, 64, 128, 512, 512)
    assert per_layer == 1664
    logits = gemm(1, vocab, h)       # [1 x 8] @ [8 x 10]          = 160
    forward = layers * per_layer + logits
    assert forward == 3488
    # backward = 2 x forward (grads w.r.t. inputs and weights)
    expected = 3 * forward
    assert expected == 10464
    assert lm_flops_per_token(layers, h, ffn, s, vocab) == expected


def test_hand_count_grouped_query_attention():
    layers, h, kv_h, ffn, s, vocab = 2, 8, 4, 32, 4, 10
    qkv = gemm(1, h, h) + 2 * gemm(1, kv_h, h)   # Q full width, K and V kv_h wide: 128 + 128
    attention = gemm(1, s, h) + gemm(1, h, s)    # queries stay full width
    per_layer = qkv + attention + gemm(1, h, h) + gemm(1, ffn, h) + gemm(1, h, ffn)
    expected = 3 * (layers * per_layer + gemm(1, vocab, h))
    assert expected == 3 * (2 * (256 + 128 + 128 + 1024) + 160)
    assert lm_flops_per_token(layers, h, ffn, s, vocab, kv_hidden=kv_h) == expected
    # kv_hidden = hidden is plain multi-head attention
    assert lm_flops_per_token(layers, h, ffn, s, vocab, kv_hidden=h) \
        == lm_flops_per_token(layers, h, ffn, s, vocab)


def narayanan(layers: int, h: int, s: int, vocab: int) -> float:
    """Narayanan et al. (SC'21), eq. 3, divided by the B x s tokens of a batch."""
    return 72 * layers * h**2 * (1 + s / (6 * h) + vocab / (12 * layers * h))


@pytest.mark.parametrize(
    "layers, h, s, vocab",
    [
        (2, 8, 4, 10),
        (4, 64, 32, 512),           # configs/gpt/tiny.yaml, padded vocab
        (24, 1024, 1024, 50304),    # GPT-2 medium
        (96, 12288, 2048, 51200),   # GPT-3 175B
        (1, 1, 2, 2),
    ],
)
def test_matches_narayanan_closed_form(layers, h, s, vocab):
    got = lm_flops_per_token(layers, h, 4 * h, s, vocab)
    assert got == pytest.approx(narayanan(layers, h, s, vocab), rel=1e-12)


def test_gpt3_175b_order_of_magnitude():
    # the usual 6 N rule of thumb: ~175e9 parameters -> ~1.05e12 plus attention, ~1.1e12
    got = lm_flops_per_token(96, 12288, 4 * 12288, 2048, 51200)
    assert 6 * 174e9 < got < 6 * 190e9


def test_each_term_enters_linearly():
    base = dict(num_layers=3, hidden=16, ffn=40, seq=8, vocab=100)
    f0 = lm_flops_per_token(**base)
    # one more layer adds exactly one layer's 3 x forward
    per_layer = 3 * (gemm(1, 48, 16) + gemm(1, 8, 16) + gemm(1, 16, 8) + gemm(1, 16, 16)
                     + gemm(1, 40, 16) + gemm(1, 16, 40))
    assert lm_flops_per_token(**{**base, "num_layers": 4}) - f0 == per_layer
    # longer sequence: attention scores and values, 3 x 4 h per extra position per layer
    assert lm_flops_per_token(**{**base, "seq": 9}) - f0 == 3 * 3 * 4 * 16
    # bigger vocab: the logits, 3 x 2 h per extra entry
    assert lm_flops_per_token(**{**base, "vocab": 101}) - f0 == 3 * 2 * 16
    # wider MLP: two GEMMs, 3 x 4 h per extra unit per layer
    assert lm_flops_per_token(**{**base, "ffn": 41}) - f0 == 3 * 3 * 4 * 16


def test_family_uses_the_config_model():
    cfg = load_config(None, ["model.num_layers=3", "model.hidden_size=32",
                             "model.num_attention_heads=4", "model.seq_length=16"])
    # ffn defaults to 4 h, so the closed form applies
    assert GPTFamily().flops_per_sample(cfg, 256) == pytest.approx(16 * narayanan(3, 32, 16, 256))
    assert GPTFamily().tokens_per_sample(cfg) == 16
    cfg = load_config(None, ["model.hidden_size=32", "model.ffn_hidden_size=40"])
    assert GPTFamily().flops_per_sample(cfg, 256) == 128 * lm_flops_per_token(2, 32, 40, 128, 256)
