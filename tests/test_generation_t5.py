"""T5 generation: the decoder with its self-attention KV cache and its cross-attention keys / values
computed once gives the same tokens as recomputing the whole ``T5Model`` every step (greedy and
seeded sampling); a batch equals its prompts alone (encoder padding masked); the CLI writes
``token_ids`` without the decoder-start id.

The model is a tiny random T5 with a SentencePiece vocabulary of 600 pieces and 100 sentinels
trained here on Wikipedia text from gensim's wheel (the demo corpus), so prompts carry a task
prefix and sentinels as real T5 inputs do. A wide init makes the next-token distributions
peaked (no near-ties for fp32 noise to flip).
"""

import json
import os
import subprocess
import sys

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
PROMPTS = ["summarize: The cat sat on the mat and looked at the dog for a long time.",
           "I <extra_id_0> this <extra_id_1> book", "translate English to German: Hello"]
NEW = 12
T5_MODEL = {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "seq_length": 32, "decoder_seq_length": 16,
            "vocab_size": 600, "init_std": 0.2}


def run(*args):
    proc = subprocess.run([sys.executable, *args], env=ENV, capture_output=True, text=True, timeout=600,
                          check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc.stdout


@pytest.fixture(scope="module")
def t5_checkpoint(tmp_path_factory):
    """Our checkpoint directory of a random tiny T5, its ``spiece.model`` next to the weights."""
    root = tmp_path_factory.mktemp("t5gen")
    run("-c", f"""
import gzip, json, shutil
from pathlib import Path
from dist_pretrain.config import Config
from dist_pretrain.data.demo_corpus import iter_wiki_articles, wiki_dump_path
from dist_pretrain.data.train_tokenizer import main as train_tokenizer
from dist_pretrain.interop.hf_import import write_weights_checkpoint
from dist_pretrain.models.load import build_model, init_single_process
if __name__ == "__main__":
    root = Path("{root}")
    (root / "text").mkdir()
    with gzip.open(root / "text/wiki.json.gz", "wt") as f:
        for i, article in zip(range(150), iter_wiki_articles(wiki_dump_path())):
            f.write(json.dumps({{"text": article["text"][:3000]}}) + "\\n")
    train_tokenizer(["--kind", "sentencepiece", "--input", str(root / "text/*.json.gz"), "--vocab-size", "600",
                     "--sentinels", "100", "--output", str(root / "tok")])
    cfg = Config.model_validate({{"family": "t5", "model": {T5_MODEL!r}, "data": {{"synthetic": True}}}})
    init_single_process()
    write_weights_checkpoint(build_model(cfg, 640), cfg, root / "ours", {{}})
    shutil.copy(root / "tok/spiece.model", root / "ours/spiece.model")
""")
    return root / "ours"


def test_t5_cache_equals_recomputation_and_a_batch_equals_its_prompts_alone(t5_checkpoint, tmp_path):
    out = run("-c", f"""
import json
from dist_pretrain.inference import SamplingParams, Seq2SeqLM, generate, load_lm
from dist_pretrain.inference.cli import main as cli
if __name__ == "__main__":
    lm = load_lm("{t5_checkpoint}")
    assert isinstance(lm, Seq2SeqLM)
    greedy, sample = SamplingParams(greedy=True), SamplingParams(temperature=0.8, top_k=50, top_p=0.9, seed=3)
    prompts = {PROMPTS!r}
    runs = dict(cached=generate(lm, prompts, {NEW}, greedy, stop_at_eos=False),
                full=generate(lm, prompts, {NEW}, greedy, stop_at_eos=False, kv_cache=False),
                alone=[generate(lm, [p], {NEW}, greedy, stop_at_eos=False)[0] for p in prompts],
                sampled=generate(lm, prompts, {NEW}, sample, stop_at_eos=False),
                nocache=generate(lm, prompts, {NEW}, sample, stop_at_eos=False, kv_cache=False))
    cli(["{t5_checkpoint}", *[a for p in prompts for a in ("--prompt", p)], "--greedy", "--ignore-eos",
         "--max-new-tokens", "{NEW}", "--output", "{tmp_path}/out.jsonl"])
    print(json.dumps({{k: [c.token_ids for c in v] for k, v in runs.items()}}))
    print(json.dumps([lm.tokenizer.decode(ids) for ids in [c.token_ids for c in runs["cached"]]]))
""")
    got = json.loads(out.splitlines()[-2])
    assert got["full"] == got["cached"]  # the caches change nothing
    assert got["alone"] == got["cached"]  # encoder padding changes nothing
    assert got["sampled"] == got["nocache"]
    assert got["sampled"] != got["cached"]
    assert all(len(ids) == NEW and all(0 <= i < 600 for i in ids) for ids in got["cached"] + got["sampled"])
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == PROMPTS
    assert [r["token_ids"] for r in rows] == got["cached"]  # no decoder-start id in front
    assert [r["completion"] for r in rows] == json.loads(out.splitlines()[-1])
