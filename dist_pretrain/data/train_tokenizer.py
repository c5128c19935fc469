"""Train a tokenizer on the same inputs preprocessing reads, offline.

``dist-pretrain tokenizer train --kind bpe|wordpiece|unigram|sentencepiece --input GLOB
--vocab-size N --output DIR``

Inputs are C4-style ``.json.gz`` / ``.jsonl(.gz)`` lines (field ``--text-field``) or ``.txt``
files, read by the same reader as ``dist-pretrain preprocess``.

=============  ==============================================  =====================
kind           model                                            writes
=============  ==============================================  =====================
bpe            GPT-2-style byte-level BPE, ``<|endoftext|>``    ``DIR/tokenizer.json``
wordpiece      BERT WordPiece (lower-cased BERT normalizer and  ``DIR/tokenizer.json``
               pre-tokenizer), ``[PAD] [UNK] [CLS] [SEP] [MASK]``
unigram        HF Unigram (Metaspace), ``<pad> </s> <unk>``     ``DIR/tokenizer.json``
sentencepiece  SentencePiece unigram, pad=0 eos=1 unk=2, byte   ``DIR/spiece.model``
               fallback (lossless), ``<extra_id_i>`` sentinels
=============  ==============================================  =====================

``--sentinels N`` adds ``<extra_id_0> .. <extra_id_{N-1}>`` (T5 span corruption); the
default is 100 for ``sentencepiece`` and ``unigram``, 0 otherwise. SentencePiece makes them
user-defined symbols (ids 3..N+2); the HF kinds add them as special tokens. The result loads
with ``load_tokenizer(DIR)``. HF's Unigram trainer is slow (minutes for 10 MB);
``sentencepiece`` trains the same kind of model much faster.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import Counter
from typing import Iterator

from dist_pretrain.data.preprocess import expand_inputs, iter_documents
from dist_pretrain.data.tokenizer import SENTINEL_FORMAT, load_tokenizer

KINDS = ("bpe", "wordpiece", "unigram", "sentencepiece")
SPECIALS = {
    "bpe": ["<|endoftext|>"],
    "wordpiece": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    "unigram": ["<pad>", "</s>", "<unk>"],
}
# SentencePiece skips training sentences longer than this many bytes; documents are fed
# line by line (paragraphs), so only freak lines are dropped.
SP_MAX_SENTENCE_BYTES = 1 << 16


class _Reader:
    """Streams documents from the inputs, stopping after ``max_bytes`` of input."""

    def __init__(self, files: list[str], text_field: str, max_bytes: int | None):
        self.files, self.text_field, self.max_bytes = files, text_field, max_bytes
        self.docs = self.bytes = 0
        self.bad: Counter = Counter()

    def documents(self) -> Iterator[str]:
        for path in self.files:
            for text, nbytes in iter_documents(path, self.text_field, self.bad):
                if not text:
                    continue
                self.docs += 1
                self.bytes += nbytes
                yield text
                if self.max_bytes and self.bytes >= self.max_bytes:
                    return

    def batches(self, size: int = 1000) -> Iterator[list[str]]:
        batch = []
        for text in self.documents():
            batch.append(text)
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch

    def lines(self) -> Iterator[str]:
        for text in self.documents():
            for line in text.split("\n"):
                if line.strip():
                    yield line


def _parse_size(s: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)b?\s*", s.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {s!r} (e.g. 500M, 2G, 100000)")
    return int(float(m.group(1)) * 1000 ** " kmgt".index(m.group(2) or " "))


def train_hf(kind: str, reader: _Reader, vocab_size: int, sentinels: list[str],
             min_frequency: int, out_dir: str) -> str:
    from tokenizers import (Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers,
                            processors, trainers)

    specials = SPECIALS[kind] + sentinels
    common = dict(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(min_frequency=min_frequency,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), **common)
    elif kind == "wordpiece":  # bert-base-uncased's pipeline
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=None, lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        trainer = trainers.WordPieceTrainer(min_frequency=min_frequency, **common)
    else:  # unigram, normalised like HF's SentencePieceUnigramTokenizer
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.Sequence(
            [normalizers.Nmt(), normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(unk_token="<unk>", **common)
    tok.train_from_iterator(reader.batches(), trainer)
    if kind == "wordpiece":  # [CLS] a [SEP] b [SEP] for tools that add special tokens
        tok.post_processor = processors.BertProcessing(
            ("[SEP]", tok.token_to_id("[SEP]")), ("[CLS]", tok.token_to_id("[CLS]")))
    state = json.loads(tok.to_str())
    if kind == "unigram":
        # The trainer gives special pieces score 0 (the most likely piece), so Viterbi would
        # pick "</s>" for that literal text; make them unreachable from text.
        special = set(specials)
        for piece in state["model"]["vocab"]:
            if piece[0] in special:
                piece[1] = -1e9
    path = os.path.join(out_dir, "tokenizer.json")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(state, f, ensure_ascii=False)
    os.replace(path + ".tmp", path)
    return path


def train_sentencepiece(reader: _Reader, vocab_size: int, sentinels: list[str],
                        normalization: str, max_sentences: int, out_dir: str) -> str:
    import sentencepiece as spm

    prefix = os.path.join(out_dir, "spiece")
    spm.SentencePieceTrainer.train(
        sentence_iterator=reader.lines(), model_prefix=prefix, vocab_size=vocab_size,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,  # T5's layout
        user_defined_symbols=sentinels,
        # identity + kept whitespace + byte fallback: decode(encode(x)) == x for any text
        normalization_rule_name=normalization, remove_extra_whitespaces=normalization != "identity",
        byte_fallback=True, character_coverage=0.9995,
        max_sentence_length=SP_MAX_SENTENCE_BYTES, input_sentence_size=max_sentences,
        shuffle_input_sentence=True, num_threads=os.cpu_count() or 1, minloglevel=2)
    return prefix + ".model"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="dist-pretrain tokenizer train",
                                description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", choices=KINDS, required=True)
    p.add_argument("--input", action="append", required=True, help="glob; repeatable")
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--output", required=True, help="directory for tokenizer.json / spiece.model")
    p.add_argument("--text-field", default="text")
    p.add_argument("--sentinels", type=int, default=None,
                   help="<extra_id_i> tokens to add (default: 100 for sentencepiece/unigram, else 0)")
    p.add_argument("--max-bytes", type=_parse_size, default=None,
                   help="stop reading input after this much text, e.g. 2G (default: all)")
    p.add_argument("--min-frequency", type=int, default=2, help="bpe/wordpiece: min pair/word count")
    p.add_argument("--normalization", default="identity",
                   choices=("identity", "nmt_nfkc", "nfkc", "nmt_nfkc_cf", "nfkc_cf"),
                   help="sentencepiece normalization rule (identity keeps the text lossless)")
    p.add_argument("--max-sentences", type=int, default=10_000_000,
                   help="sentencepiece: lines sampled for training (0 = all)")
    args = p.parse_args(argv)
    sentinels = args.sentinels if args.sentinels is not None else (
        100 if args.kind in ("sentencepiece", "unigram") else 0)
    if args.vocab_size < 2 or sentinels < 0:
        p.error("--vocab-size must be >= 2 and --sentinels >= 0")
    sentinel_tokens = [SENTINEL_FORMAT.format(i) for i in range(sentinels)]
    try:
        files = expand_inputs(args.input)
    except FileNotFoundError as e:
        p.error(str(e))
    os.makedirs(args.output, exist_ok=True)
    reader = _Reader(files, args.text_field, args.max_bytes)
    t0 = time.perf_counter()
    if args.kind == "sentencepiece":
        path = train_sentencepiece(reader, args.vocab_size, sentinel_tokens, args.normalization,
                                   args.max_sentences, args.output)
    else:
        path = train_hf(args.kind, reader, args.vocab_size, sentinel_tokens, args.min_frequency,
                        args.output)
    seconds = time.perf_counter() - t0
    tok = load_tokenizer(path)  # what preprocessing will load: fail here, not later
    for bad_path, n in sorted(reader.bad.items()):
        print(f"warning: skipped {n} bad line(s) in {bad_path}", file=sys.stderr)
    if tok.vocab_size != args.vocab_size:
        print(f"warning: vocab size {tok.vocab_size} < requested {args.vocab_size} "
              "(not enough text to learn more)", file=sys.stderr)
    print(f"trained {args.kind} tokenizer: vocab {tok.vocab_size:,}, {reader.docs:,} docs, "
          f"{reader.bytes / 1e6:.1f} MB in {seconds:.1f}s -> {path} "
          f"(eos {tok.eos_id}, {len(tok.sentinel_ids)} sentinels, hash {tok.vocab_hash})")
    return {"path": path, "kind": args.kind, "seconds": round(seconds, 3), "docs": reader.docs,
            "text_bytes": reader.bytes, **tok.info(), "special_ids": tok.special_ids,
            "sentinels": len(tok.sentinel_ids)}


if __name__ == "__main__":
    main()
