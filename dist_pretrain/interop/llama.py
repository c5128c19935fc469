"""GPT with rotary positions, RMSNorm and a gated MLP <-> ``LlamaForCausalLM``.

The map is name for name except two fused tensors: megatron's ``linear_qkv`` (per query
group interleaved, ``layout.split_qkv``) becomes ``q_proj`` / ``k_proj`` / ``v_proj``, and a
gated ``linear_fc1``, stored as ``[2, ffn, hidden]`` (``checkpoint.gated_shard``: gate rows,
then up rows, megatron's ``gated_linear_unit`` activating the first half), becomes
``gate_proj`` / ``up_proj``. Both sides apply rotary embeddings the same way (non-interleaved
halves, ``rotate_half``, ``inv_freq = base^(-2i/d)`` repeated over both halves), so Q and K
need no permutation -- unlike Meta's original checkpoints, whose interleaved pairs HF's
conversion script permutes. Grouped-query attention: query head ``i`` uses key/value head
``i // (heads / groups)`` on both sides. Llama's linear layers may have biases
(``attention_bias``, ``mlp_bias``), its norms never do.
"""

from __future__ import annotations

import torch

from dist_pretrain.config import Config
from dist_pretrain.interop.layout import (
    Heads,
    join_qkv,
    split_qkv,
    stack,
    top_from_hf,
    top_to_hf,
    unstack,
)

name = "llama"
model_type = "llama"
auto_class = "AutoModelForCausalLM"
LAYERS = "decoder.layers."
# ours -> Llama's hidden_act (applied to the gate)
ACTIVATIONS = {"swiglu": "silu", "geglu": "gelu", "geglu_tanh": "gelu_pytorch_tanh"}

# ours (per layer, after "decoder.layers.") -> Llama (after "model.layers.{i}."); biases only with model.bias
LAYER_MAP = [
    ("self_attention.linear_qkv.layer_norm_weight", "input_layernorm.weight"),
    ("self_attention.linear_proj.weight", "self_attn.o_proj.weight"),
    ("mlp.linear_fc1.layer_norm_weight", "post_attention_layernorm.weight"),
    ("mlp.linear_fc2.weight", "mlp.down_proj.weight"),
]
BIAS_MAP = [
    ("self_attention.linear_proj.bias", "self_attn.o_proj.bias"),
    ("mlp.linear_fc2.bias", "mlp.down_proj.bias"),
]
TOP_MAP = [
    ("embedding.word_embeddings.weight", "model.embed_tokens.weight"),
    ("decoder.final_layernorm.weight", "model.norm.weight"),
]


def unsupported(cfg: Config) -> str | None:
    """Why Llama cannot represent this model, or None."""
    m = cfg.model
    if cfg.family != "gpt":
        return f"family {cfg.family} is not a GPT"
    if m.position_embedding != "rope":
        return "LlamaForCausalLM has rotary positions (model.position_embedding=rope)"
    if m.activation not in ACTIVATIONS:
        return f"LlamaForCausalLM has a gated MLP (model.activation=swiglu, geglu or geglu_tanh, not {m.activation})"
    if m.normalization != "rmsnorm":
        return "LlamaForCausalLM has RMSNorm (model.normalization=rmsnorm)"
    return None


def _heads(m) -> Heads:
    return Heads(m.num_attention_heads, m.num_query_groups or m.num_attention_heads,
                 m.hidden_size // m.num_attention_heads)


def _kinds(cfg: Config) -> tuple[str, ...]:
    return ("weight", "bias") if cfg.model.bias else ("weight",)


def hf_config(cfg: Config, vocab: int):
    from transformers import LlamaConfig

    m = cfg.model
    return LlamaConfig(
        vocab_size=vocab, hidden_size=m.hidden_size, intermediate_size=m.ffn, num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_attention_heads, num_key_value_heads=_heads(m).groups,
        head_dim=m.hidden_size // m.num_attention_heads, hidden_act=ACTIVATIONS[m.activation],
        max_position_embeddings=m.max_positions, rms_norm_eps=m.layernorm_epsilon,
        rope_parameters={"rope_type": "default", "rope_theta": float(m.rotary_base)},
        attention_bias=m.bias, mlp_bias=m.bias, attention_dropout=m.attention_dropout,
        initializer_range=m.init_std, tie_word_embeddings=m.tie_embeddings, bos_token_id=None, eos_token_id=None,
    )


def to_hf(weights: dict[str, torch.Tensor], cfg: Config, vocab: int) -> dict[str, torch.Tensor]:
    """Our global weights (stacked layers) -> a LlamaForCausalLM state dict with ``vocab`` rows."""
    heads, layers, out = _heads(cfg.model), unstack(weights, LAYERS), {}
    for i in range(cfg.model.num_layers):
        hf = f"model.layers.{i}."
        for ours, theirs in LAYER_MAP + (BIAS_MAP if cfg.model.bias else []):
            out[hf + theirs] = layers[ours][i]
        for kind in _kinds(cfg):
            q, k, v = split_qkv(layers[f"self_attention.linear_qkv.{kind}"][i], heads)
            out.update({f"{hf}self_attn.q_proj.{kind}": q, f"{hf}self_attn.k_proj.{kind}": k,
                        f"{hf}self_attn.v_proj.{kind}": v})
            gate, up = layers[f"mlp.linear_fc1.{kind}"][i].unbind(0)
            out.update({f"{hf}mlp.gate_proj.{kind}": gate, f"{hf}mlp.up_proj.{kind}": up})
    out.update(top_to_hf(weights, TOP_MAP, cfg.model.tie_embeddings, vocab))
    return {k: v.contiguous() for k, v in out.items()}


def model_keys(hf) -> dict:
    """Our ``model.*`` config of a LlamaConfig, or ValueError naming what has no counterpart."""
    act = {v: k for k, v in ACTIVATIONS.items()}
    if hf.hidden_act not in act:
        raise ValueError(f"Llama hidden_act={hf.hidden_act!r} has no counterpart here; supported: {', '.join(act)}")
    rope = dict(hf.rope_parameters or {})
    if rope.get("rope_type", "default") != "default" or rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"Llama rope_parameters={rope} (scaled or partial rotary embeddings) has no counterpart "
                         "here; only rope_type=default")
    if hf.head_dim * hf.num_attention_heads != hf.hidden_size:
        raise ValueError(f"Llama head_dim={hf.head_dim} is not hidden_size / num_attention_heads")
    if bool(hf.attention_bias) != bool(hf.mlp_bias):
        raise ValueError("Llama with attention_bias != mlp_bias has no counterpart here (model.bias is one flag)")
    return {"num_layers": hf.num_hidden_layers, "hidden_size": hf.hidden_size,
            "num_attention_heads": hf.num_attention_heads, "num_query_groups": hf.num_key_value_heads,
            "ffn_hidden_size": hf.intermediate_size, "seq_length": hf.max_position_embeddings,
            "max_position_embeddings": hf.max_position_embeddings, "position_embedding": "rope",
            "rotary_base": int(rope.get("rope_theta", 10000)), "normalization": "rmsnorm",
            "activation": act[hf.hidden_act], "bias": bool(hf.attention_bias),
            "tie_embeddings": bool(hf.tie_word_embeddings), "layernorm_epsilon": hf.rms_norm_eps,
            "hidden_dropout": 0.0, "attention_dropout": float(hf.attention_dropout),
            "init_std": hf.initializer_range, "vocab_size": hf.vocab_size}


def from_hf(state: dict[str, torch.Tensor], hf, cfg: Config) -> dict[str, torch.Tensor]:
    """A LlamaForCausalLM state dict -> our global weights (stacked layers, rows as in ``state``)."""
    heads, layers = _heads(cfg.model), {}
    for i in range(cfg.model.num_layers):
        hf_ = f"model.layers.{i}."
        for ours, theirs in LAYER_MAP + (BIAS_MAP if cfg.model.bias else []):
            layers.setdefault(ours, []).append(state[hf_ + theirs])
        for kind in _kinds(cfg):
            qkv = [state[f"{hf_}self_attn.{p}_proj.{kind}"] for p in "qkv"]
            layers.setdefault(f"self_attention.linear_qkv.{kind}", []).append(join_qkv(*qkv, heads))
            fc1 = torch.stack([state[f"{hf_}mlp.gate_proj.{kind}"], state[f"{hf_}mlp.up_proj.{kind}"]])
            layers.setdefault(f"mlp.linear_fc1.{kind}", []).append(fc1)
    out = stack(layers, LAYERS)
    out.update(top_from_hf(state, TOP_MAP, cfg.model.tie_embeddings))
    return {k: v.contiguous() for k, v in out.items()}
