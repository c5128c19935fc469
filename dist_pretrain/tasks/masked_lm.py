"""Masked language modelling (BERT), optionally with next-sentence prediction.

Data: ``preprocess --format docs`` samples (a document segment and its sentence lengths),
turned into ``[CLS] ... [SEP]`` examples with 80/10/10 masking by
``dist_pretrain.objectives.mlm`` (seeded per sample). Loss: the mean cross-entropy over
the masked positions of the global batch, plus the mean NSP cross-entropy when the binary
head is on (``task.next_sentence_prediction``).
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel

from dist_pretrain.config import Config
from dist_pretrain.data.synthetic import synthetic_doc_fields
from dist_pretrain.objectives.mlm import MLMConfig, bert_example, wordpiece_continuation_mask
from dist_pretrain.tasks.base import task_batches, tokenizer_for
from dist_pretrain.tasks.metrics import masked_accuracy

# special ids of the bert-base-uncased vocab; synthetic runs (tests) use the same
BERT_SPECIALS = {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}


def bert_sample(fields: dict, rng: np.random.Generator, previous: dict | None, *, seq_len: int,
                special_ids: dict, vocab_size: int, mlm: MLMConfig, is_subword) -> dict:
    other = None
    if mlm.nsp:
        other = previous or fields  # the sub-stream's previous document serves as "random B"
        other = (other["tokens"], other["sentences"])
    return bert_example(fields["tokens"], fields["sentences"], seq_len, special_ids, vocab_size, rng,
                        mlm, other=other, is_subword=is_subword)


class MaskedLM:
    name = "masked_lm"
    loss_key = "lm loss"

    def metric_keys(self, cfg: Config) -> list[str]:
        keys = [self.loss_key, "mlm accuracy"]
        return keys + (["nsp loss", "nsp accuracy"] if cfg.task.next_sentence_prediction else [])

    def forward_step(self, data_iterator: Iterator[dict], model) -> tuple[tuple, Callable]:
        batch = next(data_iterator)
        output = model(batch["tokens"], batch["padding_mask"], tokentype_ids=batch["token_types"],
                       lm_labels=None)
        return output, partial(masked_lm_loss, batch)

    def batches(self, cfg: Config, split: str, dp_rank: int, dp_size: int, micro_batch_size: int,
                seed: int, vocab_size: int, start_step: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        task = cfg.task
        mlm = MLMConfig(mask_prob=task.mask_prob, whole_word=task.whole_word_masking,
                        nsp=task.next_sentence_prediction)
        if cfg.data.synthetic:
            specials, real_vocab, is_subword = BERT_SPECIALS, vocab_size, None
            fields = partial(synthetic_doc_fields, low=110, high=vocab_size, length=cfg.model.seq_length)
        else:
            tok = tokenizer_for(cfg)
            specials, real_vocab = tok.special_ids, tok.vocab_size
            is_subword = wordpiece_continuation_mask(tok) if task.whole_word_masking else None
            fields = None
        transform = partial(bert_sample, seq_len=cfg.model.seq_length, special_ids=specials,
                            vocab_size=real_vocab, mlm=mlm, is_subword=is_subword)
        return task_batches(cfg, split, dp_rank, dp_size, micro_batch_size, seed, start_step,
                            transform=transform, synthetic_fields=fields)


def masked_lm_loss(batch: dict, output):
    """MLM sum over the masked positions (+ NSP mean x their count, so that megatron's
    division by the count gives lm mean + nsp mean) and the logged [sum, count] pairs."""
    logits, binary_logits = output
    loss_mask = batch["loss_mask"]
    per_token = tensor_parallel.vocab_parallel_cross_entropy(logits.float(), batch["labels"])
    lm_sum = (per_token * loss_mask).sum()
    n = loss_mask.sum()
    logged = {"lm loss": torch.stack([lm_sum.detach(), n]),
              "mlm accuracy": torch.stack([masked_accuracy(logits, batch["labels"], loss_mask), n])}
    loss_sum = lm_sum
    if binary_logits is not None:
        nsp = F.cross_entropy(binary_logits.float(), batch["nsp_label"])
        loss_sum = loss_sum + nsp * n
        b = torch.tensor(float(batch["nsp_label"].numel()), device=nsp.device)  # stacked with nsp
        correct = (binary_logits.argmax(-1) == batch["nsp_label"]).sum().float()
        logged["nsp loss"] = torch.stack([nsp.detach() * b, b])
        logged["nsp accuracy"] = torch.stack([correct, b])
    return loss_sum, n.to(torch.int), logged
