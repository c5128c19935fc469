"""Weight layouts shared by the HF maps: megatron's fused QKV, stacked layers, padded vocab.

megatron-core's ``linear_qkv`` is one column-parallel GEMM whose output rows are grouped
per query group: ``[q_0 .. q_{n-1}, k, v]`` for group 0, then group 1, ... (each block one
head's ``head_dim`` rows; with plain multi-head attention a group is one head). Splitting
it along rows for tensor parallelism then gives every rank whole groups. HF models keep
Q, K and V apart (or, GPT-2, as ``[Q | K | V]`` columns of a Conv1D).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Heads:
    heads: int  # query heads
    groups: int  # key/value heads (= heads without GQA)
    head_dim: int

    @property
    def per_group(self) -> int:
        return self.heads // self.groups


def split_qkv(fused: torch.Tensor, h: Heads) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """megatron's per-group interleaved ``linear_qkv`` weight ``[(heads + 2 groups) d, ...]``
    (or bias) -> Q ``[heads d, ...]``, K and V ``[groups d, ...]``, heads in order."""
    rest = fused.shape[1:]
    blocks = fused.reshape(h.groups, (h.per_group + 2) * h.head_dim, *rest)
    q, k, v = torch.split(blocks, [h.per_group * h.head_dim, h.head_dim, h.head_dim], dim=1)
    return (q.reshape(h.heads * h.head_dim, *rest), k.reshape(h.groups * h.head_dim, *rest),
            v.reshape(h.groups * h.head_dim, *rest))


def join_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, h: Heads) -> torch.Tensor:
    """Inverse of ``split_qkv``."""
    rest = q.shape[1:]
    blocks = torch.cat([q.reshape(h.groups, h.per_group * h.head_dim, *rest),
                        k.reshape(h.groups, h.head_dim, *rest), v.reshape(h.groups, h.head_dim, *rest)], dim=1)
    return blocks.reshape((h.heads + 2 * h.groups) * h.head_dim, *rest)


def unstack(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, list[torch.Tensor]]:
    """``prefix``-stacked layer tensors ``[L, ...]`` -> name (after the prefix) -> per-layer list."""
    return {k[len(prefix):]: list(v.unbind(0)) for k, v in weights.items() if k.startswith(prefix)}


def stack(layers: dict[str, list[torch.Tensor]], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: torch.stack(v) for k, v in layers.items()}


def pad_rows(table: torch.Tensor, rows: int) -> torch.Tensor:
    """A vocab table padded with zero rows to ``rows`` (megatron's padded vocab)."""
    if table.shape[0] > rows:
        raise ValueError(f"vocab table has {table.shape[0]} rows, more than the padded size {rows}")
    return torch.cat([table, table.new_zeros(rows - table.shape[0], *table.shape[1:])]) if rows > table.shape[0] \
        else table


def padded(vocab: int, multiple: int = 128) -> int:
    return -(-vocab // multiple) * multiple


EMBEDDING, OUTPUT = "embedding.word_embeddings.weight", "output_layer.weight"


def top_to_hf(weights: dict[str, torch.Tensor], top_map: list[tuple[str, str]], tied: bool, vocab: int,
              head: str = "lm_head.weight") -> dict[str, torch.Tensor]:
    """The non-layer tensors (``top_map``: ours -> theirs; the word embedding first) with the
    vocab tables cut to ``vocab`` rows, and the LM head: the embedding when ``tied``."""
    out = {theirs: weights[ours] for ours, theirs in top_map}
    embedding = top_map[0][1]
    out[embedding] = out[embedding][:vocab]
    out[head] = out[embedding] if tied else weights[OUTPUT][:vocab]
    return out


def top_from_hf(state: dict[str, torch.Tensor], top_map: list[tuple[str, str]], tied: bool,
                head: str = "lm_head.weight") -> dict[str, torch.Tensor]:
    """Inverse of ``top_to_hf`` (rows as in ``state``)."""
    out = {ours: state[theirs] for ours, theirs in top_map}
    if not tied:
        out[OUTPUT] = state[head]
    return out
