"""Core attention on ``torch.nn.functional.scaled_dot_product_attention``.

Plugged into megatron-core's layer specs in place of ``DotProductAttention``, which
allocates its score buffer from a CUDA global memory buffer and materialises the full
[b, heads, s, s] score matrix. SDPA picks flash / memory-efficient kernels on GPUs and
a fused CPU kernel here, and handles causal, padding and cross-attention masks.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.utils import divide


class SDPAttention(MegatronModule):
    """Drop-in for megatron-core's core attention (same constructor and forward contract).

    Inputs are ``[s, b, heads_per_partition, head_dim]``; output ``[s, b, hidden_per_partition]``.
    ``attention_mask`` follows megatron's convention: boolean, ``True`` = masked out,
    broadcastable to ``[b, heads, sq, sk]``. With ``attn_mask_type=causal`` the causal
    mask is applied on top of any padding mask. ``attention_bias`` (T5's relative position
    bias, this rank's heads) is added to the scaled logits before the masks.
    """

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection=None,
    ):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("SDPAttention does not support context parallelism")
        tp = pg_collection.tp.size() if pg_collection is not None else None
        if tp is None:
            from megatron.core import parallel_state

            tp = parallel_state.get_tensor_model_parallel_world_size()
        self.attn_mask_type = attn_mask_type
        self.heads_per_partition = divide(config.num_attention_heads, tp)
        self.groups_per_partition = divide(config.num_query_groups, tp)
        self.hidden_per_partition = divide(config.kv_channels * config.num_attention_heads, tp)
        self.softmax_scale = softmax_scale or 1.0 / math.sqrt(config.kv_channels)
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        attn_mask_type: Optional[AttnMaskType] = None,
        attention_bias: Optional[torch.Tensor] = None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        if packed_seq_params is not None:
            raise NotImplementedError("SDPAttention: packed sequences are not supported")
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        # [s, b, h, d] -> [b, h, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        sq, sk = q.shape[2], k.shape[2]
        mask = None
        is_causal = mask_type == AttnMaskType.causal
        # a mask given with ``no_mask`` is kept: megatron's KV-cache decoding switches the type to
        # no_mask after the prompt (one new query sees every cached key), but left-padded prompts
        # still need their padding keys masked (``dist_pretrain.inference``)
        if attention_mask is not None:
            mask = ~attention_mask.bool()  # SDPA: True = attend
        if is_causal and (mask is not None or attention_bias is not None):
            causal = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(sk - sq)
            mask = causal if mask is None else mask & causal
            is_causal = False
        if mask is not None:
            # a query row with no key to attend to (a padding query under a [b,1,s,s] mask)
            # makes SDPA return NaN; let it attend everywhere: its output is padding anyway
            mask = mask | ~mask.any(dim=-1, keepdim=True)
        if attention_bias is not None:
            # T5's relative position bias [1 or b, heads of this TP rank, sq, sk] (megatron's T5Model
            # scatters the heads): added to the logits, the masked positions at -inf on top
            if attention_bias.shape[1] != self.heads_per_partition:
                raise ValueError(f"attention_bias has {attention_bias.shape[1]} heads, this rank's attention "
                                 f"{self.heads_per_partition}")
            bias = attention_bias.to(q.dtype)
            mask = bias if mask is None else torch.where(mask, bias, float("-inf"))
        dropout = self.dropout_p if self.training else 0.0
        enable_gqa = self.heads_per_partition != self.groups_per_partition
        if dropout > 0.0 and not self.config.sequence_parallel:
            # tensor-parallel ranks hold different heads: fork the model-parallel RNG like megatron
            with tensor_parallel.get_cuda_rng_tracker().fork():
                ctx = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal,
                    scale=self.softmax_scale, enable_gqa=enable_gqa,
                )
        else:
            ctx = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal,
                scale=self.softmax_scale, enable_gqa=enable_gqa,
            )
        # [b, h, s, d] -> [s, b, h*d]
        return ctx.permute(2, 0, 1, 3).reshape(ctx.shape[2], ctx.shape[0], self.hidden_per_partition)
