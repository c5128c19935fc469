"""BERT and T5 models: final norms present, attention directions (T5 decoder causal, encoders
bidirectional). Their FLOPs formulas are checked in tests/test_flops.py."""

import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    head = textwrap.dedent("""
        import os, torch
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29641")
        from dist_pretrain.config import load_config
        from dist_pretrain.train import Trainer
    """)
    proc = subprocess.run([sys.executable, "-c", head + textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
    return proc.stdout


def test_t5_final_norms_exist_and_attention_directions():
    _run("""
        cfg = load_config("configs/t5/tiny.yaml", ["monitor.tensorboard=false", "monitor.peak_tflops=1"])
        model = Trainer(cfg).engine.model_chunks[0].module.eval()
        # local block specs with TENorm would leave these None without Transformer Engine
        assert model.encoder.final_layernorm is not None and model.decoder.final_layernorm is not None
        assert len(model.encoder.layers) == 4 and len(model.decoder.layers) == 4
        enc = torch.randint(3, 400, (1, 32)); dec = torch.randint(3, 400, (1, 16))
        no_mask = lambda s: torch.zeros(1, 1, 1, s, dtype=torch.bool)
        def logits(e, d):
            return model(e, d, no_mask(32), no_mask(16), no_mask(32))
        base = logits(enc, dec)
        dec2 = dec.clone(); dec2[0, 9] = (dec2[0, 9] + 1) % 400
        after = logits(enc, dec2)
        assert torch.equal(base[:, :9], after[:, :9]), "a later decoder token changed earlier outputs"
        assert not torch.allclose(base[:, 9:], after[:, 9:])
        # encoder: bidirectional, one changed input token changes every encoder output
        hidden = lambda e: model(e, dec, no_mask(32), no_mask(16), no_mask(32), output_encoder_hidden_only=True)
        enc2 = enc.clone(); enc2[0, 31] = (enc2[0, 31] + 1) % 400
        h1, h2 = hidden(enc), hidden(enc2)   # [s, b, h]
        assert ((h1 - h2).abs().amax(dim=(1, 2)) > 0).all(), "some encoder position ignored a later token"
        # and every decoder output sees the change through cross-attention
        assert ((logits(enc, dec) - logits(enc2, dec)).abs().amax(dim=(0, 2)) > 0).all()
        print("ok")
    """)


def test_bert_is_bidirectional_and_respects_padding():
    _run("""
        cfg = load_config("configs/bert/tiny.yaml", ["monitor.tensorboard=false", "monitor.peak_tflops=1"])
        model = Trainer(cfg).engine.model_chunks[0].module.eval()
        assert model.encoder.final_layernorm is not None
        ids = torch.randint(110, 500, (1, 32)); types = torch.zeros_like(ids)
        mask = torch.ones_like(ids); mask[0, 28:] = 0   # last 4 positions are padding
        logits = lambda x: model(x, mask, tokentype_ids=types)[0]
        base = logits(ids)
        ids2 = ids.clone(); ids2[0, 20] = 300 if ids2[0, 20] != 300 else 301
        changed = (logits(ids2)[0, :28] - base[0, :28]).abs().amax(-1)
        assert (changed > 0).all(), "some real position did not see a later token"
        ids3 = ids.clone(); ids3[0, 30] = 300 if ids3[0, 30] != 300 else 301  # a padding position
        assert torch.equal(logits(ids3)[0, :28], base[0, :28]), "padding leaked into real positions"
        print("ok")
    """)
