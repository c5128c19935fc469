"""BERT masked language modelling (and optional next-sentence prediction), as in BERT.

An example is built from one ``--format docs`` sample (``tokens`` and ``sentences``):

* **Without NSP** (RoBERTa-style "full sentences"): ``[CLS] segment [SEP]``; a segment
  longer than ``seq_len - 2`` loses its tail. ``token_types`` are all 0.
* **With NSP**: the segment's sentences are split at a uniformly random sentence boundary
  into ``A | B`` (a one-sentence segment is split in the middle of its tokens). With
  probability 0.5 ``B`` is replaced by text of another sample (``other``, chosen by the
  caller): from a uniformly random sentence of it, whole sentences until ``B`` could fill
  the sequence, as BERT's ``create_instances_from_document``. ``nsp_label`` is 0 when ``B``
  is the true continuation and 1 when it is random; the split point is drawn before the
  coin, so the length of ``A`` says nothing about the label. Then BERT's
  ``truncate_seq_pair``: while ``len(A) + len(B) + 3 > seq_len``, one token is removed
  from the longer of the two (``B`` on a tie), from its front or back with probability
  0.5 each. Layout ``[CLS] A [SEP] B [SEP]``; ``token_types`` are 0 on ``[CLS] A [SEP]``
  and 1 on ``B [SEP]`` (0 on padding).

**Masking.** Candidates are the positions of segment tokens -- never the ``[CLS]``,
``[SEP]`` and ``[PAD]`` positions the builder adds, nor a segment token whose id is one of
the tokenizer's special ids (``[UNK]`` excepted: it occurs in text and BERT masks it like
any other token). ``round(mask_prob * n_candidates)`` of them (at least 1 when there is a
candidate, at most ``max_predictions``) are chosen uniformly without replacement. Each
chosen position independently becomes ``[MASK]`` with probability ``mask_token_prob``
(0.8), a random id with probability ``random_token_prob`` (0.1) -- uniform over
``[0, vocab_size)`` minus the special ids -- and otherwise keeps its token. ``labels``
hold the original id at chosen positions and the pad id elsewhere; ``loss_mask`` is 1.0
exactly at the chosen positions.

**Whole-word masking** (``whole_word=True``, needs ``is_subword``, see
:func:`wordpiece_continuation_mask`): a word is a candidate piece plus the ``##``
continuation pieces right after it. Words are taken in uniformly random order; a word
that would overshoot the budget is skipped (as BERT does), so fewer than the budget may
be chosen. The 80/10/10 decision is drawn once per word and applied to all its pieces
(a random replacement draws an independent id for each piece). A ``##`` piece with no
candidate right before it (the first piece of a truncated segment) is a word of its own.

Returned arrays have length ``seq_len``: ``tokens``, ``token_types``, ``padding_mask``
(1 = real token, 0 = padding) and ``labels`` are int64, ``loss_mask`` float32, and
``nsp_label`` an int64 scalar. :func:`dist_pretrain.data.examples.stack` stacks them into torch tensors
(``padding_mask`` stays long, 1 = real token, as Megatron's BERT dataset).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

# Roles whose ids are never masking candidates (every role except "unk").
_UNMASKABLE_ROLES = ("pad", "cls", "sep", "mask", "eos", "bos")


@dataclass
class MLMConfig:
    mask_prob: float = 0.15          # fraction of candidate tokens chosen for prediction
    mask_token_prob: float = 0.8     # chosen -> [MASK]
    random_token_prob: float = 0.1   # chosen -> random id; the rest keep their token
    whole_word: bool = False         # choose whole WordPiece words (needs is_subword)
    nsp: bool = False                # next-sentence prediction pairs [CLS] A [SEP] B [SEP]
    max_predictions: Optional[int] = None  # cap on chosen tokens per example

    def __post_init__(self):
        if not 0.0 <= self.mask_prob <= 1.0:
            raise ValueError(f"mask_prob must be in [0, 1], got {self.mask_prob}")
        if (self.mask_token_prob < 0 or self.random_token_prob < 0
                or self.mask_token_prob + self.random_token_prob > 1.0 + 1e-12):
            raise ValueError("mask_token_prob and random_token_prob must be >= 0 with a sum "
                             f"<= 1, got {self.mask_token_prob} and {self.random_token_prob}")
        if self.max_predictions is not None and self.max_predictions < 0:
            raise ValueError(f"max_predictions must be >= 0, got {self.max_predictions}")


def _special_set(special_ids: Mapping[str, int], roles: Optional[Sequence[str]] = None) -> np.ndarray:
    ids = {int(i) for role, i in special_ids.items() if roles is None or role in roles}
    return np.array(sorted(ids), np.int64)


@functools.lru_cache(maxsize=16)
def _replacement_ids(vocab_size: int, specials: tuple[int, ...]) -> np.ndarray:
    """Ids a random replacement may take: [0, vocab_size) minus the special ids."""
    ids = np.setdiff1d(np.arange(vocab_size, dtype=np.int64), np.array(specials, np.int64))
    if len(ids) == 0:
        raise ValueError(f"vocab_size={vocab_size} leaves no non-special id for random replacement")
    ids.setflags(write=False)
    return ids


def wordpiece_continuation_mask(tokenizer) -> np.ndarray:
    """Boolean array over the vocabulary: True for WordPiece continuation pieces (``##x``).

    ``tokenizer`` is one of ours (``load_tokenizer("bert")``) or a HF ``tokenizers``
    ``Tokenizer``; the array has ``tokenizer.vocab_size`` entries (more if an id is larger).
    """
    hf = getattr(tokenizer, "tokenizer", tokenizer)
    if not hasattr(hf, "get_vocab"):
        raise TypeError(f"{type(tokenizer).__name__} has no WordPiece vocabulary "
                        "(whole-word masking needs a HF WordPiece tokenizer such as 'bert')")
    vocab = hf.get_vocab(with_added_tokens=True)
    size = max(int(getattr(tokenizer, "vocab_size", 0) or 0), max(vocab.values()) + 1)
    mask = np.zeros(size, bool)
    for piece, i in vocab.items():
        if piece.startswith("##") and len(piece) > 2:
            mask[i] = True
    return mask


def truncate_seq_pair(a: np.ndarray, b: np.ndarray, max_tokens: int,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """BERT's ``truncate_seq_pair``: until ``len(a) + len(b) <= max_tokens``, drop one token
    of the longer sequence (``b`` on a tie), from its front or back with probability 0.5.

    Which sequence loses each token depends only on the lengths, so the number of tokens
    each loses is computed directly and the front/back coins are summed into one binomial
    draw per sequence: the same distribution as the token-by-token loop, in O(1).
    """
    la, lb = len(a), len(b)
    excess = la + lb - max_tokens
    if excess <= 0:
        return a, b
    if max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
    ra = rb = 0
    if la > lb:                      # a is trimmed alone until it is as short as b
        ra = min(la - lb, excess)
    elif lb > la:                    # b likewise (ties trim b)
        rb = min(lb - la, excess)
    excess -= ra + rb
    rb += (excess + 1) // 2          # equal lengths: b, a, b, a, ...
    ra += excess // 2
    fa = int(rng.binomial(ra, 0.5)) if ra else 0
    fb = int(rng.binomial(rb, 0.5)) if rb else 0
    return a[fa:la - (ra - fa)], b[fb:lb - (rb - fb)]


def _words(tokens: np.ndarray, candidates: np.ndarray,
           is_subword: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start position, length) of each word: a candidate piece and the contiguous
    candidate ``##`` pieces after it."""
    if len(tokens) and (tokens.min() < 0 or tokens.max() >= len(is_subword)):
        raise ValueError(f"token id out of range for is_subword (size {len(is_subword)}): "
                         "pass wordpiece_continuation_mask(tokenizer) of the tokenizer "
                         "that produced the data")
    prev_cand = np.concatenate([[False], candidates[:-1]])
    cont = candidates & prev_cand & is_subword[tokens]
    head = candidates & ~cont
    starts = np.flatnonzero(head)
    word_of = np.cumsum(head)[candidates] - 1           # word index of each candidate
    lengths = np.bincount(word_of, minlength=len(starts))
    return starts, lengths


def _choose_words(lengths: np.ndarray, budget: int, cap: Optional[int],
                  rng: np.random.Generator) -> np.ndarray:
    """Words in random order, skipping those that would overshoot ``budget``."""
    order = rng.permutation(len(lengths))
    chosen, total = [], 0
    for w, n in zip(order.tolist(), lengths[order].tolist()):
        if total + n > budget:
            continue
        chosen.append(w)
        total += n
        if total == budget:
            break
    if not chosen and len(order) and (cap is None or lengths[order[0]] <= cap):
        chosen = [int(order[0])]  # every word is longer than the budget: still predict one
    return np.array(chosen, np.int64)


def mask_tokens(tokens: np.ndarray, candidates: np.ndarray, special_ids: Mapping[str, int],
                vocab_size: int, rng: np.random.Generator, cfg: Optional[MLMConfig] = None,
                is_subword: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BERT masking of ``tokens`` at ``candidates`` (bool, same length).

    Returns ``(inputs, labels, loss_mask)``: int64, int64 (original id where chosen, pad
    id elsewhere), float32 (1.0 where chosen). See the module docstring for the rules.
    """
    cfg = cfg or MLMConfig()
    tokens = np.asarray(tokens, np.int64)
    candidates = np.asarray(candidates, bool)
    if candidates.shape != tokens.shape:
        raise ValueError(f"candidates shape {candidates.shape} != tokens shape {tokens.shape}")
    pad, mask_id = int(special_ids["pad"]), int(special_ids["mask"])
    inputs = tokens.copy()
    labels = np.full_like(tokens, pad)
    loss_mask = np.zeros(len(tokens), np.float32)
    n = int(candidates.sum())
    if n == 0:
        return inputs, labels, loss_mask
    budget = max(1, int(round(cfg.mask_prob * n)))
    if cfg.max_predictions is not None:
        budget = min(budget, cfg.max_predictions)
    if budget == 0:
        return inputs, labels, loss_mask

    if cfg.whole_word:
        if is_subword is None:
            raise ValueError("whole_word masking needs is_subword "
                             "(wordpiece_continuation_mask(tokenizer))")
        starts, lengths = _words(tokens, candidates, np.asarray(is_subword, bool))
        words = _choose_words(lengths, budget, cfg.max_predictions, rng)
        wl = lengths[words]
        # positions of the chosen words' pieces: start + 0, 1, ..., length - 1
        offsets = np.arange(int(wl.sum())) - np.repeat(np.cumsum(wl) - wl, wl)
        pos = np.repeat(starts[words], wl) + offsets
        u = np.repeat(rng.random(len(words)), wl)     # one 80/10/10 decision per word
    else:
        pos = rng.choice(np.flatnonzero(candidates), budget, replace=False)
        u = rng.random(budget)                         # one decision per position

    labels[pos] = tokens[pos]
    loss_mask[pos] = 1.0
    to_mask = u < cfg.mask_token_prob
    to_random = ~to_mask & (u < cfg.mask_token_prob + cfg.random_token_prob)
    inputs[pos[to_mask]] = mask_id
    if to_random.any():
        choices = _replacement_ids(int(vocab_size), tuple(_special_set(special_ids).tolist()))
        inputs[pos[to_random]] = choices[rng.integers(0, len(choices), int(to_random.sum()))]
    return inputs, labels, loss_mask


def _as_sample(tokens, sentences, what: str) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.asarray(tokens, np.int64).reshape(-1)
    sentences = np.asarray(sentences, np.int64).reshape(-1)
    if (sentences < 0).any() or int(sentences.sum()) != len(tokens):
        raise ValueError(f"{what}: sentence lengths (sum {int(sentences.sum())}) do not add up "
                         f"to the {len(tokens)} tokens")
    return tokens, sentences


def _nsp_pair(tokens: np.ndarray, sentences: np.ndarray, other, max_tokens: int,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    n = len(tokens)
    bounds = np.cumsum(sentences)[:-1]
    bounds = np.unique(bounds[(bounds > 0) & (bounds < n)])
    if len(bounds):
        split = int(bounds[rng.integers(len(bounds))])
    else:  # one sentence: split its tokens in the middle (n < 2: nothing to split)
        split = n // 2 if n >= 2 else n
    a = tokens[:split]
    # A segment that cannot be split has no true continuation: B is random (as BERT does
    # for a one-sentence chunk).
    random_next = split >= n or rng.random() < 0.5
    if random_next:
        o_tokens, o_sentences = _as_sample(*other, what="other")
        ends = np.cumsum(o_sentences)
        ends = np.unique(ends[ends > 0])
        starts = np.unique(np.concatenate([[0], ends[:-1]]))
        if len(o_tokens) == 0:
            b = o_tokens
        else:
            start = int(starts[rng.integers(len(starts))])
            target = max(1, max_tokens - len(a))
            # whole sentences from `start` until B reaches the room left by A
            end_i = np.searchsorted(ends, start + target, side="left")
            end = int(ends[end_i]) if end_i < len(ends) else len(o_tokens)
            b = o_tokens[start:end]
    else:
        b = tokens[split:]
    a, b = truncate_seq_pair(a, b, max_tokens, rng)
    return a, b, int(random_next)


def bert_example(tokens, sentences, seq_len: int, special_ids: Mapping[str, int],
                 vocab_size: int, rng: np.random.Generator, cfg: Optional[MLMConfig] = None,
                 other=None, is_subword: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
    """One BERT example of length ``seq_len`` from a docs sample (see module docstring).

    ``special_ids`` needs ``pad cls sep mask``; ``vocab_size`` bounds random replacements
    (the tokenizer's vocabulary size, not a padded embedding size). With ``cfg.nsp``,
    ``other`` is another sample's ``(tokens, sentences)``, used when B is random. Returns
    ``tokens token_types padding_mask labels`` (int64 ``[seq_len]``), ``loss_mask``
    (float32 ``[seq_len]``), ``nsp_label`` (int64 scalar; 0 when NSP is off).
    """
    cfg = cfg or MLMConfig()
    tokens, sentences = _as_sample(tokens, sentences, what="sample")
    cls, sep, pad = (int(special_ids[k]) for k in ("cls", "sep", "pad"))
    if cfg.nsp:
        if seq_len < 3:
            raise ValueError(f"seq_len must be >= 3 with NSP ([CLS] A [SEP] B [SEP]), got {seq_len}")
        if other is None:
            raise ValueError("nsp=True needs `other`: another sample's (tokens, sentences) "
                             "for the random-B half of the pairs")
        a, b, nsp_label = _nsp_pair(tokens, sentences, other, seq_len - 3, rng)
        seq = np.concatenate([[cls], a, [sep], b, [sep]]).astype(np.int64)
        types = np.zeros(len(seq), np.int64)
        types[len(a) + 2:] = 1
        added = np.zeros(len(seq), bool)
        added[[0, len(a) + 1, len(seq) - 1]] = True
    else:
        if seq_len < 2:
            raise ValueError(f"seq_len must be >= 2 ([CLS] ... [SEP]), got {seq_len}")
        body = tokens[:seq_len - 2]
        seq = np.concatenate([[cls], body, [sep]]).astype(np.int64)
        types = np.zeros(len(seq), np.int64)
        nsp_label = 0
        added = np.zeros(len(seq), bool)
        added[[0, len(seq) - 1]] = True

    candidates = ~added & ~np.isin(seq, _special_set(special_ids, _UNMASKABLE_ROLES))
    inputs, labels, loss_mask = mask_tokens(seq, candidates, special_ids, vocab_size, rng,
                                            cfg, is_subword)
    n, padn = len(seq), seq_len - len(seq)
    return {
        "tokens": np.pad(inputs, (0, padn), constant_values=pad),
        "token_types": np.pad(types, (0, padn)),
        "padding_mask": np.pad(np.ones(n, np.int64), (0, padn)),
        "labels": np.pad(labels, (0, padn), constant_values=pad),
        "loss_mask": np.pad(loss_mask, (0, padn)),
        "nsp_label": np.int64(nsp_label),
    }
