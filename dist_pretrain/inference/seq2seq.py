"""Generation for encoder-decoder models (T5): the encoder once, then the decoder one token a step.

megatron-core's ``T5Model`` has no usable incremental decoding: its cross-attention would
store the encoder's keys and values in the same per-layer cache slot as the self-attention
(they share ``layer_number``) and append them again every step. So the decoder step here is
written out with the layer's own modules (norms, projections, core attention, MLP,
bias-dropout-add), keeping two caches per layer:

* self-attention: the keys and values of every decoder position so far, one position
  appended per step (a preallocated ``[max_len, b, heads, head_dim]`` buffer);
* cross-attention: the keys and values of the encoder output, computed once after the
  encoder ran and reused every step.

A T5 input is the prompt's tokens and EOS (as in training and as HF's T5 tokenizer adds),
right-padded into a batch and masked; a task prefix (``summarize: ...``) is plain text and
sentinels (``<extra_id_0>``) are pieces of the SentencePiece vocabulary. The decoder starts
from the decoder-start id (pad, as in T5), which ``token_ids`` do not include. Every row is
at the same decoder position each step, so no decoder padding exists. ``kv_cache=False``
recomputes the whole model (``T5Model.forward``) every step instead: the reference the
caches are tested against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.transformer.enums import AttnMaskType

from dist_pretrain.config import Config
from dist_pretrain.inference.model import (
    InferenceError,
    agree_tokens,
    checkpoint_tokenizer,
    known_vocab,
    load_model_chunk,
)
from dist_pretrain.inference.sampling import SamplingParams, next_tokens


@dataclass
class Seq2SeqLM:
    """This rank's T5 (``megatron.core.models.T5.T5Model``) with what generation needs around it."""

    cfg: Config
    chunk: torch.nn.Module
    tokenizer: object  # SentencePiece with sentinels, usually (dist_pretrain.data.tokenizer)
    vocab_size: int  # ids that may be generated (padded embedding rows above are never chosen)
    device: torch.device
    source: str = ""

    @property
    def max_positions(self) -> int:
        """Encoder tokens per prompt (EOS included): the training input length."""
        return self.cfg.model.max_positions

    @property
    def max_target_positions(self) -> int | None:
        """Decoder positions the model has (learned absolute positions), or None (relative bias)."""
        if self.chunk.position_embedding_type == "learned_absolute":
            return self.chunk.max_sequence_length
        return None

    @property
    def decoder_start_id(self) -> int:
        return self.tokenizer.special_ids.get("pad", 0)

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_id


def load_seq2seq_lm(src: str | Path, tokenizer: str | None = None, tensor: int = 1, pipeline: int = 1,
                    device: str | None = None) -> Seq2SeqLM:
    """The T5 of ``src`` on this rank at TP = ``tensor`` (under torchrun); PP must be 1."""
    if pipeline != 1:
        raise InferenceError(f"--pipeline {pipeline}: T5 generation runs at pipeline 1 (the decoder steps need "
                             "the encoder's output on the same stage); use --tensor to split a large T5")
    cfg, directory, meta, chunk, rows = load_model_chunk(src, tensor, 1, device)
    if cfg.family != "t5":
        raise InferenceError(f"{directory}: family={cfg.family} is not an encoder-decoder (T5) model")
    tok = checkpoint_tokenizer(cfg, directory, tokenizer)
    return Seq2SeqLM(cfg=cfg, chunk=chunk, tokenizer=tok, vocab_size=known_vocab(meta, cfg, tok, rows),
                     device=next(chunk.parameters()).device, source=str(directory))


def full_vocab(logits: torch.Tensor) -> torch.Tensor:
    """Logits over the whole vocab from this TP rank's slice (the T5 head is vocab-parallel)."""
    if parallel_state.get_tensor_model_parallel_world_size() == 1:
        return logits
    return tensor_parallel.gather_from_tensor_model_parallel_region(logits)


def heads_of_this_rank(bias: torch.Tensor) -> torch.Tensor:
    """``[1, heads, q, k]`` relative position bias -> this TP rank's heads (as ``T5Model`` does)."""
    if parallel_state.get_tensor_model_parallel_world_size() == 1:
        return bias
    local = tensor_parallel.scatter_to_tensor_model_parallel_region(bias.permute(0, 2, 3, 1))
    return local.permute(0, 3, 1, 2)


class DecoderCache:
    """Per decoder layer: the self-attention keys / values so far and the cross-attention keys /
    values of the encoder output (computed here, once)."""

    def __init__(self, model: torch.nn.Module, encoder_out: torch.Tensor, max_len: int):
        self.length = 0
        self.self_kv, self.cross_kv = [], []
        for layer in model.decoder.layers:
            cross = layer.cross_attention
            mixed, _ = cross.linear_kv(encoder_out)  # [s_enc, b, heads * 2 * head_dim]
            mixed = mixed.view(*mixed.shape[:-1], cross.num_attention_heads_per_partition,
                               2 * cross.hidden_size_per_attention_head)
            self.cross_kv.append(tensor_parallel.split_tensor_along_last_dim(mixed, 2))
            attn = layer.self_attention
            shape = (max_len, encoder_out.shape[1], attn.num_query_groups_per_partition,
                     attn.hidden_size_per_attention_head)
            self.self_kv.append((encoder_out.new_empty(shape), encoder_out.new_empty(shape)))
        self.bias = None
        if model.position_embedding_type == "relative":  # rows: query position, columns: key position
            self.bias = heads_of_this_rank(model.decoder_relative_pos_emb(max_len, max_len))


def decoder_layer_step(layer, hidden: torch.Tensor, i: int, cache: DecoderCache, enc_mask: torch.Tensor,
                       bias: torch.Tensor | None) -> torch.Tensor:
    """One decoder layer for the newest position (``hidden``: ``[1, b, h]``), in eval mode: what
    ``TransformerLayer.forward`` does, with the self-attention keys / values appended to the
    cache and the cross-attention ones read from it."""
    t, fusion, drop = cache.length, layer.config.bias_dropout_fusion, layer.hidden_dropout
    attn = layer.self_attention
    q, k, v = attn.get_query_key_value_tensors(layer.input_layernorm(hidden))
    keys, values = cache.self_kv[i]
    keys[t:t + 1], values[t:t + 1] = k, v
    ctx = attn.core_attention(q, keys[:t + 1], values[:t + 1], None, attn_mask_type=AttnMaskType.no_mask,
                              attention_bias=bias)
    hidden = layer.self_attn_bda(False, fusion)(attn.linear_proj(ctx), hidden, drop)

    cross = layer.cross_attention
    q, _ = cross.linear_q(layer.pre_cross_attn_layernorm(hidden))
    q = q.view(*q.shape[:-1], cross.num_attention_heads_per_partition, cross.hidden_size_per_attention_head)
    ctx = cross.core_attention(q, *cache.cross_kv[i], enc_mask, attn_mask_type=AttnMaskType.padding)
    hidden = layer.cross_attn_bda(False, fusion)(cross.linear_proj(ctx), hidden, drop)

    return layer.mlp_bda(False, fusion)(layer.mlp(layer.pre_mlp_layernorm(hidden)), hidden, drop)


def decoder_step(model: torch.nn.Module, tokens: torch.Tensor, cache: DecoderCache,
                 enc_mask: torch.Tensor) -> torch.Tensor:
    """Logits ``[b, vocab]`` for the next token after ``tokens`` [b] (the newest decoder input)."""
    t = cache.length
    positions = torch.full_like(tokens, t)[:, None]
    hidden = model.embedding(input_ids=tokens[:, None], position_ids=positions)  # [1, b, h]
    bias = None if cache.bias is None else cache.bias[:, :, t:t + 1, :t + 1]
    for i, layer in enumerate(model.decoder.layers):
        hidden = decoder_layer_step(layer, hidden, i, cache, enc_mask, bias)
    cache.length += 1
    if model.decoder.final_layernorm is not None:
        hidden = model.decoder.final_layernorm(hidden)
    tied = model.shared_embedding_or_output_weight() if model.share_embeddings_and_output_weights else None
    logits = model.lm_head(hidden, word_embeddings_weight=tied)
    return full_vocab(logits)[0]


@torch.no_grad()
def greedy_targets(model: torch.nn.Module, enc_ids: torch.Tensor, enc_real: torch.Tensor, start_id: int,
                   eos_id: int, max_new_tokens: int, vocab_size: int, live: torch.Tensor) -> list[list[int]] | None:
    """Greedy target ids (EOS and what follows cut off) of a batch of encoder inputs
    (``enc_ids`` [b, s], ``enc_real`` 1 = real token, padding on the right), with the caches
    above: the encoder runs once, then one decoder position a step, until every ``live`` row
    has produced EOS or ``max_new_tokens`` are made. Argmax over the first ``vocab_size`` ids.

    At PP=2 (``dist_pretrain.models.t5``: the encoder on stage 0, the decoder on stage 1) the
    encoder stage sends its output to the decoder stage once and returns None; the decoder
    stage receives it and decodes alone, so no message crosses the stages per token. Every rank
    of a stage must call this with the same batch (TP ranks split heads and the vocab)."""
    width = int(enc_real.sum(1).max())  # columns of padding only are masked everywhere: dropped
    enc_ids, enc_mask = enc_ids[:, :width], (enc_real[:, :width] == 0)[:, None, None, :]
    b = enc_ids.shape[0]
    if model.add_encoder:
        encoder_out = model(enc_ids, None, enc_mask, None, None, output_encoder_hidden_only=True)
        if not model.add_decoder:
            torch.distributed.send(encoder_out.contiguous(), parallel_state.get_pipeline_model_parallel_next_rank())
            return None
    else:
        encoder_out = torch.empty(width, b, model.config.hidden_size, device=enc_ids.device,
                                  dtype=next(model.parameters()).dtype)
        torch.distributed.recv(encoder_out, parallel_state.get_pipeline_model_parallel_prev_rank())
    cache = DecoderCache(model, encoder_out, max_new_tokens)
    tokens = torch.full((b,), start_id, dtype=torch.long, device=enc_ids.device)
    out: list[list[int]] = [[] for _ in range(b)]
    running = live.clone()
    for _ in range(max_new_tokens):
        tokens = decoder_step(model, tokens, cache, enc_mask)[:, :vocab_size].argmax(-1)
        for row in running.nonzero()[:, 0].tolist():
            if tokens[row] != eos_id:
                out[row].append(int(tokens[row]))
        running &= tokens != eos_id
        if not running.any():
            break
    return out


def encode_sources(lm: Seq2SeqLM, prompts: Sequence[str]) -> tuple[list[list[int]], list[int]]:
    """Each prompt's ids and EOS, cut on the right to the encoder length (EOS kept); the number
    of tokens cut per prompt."""
    limit = lm.max_positions
    out, dropped = [], []
    for ids in lm.tokenizer.encode_batch(list(prompts)):
        dropped.append(max(0, len(ids) + 1 - limit))
        out.append(ids[:limit - 1] + [lm.eos_id])
    return out, dropped


@torch.no_grad()
def generate_seq2seq(lm: Seq2SeqLM, prompts: Sequence[str], max_new_tokens: int = 32,
                     sampling: SamplingParams | None = None, stop: Sequence[str] = (), stop_at_eos: bool = True,
                     kv_cache: bool = True, on_token: Callable[[int, list[int]], None] | None = None) -> list:
    """Target text for every prompt (``dist_pretrain.inference.generate``'s contract)."""
    from dist_pretrain.inference.generate import Completion, extend_completions, finish_completions

    sampling = sampling or SamplingParams()
    limit = lm.max_target_positions
    if limit is not None and max_new_tokens > limit:
        raise InferenceError(f"max_new_tokens={max_new_tokens} is more than the T5 decoder's {limit} positions")
    encoded, dropped = encode_sources(lm, prompts)
    b, width, dev = len(encoded), max(len(e) for e in encoded), lm.device
    pad = lm.decoder_start_id
    enc_ids = torch.tensor([e + [pad] * (width - len(e)) for e in encoded], dtype=torch.long, device=dev)
    enc_mask = torch.tensor([[False] * len(e) + [True] * (width - len(e)) for e in encoded],
                            device=dev)[:, None, None, :]  # megatron's convention: True = masked
    model = lm.chunk
    out = [Completion(prompt=p, prompt_tokens=len(e), truncated_prompt_tokens=d)
           for p, e, d in zip(prompts, encoded, dropped)]
    generator = torch.Generator(device=dev).manual_seed(sampling.seed)
    dec_ids = torch.full((b, 1), pad, dtype=torch.long, device=dev)
    if kv_cache:
        encoder_out = model(enc_ids, None, enc_mask, None, None, output_encoder_hidden_only=True)
        cache = DecoderCache(model, encoder_out, max_new_tokens)
    running = [True] * b
    for _ in range(max_new_tokens):
        if kv_cache:
            logits = decoder_step(model, dec_ids[:, -1], cache, enc_mask)
        else:
            no_padding = torch.zeros(b, 1, 1, dec_ids.shape[1], dtype=torch.bool, device=dev)
            logits = full_vocab(model(enc_ids, dec_ids, enc_mask, no_padding, enc_mask))[:, -1]
        chosen = agree_tokens(next_tokens(logits, lm.vocab_size, sampling, generator), b, dev)
        if not extend_completions(out, running, chosen.tolist(), lm.tokenizer, stop, stop_at_eos, on_token):
            break
        dec_ids = torch.cat([dec_ids, chosen[:, None]], 1)
    return finish_completions(out, lm.tokenizer)
