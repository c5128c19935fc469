"""A GPT checkpoint ready for inference on this rank, at any TP / PP layout.

``load_causal_lm(SRC)`` takes a run directory (its newest good checkpoint), a checkpoint
directory or the output of ``dist-pretrain import``, builds the model at the current layout
(one process, or the TP x PP given, under torchrun / srun), fills it with weights only and
finds the tokenizer: ``--tokenizer``, else a ``tokenizer.json`` next to the weights (an
import), else the one named by the training data's manifest.

``CausalLM.forward`` runs one step of megatron-core's ``GPTModel`` with a
``StaticInferenceContext`` (the KV cache): the prompt block first, then one token per call.
Under pipeline parallelism each stage receives the previous stage's hidden states and sends
its own on; only the last stage gets logits, gathered over the TP ranks
(``runtime_gather_output``). ``agree`` hands the tokens chosen there to every rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from megatron.core import parallel_state
from megatron.core.inference.contexts import StaticInferenceContext

from dist_pretrain.config import Config
from dist_pretrain.errors import InferenceError, UserError


@dataclass
class CausalLM:
    """This rank's part of a decoder-only model, with what generation needs around it."""

    cfg: Config
    chunk: torch.nn.Module
    tokenizer: object  # dist_pretrain.data.tokenizer's interface (encode_batch, decode, eos_id)
    vocab_size: int  # ids the tokenizer knows; padded embedding rows above it are never chosen
    device: torch.device
    source: str = ""
    # rows of the model's own distribution (scoring): all embedding rows, as training's softmax
    # and the export have them, or the original vocab of an imported model (its export drops the
    # zero rows the import padded with)
    softmax_rows: int | None = None
    hidden_dtype: torch.dtype = torch.float32  # what pipeline stages pass on (bf16 in a bf16 training run)

    @property
    def max_positions(self) -> int:
        return self.cfg.model.max_positions

    @property
    def is_last_stage(self) -> bool:
        return parallel_state.is_pipeline_last_stage()

    def new_cache(self, batch: int, length: int) -> StaticInferenceContext:
        """A KV cache for ``batch`` sequences of at most ``length`` tokens (allocated per layer
        by megatron's attention on first use)."""
        return StaticInferenceContext(batch, length)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, positions: torch.Tensor, keep: torch.Tensor,
                cache: StaticInferenceContext | None = None) -> torch.Tensor | None:
        """Logits ``[b, s_out, padded vocab]`` on the last stage (None elsewhere) for the new
        tokens ``ids`` [b, s] at ``positions``; ``keep`` [b, s_total] marks real tokens among all
        the keys (cached and new; False = left padding). With a cache, ``s_out`` is 1 (the last
        position) and the cache advances by ``s``; without, every position's logits."""
        b, s = ids.shape
        # megatron's convention: True = masked; the causal part is added by the core attention
        mask = None if bool(keep.all()) else ~keep[:, None, None, :]  # no padding: SDPA's unmasked kernels
        if not parallel_state.is_pipeline_first_stage():
            hidden = torch.empty(s, b, self.cfg.model.hidden_size, dtype=self.hidden_dtype, device=self.device)
            torch.distributed.recv(hidden, src=parallel_state.get_pipeline_model_parallel_prev_rank())
            self.chunk.set_input_tensor(hidden)
        out = self.chunk(ids, positions, mask, inference_context=cache, runtime_gather_output=True)
        if cache is not None:
            cache.increment_sequence_len_offset(s)
        if not self.is_last_stage:
            torch.distributed.send(out.contiguous(), dst=parallel_state.get_pipeline_model_parallel_next_rank())
            return None
        return out

    def agree(self, tokens: torch.Tensor | None, batch: int) -> torch.Tensor:
        """The ids chosen on the first rank of the last stage, on every rank."""
        return agree_tokens(tokens, batch, self.device)


def agree_tokens(tokens: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
    """``tokens`` [batch] as chosen on the first TP rank of this replica's last pipeline stage, on
    every rank of the replica (the others pass None): one choice, so a sampled token cannot
    differ between ranks. Data-parallel replicas (``evaluate``) choose independently."""
    if not torch.distributed.is_initialized():
        return tokens
    group = parallel_state.get_model_parallel_group()
    if torch.distributed.get_world_size(group) == 1:
        return tokens
    if tokens is None:
        tokens = torch.empty(batch, dtype=torch.long, device=device)
    torch.distributed.broadcast(tokens, src=chooser_rank(), group=group)
    return tokens


def chooser_rank() -> int:
    """Global rank of the last pipeline stage's first TP rank in this model replica."""
    ranks = sorted(torch.distributed.get_process_group_ranks(parallel_state.get_model_parallel_group()))
    # megatron orders ranks tp-dp-pp (TP fastest): within a replica, stage by stage, TP rank 0 first
    last_stage = parallel_state.get_pipeline_model_parallel_world_size() - 1
    return ranks[last_stage * parallel_state.get_tensor_model_parallel_world_size()]


def checkpoint_tokenizer(cfg: Config, directory: Path, name: str | None = None):
    """Our tokenizer for a checkpoint: ``name``, else ``tokenizer.json`` (or a SentencePiece
    ``spiece.model``) in ``directory``, else the
    training data's (its manifest); InferenceError when none can be found."""
    from dist_pretrain.data.tokenizer import load_tokenizer

    for candidate in ("tokenizer.json", "spiece.model"):  # an import's (or an export's) tokenizer
        if name is None and (directory / candidate).is_file():
            name = str(directory / candidate)
    if name is None and not cfg.data.synthetic and cfg.data.sources():
        from dist_pretrain.data.manifest import read_manifest

        try:
            name = read_manifest(cfg.data.sources()[0][0])["tokenizer"]["name"]
        except UserError as err:
            raise InferenceError(f"the tokenizer of {directory} comes from its training data, which is not "
                                 f"readable here ({err}); pass --tokenizer NAME_OR_PATH") from None
    if name is None:
        raise InferenceError(f"{directory} was trained on synthetic tokens and names no tokenizer; pass "
                             "--tokenizer NAME_OR_PATH (gpt2, bert, a tokenizer.json or a SentencePiece .model)")
    try:
        return load_tokenizer(name)
    except ValueError as err:
        raise InferenceError(str(err)) from None


def load_model_chunk(src: str | Path, tensor: int = 1, pipeline: int = 1,
                     device: str | None = None) -> tuple[Config, Path, dict, torch.nn.Module, int]:
    """``(config, checkpoint directory, meta, this rank's model chunk in eval mode, embedding rows)``
    of ``src`` at TP = ``tensor``, PP = ``pipeline`` (both 1: one process), any family."""
    from dist_pretrain.models.load import (
        build_model,
        checkpoint_meta,
        checkpoint_shapes,
        init_single_process,
        load_weights,
        resolve_checkpoint,
    )
    from dist_pretrain.runtime import init_distributed, world_size_from_env

    directory = resolve_checkpoint(src)
    meta = checkpoint_meta(directory)
    cfg = Config.model_validate(meta["config"])
    world = world_size_from_env()
    if world % (tensor * pipeline):
        raise InferenceError(f"--tensor {tensor} x --pipeline {pipeline} does not divide the {world} processes; "
                             f"run under torchrun --nproc-per-node {tensor * pipeline} (or srun / mpirun)")
    if pipeline > cfg.model.num_layers:
        raise InferenceError(f"--pipeline {pipeline} is more than the model's {cfg.model.num_layers} layers")
    par = cfg.parallel.model_copy(update={"tensor": tensor, "pipeline": pipeline, "virtual_pipeline": None,
                                          "nproc": world})
    cfg = cfg.model_copy(update={"parallel": par})
    if world == 1:
        init_single_process()
    else:
        init_distributed(tensor, pipeline, None, cfg.parallel.timeout_minutes)
    rows = checkpoint_shapes(directory)["embedding.word_embeddings.weight"][0]
    chunks = build_model(cfg, rows)
    load_weights(chunks, directory)
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return cfg, directory, meta, chunks[0].to(target).eval(), rows


def known_vocab(meta: dict, cfg: Config, tokenizer, rows: int) -> int:
    """Ids that can be generated: the smallest of the embedding rows, the HF vocab of an imported
    model, the configured vocab and the tokenizer's (padded rows above it decode to nothing)."""
    known = [n for n in (meta.get("hf", {}).get("vocab_size"), cfg.model.vocab_size, tokenizer.vocab_size) if n]
    return min([rows, *known])


def load_causal_lm(src: str | Path, tokenizer: str | None = None, tensor: int = 1, pipeline: int = 1,
                   device: str | None = None) -> CausalLM:
    """The GPT of ``src`` on this rank at TP = ``tensor``, PP = ``pipeline`` (both 1: one process)."""
    from dist_pretrain.models.load import checkpoint_meta, resolve_checkpoint

    family = Config.model_validate(checkpoint_meta(resolve_checkpoint(src))["config"]).family
    if family != "gpt":
        hint = " (an encoder-decoder: use load_seq2seq_lm, or load_lm for either)" if family == "t5" else ""
        raise InferenceError(f"{src}: family={family} is not a decoder-only model{hint}")
    cfg, directory, meta, chunk, rows = load_model_chunk(src, tensor, pipeline, device)
    tok = checkpoint_tokenizer(cfg, directory, tokenizer)
    return CausalLM(cfg=cfg, chunk=chunk, tokenizer=tok, vocab_size=known_vocab(meta, cfg, tok, rows),
                    device=next(chunk.parameters()).device, source=str(directory),
                    softmax_rows=int(meta.get("hf", {}).get("vocab_size") or rows))


def load_lm(src: str | Path, tokenizer: str | None = None, tensor: int = 1, pipeline: int = 1,
            device: str | None = None):
    """The model of ``src`` ready for ``generate``: a ``CausalLM`` (GPT) or a ``Seq2SeqLM`` (T5)."""
    from dist_pretrain.models.load import checkpoint_meta, resolve_checkpoint

    if Config.model_validate(checkpoint_meta(resolve_checkpoint(src))["config"]).family == "t5":
        from dist_pretrain.inference.seq2seq import load_seq2seq_lm

        return load_seq2seq_lm(src, tokenizer, tensor, pipeline, device)
    return load_causal_lm(src, tokenizer, tensor, pipeline, device)
