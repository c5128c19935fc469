"""Our model against its HF export on the same tokens: max |logit difference| and top-1 agreement."""

from __future__ import annotations

import numpy as np
import torch

from dist_pretrain.config import Config

# real English text (public-domain openings) tokenized for the export check
TEXTS = [
    ("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
    "want of a wife. However little known the feelings or views of such a man may be on his first entering "
    "a neighbourhood, this truth is so well fixed in the minds of the surrounding families."),
    ("Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse, "
    "and nothing particular to interest me on shore, I thought I would sail about a little and see the "
    "watery part of the world."),
    ("It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
    "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light."),
    ("In a hole in the ground there lived a hobbit. Not a nasty, dirty, wet hole, filled with the ends of "
    "worms and an oozy smell, nor yet a dry, bare, sandy hole with nothing in it to sit down on or to eat."),
]


def token_sequences(tokenizer, vocab: int, length: int, count: int, seed: int) -> torch.Tensor:
    """``count`` sequences of ``length`` ids: the texts above through ``tokenizer`` (repeated to
    fill the length), or seeded random ids below ``vocab`` when there is no tokenizer."""
    if tokenizer is None:
        rng = np.random.default_rng(seed)
        return torch.from_numpy(rng.integers(0, vocab, size=(count, length))).long()
    rows = []
    for i in range(count):
        ids = tokenizer.encode_batch([TEXTS[i % len(TEXTS)]])[0]
        rows.append((ids * (length // max(1, len(ids)) + 1))[:length])
    return torch.tensor(rows, dtype=torch.long)


def seq2seq_sequences(tokenizer, vocab: int, enc_len: int, dec_len: int, count: int, seed: int,
                      start_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(encoder input ``[count, enc_len]``, decoder input ``[count, dec_len]``) for T5: the texts
    above as encoder inputs; the decoder reads ``start_id`` then the beginning of another text."""
    enc = token_sequences(tokenizer, vocab, enc_len, count, seed)
    other = token_sequences(tokenizer, vocab, dec_len - 1, count + 1, seed + 1)[1:]
    return enc, torch.cat([torch.full((count, 1), start_id, dtype=torch.long), other], dim=1)


@torch.no_grad()
def our_logits(chunk: torch.nn.Module, ids, cfg: Config) -> torch.Tensor:
    """Logits [b, s, V] of our one-process model (all padded vocab rows); for T5 ``ids`` is
    (encoder input, decoder input) and the logits are the decoder's."""
    if cfg.family == "gpt":
        positions = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)
        return chunk(ids, positions, None)
    if cfg.family == "t5":
        from dist_pretrain.models.t5 import key_padding_mask

        enc, dec = ids
        enc_mask, dec_mask = key_padding_mask(torch.ones_like(enc)), key_padding_mask(torch.ones_like(dec))
        return chunk(enc, dec, enc_mask, dec_mask, enc_mask, lm_labels=None)
    raise NotImplementedError(f"logit check for family={cfg.family} is not implemented yet")


@torch.no_grad()
def hf_logits(model, ids, cfg: Config) -> torch.Tensor:
    if cfg.family == "gpt":
        return model(input_ids=ids).logits
    if cfg.family == "t5":
        return model(input_ids=ids[0], decoder_input_ids=ids[1]).logits
    raise NotImplementedError(f"logit check for family={cfg.family} is not implemented yet")


def compare_logits(arch, chunk: torch.nn.Module, model, ids, cfg: Config) -> dict:
    """Max |difference| of the exported rows' logits and the share of positions whose argmax agrees.

    ``ids``: token ids [b, s], or the input dict of an architecture with its own inputs
    (``arch.check_inputs``, BERT: token types and a padding mask; only real tokens are
    compared there, and its NSP logits count towards ``max_abs_diff`` too)."""
    chunk.eval()
    model.eval()
    extra = {}
    if isinstance(ids, dict):
        (theirs, theirs_nsp), (ours, ours_nsp) = arch.hf_outputs(model, ids), arch.our_outputs(chunk, ids)
        if theirs.dim() == 3:  # per-token logits: the real tokens; per-sequence (a classifier): all of them
            keep = ids["padding_mask"].bool()
            theirs, ours = theirs.float()[keep], ours.float()[keep]
        if theirs_nsp is not None:
            extra["nsp_max_abs_diff"] = float((ours_nsp.float() - theirs_nsp.float()).abs().max())
    else:
        theirs = hf_logits(model, ids, cfg).float()
        ours = our_logits(chunk, ids, cfg).float()
    ours = ours[..., :theirs.shape[-1]]
    lm_diff = float((ours - theirs).abs().max())
    return {"max_abs_diff": max(lm_diff, extra.get("nsp_max_abs_diff", 0.0)), "lm_max_abs_diff": lm_diff,
            "max_abs_logit": float(theirs.abs().max()),
            "top1_agreement": float((ours.argmax(-1) == theirs.argmax(-1)).float().mean()), **extra}
