"""BERT masked LM / NSP and T5 span corruption (dist_pretrain.objectives).

Masking statistics use real bert-base-uncased ids of the demo corpus (Wikipedia text in
C4 layout), cut into docs-format samples the way ``preprocess --format docs`` does.
"""
from __future__ import annotations

import glob
import gzip
import json

import numpy as np
import pytest
import torch

from dist_pretrain.data.demo_corpus import build_demo_corpus
from dist_pretrain.data.preprocess import segment_document
from dist_pretrain.data.sentences import split_sentences
from dist_pretrain.data.examples import stack
from dist_pretrain.data.tokenizer import load_tokenizer
from dist_pretrain.objectives import (MLMConfig, SpanConfig, bert_example,
                                      corrupt, random_spans_noise_mask, t5_example,
                                      t5_lengths, t5_raw_length, truncate_seq_pair,
                                      wordpiece_continuation_mask)

SEED = 1234
SEQ_LEN = 128


def _rng(*key) -> np.random.Generator:
    """Per-sample generator, as the data path seeds it: (run seed, global sample index)."""
    return np.random.default_rng([SEED, *key])


@pytest.fixture(scope="module")
def bert():
    return load_tokenizer("bert")


@pytest.fixture(scope="module")
def samples(bert, tmp_path_factory):
    """Docs-format samples (tokens, sentences) of the whole demo corpus, segments of at
    most SEQ_LEN - 2 tokens ([CLS] segment [SEP] fits without truncation)."""
    c4 = build_demo_corpus(str(tmp_path_factory.mktemp("corpus")))
    texts = [json.loads(line)["text"] for f in sorted(glob.glob(f"{c4}/*.json.gz"))
             for line in gzip.open(f, "rt", encoding="utf-8")]
    sents = [split_sentences(t) for t in texts]
    ids = iter(bert.encode_batch([s for doc in sents for s in doc]))
    out = []
    for doc in sents:
        doc_ids = [next(ids) for _ in doc]
        for seg in segment_document(doc_ids, SEQ_LEN - 2):
            out.append((np.array([t for s in seg for t in s], np.int32),
                        np.array([len(s) for s in seg], np.int32)))
    return out


def _original(ex: dict) -> np.ndarray:
    """The unmasked sequence: labels where a token was chosen, the input elsewhere."""
    return np.where(ex["loss_mask"] > 0, ex["labels"], ex["tokens"])


# --------------------------------------------------------------------------- BERT MLM


def test_mlm_masking_statistics(samples, bert):
    sp, vocab = bert.special_ids, bert.vocab_size
    specials = np.array(sorted(sp.values()))
    n_cand = n_sel = n_mask = n_same = n_rand = 0
    for i, (toks, sents) in enumerate(samples):
        ex = bert_example(toks, sents, SEQ_LEN, sp, vocab, _rng(i))
        assert set(ex) == {"tokens", "token_types", "padding_mask", "labels", "loss_mask", "nsp_label"}
        assert all(ex[k].dtype == np.int64 and ex[k].shape == (SEQ_LEN,)
                   for k in ("tokens", "token_types", "padding_mask", "labels"))
        assert ex["loss_mask"].dtype == np.float32 and ex["nsp_label"] == 0
        n = len(toks) + 2
        want = np.full(SEQ_LEN, sp["pad"])
        want[:n] = np.concatenate([[sp["cls"]], toks, [sp["sep"]]])
        orig = _original(ex)
        np.testing.assert_array_equal(orig, want)            # [CLS] segment [SEP] [PAD]...
        np.testing.assert_array_equal(ex["padding_mask"], np.arange(SEQ_LEN) < n)
        assert not ex["token_types"].any()

        sel = ex["loss_mask"] == 1
        cand = np.zeros(SEQ_LEN, bool)
        cand[1:n - 1] = ~np.isin(toks, [sp[r] for r in ("pad", "cls", "sep", "mask")])
        assert not (sel & ~cand).any()                       # specials and padding never chosen
        assert sel.sum() == max(1, round(0.15 * cand.sum()))
        np.testing.assert_array_equal(ex["labels"][sel], want[sel])
        assert (ex["labels"][~sel] == sp["pad"]).all()
        np.testing.assert_array_equal(ex["tokens"][~sel], want[~sel])   # loss only where changed-or-kept

        got, orig_sel = ex["tokens"][sel], want[sel]
        is_mask, is_same = got == sp["mask"], got == orig_sel
        rand = got[~is_mask & ~is_same]
        assert not np.isin(rand, specials).any() and (rand >= 0).all() and (rand < vocab).all()
        n_cand += int(cand.sum())
        n_sel += int(sel.sum())
        n_mask += int(is_mask.sum())
        n_same += int(is_same.sum())
        n_rand += len(rand)

    assert n_cand >= 100_000, n_cand
    assert abs(n_sel / n_cand - 0.15) < 0.005, n_sel / n_cand
    for got, want in ((n_mask, 0.8), (n_rand, 0.1), (n_same, 0.1)):
        assert abs(got / n_sel - want) < 0.005, (got / n_sel, want, n_sel)


def test_mlm_prediction_count():
    sp = {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}
    for n, want in ((100, 15), (10, 2), (5, 1), (3, 1), (1, 1), (0, 0)):
        toks = np.arange(1000, 1000 + n)
        ex = bert_example(toks, [n] if n else [], 16 + n, sp, 30522, _rng(n))
        assert ex["loss_mask"].sum() == want, n
    toks = np.arange(1000, 1100)
    ex = bert_example(toks, [100], 128, sp, 30522, _rng(0), MLMConfig(max_predictions=4))
    assert ex["loss_mask"].sum() == 4
    # a segment holding special ids: [UNK] may be chosen, [MASK]/[SEP]/[PAD] never
    toks = np.array([100, 103, 102, 0] * 10 + [1000])
    for s in range(50):
        ex = bert_example(toks, [len(toks)], 64, sp, 30522, _rng(s), MLMConfig(mask_prob=0.5))
        assert set(_original(ex)[ex["loss_mask"] == 1].tolist()) <= {100, 1000}
    # a segment longer than seq_len - 2 keeps its head
    ex = bert_example(np.arange(1000, 1300), [300], 64, sp, 30522, _rng(1))
    np.testing.assert_array_equal(_original(ex), np.r_[101, np.arange(1000, 1062), 102])


def test_truncate_seq_pair_matches_bert_loop():
    rng = _rng(7)
    for _ in range(2000):
        la, lb, m = (int(x) for x in rng.integers(0, 60, 3))
        a, b = list(range(la)), list(range(100, 100 + lb))
        while len(a) + len(b) > m:                          # BERT's loop
            (a if len(a) > len(b) else b).pop()
        ta, tb = truncate_seq_pair(np.arange(la), np.arange(100, 100 + lb), m, rng)
        assert (len(ta), len(tb)) == (len(a), len(b)), (la, lb, m)
        for t, lo in ((ta, 0), (tb, 100)):                  # contiguous runs of the originals
            assert len(t) == 0 or np.array_equal(t, np.arange(t[0], t[0] + len(t)))
    # both ends are cut, about equally often
    fronts = [truncate_seq_pair(np.arange(100), np.arange(0), 50, _rng(1, s))[0][0]
              for s in range(400)]
    assert 23 < np.mean(fronts) < 27


def test_nsp_pairs():
    sp = {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}
    seq_len, n_random, n_ex = 64, 0, 4000
    rng = _rng(99)
    for i in range(n_ex):
        lens = rng.integers(1, 30, rng.integers(1, 6))
        toks = 1000 + np.arange(lens.sum())                 # this sample: ids 1000...
        o_lens = rng.integers(1, 30, rng.integers(1, 6))
        other = (20000 + np.arange(o_lens.sum()), o_lens)   # another sample: ids 20000...
        ex = bert_example(toks, lens, seq_len, sp, 30522, _rng(i), MLMConfig(nsp=True), other=other)
        orig, types, n = _original(ex), ex["token_types"], int(ex["padding_mask"].sum())
        seps = np.flatnonzero(orig == sp["sep"])
        assert orig[0] == sp["cls"] and len(seps) == 2 and seps[1] == n - 1
        assert not ex["padding_mask"][n:].any() and (orig[n:] == sp["pad"]).all()
        assert (types[:seps[0] + 1] == 0).all() and (types[seps[0] + 1:n] == 1).all()
        assert not types[n:].any()
        assert ex["loss_mask"][[0, seps[0], seps[1]]].sum() == 0
        a, b = orig[1:seps[0]], orig[seps[0] + 1:n - 1]
        assert len(a) and n <= seq_len
        assert np.array_equal(a, np.arange(a[0], a[0] + len(a))) and a[0] < 20000
        if len(b):
            assert np.array_equal(b, np.arange(b[0], b[0] + len(b)))
        label = int(ex["nsp_label"])
        n_random += label
        if label == 0:                                      # B continues A in the same sample
            assert len(b) and b[0] < 20000 and b[0] > a[-1]
            if len(toks) + 3 <= seq_len:                    # no truncation: A | B = the sample
                np.testing.assert_array_equal(np.r_[a, b], toks)
                if len(lens) > 1:                           # split at a sentence boundary
                    assert len(a) in np.cumsum(lens)[:-1]
        else:
            assert len(b) and b[0] >= 20000
    assert abs(n_random / n_ex - 0.5) < 0.03, n_random / n_ex
    # one sentence: split in the middle of its tokens
    ex = bert_example(np.arange(1000, 1010), [10], 64, sp, 30522, _rng(3),
                      MLMConfig(nsp=True, mask_prob=0.0, max_predictions=0), other=(np.arange(20000, 20010), [10]))
    orig = _original(ex)
    assert orig[:7].tolist() == [101, 1000, 1001, 1002, 1003, 1004, 102]
    with pytest.raises(ValueError, match="other"):
        bert_example(np.arange(1000, 1010), [10], 64, sp, 30522, _rng(3), MLMConfig(nsp=True))


def test_wordpiece_continuation_mask(bert):
    sub = wordpiece_continuation_mask(bert)
    vocab = bert.tokenizer.get_vocab()
    assert sub.dtype == bool and len(sub) == bert.vocab_size == 30522
    assert sub[vocab["##s"]] and sub[vocab["##ing"]]
    assert not sub[vocab["the"]] and not sub[vocab["[CLS]"]] and not sub[vocab["#"]]
    assert sub.sum() == sum(t.startswith("##") and len(t) > 2 for t in vocab)


def test_whole_word_masking(samples, bert):
    sp, sub = bert.special_ids, wordpiece_continuation_mask(bert)
    cfg = MLMConfig(whole_word=True)
    n_cand = n_sel = multi = 0
    for i, (toks, sents) in enumerate(samples[:1500]):
        ex = bert_example(toks, sents, SEQ_LEN, sp, bert.vocab_size, _rng(i), cfg, is_subword=sub)
        orig, sel = _original(ex), ex["loss_mask"] == 1
        n = int(ex["padding_mask"].sum())
        cand = np.zeros(SEQ_LEN, bool)
        cand[1:n - 1] = True
        assert not (sel & ~cand).any()
        # piece i continues the word of piece i - 1: chosen together or not at all
        cont = np.zeros(SEQ_LEN, bool)
        cont[2:n - 1] = sub[orig[2:n - 1]]
        idx = np.flatnonzero(cont)
        np.testing.assert_array_equal(sel[idx], sel[idx - 1])
        both = idx[sel[idx]]
        # one 80/10/10 decision per word: all of a word's pieces are [MASK], or none is
        is_mask = ex["tokens"] == sp["mask"]
        np.testing.assert_array_equal(is_mask[both], is_mask[both - 1])
        assert sel.sum() <= max(1, round(0.15 * cand.sum())) or not both.size
        n_cand += int(cand.sum())
        n_sel += int(sel.sum())
        multi += len(both)
    assert multi > 1000                                     # multi-piece words were chosen
    assert abs(n_sel / n_cand - 0.15) < 0.01, n_sel / n_cand


def test_bert_deterministic_and_stacked(samples, bert):
    sp, v = bert.special_ids, bert.vocab_size
    cfg = MLMConfig(nsp=True)
    picks = list(range(0, 40))

    def make(i):
        return bert_example(*samples[i], SEQ_LEN, sp, v, _rng(i), cfg, other=samples[i + 1000])

    first = [make(i) for i in picks]
    again = [make(i) for i in reversed(picks)][::-1]       # order of generation is irrelevant
    for x, y in zip(first, again):
        assert all(np.array_equal(x[k], y[k]) for k in x)
    other_seed = bert_example(*samples[0], SEQ_LEN, sp, v, _rng(10**6), cfg, other=samples[1000])
    assert not np.array_equal(other_seed["tokens"], first[0]["tokens"])
    batch = stack(first[:8])  # what training batches them with
    for k in ("tokens", "token_types", "padding_mask", "labels"):
        assert batch[k].dtype == torch.long and batch[k].shape == (8, SEQ_LEN)
    assert batch["loss_mask"].dtype == torch.float32 and batch["loss_mask"].shape == (8, SEQ_LEN)
    assert batch["nsp_label"].dtype == torch.long and batch["nsp_label"].shape == (8,)
    assert torch.equal(batch["tokens"][3], torch.from_numpy(first[3]["tokens"]))


# ------------------------------------------------------------------ T5 span corruption

def test_noise_mask_statistics():
    rng = _rng(5)
    noise = spans = total = 0
    span_lengths = []
    for length in rng.integers(20, 1200, 3000).tolist():
        m = random_spans_noise_mask(length, 0.15, 3.0, rng=rng)
        assert m.dtype == bool and m.shape == (length,)
        k = min(max(round(length * 0.15), 1), length - 1)
        assert m.sum() == k
        assert not m[0] and m[-1]                           # starts with non-noise, ends with noise
        starts = np.flatnonzero(m & ~np.r_[False, m[:-1]])
        ends = np.flatnonzero(m & ~np.r_[m[1:], False])
        assert len(starts) == max(1, round(k / 3.0))
        span_lengths += (ends - starts + 1).tolist()
        noise, spans, total = noise + k, spans + len(starts), total + length
    assert abs(noise / total / 0.15 - 1) < 0.05
    assert abs(noise / spans / 3.0 - 1) < 0.05
    assert np.mean(span_lengths) == pytest.approx(noise / spans)
    assert min(span_lengths) == 1 and max(span_lengths) > 9    # random, not fixed, lengths
    for length in range(0, 40):
        m = random_spans_noise_mask(length, rng=rng)
        assert len(m) == length
        if length >= 2:
            assert 1 <= m.sum() <= length - 1
        else:
            assert not m.any()


def test_canonical_example():
    """Raffel et al.: "I love this red car", "love" and "red car" dropped out."""
    words = "I love this red car <X> <Y> <Z> EOS".split()
    ids = {w: i for i, w in enumerate(words)}
    I, love, this, red, car, X, Y, Z, EOS = (ids[w] for w in words)
    inputs, targets = corrupt([I, love, this, red, car], [0, 1, 0, 1, 1], [X, Y, Z], EOS)
    assert inputs.tolist() == [I, X, this, Y, EOS]
    assert targets.tolist() == [X, love, Y, red, car, Z, EOS]
    assert inputs.dtype == targets.dtype == np.int64
    # noise at the very start, one span; no noise at all
    assert [x.tolist() for x in corrupt([I, love, this], [1, 1, 0], [X, Y, Z], EOS)] == \
        [[X, this, EOS], [X, I, love, Y, EOS]]
    assert [x.tolist() for x in corrupt([I, love], [0, 0], [X, Y, Z], EOS)] == [[I, love, EOS], [X, EOS]]
    with pytest.raises(ValueError, match="sentinel"):
        corrupt([I, love, this, red, car], [0, 1, 0, 1, 1], [X, Y], EOS)


def _uncorrupt(inputs, targets, sentinels, eos):
    """Put each target span back at its sentinel in the inputs."""
    assert inputs[-1] == eos and targets[-1] == eos
    sent = {s: i for i, s in enumerate(sentinels)}
    pos = [j for j, t in enumerate(targets) if t in sent]
    spans = {targets[p]: targets[p + 1:q] for p, q in zip(pos, pos[1:])}
    out = []
    for t in inputs[:-1]:
        out += list(spans[t]) if t in sent else [t]
    return out


def test_round_trip():
    rng = _rng(11)
    sentinels = list(range(32000, 32100))
    for trial in range(500):
        length = int(rng.integers(0, 300))
        toks = rng.integers(3, 32000, length)
        mask = (random_spans_noise_mask(length, rng=rng) if trial % 2
                else rng.random(length) < rng.random() * 0.3)   # arbitrary masks too
        inputs, targets = corrupt(toks, mask, sentinels, 1)
        assert _uncorrupt(inputs.tolist(), targets.tolist(), sentinels, 1) == toks.tolist()
        k = int((mask & ~np.r_[False, mask[:-1]]).sum())
        assert len(inputs) == length - mask.sum() + k + 1
        assert len(targets) == mask.sum() + k + 2


def test_t5_lengths():
    assert t5_lengths(512) == (568, 115)                   # T5's 568 raw tokens for 512 inputs
    assert t5_lengths(1) == (0, 2)
    rng = _rng(13)
    sentinels = list(range(32000, 32500))
    for inputs_length in list(range(1, 80)) + [128, 256, 512, 626, 1024, 2048]:
        raw, tl = t5_lengths(inputs_length, 0.15, 3.0)
        inputs, targets = corrupt(np.arange(raw) + 10,
                                  random_spans_noise_mask(raw, 0.15, 3.0, rng=rng), sentinels, 1)
        assert inputs_length - 1 <= len(inputs) <= inputs_length, (inputs_length, raw)
        assert len(targets) == tl
        more, _ = corrupt(np.arange(raw + 1) + 10,
                          random_spans_noise_mask(raw + 1, 0.15, 3.0, rng=rng), sentinels, 1)
        assert len(more) > inputs_length                    # the largest raw length that fits
    for density, mean in ((0.5, 3.0), (0.15, 8.0), (0.3, 1.0)):
        raw, tl = t5_lengths(256, density, mean)
        i, t = corrupt(np.arange(raw), random_spans_noise_mask(raw, density, mean, rng=rng), sentinels, 1)
        assert len(i) <= 256 and len(t) == tl
    # a decoder length limit lowers the raw length so the targets fit as well
    raw = t5_raw_length(512, 64)
    assert raw < 568 and t5_raw_length(512, 10**6) == 568


def test_t5_example():
    sp = {"pad": 0, "eos": 1, "unk": 2}
    sentinels = list(range(32099, 31999, -1))               # <extra_id_0> = 32099, ... (any order)
    cfg = SpanConfig()
    enc_len, dec_len = 128, 32
    raw = t5_raw_length(enc_len, dec_len)
    starts = set()
    for i in range(300):
        n = int(_rng(i, 0).integers(1, 400))
        doc = 100 + np.arange(n)
        ex = t5_example(doc, enc_len, dec_len, sentinels, sp, _rng(i), cfg)
        assert set(ex) == {"enc_tokens", "enc_mask", "dec_input", "labels", "loss_mask", "dec_mask"}
        for k, shape in (("enc_tokens", enc_len), ("enc_mask", enc_len), ("dec_input", dec_len),
                         ("labels", dec_len), ("dec_mask", dec_len)):
            assert ex[k].dtype == np.int64 and ex[k].shape == (shape,)
        assert ex["loss_mask"].dtype == np.float32 and ex["loss_mask"].shape == (dec_len,)
        ne, nd = int(ex["enc_mask"].sum()), int(ex["dec_mask"].sum())
        assert ex["enc_mask"][:ne].all() and (ex["enc_tokens"][ne:] == 0).all()
        assert ex["dec_mask"][:nd].all() and (ex["labels"][nd:] == 0).all() and (ex["dec_input"][nd:] == 0).all()
        np.testing.assert_array_equal(ex["loss_mask"], ex["dec_mask"])
        assert ex["dec_input"][0] == sp["pad"]                 # decoder start id = pad
        np.testing.assert_array_equal(ex["dec_input"][1:nd], ex["labels"][:nd - 1])
        assert ex["enc_tokens"][ne - 1] == ex["labels"][nd - 1] == sp["eos"]
        window = _uncorrupt(ex["enc_tokens"][:ne].tolist(), ex["labels"][:nd].tolist(), sentinels, 1)
        assert len(window) == min(n, raw)                      # a contiguous window of the document
        assert window == list(range(window[0], window[0] + len(window))) and window[0] >= 100
        assert window[-1] < 100 + n
        starts.add(window[0])
    assert len(starts) > 50                                     # random start for long documents
    a = t5_example(np.arange(100, 700), enc_len, dec_len, sentinels, sp, _rng(42), cfg)
    b = t5_example(np.arange(100, 700), enc_len, dec_len, sentinels, sp, _rng(42), cfg)
    c = t5_example(np.arange(100, 700), enc_len, dec_len, sentinels, sp, _rng(43), cfg)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)
    with pytest.raises(ValueError, match="sentinel"):
        t5_example(np.arange(100, 700), 512, 200, sentinels[:10], sp, _rng(0), cfg)
    batch = stack([a, b, c])  # what training batches them with
    for k in ("enc_tokens", "enc_mask"):
        assert batch[k].dtype == torch.long and batch[k].shape == (3, enc_len)
    for k in ("dec_input", "labels", "dec_mask"):
        assert batch[k].dtype == torch.long and batch[k].shape == (3, dec_len)
    assert batch["loss_mask"].dtype == torch.float32 and batch["loss_mask"].shape == (3, dec_len)
