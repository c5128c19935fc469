"""T5 generation: greedy output token-identical to transformers'
``T5ForConditionalGeneration.generate(do_sample=False)`` on the exported model (T5 v1.1: relative
position bias, RMSNorm, gated GELU, untied head); the decoder with its self-attention KV cache
and its cross-attention keys / values computed once gives the same tokens as recomputing the
whole ``T5Model`` every step (greedy and seeded sampling), for v1.1 and for the learned-position
T5 of the demo; a batch equals its prompts alone (encoder padding masked); the CLI writes
``token_ids`` without the decoder-start id.

The models are tiny random T5s with a SentencePiece vocabulary of 640 pieces (no padded rows)
and 100 sentinels trained here on Wikipedia text from gensim's wheel (the demo corpus), so
prompts carry a task prefix and sentinels as real T5 inputs do. A wide init makes the
next-token distributions peaked (no near-ties for fp32 noise to flip).
"""

import json

import pytest
from launch import run_python
import torch

PROMPTS = ["summarize: The cat sat on the mat.",  # each fits the 32 encoder positions (no truncation)
           "I <extra_id_0> this <extra_id_1> book", "translate English to German: Hello"]
NEW = 12
T5_MODEL = {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "seq_length": 32, "decoder_seq_length": 16,
            "vocab_size": 640, "init_std": 0.2}
V11 = {"position_embedding": "relative", "softmax_scale": 1.0, "normalization": "rmsnorm", "bias": False,
       "activation": "geglu_tanh", "tie_embeddings": False, "ffn_hidden_size": 96, "layernorm_epsilon": 1e-6}


@pytest.fixture(scope="module")
def t5_checkpoint(tmp_path_factory):
    """Our checkpoint of a random tiny T5 v1.1 (``ours``, its export in ``hf``) and of a learned-position
    T5 (``learned``), each with its ``spiece.model`` next to the weights."""
    root = tmp_path_factory.mktemp("t5gen")
    run_python("-c", f"""
import gzip, json, shutil
from pathlib import Path
from dist_pretrain.config import Config
from dist_pretrain.data.demo_corpus import iter_wiki_articles, wiki_dump_path
from dist_pretrain.data.train_tokenizer import main as train_tokenizer
from dist_pretrain.interop.hf_export import export_model, hf_tokenizer
from dist_pretrain.interop.hf_import import write_weights_checkpoint
from dist_pretrain.models.load import build_model, init_single_process
if __name__ == "__main__":
    root = Path("{root}")
    (root / "text").mkdir()
    with gzip.open(root / "text/wiki.json.gz", "wt") as f:
        for i, article in zip(range(150), iter_wiki_articles(wiki_dump_path())):
            f.write(json.dumps({{"text": article["text"][:3000]}}) + "\\n")
    train_tokenizer(["--kind", "sentencepiece", "--input", str(root / "text/*.json.gz"), "--vocab-size", "640",
                     "--sentinels", "100", "--output", str(root / "tok")])
    init_single_process()
    for name, model in (("ours", {{**{T5_MODEL!r}, **{V11!r}}}), ("learned", {T5_MODEL!r})):
        cfg = Config.model_validate({{"family": "t5", "model": model, "data": {{"synthetic": True}}}})
        chunks = build_model(cfg, 640)
        write_weights_checkpoint(chunks, cfg, root / name, {{}})
        shutil.copy(root / "tok/spiece.model", root / name / "spiece.model")
        if name == "ours":
            export_model(cfg, chunks, root / "hf", tokenizer=hf_tokenizer(cfg, str(root / "tok/spiece.model"), root))
""")
    return root


def hf_greedy(hf_dir, prompts, new=NEW):
    """transformers' greedy ids (without the decoder-start id, up to and with EOS) for the prompts,
    right-padded with an attention mask; the inputs end with EOS, as HF's T5 tokenizer makes them."""
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(hf_dir)
    enc = tok(prompts, padding=True, return_tensors="pt")
    model = T5ForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32).eval()
    out = model.generate(**enc, do_sample=False, max_new_tokens=new)
    rows = []
    for row in out[:, 1:].tolist():  # drop the decoder-start id
        rows.append(row[:row.index(tok.eos_token_id) + 1] if tok.eos_token_id in row else row)
    return rows


def test_t5_greedy_equals_transformers_cache_equals_recomputation_batch_equals_alone(t5_checkpoint, tmp_path):
    out = run_python("-c", f"""
import json
from dist_pretrain.inference import SamplingParams, Seq2SeqLM, generate, load_lm
from dist_pretrain.inference.cli import main as cli
if __name__ == "__main__":
    greedy, sample = SamplingParams(greedy=True), SamplingParams(temperature=0.8, top_k=50, top_p=0.9, seed=3)
    prompts, got = {PROMPTS!r}, {{}}
    for name in ("ours", "learned"):
        lm = load_lm("{t5_checkpoint}/" + name)
        assert isinstance(lm, Seq2SeqLM)
        runs = dict(cached=generate(lm, prompts, {NEW}, greedy, stop_at_eos=False),
                    full=generate(lm, prompts, {NEW}, greedy, stop_at_eos=False, kv_cache=False),
                    alone=[generate(lm, [p], {NEW}, greedy, stop_at_eos=False)[0] for p in prompts],
                    eos=generate(lm, prompts, {NEW}, greedy),
                    sampled=generate(lm, prompts, {NEW}, sample, stop_at_eos=False),
                    nocache=generate(lm, prompts, {NEW}, sample, stop_at_eos=False, kv_cache=False))
        got[name] = {{k: [c.token_ids for c in v] for k, v in runs.items()}}
    got["text"] = [c.completion for c in runs["cached"]]
    cli(["{t5_checkpoint}/ours", *[a for p in prompts for a in ("--prompt", p)], "--greedy", "--ignore-eos",
         "--max-new-tokens", "{NEW}", "--output", "{tmp_path}/out.jsonl"])
    print(json.dumps(got))
""")
    got = json.loads(out.splitlines()[-1])
    theirs = hf_greedy(t5_checkpoint / "hf", PROMPTS)
    assert got["ours"]["eos"] == theirs, (got["ours"]["eos"], theirs)
    for name in ("ours", "learned"):
        runs = got[name]
        assert runs["full"] == runs["cached"], name  # the caches change nothing
        assert runs["alone"] == runs["cached"], name  # encoder padding changes nothing
        assert runs["sampled"] == runs["nocache"], name
        assert runs["sampled"] != runs["cached"], name
        assert all(len(ids) == NEW and all(0 <= i < 640 for i in ids) for ids in runs["cached"] + runs["sampled"])
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == PROMPTS
    assert [r["token_ids"] for r in rows] == got["ours"]["cached"]  # no decoder-start id in front
    assert len(got["text"]) == 3
