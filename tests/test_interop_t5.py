"""T5 v1.1 leaves the trainer: export to ``T5ForConditionalGeneration`` (with our SentencePiece
tokenizer and its sentinels) checked against transformers, refusals with the reason, and
HF -> import -> export bit-identical. The TP2 x PP2 oracle case is in test_interop.py.

Each test is one subprocess (a one-process gloo group must not leak into pytest); HF models
are built from configs with random weights, nothing is downloaded.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"}
V11 = ["model.position_embedding=relative", "model.softmax_scale=1.0", "model.normalization=rmsnorm",
       "model.bias=false", "model.activation=geglu_tanh", "model.tie_embeddings=false", "model.ffn_hidden_size=96",
       "model.layernorm_epsilon=1e-6", "model.vocab_size=1000"]


def run(*args, cwd=ROOT):
    proc = subprocess.run([sys.executable, *args], env=ENV, capture_output=True, text=True, timeout=600, cwd=cwd)
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def spiece(tmp_path_factory):
    """A T5 SentencePiece model (1,000 pieces, 100 sentinels, byte fallback) trained on the demo corpus."""
    root = tmp_path_factory.mktemp("t5_spiece")
    run("-m", "dist_pretrain", "demo-corpus", "--output", str(root))
    run("-m", "dist_pretrain", "tokenizer", "train", "--kind", "sentencepiece", "--input",
        str(root / "c4/en/c4-train.*.json.gz"), "--vocab-size", "1000", "--max-bytes", "300K", "--output",
        str(root / "spm"))
    return root / "spm" / "spiece.model"


def test_t5_export_with_sentencepiece_tokenizer_and_refusals(spiece, tmp_path):
    script = f"""
import json, torch
from transformers import AutoTokenizer, GenerationConfig
from dist_pretrain.config import load_config
from dist_pretrain.data.tokenizer import load_tokenizer
from dist_pretrain.interop.hf_export import ExportError, architecture_for, export_model, hf_tokenizer
from dist_pretrain.models.load import build_model, init_single_process
if __name__ == "__main__":
    init_single_process()
    cfg = load_config("configs/t5/tiny.yaml", {V11!r})
    chunks = build_model(cfg, 1024)
    tok = hf_tokenizer(cfg, "{spiece}", None)
    r = export_model(cfg, chunks, __import__("pathlib").Path("{tmp_path / 'hf'}"), tokenizer=tok)
    print("CHECK", json.dumps(r))
    hf_tok = AutoTokenizer.from_pretrained("{tmp_path / 'hf'}")
    ours = load_tokenizer("{spiece}")
    text = "The <extra_id_0> walks in <extra_id_1> park, 😀."
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == ours.encode_batch([text])[0]
    assert hf_tok(text)["input_ids"][-1] == ours.eos_id  # T5 appends </s>
    assert hf_tok.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_99>"]) == [ours.sentinel_ids[0], ours.sentinel_ids[99]]
    gen = GenerationConfig.from_pretrained("{tmp_path / 'hf'}")
    assert (gen.decoder_start_token_id, gen.pad_token_id, gen.eos_token_id) == (0, 0, 1), gen
    for bad in (["model.position_embedding=learned"], ["model.normalization=layernorm", "model.bias=true"],
                ["model.tie_embeddings=true"], ["model.softmax_scale=null"]):
        try:
            architecture_for(load_config("configs/t5/tiny.yaml", {V11!r} + bad))
            raise SystemExit(f"{{bad}} not refused")
        except ExportError as err:
            print("REFUSED", err)
"""
    out = run("-c", script)
    check = json.loads(next(line for line in out.splitlines() if line.startswith("CHECK"))[6:])
    print(check)
    assert check["architecture"] == "T5ForConditionalGeneration" and check["vocab"] == 1024
    assert check["max_abs_diff"] <= 1e-5 and check["top1_agreement"] == 1.0, check
    assert json.loads((tmp_path / "hf/config.json").read_text())["tie_word_embeddings"] is False
    refused = [line for line in out.splitlines() if line.startswith("REFUSED")]
    assert len(refused) == 4, out
    assert "no learned absolute positions" in refused[0] and "model.position_embedding=relative" in refused[0]
    assert "LayerNorm with bias cannot be represented" in refused[1]
    assert "model.tie_embeddings=false" in refused[2]
    assert "model.softmax_scale=1.0" in refused[3]


def test_t5_import_export_round_trip_is_bit_identical(tmp_path):
    """A T5 v1.1 (untied, gated-gelu) with 2 encoder and 3 decoder layers and non-default buckets."""
    from safetensors.torch import load_file

    script = f"""
import torch
from transformers import T5Config, T5ForConditionalGeneration
from dist_pretrain.interop.hf_export import export
from dist_pretrain.interop.hf_import import import_hf
from dist_pretrain.interop.t5 import finish_export, prepare_hf_model
if __name__ == "__main__":
    torch.manual_seed(0)
    config = T5Config(vocab_size=500, d_model=64, d_kv=16, d_ff=96, num_layers=2, num_decoder_layers=3, num_heads=4,
                      feed_forward_proj="gated-gelu", tie_word_embeddings=False, relative_attention_num_buckets=16,
                      relative_attention_max_distance=20, decoder_start_token_id=0)
    model = T5ForConditionalGeneration(config)
    prepare_hf_model(model)  # a real v1.1 checkpoint's head differs from its embedding
    with torch.no_grad():
        model.lm_head.weight.normal_()
    model.save_pretrained("{tmp_path / 'hf'}")
    finish_export("{tmp_path / 'hf'}")
    print("IMPORT", import_hf("{tmp_path / 'hf'}", "{tmp_path / 'ours'}"))
    print("EXPORT", export("{tmp_path / 'ours'}", "{tmp_path / 'back'}"))
"""
    out = run("-c", script)
    print(out)
    text = (tmp_path / "ours/config.yaml").read_text()
    for key in ("family: t5", "position_embedding: relative", "softmax_scale: 1.0", "activation: geglu_tanh",
                "encoder_num_layers: 2", "num_layers: 3", "relative_attention_num_buckets: 16", "tie_embeddings: false"):
        assert key in text, text
    a, b = load_file(tmp_path / "hf/model.safetensors"), load_file(tmp_path / "back/model.safetensors")
    assert sorted(a) == sorted(b) and "lm_head.weight" in a
    assert all(torch.equal(a[k], b[k]) for k in a)
