"""Fixtures shared by several test files."""

import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="session")
def real_lm_shards(tmp_path_factory):
    """Real English (the demo corpus: Wikipedia articles in C4 layout) tokenized with a
    1,000-token byte-level BPE trained on it, packed into 32-token samples: 132 train shards
    and 8 validation shards of 256 samples. Small enough for tiny models, read through the
    real WebDataset stream and loader workers (about 5 s to build)."""
    root = tmp_path_factory.mktemp("real_lm")
    dp = [sys.executable, "-m", "dist_pretrain"]

    def run(*args):
        subprocess.run(dp + list(args), check=True, capture_output=True)

    run("demo-corpus", "--output", str(root))
    run("tokenizer", "train", "--kind", "bpe", "--input", str(root / "c4/en/c4-train.*.json.gz"),
        "--vocab-size", "1000", "--max-bytes", "1M", "--output", str(root / "bpe"))
    run("preprocess", "--input", str(root / "c4/en/*.json.gz"), "--tokenizer", str(root / "bpe/tokenizer.json"),
        "--seq-len", "32", "--samples-per-shard", "256", "--output", str(root / "lm"), "--quiet")
    return root / "lm"


@pytest.fixture(scope="session")
def random_gpt2(tmp_path_factory):
    """(HF directory, our imported checkpoint) of one random GPT-2 (2 x 64) with the real GPT-2
    tokenizer (generation and evaluation tests). A wide init makes the next-token distributions
    peaked: no near-ties for fp32 noise to flip."""
    root = tmp_path_factory.mktemp("gpt2")
    script = f"""
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from dist_pretrain.data.tokenizer import load_tokenizer
from dist_pretrain.interop.hf_import import import_hf
if __name__ == "__main__":
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=50257, n_positions=64, initializer_range=0.2,
                     activation_function="gelu_new", bos_token_id=50256, eos_token_id=50256)
    GPT2LMHeadModel(cfg).save_pretrained("{root}/hf")
    load_tokenizer("gpt2").tokenizer.save("{root}/hf/tokenizer.json")
    import_hf("{root}/hf", "{root}/ours")
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True, timeout=600)
    return root / "hf", root / "ours"
