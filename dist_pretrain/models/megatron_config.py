"""Our config -> megatron-core ``TransformerConfig`` (shared by all model families)."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig

from dist_pretrain.config import Config

# model.activation -> megatron's activation_func; the gated ones apply it to the first half of
# linear_fc1's output (the gate) and multiply by the second (megatron's gated_linear_unit)
ACTIVATIONS = {"gelu": F.gelu, "gelu_tanh": partial(F.gelu, approximate="tanh"), "relu": F.relu,
               "swiglu": F.silu, "geglu": F.gelu, "geglu_tanh": partial(F.gelu, approximate="tanh")}
GATED = ("swiglu", "geglu", "geglu_tanh")


def transformer_config(cfg: Config, on_gpu: bool) -> TransformerConfig:
    m, par, tr = cfg.model, cfg.parallel, cfg.train
    bf16 = tr.precision == "bf16"
    recompute = {} if m.recompute == "none" else dict(
        recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1
    )
    return TransformerConfig(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        num_attention_heads=m.num_attention_heads,
        ffn_hidden_size=m.ffn,
        tensor_model_parallel_size=par.tensor,
        pipeline_model_parallel_size=par.pipeline,
        virtual_pipeline_model_parallel_size=par.virtual_pipeline if par.pipeline > 1 else None,
        pipeline_dtype=torch.bfloat16 if bf16 else torch.float32,
        bf16=bf16,
        params_dtype=torch.float32,
        hidden_dropout=m.hidden_dropout,
        attention_dropout=m.attention_dropout,
        init_method_std=m.init_std,
        layernorm_epsilon=m.layernorm_epsilon,
        normalization="RMSNorm" if m.normalization == "rmsnorm" else "LayerNorm",
        activation_func=ACTIVATIONS[m.activation],
        gated_linear_unit=m.activation in GATED,
        add_bias_linear=m.bias,
        num_query_groups=m.num_query_groups,
        softmax_scale=m.softmax_scale,
        # weights are allocated (not drawn) on the CPU; models/init.py draws each rank's shard
        use_cpu_initialization=True,
        perform_initialization=False,
        # fusions need CUDA kernels (Apex / TE); SDPA does the attention fusion
        masked_softmax_fusion=False,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        apply_rope_fusion=False,
        # gloo's batched isend/irecv pairs interleaved-pipeline messages wrongly
        # (loss off by ~2e-2 at PP2 x VPP2); separate send/recv are correct everywhere.
        batch_p2p_comm=on_gpu,
        **recompute,
    )
