"""Span corruption (T5): reconstruct the spans replaced by sentinels in the encoder input.

Data: ``preprocess --format docs`` samples, corrupted by
``dist_pretrain.objectives.span_corruption`` (seeded per sample) into encoder tokens and
teacher-forced decoder input / targets. Loss: the mean cross-entropy over the target
tokens of the global batch (sentinels and EOS included).
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Iterator

import numpy as np
import torch
from megatron.core import tensor_parallel

from dist_pretrain.config import Config
from dist_pretrain.data.synthetic import synthetic_doc_fields
from dist_pretrain.models.t5 import decoder_length, key_padding_mask
from dist_pretrain.objectives.span_corruption import SpanConfig, t5_example
from dist_pretrain.tasks.base import task_batches, tokenizer_for
from dist_pretrain.tasks.metrics import masked_accuracy

# synthetic runs (tests): SentencePiece-like pad/eos/unk and the top 100 ids as sentinels
SYNTHETIC_SPECIALS = {"pad": 0, "eos": 1, "unk": 2}


def t5_sample(fields: dict, rng: np.random.Generator, previous: dict | None, *, enc_len: int,
              dec_len: int, sentinel_ids, special_ids: dict, span: SpanConfig) -> dict:
    return t5_example(fields["tokens"], enc_len, dec_len, sentinel_ids, special_ids, rng, span)


def encoder_decoder_forward(batch: dict, model) -> torch.Tensor:
    """Vocab-parallel logits [b, s_dec, V/TP] of a teacher-forced encoder-decoder batch."""
    enc_mask = key_padding_mask(batch["enc_mask"])
    return model(batch["enc_tokens"], batch["dec_input"], enc_mask, key_padding_mask(batch["dec_mask"]),
                 enc_mask, lm_labels=None)


class SpanCorruption:
    name = "span_corruption"
    loss_key = "lm loss"

    def metric_keys(self, cfg: Config) -> list[str]:
        return [self.loss_key, "span accuracy"]

    def forward_step(self, data_iterator: Iterator[dict], model) -> tuple[torch.Tensor, Callable]:
        batch = next(data_iterator)
        return encoder_decoder_forward(batch, model), partial(target_loss, batch, "span accuracy")

    def batches(self, cfg: Config, split: str, dp_rank: int, dp_size: int, micro_batch_size: int,
                seed: int, vocab_size: int, start_step: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        task = cfg.task
        span = SpanConfig(noise_density=task.noise_density, mean_noise_span_length=task.mean_noise_span_length)
        if cfg.data.synthetic:
            specials, sentinels = SYNTHETIC_SPECIALS, list(range(vocab_size - 100, vocab_size))
            fields = partial(synthetic_doc_fields, low=3, high=vocab_size - 100, length=cfg.model.seq_length)
        else:
            tok = tokenizer_for(cfg)
            specials, sentinels = tok.special_ids, tok.sentinel_ids
            if len(sentinels) < 100:
                raise ValueError(f"T5 needs >= 100 sentinel tokens <extra_id_N>; {tok.name} has "
                                 f"{len(sentinels)} (train one: dist-pretrain tokenizer train --kind "
                                 "sentencepiece --sentinels 100 ...)")
            fields = None
        transform = partial(t5_sample, enc_len=cfg.model.seq_length, dec_len=decoder_length(cfg),
                            sentinel_ids=sentinels, special_ids=specials, span=span)
        return task_batches(cfg, split, dp_rank, dp_size, micro_batch_size, seed, start_step,
                            transform=transform, synthetic_fields=fields)


def target_loss(batch: dict, accuracy_key: str, logits: torch.Tensor):
    """Cross-entropy summed over the real target tokens (``loss_mask``), their count, and
    the logged [sum, count] pairs: loss and token accuracy."""
    loss_mask = batch["loss_mask"]
    per_token = tensor_parallel.vocab_parallel_cross_entropy(logits.float(), batch["labels"])
    loss_sum = (per_token * loss_mask).sum()
    n = loss_mask.sum()
    correct = masked_accuracy(logits, batch["labels"], loss_mask)
    return loss_sum, n.to(torch.int), {"lm loss": torch.stack([loss_sum.detach(), n]),
                                       accuracy_key: torch.stack([correct, n])}
