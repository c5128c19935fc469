"""Text-to-text (T5): the task is named in the input (``summarize: ...``, ``define: ...``);
the target is generated. No new layer: the pretrained encoder-decoder and LM head.

Data: ``preprocess --format seq2seq`` (``dist_pretrain.data.labelled``), read in epochs.
An example is the encoder input ``input EOS`` and the teacher-forced decoder input
``[pad] target`` (pad is T5's decoder start) with labels ``target EOS``.

Loss: cross-entropy summed over the real target tokens; the count passed to megatron is
at least 1, so a micro-batch made only of an epoch's padding divides 0 by 1.

Evaluation (``dist_pretrain.finetune``) generates greedily with the decoder's KV caches
(``inference.seq2seq.greedy_targets``). Under ZeRO-3 it generates one token a step through
the training schedule instead, which is what ``TextToText.position`` serves: the decoder
input holds the tokens so far (the causal self-attention makes the positions after them
irrelevant), the last stage takes the argmax of the vocab-parallel logits at the current
position, and every rank learns the new tokens. Scores: exact match (after whitespace
normalisation, case-insensitive) and ROUGE-L F1 (``rouge-score``), overall and per prefix,
and the share of distinct outputs: a model that answers every ``define:`` with the same
generic phrase still scores some ROUGE-L, and ``distinct_outputs`` says so.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Iterator

import numpy as np
import torch
from megatron.core import tensor_parallel

from dist_pretrain.config import Config
from dist_pretrain.tasks.base import tokenizer_for
from dist_pretrain.tasks.metrics import masked_accuracy
from dist_pretrain.tasks.span_corruption import encoder_decoder_forward


def text_to_text_example(fields: dict, rng: np.random.Generator, *, enc_len: int, dec_len: int,
                         specials: dict) -> dict:
    pad, eos = specials["pad"], specials["eos"]
    inp = np.concatenate([fields["input"].astype(np.int64), [eos]])
    tgt = np.concatenate([fields["target"].astype(np.int64), [eos]])
    if len(inp) > enc_len or len(tgt) > dec_len:
        raise ValueError(f"an example of {len(inp)} input / {len(tgt)} target tokens does not fit "
                         f"model.seq_length={enc_len} / model.decoder_seq_length={dec_len}")
    ne, nd = len(inp), len(tgt)
    return {"enc_tokens": np.pad(inp, (0, enc_len - ne), constant_values=pad),
            "enc_mask": np.pad(np.ones(ne, np.int64), (0, enc_len - ne)),
            "dec_input": np.pad(np.concatenate([[pad], tgt[:-1]]), (0, dec_len - nd), constant_values=pad),
            "labels": np.pad(tgt, (0, dec_len - nd), constant_values=pad),
            "loss_mask": np.pad(np.ones(nd, np.float32), (0, dec_len - nd)),
            "dec_mask": np.pad(np.ones(nd, np.int64), (0, dec_len - nd))}


class TextToText:
    name = "text_to_text"
    loss_key = "lm loss"

    def __init__(self):
        self.collected: list | None = None  # generation: (index, next token) of real rows
        self.position: int | None = None   # the decoder position generated now

    def metric_keys(self, cfg: Config) -> list[str]:
        return [self.loss_key, "token accuracy"]

    def forward_step(self, data_iterator: Iterator[dict], model) -> tuple[torch.Tensor, Callable]:
        batch = next(data_iterator)
        return encoder_decoder_forward(batch, model), partial(self.loss, batch)

    def loss(self, batch: dict, logits: torch.Tensor):
        if self.position is not None:  # generating: the next token of every real row
            full = tensor_parallel.gather_from_tensor_model_parallel_region(logits[:, self.position].float())
            keep = batch["weight"] > 0
            self.collected += list(zip(batch["index"][keep].tolist(), full.argmax(-1)[keep].tolist()))
            zero = logits.sum() * 0
            return zero, torch.ones((), dtype=torch.int, device=logits.device), {}
        loss_mask = batch["loss_mask"] * batch["weight"][:, None]
        per_token = tensor_parallel.vocab_parallel_cross_entropy(logits.float(), batch["labels"])
        loss_sum = (per_token * loss_mask).sum()
        n = loss_mask.sum()
        correct = masked_accuracy(logits, batch["labels"], loss_mask)
        return loss_sum, n.clamp(min=1).to(torch.int), {"lm loss": torch.stack([loss_sum.detach(), n]),
                                                         "token accuracy": torch.stack([correct, n])}

    def tokenizer(self, cfg: Config):
        return tokenizer_for(cfg)

    def transform(self, cfg: Config) -> Callable:
        return partial(text_to_text_example, enc_len=cfg.model.seq_length, dec_len=cfg.model.decoder_length,
                       specials=self.tokenizer(cfg).special_ids)

    def batches(self, cfg: Config, split: str, dp_rank: int, dp_size: int, micro_batch_size: int,
                seed: int, vocab_size: int, start_step: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        from dist_pretrain.tasks.labelled import labelled_batches

        return labelled_batches(self, cfg, split, dp_rank, dp_size, micro_batch_size, seed, start_step)


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def text_scores(records: list[dict], generated: dict[int, list[int]], tok) -> tuple[dict, list]:
    """Exact match and ROUGE-L F1 of the generations, overall and per task prefix. A prediction
    row keeps the generated ids (EOS and what follows cut off) next to their text, so that they
    can be checked against another implementation's ``generate`` token for token."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rows, by_prefix = [], {}
    for index, record in enumerate(records):
        text = tok.decode(generated[index])
        em = float(_normal(text) == _normal(record["target"]))
        rouge = scorer.score(record["target"], text)["rougeL"].fmeasure
        prefix = record["input"].split(":", 1)[0] if ":" in record["input"] else "-"
        by_prefix.setdefault(prefix, []).append((em, rouge, _normal(text)))
        rows.append({"index": index, **record, "prediction": text, "token_ids": list(generated[index]),
                     "exact_match": em, "rouge_l": round(rouge, 6)})
    n = max(len(rows), 1)
    metrics = {"rouge_l": sum(r["rouge_l"] for r in rows) / n, "exact_match": sum(r["exact_match"] for r in rows) / n,
               "distinct_outputs": len({_normal(r["prediction"]) for r in rows}) / n}
    for prefix, scores in sorted(by_prefix.items()):
        metrics[f"{prefix}/rouge_l"] = sum(s[1] for s in scores) / len(scores)
        metrics[f"{prefix}/exact_match"] = sum(s[0] for s in scores) / len(scores)
        metrics[f"{prefix}/distinct_outputs"] = len({s[2] for s in scores}) / len(scores)
    return metrics, rows
