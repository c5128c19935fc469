"""Generation: greedy decoding token-for-token equal to transformers' ``generate`` on the same
weights, the KV cache equal to full recomputation, a batch equal to its prompts alone, the CLI
(streaming, stop strings) and TP=2 under torchrun with JSONL rows equal to one process; sampling
filters on hand-made distributions, padded vocab ids never chosen.

The model is a random GPT-2 (2 x 64, the real GPT-2 vocabulary, so the tokenizer decodes real
text) built with transformers and brought in with ``dist-pretrain import``: that pads the
vocab to 50,304 with zero rows, whose logit 0 would win against the model's negative logits
if generation ever looked at them. Processes that start a process group run as subprocesses.
"""

import json

import pytest
from launch import run_python
import torch

from dist_pretrain.inference.sampling import (
    SamplingParams,
    filter_top_k,
    filter_top_p,
    mask_padded_vocab,
    next_tokens,
)

PROMPTS = ["It was the best of times, it was the worst of times, it was", "Hello", "The capital of France is"]
NEW = 12


@pytest.fixture(scope="module")
def imported(random_gpt2):
    return random_gpt2


def hf_greedy(hf_dir, prompts, new=NEW):
    """transformers' greedy ids (generated part) for left-padded prompts with an attention mask."""
    from transformers import GPT2LMHeadModel

    from dist_pretrain.data.tokenizer import load_tokenizer

    tok = load_tokenizer("gpt2")
    enc = tok.encode_batch(prompts)
    width = max(map(len, enc))
    ids = torch.tensor([[tok.eos_id] * (width - len(e)) + e for e in enc])
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc])
    model = GPT2LMHeadModel.from_pretrained(hf_dir, dtype=torch.float32).eval()
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new,
                         pad_token_id=tok.eos_id, eos_token_id=tok.eos_id)
    return [row[width:] for row in out.tolist()]


def test_greedy_equals_transformers_and_the_cache_equals_recomputation(imported):
    hf_dir, ours = imported
    out = run_python("-c", f"""
import json
from dist_pretrain.inference import SamplingParams, generate, load_causal_lm
if __name__ == "__main__":
    lm = load_causal_lm("{ours}")
    greedy = SamplingParams(greedy=True)
    prompts = {PROMPTS!r}
    cached = generate(lm, prompts, {NEW}, greedy)
    full = generate(lm, prompts, {NEW}, greedy, kv_cache=False)
    alone = [generate(lm, [p], {NEW}, greedy)[0] for p in prompts]
    sampled = generate(lm, prompts, {NEW}, SamplingParams(temperature=0.8, top_k=40, top_p=0.9, seed=7))
    again = generate(lm, prompts, {NEW}, SamplingParams(temperature=0.8, top_k=40, top_p=0.9, seed=7))
    nocache = generate(lm, prompts, {NEW}, SamplingParams(temperature=0.8, top_k=40, top_p=0.9, seed=7),
                       kv_cache=False)
    print(json.dumps({{k: [c.token_ids for c in v] for k, v in dict(cached=cached, full=full, alone=alone,
                      sampled=sampled, again=again, nocache=nocache).items()}}))
    print(json.dumps([c.completion for c in cached]))
""")
    got = json.loads(out.splitlines()[-2])
    theirs = hf_greedy(hf_dir, PROMPTS)
    assert got["cached"] == theirs, (got["cached"], theirs)
    assert got["full"] == got["cached"]  # the KV cache changes nothing
    assert got["alone"] == got["cached"]  # left padding changes nothing
    assert all(len(ids) == NEW for ids in got["cached"])
    assert got["sampled"] == got["again"] == got["nocache"]  # seeded, and the cache changes nothing
    assert got["sampled"] != got["cached"]
    assert all(0 <= i < 50257 for ids in got["cached"] + got["sampled"] for i in ids)
    assert all(json.loads(out.splitlines()[-1]))


def test_cli_streams_one_prompt_and_stops_at_a_stop_string(imported):
    hf_dir, ours = imported
    theirs = hf_greedy(hf_dir, PROMPTS[:1])[0]
    from dist_pretrain.data.tokenizer import load_tokenizer

    tok = load_tokenizer("gpt2")
    stop = tok.decode(theirs[3:5])  # a string the prompt's greedy text contains
    printed = run_python("-m", "dist_pretrain", "generate", str(ours), "--prompt", PROMPTS[0], "--greedy",
                  "--max-new-tokens", str(NEW), "--stop", stop)
    expected = tok.decode(theirs).split(stop)[0]
    assert printed == PROMPTS[0] + expected + "\n", (printed, expected)


def test_tensor_parallel_generates_the_same_text_as_one_process(imported, tmp_path):
    """TP=2 under torchrun (PP=2 is the same code path plus send / recv; run by hand, see README)."""
    hf_dir, ours = imported
    out = run_python("-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "dist_pretrain",
              "generate", str(ours), *[a for p in PROMPTS for a in ("--prompt", p)], "--greedy", "--max-new-tokens",
              str(NEW), "--tensor", "2", "--output", str(tmp_path / "out.jsonl"))
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    theirs = hf_greedy(hf_dir, PROMPTS)
    assert [r["prompt"] for r in rows] == PROMPTS
    assert [r["token_ids"] for r in rows] == theirs
    from dist_pretrain.data.tokenizer import load_tokenizer

    assert [r["completion"] for r in rows] == [load_tokenizer("gpt2").decode(ids) for ids in theirs]
    assert out.count("--- [1]") == 1  # only rank 0 prints


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [5.0, 5.0, 1.0, 4.0]])
    kept = filter_top_k(logits, 2).isfinite()
    assert kept.tolist() == [[False, True, True, False], [True, True, False, False]]
    assert filter_top_k(logits, 0).isfinite().all()


def test_top_p_keeps_the_smallest_set_reaching_p_with_the_boundary_token():
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])  # sorted: 0.5 (id 1), 0.3 (id 3), 0.15 (id 0), 0.05 (id 2)
    logits = probs.log()
    kept = {p: set(torch.nonzero(filter_top_p(logits, p).isfinite()[0]).flatten().tolist())
            for p in (0.3, 0.7, 0.9, 0.99, 1.0)}
    assert kept == {0.3: {1}, 0.7: {1, 3}, 0.9: {0, 1, 3}, 0.99: {0, 1, 2, 3}, 1.0: {0, 1, 2, 3}}
    # sampling follows the renormalised nucleus: ids 1 and 3 at 0.5/0.8 and 0.3/0.8
    g = torch.Generator().manual_seed(0)
    draws = next_tokens(logits.expand(20000, 4), 4, SamplingParams(top_p=0.7), g)
    assert set(draws.tolist()) == {1, 3}
    assert abs((draws == 1).float().mean().item() - 0.625) < 0.02


def test_padded_vocab_ids_are_never_chosen():
    logits = torch.randn(64, 128)
    logits[:, 100:] = 50.0  # padded rows that would win every time
    assert torch.isinf(mask_padded_vocab(logits, 100)[:, 100:]).all()
    g = torch.Generator().manual_seed(1)
    for params in (SamplingParams(greedy=True), SamplingParams(), SamplingParams(temperature=5.0),
                   SamplingParams(top_k=200), SamplingParams(top_p=0.999)):
        assert next_tokens(logits, 100, params, g).max().item() < 100, params
    with pytest.raises(ValueError, match="top_p must be in"):
        SamplingParams(top_p=0.0)
