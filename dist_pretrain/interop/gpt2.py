"""GPT with learned positions <-> ``GPT2LMHeadModel``.

GPT-2 keeps its projections in ``Conv1D`` modules, whose weight is ``[in, out]`` (the
transpose of a ``Linear``), and its attention input as one Conv1D with ``[Q | K | V]``
columns, where megatron interleaves Q, K, V per head (``layout.split_qkv``). The exported
vocabulary is the embedding's rows: megatron's padded rows are real parameters that take
part in the softmax, so they are kept (``vocab_size`` = padded size) unless the checkpoint
was imported from a model with fewer rows. megatron's ``F.gelu`` is the erf GELU, which
GPT-2's config calls ``"gelu"``; OpenAI's GPT-2 uses the tanh approximation ``"gelu_new"``
(``model.activation=gelu_tanh`` here).
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

name = "gpt2"
model_type = "gpt2"
auto_class = "AutoModelForCausalLM"
LAYERS = "decoder.layers."
ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}

# ours (per layer, after "decoder.layers.") -> GPT-2 (after "transformer.h.{i}."), transposed?
LAYER_MAP = [
    ("self_attention.linear_qkv.layer_norm_weight", "ln_1.weight", False),
    ("self_attention.linear_qkv.layer_norm_bias", "ln_1.bias", False),
    ("self_attention.linear_proj.weight", "attn.c_proj.weight", True),
    ("self_attention.linear_proj.bias", "attn.c_proj.bias", False),
    ("mlp.linear_fc1.layer_norm_weight", "ln_2.weight", False),
    ("mlp.linear_fc1.layer_norm_bias", "ln_2.bias", False),
    ("mlp.linear_fc1.weight", "mlp.c_fc.weight", True),
    ("mlp.linear_fc1.bias", "mlp.c_fc.bias", False),
    ("mlp.linear_fc2.weight", "mlp.c_proj.weight", True),
    ("mlp.linear_fc2.bias", "mlp.c_proj.bias", False),
]
TOP_MAP = [
    ("embedding.word_embeddings.weight", "transformer.wte.weight"),
    ("embedding.position_embeddings.weight", "transformer.wpe.weight"),
    ("decoder.final_layernorm.weight", "transformer.ln_f.weight"),
    ("decoder.final_layernorm.bias", "transformer.ln_f.bias"),
]


def unsupported(cfg: Config) -> str | None:
    """Why GPT-2 cannot represent this model, or None."""
    m = cfg.model
    if cfg.family != "gpt" or m.position_embedding != "learned":
        return None if cfg.family == "gpt" else f"family {cfg.family} is not a GPT"
    if m.activation not in ACTIVATIONS:
        return f"GPT2LMHeadModel has no gated MLP (model.activation={m.activation})"
    if m.normalization != "layernorm" or not m.bias:
        return "GPT2LMHeadModel has LayerNorm with bias and biased linear layers"
    if (m.num_query_groups or m.num_attention_heads) != m.num_attention_heads:
        return "GPT2LMHeadModel has no grouped-query attention"
    return None


def _heads(cfg: Config) -> Heads:
    m = cfg.model
    return Heads(m.num_attention_heads, m.num_attention_heads, m.hidden_size // m.num_attention_heads)


def hf_config(cfg: Config, vocab: int):
    from transformers import GPT2Config

    m = cfg.model
    return GPT2Config(
        vocab_size=vocab, n_positions=m.max_positions, n_embd=m.hidden_size, n_layer=m.num_layers,
        n_head=m.num_attention_heads, n_inner=m.ffn, activation_function=ACTIVATIONS[m.activation],
        resid_pdrop=m.hidden_dropout, embd_pdrop=m.hidden_dropout, attn_pdrop=m.attention_dropout,
        layer_norm_epsilon=m.layernorm_epsilon, initializer_range=m.init_std,
        tie_word_embeddings=m.tie_embeddings, bos_token_id=None, eos_token_id=None,
    )


def to_hf(weights: dict[str, torch.Tensor], cfg: Config, vocab: int) -> dict[str, torch.Tensor]:
    """Our global weights (stacked layers) -> a GPT2LMHeadModel state dict with ``vocab`` rows."""
    heads, layers, out = _heads(cfg), unstack(weights, LAYERS), {}
    for i in range(cfg.model.num_layers):
        hf = f"transformer.h.{i}."
        for ours, theirs, transpose in LAYER_MAP:
            w = layers[ours][i]
            out[hf + theirs] = w.t() if transpose else w
        for kind in ("weight", "bias"):
            q, k, v = split_qkv(layers[f"self_attention.linear_qkv.{kind}"][i], heads)
            fused = torch.cat([q, k, v])
            out[f"{hf}attn.c_attn.{kind}"] = fused.t() if kind == "weight" else fused
    out.update(top_to_hf(weights, TOP_MAP, cfg.model.tie_embeddings, vocab))
    return {k: v.contiguous() for k, v in out.items()}


def model_keys(hf) -> dict:
    """Our ``model.*`` config of a GPT2Config."""
    act = {v: k for k, v in ACTIVATIONS.items()}
    if hf.activation_function not in act:
        raise ValueError(f"GPT-2 activation_function={hf.activation_function!r} has no counterpart here; "
                         f"supported: {', '.join(act)}")
    if getattr(hf, "scale_attn_by_inverse_layer_idx", False) or not getattr(hf, "scale_attn_weights", True):
        raise ValueError("GPT-2 attention scaling other than 1/sqrt(head_dim) has no counterpart here")
    return {"num_layers": hf.n_layer, "hidden_size": hf.n_embd, "num_attention_heads": hf.n_head,
            "ffn_hidden_size": hf.n_inner or 4 * hf.n_embd, "seq_length": hf.n_positions,
            "max_position_embeddings": hf.n_positions, "position_embedding": "learned",
            "activation": act[hf.activation_function], "tie_embeddings": bool(hf.tie_word_embeddings),
            "layernorm_epsilon": hf.layer_norm_epsilon, "hidden_dropout": hf.resid_pdrop,
            "attention_dropout": hf.attn_pdrop, "init_std": hf.initializer_range, "vocab_size": hf.vocab_size}


def from_hf(state: dict[str, torch.Tensor], hf, cfg: Config) -> dict[str, torch.Tensor]:
    """A GPT2LMHeadModel state dict -> our global weights (stacked layers, rows as in ``state``)."""
    heads, layers = _heads(cfg), {ours: [] for ours, _, _ in LAYER_MAP}
    layers.update({"self_attention.linear_qkv.weight": [], "self_attention.linear_qkv.bias": []})
    h = cfg.model.hidden_size
    for i in range(cfg.model.num_layers):
        hf_ = f"transformer.h.{i}."
        for ours, theirs, transpose in LAYER_MAP:
            w = state[hf_ + theirs]
            layers[ours].append(w.t() if transpose else w)
        for kind in ("weight", "bias"):
            fused = state[f"{hf_}attn.c_attn.{kind}"]
            fused = fused.t() if kind == "weight" else fused
            layers[f"self_attention.linear_qkv.{kind}"].append(join_qkv(*fused.split(h), heads))
    out = stack(layers, LAYERS)
    out.update(top_from_hf(state, TOP_MAP, cfg.model.tie_embeddings))
    return {k: v.contiguous() for k, v in out.items()}
