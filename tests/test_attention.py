"""SDPA core attention matches a hand-written softmax(QK^T/sqrt(d) + mask) V, and the GPT
layer spec really uses it (causality checked through a whole megatron GPTModel)."""

import math
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.transformer_config import TransformerConfig

from dist_pretrain.models.attention import SDPAttention

S, B, H, D = 6, 2, 4, 8


def _attention(mask_type, sq=S, sk=S):
    cfg = TransformerConfig(num_layers=1, hidden_size=H * D, num_attention_heads=H,
                            use_cpu_initialization=True)
    tp1 = SimpleNamespace(tp=SimpleNamespace(size=lambda: 1))
    return SDPAttention(cfg, layer_number=1, attn_mask_type=mask_type, attention_type="self",
                        pg_collection=tp1).eval()


def _reference(q, k, v, masked):
    """q,k,v [s,b,h,d]; masked: bool [b,1,sq,sk], True = not attended."""
    scores = torch.einsum("qbhd,kbhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(masked, float("-inf"))
    ctx = torch.einsum("bhqk,kbhd->qbhd", scores.softmax(-1), v)
    return ctx.reshape(ctx.shape[0], ctx.shape[1], -1)


def _qkv(sq=S, sk=S):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(sq, B, H, D, generator=g), torch.randn(sk, B, H, D, generator=g),
            torch.randn(sk, B, H, D, generator=g))


def _padding(sq, sk, valid_k):
    m = torch.zeros(B, 1, sq, sk, dtype=torch.bool)
    for b, n in enumerate(valid_k):
        m[b, :, :, n:] = True
    return m


def test_causal_without_mask():
    q, k, v = _qkv()
    causal = torch.ones(S, S, dtype=torch.bool).triu(1).expand(B, 1, S, S)
    out = _attention(AttnMaskType.causal)(q, k, v, None)
    torch.testing.assert_close(out, _reference(q, k, v, causal))


def test_padding_mask_megatron_convention():
    q, k, v = _qkv()
    pad = _padding(S, S, [S, 3])
    out = _attention(AttnMaskType.padding)(q, k, v, pad)
    torch.testing.assert_close(out, _reference(q, k, v, pad))


def test_causal_combined_with_padding():
    q, k, v = _qkv()
    pad = _padding(S, S, [S, 4])
    both = pad | torch.ones(S, S, dtype=torch.bool).triu(1)
    out = _attention(AttnMaskType.causal)(q, k, v, pad)
    torch.testing.assert_close(out, _reference(q, k, v, both))


def test_cross_attention_different_lengths():
    q, k, v = _qkv(sq=3, sk=S)
    pad = _padding(3, S, [5, 2])
    out = _attention(AttnMaskType.padding, sq=3)(q, k, v, pad)
    assert out.shape == (3, B, H * D)
    torch.testing.assert_close(out, _reference(q, k, v, pad))


def test_gpt_layer_spec_uses_sdpa():
    from dist_pretrain.models.gpt import gpt_layer_spec

    assert gpt_layer_spec().submodules.self_attention.submodules.core_attention is SDPAttention


def test_gpt_model_is_causal():
    code = textwrap.dedent("""
        import os, torch
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29631")
        from dist_pretrain.config import load_config
        from dist_pretrain.train import Trainer
        cfg = load_config("configs/gpt/tiny.yaml", ["monitor.tensorboard=false", "monitor.peak_tflops=1"])
        t = Trainer(cfg)
        model = t.engine.model_chunks[0].module.eval()
        ids = torch.randint(0, 500, (1, 16))
        pos = torch.arange(16).unsqueeze(0)
        a = model(ids, pos, None)
        ids2 = ids.clone(); ids2[0, 10] = (ids2[0, 10] + 1) % 500
        b = model(ids2, pos, None)
        assert torch.equal(a[:, :10], b[:, :10]), "future token changed earlier logits"
        assert not torch.allclose(a[:, 10:], b[:, 10:]), "perturbed token had no effect"
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


def test_fully_masked_query_rows_stay_finite():
    q, k, v = _qkv()
    pad = _padding(S, S, [S, 3])
    pad = pad | pad.transpose(-1, -2)  # [b,1,s,s] masking pad queries too (megatron's b1ss)
    out = _attention(AttnMaskType.padding)(q, k, v, pad)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:3, 1], _reference(q, k, v, pad)[:3, 1])  # real rows unchanged


def _biased_attention(mask_type, sq=S, sk=S):
    cfg = TransformerConfig(num_layers=1, hidden_size=H * D, num_attention_heads=H, use_cpu_initialization=True,
                            softmax_scale=1.0)
    tp1 = SimpleNamespace(tp=SimpleNamespace(size=lambda: 1))
    return SDPAttention(cfg, layer_number=1, attn_mask_type=mask_type, attention_type="self",
                        softmax_scale=cfg.softmax_scale, pg_collection=tp1).eval()


def test_relative_position_bias_with_causal_and_padding_masks_and_scale_one():
    """T5: softmax(q.k (unscaled) + bias[h] + masks) v; the bias gets its gradient."""
    q, k, v = _qkv()
    pad = _padding(S, S, [S, 4])
    bias = torch.randn(1, H, S, S, generator=torch.Generator().manual_seed(1), requires_grad=True)
    out = _biased_attention(AttnMaskType.causal)(q, k, v, pad, attention_bias=bias)
    scores = torch.einsum("qbhd,kbhd->bhqk", q, k) + bias
    scores = scores.masked_fill(pad | torch.ones(S, S, dtype=torch.bool).triu(1), float("-inf"))
    ref = torch.einsum("bhqk,kbhd->qbhd", scores.softmax(-1), v).reshape(S, B, H * D)
    torch.testing.assert_close(out, ref)
    grad, = torch.autograd.grad(out.sum(), bias)
    ref_grad, = torch.autograd.grad(ref.sum(), bias)
    torch.testing.assert_close(grad, ref_grad)
    assert grad[..., 1:].abs().sum() > 0  # the bias matters
    # without masks (the encoder with no padding) the bias alone
    out = _biased_attention(AttnMaskType.padding)(q, k, v, None, attention_bias=bias)
    ref = torch.einsum("bhqk,kbhd->qbhd", (torch.einsum("qbhd,kbhd->bhqk", q, k) + bias).softmax(-1), v)
    torch.testing.assert_close(out, ref.reshape(S, B, H * D))


def test_attention_bias_must_have_this_ranks_heads():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="attention_bias has 2 heads, this rank's attention 4"):
        _biased_attention(AttnMaskType.padding)(q, k, v, None, attention_bias=torch.zeros(1, 2, S, S))
