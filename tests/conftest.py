"""Fixtures shared by several test files."""

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
