"""What a task provides to the shared training loop, and the batch pipeline tasks share.

A task (causal LM, masked LM, span corruption, ...) turns samples into micro-batches,
runs one through the model and computes its loss and metrics; the architecture
(``dist_pretrain.models.architecture``) builds the model. The loop in ``train.py`` and
megatron's pipeline schedules call ``forward_step`` the same way for every task.
"""

from __future__ import annotations

from typing import Callable, Iterator, Protocol

import torch

from dist_pretrain.config import Config

LossFunc = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]]


class Task(Protocol):
    name: str

    loss_key: str
    """Key of the [loss sum, token count] pair in the dicts the loss function logs."""

    def metric_keys(self, cfg: Config) -> list[str]:
        """Keys of the [sum, count] pairs the loss function logs (loss_key first); logged as train/<key>."""

    def forward_step(self, data_iterator: Iterator[dict[str, torch.Tensor]],
                     model: torch.nn.Module) -> tuple[torch.Tensor, LossFunc]:
        """Take the next micro-batch from ``data_iterator``, run it through a model chunk and
        return (output, loss function of that output), as megatron's schedules expect. The
        loss function returns (loss sum, count, logged [sum, count] pairs)."""

    def batches(self, cfg: Config, split: str, dp_rank: int, dp_size: int, micro_batch_size: int,
                seed: int, vocab_size: int, start_step: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Collated micro-batches for this data-parallel rank, from global step ``start_step``."""


def task_batches(cfg: Config, split: str, dp_rank: int, dp_size: int, micro_batch_size: int,
                 seed: int, start_step: int, transform: Callable,
                 synthetic_fields: Callable[[int, int], dict]) -> Iterator[dict[str, torch.Tensor]]:
    """Micro-batches for any task: synthetic (tests), the training stream, or validation.

    ``transform(fields, rng, previous)`` builds one example from a raw sample;
    ``synthetic_fields(index, seed)`` makes a raw synthetic sample.
    """
    from functools import partial

    from dist_pretrain.data.synthetic import synthetic_batches
    from dist_pretrain.faults import loader_worker_init

    if cfg.data.synthetic:
        seed = seed + (0 if split == "train" else 1)
        return synthetic_batches(partial(synthetic_fields, seed=seed), cfg.train.global_batch_size,
                                 micro_batch_size, dp_rank, dp_size, seed, start_step, transform)
    if split == "train":
        from dist_pretrain.data.stream import build_train_stream

        return build_train_stream(
            cfg.data.sources(), cfg.train.global_batch_size, micro_batch_size, dp_rank, dp_size, seed,
            num_workers=cfg.data.num_workers, shuffle_buffer=cfg.data.shuffle_buffer,
            on_corrupt=cfg.data.on_corrupt, start_step=start_step, transform=transform,
            worker_init_fn=loader_worker_init(cfg.checkpoint.signals),
        )
    from dist_pretrain.data.loader import build_lm_loader
    from dist_pretrain.data.manifest import eval_steps_for, read_manifest, split_shards

    path = cfg.data.valid_path or cfg.data.sources()[0][0]
    total = sum(s["samples"] for s in split_shards(path, read_manifest(path), "valid"))
    global_batch = cfg.train.global_batch_size
    steps = eval_steps_for(cfg.train.eval_steps, global_batch, total, path)
    loader = build_lm_loader(path, "valid", dp_rank, dp_size, block=global_batch // dp_size,
                             num_workers=cfg.data.num_workers, limit=steps * global_batch,
                             worker_init_fn=loader_worker_init(cfg.checkpoint.signals))
    return validation_batches(loader, micro_batch_size, transform, seed)


def validation_batches(loader, micro_batch_size: int, transform: Callable, seed: int):
    """One validation pass: this rank's samples (see ``data/loader.py``) in micro-batches.

    The loader deals every rank whole micro-batches. Examples are seeded by the sample's
    index in the split, so validation masks are the same at every evaluation, DP size and
    worker count.
    """
    import numpy as np

    from dist_pretrain.data.examples import sample_seed, stack

    examples = []
    for sample in loader:
        index = sample.pop("index")
        examples.append(transform(sample, np.random.default_rng(sample_seed("valid", seed, index)), None))
        if len(examples) == micro_batch_size:
            yield stack(examples)
            examples = []


def tokenizer_for(cfg: Config):
    """The tokenizer the data was made with (special and sentinel ids), checked against it."""
    from dist_pretrain.data.manifest import read_manifest
    from dist_pretrain.data.tokenizer import load_tokenizer

    manifest = read_manifest(cfg.data.sources()[0][0])
    tok = load_tokenizer(cfg.task.tokenizer or manifest["tokenizer"]["name"])
    if tok.vocab_hash != manifest["tokenizer"]["vocab_hash"]:
        raise ValueError(f"task.tokenizer={cfg.task.tokenizer!r} is not the tokenizer the data "
                         f"was made with ({manifest['tokenizer']['name']}); leave it unset")
    return tok
