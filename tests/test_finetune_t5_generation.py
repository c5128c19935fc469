"""T5 text-to-text fine-tuning: the greedy generation that validation runs gives, for every
validation example, the tokens of transformers' ``T5ForConditionalGeneration.generate(do_sample=False)``:
with KV caches at PP2 and TP2, and through the training schedule under ZeRO-3 (``LAYOUTS``).

What a user does, end to end: a HF T5 v1.1 (relative position bias, RMSNorm, gated GELU, no
biases, untied head) saved with its T5 SentencePiece tokenizer is imported
(``dist_pretrain.interop``); real pairs (WordNet ``define:`` and Wikipedia ``summarize:``, the
sources of ``dist-pretrain finetune-data``) are preprocessed with ``--format seq2seq`` and that
tokenizer, most of them cut to fit; ``launchers/torchrun.sh configs/t5/text2text.yaml`` fine-tunes
``init_from`` the import with its ``config.yaml`` model keys, and validates after step 1.

The weights stay the imported ones: a linear decay to ``train.min_lr=0`` over one step makes that
step's learning rate exactly 0 (and ``weight_decay=0``), which the test reads back from the run's
history. The model is random with a wide init (``initializer_factor=1.5``, attention and MLP
output projections x3), so next-token distributions are peaked (the import's logit check, 1e-3,
still passes with room) and the generations differ between examples; its EOS row is enlarged so
that some generations stop early and others run to ``task.max_new_tokens`` (both are asserted),
which exercises the stop at EOS and the cut after it.

The fine-tuned checkpoint saved at PP2 then goes through ``dist-pretrain export`` (a text-to-text
run, its tokenizer from the seq2seq shards' manifest) and the exported ``T5ForConditionalGeneration``
generates the same tokens.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from launch import run_group, run_python

ROOT = Path(__file__).resolve().parents[1]
SEQ, DEC, NEW = 32, 16, 12  # encoder positions, decoder positions, task.max_new_tokens


@pytest.fixture(scope="module")
def t5_text2text(tmp_path_factory):
    """The imported checkpoint (``ours``), the seq2seq data (``data``) and ``reference.json``:
    transformers' greedy ids and text for each validation example, from its own tokenization of
    the record (``truncation=True, max_length=SEQ``), which must equal our shards' encoder input."""
    root = tmp_path_factory.mktemp("t5ft")
    run_python("-c", f"""
import gzip, json
from pathlib import Path
import torch
from transformers import T5Config, T5ForConditionalGeneration, T5TokenizerFast
from dist_pretrain.data.demo_corpus import iter_wiki_articles, wiki_dump_path
from dist_pretrain.data.finetune_corpus import write_jsonl
from dist_pretrain.data.preprocess import main as preprocess
from dist_pretrain.data.text2text_corpus import define_pairs, summarize_pairs
from dist_pretrain.data.train_tokenizer import main as train_tokenizer
from dist_pretrain.interop.hf_import import import_hf
from dist_pretrain.tasks.labelled import split_examples
if __name__ == "__main__":
    root = Path("{root}")
    (root / "c4/en").mkdir(parents=True)  # the demo corpus's layout, 80 of its Wikipedia articles
    with gzip.open(root / "c4/en/c4-train.00000-of-01024.json.gz", "wt") as f:
        for _, article in zip(range(80), iter_wiki_articles(wiki_dump_path())):
            f.write(json.dumps({{"text": article["text"]}}) + "\\n")
    train_tokenizer(["--kind", "sentencepiece", "--input", str(root / "c4/en/*.json.gz"), "--vocab-size", "640",
                     "--sentinels", "100", "--max-bytes", "300K", "--output", str(root / "spm")])
    tok = T5TokenizerFast.from_pretrained(root / "spm", extra_ids=0)  # the sentinels are in spiece.model
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=len(tok), d_model=64, d_kv=16, d_ff=96, num_layers=2, num_heads=4,
                   feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
                   initializer_factor=1.5, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                   decoder_start_token_id=tok.pad_token_id)
    model = T5ForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # larger attention / MLP outputs next to the embeddings: varied generations
        for name, p in model.named_parameters():
            if name.endswith((".o.weight", ".wo.weight")):
                p *= 3.0
        model.lm_head.weight[tok.eos_token_id] *= 1.5  # some generations stop early
    model.save_pretrained(root / "hf")
    tok.save_pretrained(root / "hf")
    import_hf(root / "hf", root / "ours")
    define, summarize = define_pairs(limit=400), summarize_pairs(str(root))
    write_jsonl(str(root / "pairs/train.jsonl"), define[:4])
    write_jsonl(str(root / "pairs/validation.jsonl"), define[100::40][:6] + summarize[:4])
    preprocess(["--format", "seq2seq", "--input", str(root / "pairs/*.jsonl"), "--tokenizer", str(root / "ours"),
                "--seq-len", "{SEQ}", "--target-len", "{DEC}", "--output", str(root / "data"), "--quiet"])
    examples, records = split_examples(str(root / "data"), "valid")
    reference = []
    for example, record in zip(examples, records):
        enc = tok(record["input"], truncation=True, max_length={SEQ}, return_tensors="pt")
        out = model.generate(**enc, do_sample=False, max_new_tokens={NEW})[0, 1:].tolist()  # no decoder start
        stop = tok.eos_token_id in out
        ids = out[:out.index(tok.eos_token_id)] if stop else out
        reference.append({{"input_ids": enc["input_ids"][0].tolist(), "ours": example["input"].tolist(),
                           "token_ids": ids, "stopped": stop, "text": tok.decode(ids)}})
    (root / "reference.json").write_text(json.dumps({{"eos": tok.eos_token_id, "rows": reference}}))
""")
    return root


LAYOUTS = {  # (tensor, pipeline, ZeRO stage): one process under ZeRO-3 generates through the training
    # schedule (one pass per position); the others with the encoder once and the decoder's KV caches,
    # at PP2 across the stages (the encoder output sent once) and at TP2 with heads and vocab split
    "one-process-zero3-schedule": (1, 1, 3), "pp2-kv-cache": (1, 2, 1), "tp2-kv-cache": (2, 1, 1)}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_text2text_validation_generation_equals_transformers_generate(t5_text2text, layout):
    tensor, pipeline, zero = LAYOUTS[layout]
    root = t5_text2text
    ref = json.loads((root / "reference.json").read_text())
    rows_ref = ref["rows"]
    for r in rows_ref:  # the same encoder input: our shard's ids + EOS, cut like HF's truncation
        assert r["input_ids"] == r["ours"] + [ref["eos"]], r
    assert sum(len(r["input_ids"]) == SEQ for r in rows_ref) >= 4  # the summarize inputs were cut
    assert any(r["stopped"] and len(r["token_ids"]) >= 3 for r in rows_ref)  # stops early, mid-way
    assert any(not r["stopped"] and len(r["token_ids"]) == NEW for r in rows_ref)  # runs to max_new_tokens
    assert len({tuple(r["token_ids"]) for r in rows_ref}) >= len(rows_ref) - 2  # not one repeated output

    model = yaml.safe_load((root / "ours" / "config.yaml").read_text())["model"]
    keys = [f"model.{k}={v}" for k, v in model.items() if k not in ("seq_length", "vocab_size")]
    run_dir = root / f"run-{layout}"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = run_group(["bash", str(ROOT / "launchers/torchrun.sh"), "configs/t5/text2text.yaml", f"run_dir={run_dir}",
                      f"data.path={root / 'data'}", f"checkpoint.init_from={root / 'ours'}", *keys,
                      f"model.seq_length={SEQ}", f"model.decoder_seq_length={DEC}", f"task.max_new_tokens={NEW}",
                      "train.epochs=null", "train.steps=1", "train.warmup_steps=0", "train.decay=linear",
                      "train.lr=1e-3", "train.min_lr=0.0", "train.weight_decay=0.0", "train.eval_interval=1",
                      "train.micro_batch_size=2", "train.global_batch_size=4", "train.log_interval=1",
                      "train.threads=1", "train.precision=fp32", "monitor.peak_tflops=1", f"parallel.pipeline={pipeline}",
                      f"parallel.tensor={tensor}", f"parallel.zero_stage={zero}", "--nproc", str(tensor * pipeline)],
                     400, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1] and history[0]["train/lr"] == 0.0  # the weights did not move
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(len(rows_ref))) and {r["split"] for r in rows} == {"valid"}
    for row, theirs in zip(rows, rows_ref):
        assert row["token_ids"] == theirs["token_ids"], (row["input"], row["token_ids"], theirs["token_ids"])
        assert row["prediction"] == theirs["text"], (row["prediction"], theirs["text"])
    if pipeline == 2:  # the fine-tuned checkpoint (saved at PP2) exports to HF T5 and generates the same
        out = root / "exported"
        proc = run_group([sys.executable, "-m", "dist_pretrain", "export", str(run_dir), "--output", str(out)], 300,
                         cwd=ROOT, env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        check = subprocess.run([sys.executable, "-c", f"""
import json, torch
from transformers import AutoModelForSeq2SeqLM
model = AutoModelForSeq2SeqLM.from_pretrained({str(out)!r}).eval()
rows = json.loads(open({str(root / 'reference.json')!r}).read())["rows"]
outs = [model.generate(torch.tensor([r["input_ids"]]), do_sample=False, max_new_tokens={NEW})[0, 1:].tolist()
        for r in rows]
print(json.dumps([type(model).__name__, outs]))
"""], capture_output=True, text=True, timeout=300)
        assert check.returncode == 0, check.stderr[-3000:]
        name, outs = json.loads(check.stdout.strip().splitlines()[-1])
        assert name == "T5ForConditionalGeneration"
        for got, theirs in zip(outs, rows_ref):
            assert got[:len(theirs["token_ids"])] == theirs["token_ids"], (got, theirs["token_ids"])
