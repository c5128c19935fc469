"""Batched text generation for decoder-only models with a KV cache.

Prompts of different lengths are left-padded into one batch. Each row's positions count
its own tokens only (the first real token is position 0, as in training), and the padding
keys are masked in every step, so a prompt gives the same text alone or in a batch.

One prefill pass over the prompt block fills megatron's ``StaticInferenceContext``; after
it every step feeds only the newest token of each row and attends to the cached keys and
values (``kv_cache=False`` recomputes the whole sequence every step instead: the reference
the cache is tested against). A row stops at EOS, at a stop string, or after
``max_new_tokens``; the batch stops when every row has.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from dist_pretrain import cpu_compat
from dist_pretrain.inference.model import CausalLM, InferenceError
from dist_pretrain.inference.sampling import SamplingParams, next_tokens


@dataclass
class Completion:
    """One prompt's result. ``token_ids`` are the generated ids only (a final EOS included);
    ``completion`` is their text, cut before a stop string and without EOS."""

    prompt: str
    completion: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"  # "eos", "stop" or "length"
    prompt_tokens: int = 0
    truncated_prompt_tokens: int = 0  # dropped from the left to fit the position limit

    def row(self) -> dict:
        return {"prompt": self.prompt, "completion": self.completion, "token_ids": self.token_ids}


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop string, and whether one occurred."""
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[:min(hits)], True) if hits else (text, False)


def encode_prompts(lm: CausalLM, prompts: Sequence[str], max_new_tokens: int) -> tuple[list[list[int]], list[int]]:
    """Token ids of each prompt, left-truncated to leave room for ``max_new_tokens`` within the
    model's positions; an empty prompt starts from EOS (a document boundary, as in training)."""
    room = lm.max_positions - max_new_tokens
    if room < 1:
        raise InferenceError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt: the model has "
                             f"{lm.max_positions} positions")
    encoded = [ids or [lm.tokenizer.eos_id] for ids in lm.tokenizer.encode_batch(list(prompts))]
    dropped = [max(0, len(ids) - room) for ids in encoded]
    return [ids[d:] for ids, d in zip(encoded, dropped)], dropped


@torch.no_grad()
def generate(lm, prompts: Sequence[str], max_new_tokens: int = 32, sampling: SamplingParams | None = None,
             stop: Sequence[str] = (), stop_at_eos: bool = True, kv_cache: bool = True,
             on_token: Callable[[int, list[int]], None] | None = None) -> list[Completion]:
    """Continue every prompt; ``on_token(row, generated_ids)`` is called after each step for
    rows still running (streaming). All ranks call this together and get the same result.
    ``lm``: a ``CausalLM`` (GPT) or a ``Seq2SeqLM`` (T5; ``dist_pretrain.inference.seq2seq``),
    as ``load_lm`` returns."""
    if isinstance(prompts, str):
        raise InferenceError("prompts must be a list of strings, not one string")
    if not prompts:
        return []
    if max_new_tokens < 1:
        raise InferenceError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not isinstance(lm, CausalLM):  # an encoder-decoder (T5)
        from dist_pretrain.inference.seq2seq import generate_seq2seq

        return generate_seq2seq(lm, prompts, max_new_tokens, sampling, stop, stop_at_eos, kv_cache, on_token)
    sampling = sampling or SamplingParams()
    encoded, dropped = encode_prompts(lm, prompts, max_new_tokens)
    b, width = len(encoded), max(len(ids) for ids in encoded)
    pad = lm.tokenizer.eos_id
    dev = lm.device
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in encoded], dtype=torch.long, device=dev)
    keep = torch.tensor([[False] * (width - len(r)) + [True] * len(r) for r in encoded], device=dev)
    positions = (keep.long().cumsum(-1) - 1).clamp(min=0)
    generator = torch.Generator(device=dev).manual_seed(sampling.seed)
    cache = lm.new_cache(b, width + max_new_tokens) if kv_cache else None
    out = [Completion(prompt=p, prompt_tokens=len(e), truncated_prompt_tokens=d)
           for p, e, d in zip(prompts, encoded, dropped)]
    running = [True] * b
    step_ids, step_pos = ids, positions
    # one process: the steps after the prefill allocate nothing (the cache exists), so they run
    # without the CUDA -> CPU redirects (TP / PP communication buffers still need them)
    alone = not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1
    for step in range(max_new_tokens):
        with cpu_compat.suspended() if step and kv_cache and alone else contextlib.nullcontext():
            logits = lm.forward(step_ids, step_pos, keep, cache)
        chosen = next_tokens(logits[:, -1, :], lm.vocab_size, sampling, generator) if logits is not None else None
        chosen = lm.agree(chosen, b)
        if not extend_completions(out, running, chosen.tolist(), lm.tokenizer, stop, stop_at_eos, on_token):
            break
        new = chosen.unsqueeze(1)
        new_pos = positions[:, -1:] + 1
        ids, positions = torch.cat([ids, new], 1), torch.cat([positions, new_pos], 1)
        keep = torch.cat([keep, torch.ones(b, 1, dtype=torch.bool, device=dev)], 1)
        step_ids, step_pos = (new, new_pos) if kv_cache else (ids, positions)
    return finish_completions(out, lm.tokenizer)


def extend_completions(out: list[Completion], running: list[bool], tokens: list[int], tokenizer,
                       stop: Sequence[str], stop_at_eos: bool, on_token=None) -> bool:
    """One decoding step: append each running row's token; a row stops at EOS or a stop string.
    Returns whether any row is still running (shared by the GPT and T5 loops)."""
    for row, token in enumerate(tokens):
        if not running[row]:
            continue
        c = out[row]
        c.token_ids.append(token)
        if stop_at_eos and token == tokenizer.eos_id:
            c.completion, c.finish_reason = tokenizer.decode(c.token_ids[:-1]), "eos"
            running[row] = False
        elif stop:
            text, hit = cut_at_stop(tokenizer.decode(c.token_ids), stop)
            if hit:
                c.completion, c.finish_reason = text, "stop"
                running[row] = False
        if on_token is not None:
            on_token(row, c.token_ids)
    return any(running)


def finish_completions(out: list[Completion], tokenizer) -> list[Completion]:
    """The text of the rows that ran to the token limit (the others got theirs when they stopped)."""
    for c in out:
        if c.finish_reason == "length":
            c.completion = tokenizer.decode(c.token_ids)
    return out
