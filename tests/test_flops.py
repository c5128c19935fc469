"""Training FLOPs: each architecture's formula against torch's FlopCounterMode on the real model,
GPT's against Narayanan et al.'s closed form. (Grouped-query attention has no model to count
yet: its term is checked by hand.)"""
import os
import subprocess
import sys
import textwrap

import pytest

from dist_pretrain.config import load_config
from dist_pretrain.models.flops import lm_flops_per_token
from dist_pretrain.models.gpt import GPT


def gemm(m: int, n: int, k: int) -> int:
    """Forward FLOPs of an (m x k) @ (k x n) matmul: one multiply and one add per term."""
    return 2 * m * n * k


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


def test_architecture_uses_the_config_model():
    cfg = load_config(None, ["model.num_layers=3", "model.hidden_size=32",
                             "model.num_attention_heads=4", "model.seq_length=16"])
    # ffn defaults to 4 h, so the closed form applies
    assert GPT().flops_per_sample(cfg, 256) == pytest.approx(16 * narayanan(3, 32, 16, 256))
    assert GPT().tokens_per_sample(cfg) == 16
    cfg = load_config(None, ["model.hidden_size=32", "model.ffn_hidden_size=40"])
    assert GPT().flops_per_sample(cfg, 256) == 128 * lm_flops_per_token(2, 32, 40, 128, 256)


@pytest.mark.parametrize("config", ["configs/gpt/tiny.yaml", "configs/bert/tiny.yaml", "configs/t5/tiny.yaml"])
def test_architecture_formula_counts_what_the_model_executes(config):
    """An independent count: torch's FlopCounterMode over a real forward + backward of the
    architecture's megatron-core model (one micro-batch from its own data path, SDPA on its math
    kernel so the counter sees the attention bmm's) equals ``flops_per_sample`` x batch. Megatron's
    convention (backward = 2 x forward, full s x s attention) is what runs: counted to 1e-9."""
    code = f"""
        import os, torch
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29647")
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.utils.flop_counter import FlopCounterMode
        from dist_pretrain.config import load_config
        from dist_pretrain.train import Trainer

        cfg = load_config("{config}", ["monitor.tensorboard=false", "monitor.peak_tflops=1"])
        trainer = Trainer(cfg)
        model = trainer.engine.model_chunks[0]
        batch = next(trainer.train_data)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            output, loss_func = trainer.task.forward_step(iter([batch]), model)
            loss_sum, tokens, _ = loss_func(output)
            loss_sum.backward()
        samples = cfg.train.micro_batch_size
        print("counted", counter.get_total_flops() / samples)
        print("formula", trainer.arch.flops_per_sample(cfg, trainer.vocab_size))
    """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], check=False, capture_output=True, text=True,
                          timeout=240, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    values = dict(line.split() for line in proc.stdout.splitlines() if line.startswith(("counted", "formula")))
    counted, formula = float(values["counted"]), float(values["formula"])
    assert counted > 0
    assert formula == pytest.approx(counted, rel=1e-9), (config, counted, formula)
