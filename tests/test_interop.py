"""Models that leave the trainer: weights-only loading at another layout, HF export / import
checked against transformers, and the independent oracle (one step at TP2 x PP2 vs HF).

Everything runs in subprocesses (a one-process gloo group must not leak into pytest); the
HF models are built from configs with random weights, nothing is downloaded.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GPT = str(ROOT / "configs/gpt/tiny.yaml")
QUIET = ["monitor.tensorboard=false", "monitor.peak_tflops=1", "train.log_interval=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def run(*args, check=True):
    proc = subprocess.run([sys.executable, *args], env=ENV, capture_output=True, text=True, timeout=600, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def train(nproc, run_dir, *overrides):
    return run("-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "dist_pretrain",
               "train", GPT, f"run_dir={run_dir}", f"parallel.nproc={nproc}", *QUIET, *overrides)


def first_loss(run_dir):
    return json.loads((Path(run_dir) / "history.jsonl").read_text().splitlines()[0])["train/loss"]


@pytest.fixture(scope="module")
def tp2pp2_checkpoint(tmp_path_factory):
    """A tiny untied GPT trained 2 steps at TP2 x PP2 with ZeRO-2 (so weights differ from init)."""
    run_dir = tmp_path_factory.mktemp("tp2pp2")
    train(4, run_dir, "parallel.tensor=2", "parallel.pipeline=2", "parallel.zero_stage=2", "train.steps=2",
          "checkpoint.interval=2", "model.tie_embeddings=false")
    return run_dir


def test_weights_only_load_matches_the_consolidated_checkpoint_and_reports_mismatches(tp2pp2_checkpoint):
    script = f"""
import torch
from pathlib import Path
from dist_pretrain.checkpoint import consolidate, find_resumable
from dist_pretrain.models.load import WeightsError, load_pretrained, load_weights, model_weights
if __name__ == "__main__":
    cfg, chunks = load_pretrained("{tp2pp2_checkpoint}")
    full = consolidate(find_resumable(Path("{tp2pp2_checkpoint}") / "checkpoints")[0])
    got = model_weights(chunks)
    assert sorted(got) == sorted(full), (sorted(got), sorted(full))
    assert all(torch.equal(got[k], full[k]) for k in full)
    bad = dict(full)
    del bad["output_layer.weight"]
    bad["classifier.weight"] = torch.zeros(2, 64)
    bad["embedding.position_embeddings.weight"] = torch.zeros(5, 64)
    try:
        load_weights(chunks, bad)
        raise SystemExit("no error")
    except WeightsError as err:
        print(err)
    bad["embedding.position_embeddings.weight"] = full["embedding.position_embeddings.weight"]
    print("kept", load_weights(chunks, bad, allow_missing=["output_layer.*"], allow_unexpected=["classifier.*"]))
"""
    out = run("-c", script).stdout
    assert "in the model but not in the state dict: output_layer.weight" in out
    assert "in the state dict but not in the model: classifier.weight" in out
    assert "embedding.position_embeddings.weight: the model has shape [32, 64], the state dict [5, 64]" in out
    assert "kept ['output_layer.weight']" in out


def test_init_from_loads_weights_only_at_another_layout(tp2pp2_checkpoint, tmp_path):
    """PP2 (ZeRO-1) and one process start from the TP2 x PP2 checkpoint at step 0 with a fresh
    optimizer: the same first loss, which is not the loss of fresh initial weights."""
    common = ["train.steps=1", "train.warmup_steps=0", "model.tie_embeddings=false",
              f"checkpoint.init_from={tp2pp2_checkpoint}"]
    train(2, tmp_path / "pp2", "parallel.pipeline=2", "parallel.zero_stage=1", *common)
    train(1, tmp_path / "one", *common)
    train(1, tmp_path / "fresh", "train.steps=1", "train.warmup_steps=0", "model.tie_embeddings=false")
    pp2, one, fresh = (first_loss(tmp_path / d) for d in ("pp2", "one", "fresh"))
    assert abs(pp2 - one) <= 1e-5 * abs(one), (pp2, one)
    assert abs(one - fresh) > 1e-3, (one, fresh)
    assert [json.loads(line)["step"] for line in (tmp_path / "one/history.jsonl").read_text().splitlines()] == [1]


def test_export_is_checked_against_transformers(tp2pp2_checkpoint, tmp_path):
    out = run("-m", "dist_pretrain", "export", str(tp2pp2_checkpoint), "--output", str(tmp_path / "hf")).stdout
    assert "exported GPT2LMHeadModel (vocab 512)" in out and "top-1 agreement 1.0000" in out, out
    assert {"config.json", "model.safetensors", "generation_config.json"} <= set(os.listdir(tmp_path / "hf"))
    # a converter with megatron's interleaved QKV taken as GPT-2's [Q|K|V] must be caught, nothing written
    script = f"""
import torch
from dist_pretrain.interop import gpt2, layout
from dist_pretrain.interop.hf_export import ExportError, export
def not_interleaved(fused, heads):
    return fused.chunk(3)
gpt2.split_qkv = not_interleaved
if __name__ == "__main__":
    try:
        export("{tp2pp2_checkpoint}", "{tmp_path / 'wrong'}")
        raise SystemExit("not caught")
    except ExportError as err:
        print(err)
"""
    out = run("-c", script).stdout
    assert "disagrees with the checkpoint" in out and "nothing was written" in out, out
    assert not (tmp_path / "wrong").exists() and not (tmp_path / "wrong.tmp-export").exists()


@pytest.mark.parametrize("tied", [True, False])
def test_hf_import_export_round_trip_is_bit_identical(tmp_path, tied):
    from safetensors.torch import load_file
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=500, n_positions=32, tie_word_embeddings=tied,
                        activation_function="gelu_new", bos_token_id=None, eos_token_id=None)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "hf")
    out = run("-m", "dist_pretrain", "import", str(tmp_path / "hf"), "--output", str(tmp_path / "ours")).stdout
    assert "imported GPT2LMHeadModel (vocab 500, padded to 512)" in out, out
    assert "activation: gelu_tanh" in (tmp_path / "ours/config.yaml").read_text()
    run("-m", "dist_pretrain", "export", str(tmp_path / "ours"), "--output", str(tmp_path / "back"))
    a, b = load_file(tmp_path / "hf/model.safetensors"), load_file(tmp_path / "back/model.safetensors")
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_llama_import_export_round_trip_is_bit_identical(tmp_path):
    """GQA (4 query heads on 2 key/value heads), biases, untied head, rope_theta and eps not the defaults."""
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=96, vocab_size=500, max_position_embeddings=32, attention_bias=True,
                         mlp_bias=True, rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 5e5},
                         bos_token_id=None, eos_token_id=None, initializer_range=0.2)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "hf")
    out = run("-m", "dist_pretrain", "import", str(tmp_path / "hf"), "--output", str(tmp_path / "ours")).stdout
    assert "imported LlamaForCausalLM (vocab 500, padded to 512)" in out and "top-1 agreement 1.0000" in out, out
    text = (tmp_path / "ours/config.yaml").read_text()
    assert "activation: swiglu" in text and "num_query_groups: 2" in text and "rotary_base: 500000" in text, text
    run("-m", "dist_pretrain", "export", str(tmp_path / "ours"), "--output", str(tmp_path / "back"))
    a, b = load_file(tmp_path / "hf/model.safetensors"), load_file(tmp_path / "back/model.safetensors")
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("case", ["GPT-2-style tied", "Llama-style", "T5 v1.1"])
def test_oracle_one_step_at_tp2xpp2_matches_transformers(tmp_path, case):
    """Llama-style also proves the gated MLP's layout-independent init (TP2 x PP2 starts from the
    one-process export) and its checkpoint (saved at TP2 x PP2, exported at TP1). T5 v1.1: a padded
    span-corruption batch, the relative position bias split over TP ranks (encoder stage, decoder stage)."""
    from dist_pretrain.tools.oracle import run_case, table

    result = run_case(case, tmp_path)
    print("\n" + table({case: result}))
    assert result["loss_rel_dev"] <= 1e-5, result
    assert result["grad_norm"] > result["grad_clip"] and result["grad_norm_rel_dev"] <= 1e-5, result  # clipped
    assert max(result["weight_rel_dev"].values()) <= 1e-5, result["weight_rel_dev"]
    assert "top-1 agreement 1.0000" in result["export"]
