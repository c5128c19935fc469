"""Log-likelihood of a continuation given a context, the quantity every scored task reads.

Tokenization follows lm-evaluation-harness, so that both score the same tokens: whitespace
at the end of the context moves to the start of the continuation; the continuation's tokens
are those of ``encode(context + continuation)`` after the context's own tokens (a BPE merge
across the boundary stays in the continuation); an empty context starts from EOS. A request
longer than the model's positions loses tokens from the left of its context, and says so.

The log-probabilities are the model's own softmax over its embedding rows: all of them (padded
rows included, as in training and in ``dist-pretrain export``), or for an imported model the
original vocab (``CausalLM.softmax_rows``), so the numbers equal those of the exported (or
original) model in transformers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dist_pretrain.inference.model import CausalLM


@dataclass(frozen=True)
class Score:
    loglik: float  # sum of the continuation tokens' log-probabilities
    greedy: bool  # every continuation token was the argmax
    tokens: int  # continuation tokens
    truncated: bool  # context tokens were dropped from the left


def split_tokens(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-evaluation-harness forms them."""
    stripped = context.rstrip()
    continuation = context[len(stripped):] + continuation
    if not stripped:
        return [tokenizer.eos_id], tokenizer.encode_batch([continuation])[0]
    whole, ctx = tokenizer.encode_batch([stripped + continuation, stripped])
    return ctx, whole[len(ctx):]


@torch.no_grad()
def score_requests(lm: CausalLM, requests: Sequence[tuple[str, str]], batch_size: int = 16) -> list[Score] | None:
    """A ``Score`` per (context, continuation) pair, batched with right padding (the causal
    mask keeps real tokens from seeing it); None on the pipeline stages before the last (all
    stages call this together)."""
    limit = lm.max_positions
    rows = []
    for context, continuation in requests:
        ctx, cont = split_tokens(lm.tokenizer, context, continuation)
        if not cont:
            raise ValueError(f"continuation {continuation!r} has no tokens (context {context[-40:]!r})")
        if len(cont) > limit:
            raise ValueError(f"continuation of {len(cont)} tokens does not fit the model's {limit} positions")
        full = (ctx + cont)[-(limit + 1):]
        rows.append((full, len(cont), len(ctx) + len(cont) > limit + 1))
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))  # similar lengths share a batch
    scores: list[Score | None] = [None] * len(rows)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = len(rows[idx[0]][0]) - 1
        ids = torch.full((len(idx), width), lm.tokenizer.eos_id, dtype=torch.long, device=lm.device)
        for j, i in enumerate(idx):
            ids[j, :len(rows[i][0]) - 1] = torch.tensor(rows[i][0][:-1])
        positions = torch.arange(width, device=lm.device).expand_as(ids)
        keep = torch.ones_like(ids, dtype=torch.bool)
        logits = lm.forward(ids, positions, keep)
        if logits is None:  # not the last pipeline stage: it only passed hidden states on
            continue
        logits = logits[..., :lm.softmax_rows]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        for j, i in enumerate(idx):
            full, n, truncated = rows[i]
            target = torch.tensor(full[-n:], device=lm.device)
            lp = logprobs[j, len(full) - 1 - n:len(full) - 1]  # position t predicts token t + 1
            picked = lp.gather(-1, target[:, None]).squeeze(-1)
            scores[i] = Score(float(picked.sum()), bool((lp.argmax(-1) == target).all()), n, truncated)
    return scores if lm.is_last_stage else None
