"""What a model family provides to the shared training loop."""

from __future__ import annotations

from typing import Callable, Iterator, Protocol

import torch
from megatron.core.transformer.transformer_config import TransformerConfig

from dist_pretrain.config import Config


class Family(Protocol):
    name: str

    def build_chunk(
        self, cfg: Config, tconfig: TransformerConfig, vocab_size: int,
        pre_process: bool, post_process: bool, vp_stage: int | None,
    ) -> torch.nn.Module:
        """One pipeline chunk of the model (megatron-core module)."""

    def stage_shared_parameter_names(self, cfg: Config) -> set[str]:
        """Parameters with a copy on the first and last pipeline stage (gradients summed)."""

    def tied_parameter_names(self, cfg: Config) -> dict[str, str]:
        """Global parameter name -> the name whose initial value it must share."""

    def forward_step(
        self, batch: dict[str, torch.Tensor], model: torch.nn.Module
    ) -> tuple[torch.Tensor, Callable[[torch.Tensor], tuple]]:
        """Run one micro-batch through a chunk; return (output, loss_func) as megatron expects."""

    def batches(self, cfg: Config, split: str, dp_rank: int, dp_size: int, micro_batch_size: int,
                seed: int, vocab_size: int, start_step: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Collated micro-batches for this data-parallel rank, from global step ``start_step``."""

    def tokens_per_sample(self, cfg: Config) -> int:
        """Tokens one sample feeds the model (throughput is reported in these)."""

    def flops_per_sample(self, cfg: Config, vocab_size: int) -> float:
        """Model FLOPs for forward + backward of one sample (no recompute)."""

    loss_key: str
    """Key of the [loss sum, token count] pair in the dicts loss_func returns."""

    def metric_keys(self, cfg: Config) -> list[str]:
        """Keys of the [sum, count] pairs loss_func logs (loss_key first); logged as train/<key>."""


def family_batches(cfg: Config, split: str, dp_rank: int, dp_size: int, micro_batch_size: int,
                   seed: int, start_step: int, transform: Callable,
                   synthetic_fields: Callable[[int, int], dict]) -> Iterator[dict[str, torch.Tensor]]:
    """Micro-batches for any family: synthetic (tests), the training stream, or validation.

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
    return _validation_batches(loader, micro_batch_size, transform, seed)


def _validation_batches(loader, micro_batch_size: int, transform: Callable, seed: int):
    """One validation pass: this rank's samples (see ``data/loader.py``) in micro-batches.

    The loader deals every rank whole micro-batches. Examples are seeded by the sample's
    index in the split, so validation masks are the same at every evaluation, DP size and
    worker count.
    """
    import numpy as np

    from dist_pretrain.data.stream import sample_seed, stack

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
    tok = load_tokenizer(cfg.objective.tokenizer or manifest["tokenizer"]["name"])
    if tok.vocab_hash != manifest["tokenizer"]["vocab_hash"]:
        raise ValueError(f"objective.tokenizer={cfg.objective.tokenizer!r} is not the tokenizer the data "
                         f"was made with ({manifest['tokenizer']['name']}); leave it unset")
    return tok
