"""Sequence classification (BERT): one label per text or text pair, cross-entropy.

Data: ``preprocess --format classification`` (``dist_pretrain.data.labelled``), read in
epochs (``dist_pretrain.data.epochs``). An example is ``[CLS] text [SEP]``, or
``[CLS] text [SEP] pair [SEP]`` with token types 0 then 1, padded to ``model.seq_length``.
The model (``models.bert.BertClassifier``) returns logits ``[b, num_labels]``.

Loss: cross-entropy summed over the real examples of a micro-batch and divided by the
micro-batch size, so a step's loss is the mean over its ``global_batch_size`` slots.
The padding slots of an epoch's last, partial batch have weight 0 and add nothing.
Metrics logged in training: loss and accuracy over real examples. Evaluation
(``dist_pretrain.finetune``) collects every prediction and scores accuracy and macro-F1.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from dist_pretrain.config import Config
from dist_pretrain.tasks.base import tokenizer_for


def classification_example(fields: dict, rng: np.random.Generator, *, seq_len: int, specials: dict) -> dict:
    """``[CLS] a [SEP] (b [SEP])`` with token types, padding mask and label (no randomness)."""
    cls, sep, pad = specials["cls"], specials["sep"], specials["pad"]
    a, b = fields["tokens"].astype(np.int64), fields["pair"].astype(np.int64)
    ids = np.concatenate([[cls], a, [sep]] + ([b, [sep]] if len(b) else []))
    types = np.zeros(len(ids), np.int64)
    types[len(a) + 2:] = 1
    if len(ids) > seq_len:
        raise ValueError(f"an example of {len(ids)} tokens does not fit model.seq_length={seq_len}")
    n = len(ids)
    return {"tokens": np.pad(ids, (0, seq_len - n), constant_values=pad),
            "token_types": np.pad(types, (0, seq_len - n)),
            "padding_mask": np.pad(np.ones(n, np.int64), (0, seq_len - n)), "label": np.int64(fields["label"][0])}


class Classification:
    name = "classification"
    loss_key = "loss"

    def __init__(self):
        self.collected: list | None = None  # evaluation: (index, logits) of the real examples

    def metric_keys(self, cfg: Config) -> list[str]:
        return [self.loss_key, "accuracy"]

    def forward_step(self, data_iterator: Iterator[dict], model) -> tuple[torch.Tensor, Callable]:
        batch = next(data_iterator)
        logits = model(batch["tokens"], batch["padding_mask"], tokentype_ids=batch["token_types"])
        return logits, partial(self.loss, batch)

    def loss(self, batch: dict, logits: torch.Tensor):
        logits = logits.float()
        weight = batch["weight"]
        per_example = F.cross_entropy(logits, batch["label"], reduction="none")
        loss_sum = (per_example * weight).sum()
        real = weight.sum()
        correct = ((logits.argmax(-1) == batch["label"]).float() * weight).sum()
        if self.collected is not None:
            keep = weight > 0
            self.collected += list(zip(batch["index"][keep].tolist(), logits[keep].detach().cpu()))
        # divided by the micro-batch size (a constant), not by the real count: padding slots
        # count as zero loss, and a micro-batch of padding alone divides nothing by zero
        size = torch.tensor(len(weight), dtype=torch.int, device=logits.device)
        return loss_sum, size, {"loss": torch.stack([loss_sum.detach(), real]),
                                "accuracy": torch.stack([correct, real])}

    def transform(self, cfg: Config) -> Callable:
        return partial(classification_example, seq_len=cfg.model.seq_length, specials=tokenizer_for(cfg).special_ids)

    def batches(self, cfg: Config, split: str, dp_rank: int, dp_size: int, micro_batch_size: int,
                seed: int, vocab_size: int, start_step: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        from dist_pretrain.tasks.labelled import labelled_batches

        return labelled_batches(self, cfg, split, dp_rank, dp_size, micro_batch_size, seed, start_step)
