"""T5 v1.1-style encoder-decoder <-> ``T5ForConditionalGeneration``.

What HF T5 is, and so what a T5 here must be to export exactly:

* relative position bias, one ``[buckets, heads]`` table per stack, computed once and
  added to every layer's self-attention logits (HF stores it in block 0 only; megatron's
  ``T5Model`` keeps ``encoder_relative_pos_emb`` / ``decoder_relative_pos_emb``); the
  cross-attention has none on either side. No absolute positions at all.
* unscaled attention logits (``model.softmax_scale=1.0``), RMSNorm without bias (T5LayerNorm),
  no biases in any linear layer.
* ``tie_word_embeddings=false`` (v1.1): the LM head is its own matrix and the decoder output
  is not rescaled. A tied T5 is refused: HF then multiplies the decoder output by
  ``d_model ** -0.5`` and has no output bias, while megatron's tied T5 head adds a vocab bias
  and does not rescale.

Fused tensors: self-attention ``linear_qkv`` is per-head interleaved ``[q_h; k_h; v_h]``
(``layout.split_qkv``), the cross-attention's ``linear_kv`` per head ``[k_h; v_h]``, a gated
``linear_fc1`` ``[2, ffn, h]`` = (gate = ``wi_0``, up = ``wi_1``). T5 v1.1's
``feed_forward_proj="gated-gelu"`` is the tanh approximation (HF maps it to ``gelu_new``):
``model.activation=geglu_tanh``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dist_pretrain.config import Config
from dist_pretrain.interop.layout import Heads, join_qkv, split_qkv, stack, unstack

name = "t5"
model_type = "t5"
auto_class = "AutoModelForSeq2SeqLM"
# ours -> HF feed_forward_proj ("gated-X" applies X to wi_0)
ACTIVATIONS = {"geglu_tanh": "gated-gelu", "geglu": "gated-gelu_python", "swiglu": "gated-silu", "relu": "relu",
               "gelu": "gelu", "gelu_tanh": "gelu_new"}
# other spellings HF configs use for the same functions
IMPORT_ACTIVATIONS = {**{v: k for k, v in ACTIVATIONS.items()}, "gated-gelu_new": "geglu_tanh",
                      "gated-gelu_pytorch_tanh": "geglu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                      "gated-relu": None}
BIAS_TABLE = "relative_attention_bias.weight"
EMBEDDING, HEAD = "embedding.word_embeddings.weight", "lm_head.output_layer.weight"


def unsupported(cfg: Config) -> str | None:
    """Why T5ForConditionalGeneration cannot represent this model, or None."""
    m = cfg.model
    if cfg.family != "t5":
        return f"family {cfg.family} is not T5"
    if m.position_embedding != "relative":
        return ("HF T5 has relative position bias and no learned absolute positions; train with "
                "model.position_embedding=relative")
    if m.normalization != "rmsnorm" or m.bias:
        return ("HF T5 has RMSNorm without bias and no linear biases (LayerNorm with bias cannot be represented); "
                "train with model.normalization=rmsnorm model.bias=false")
    if m.softmax_scale != 1.0:
        return f"HF T5 does not scale the attention logits; train with model.softmax_scale=1.0 (not {m.softmax_scale})"
    if m.tie_embeddings:
        return ("a tied megatron T5 head adds a vocab bias and does not rescale the decoder output as HF's tied T5 "
                "does (d_model**-0.5); train with model.tie_embeddings=false (T5 v1.1)")
    if (m.num_query_groups or m.num_attention_heads) != m.num_attention_heads:
        return "HF T5 has no grouped-query attention"
    if m.activation not in ACTIVATIONS:
        return f"model.activation={m.activation} has no HF T5 feed_forward_proj"
    return None


def _heads(m) -> Heads:
    return Heads(m.num_attention_heads, m.num_attention_heads, m.hidden_size // m.num_attention_heads)


def _gated(cfg: Config) -> bool:
    return ACTIVATIONS[cfg.model.activation].startswith("gated-")


def _layers(cfg: Config) -> dict[str, int]:
    return {"encoder": cfg.model.encoder_num_layers or cfg.model.num_layers, "decoder": cfg.model.num_layers}


def hf_config(cfg: Config, vocab: int, special_ids: dict | None = None):
    from transformers import T5Config

    m, ids = cfg.model, {"pad": 0, "eos": 1, **(special_ids or {})}
    layers = _layers(cfg)
    return T5Config(
        vocab_size=vocab, d_model=m.hidden_size, d_kv=m.hidden_size // m.num_attention_heads, d_ff=m.ffn,
        num_layers=layers["encoder"], num_decoder_layers=layers["decoder"], num_heads=m.num_attention_heads,
        relative_attention_num_buckets=m.relative_attention_num_buckets,
        relative_attention_max_distance=m.relative_attention_max_distance, dropout_rate=m.hidden_dropout,
        layer_norm_epsilon=m.layernorm_epsilon, feed_forward_proj=ACTIVATIONS[m.activation],
        tie_word_embeddings=False, pad_token_id=ids["pad"], eos_token_id=ids["eos"],
        decoder_start_token_id=ids.get("decoder_start", ids["pad"]),  # our span corruption starts with pad
    )


def prepare_hf_model(model) -> None:
    """transformers 5.x always ties T5's ``lm_head`` to ``shared`` in memory: give it its own
    matrix before loading untied weights (else the second load overwrites the first)."""
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())


def finish_export(directory: Path) -> None:
    """Write ``tie_word_embeddings: false`` as T5 v1.1 checkpoints do (transformers 5.x saves
    ``true`` plus ``scale_decoder_outputs: false``; 4.x reads only the former)."""
    path = Path(directory) / "config.json"
    config = json.loads(path.read_text())
    config["tie_word_embeddings"] = False
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _attention_to_hf(out: dict, layers: dict, i: int, hf: str, heads: Heads) -> None:
    q, k, v = split_qkv(layers["self_attention.linear_qkv.weight"][i], heads)
    out.update({f"{hf}layer.0.SelfAttention.q.weight": q, f"{hf}layer.0.SelfAttention.k.weight": k,
                f"{hf}layer.0.SelfAttention.v.weight": v,
                f"{hf}layer.0.SelfAttention.o.weight": layers["self_attention.linear_proj.weight"][i],
                f"{hf}layer.0.layer_norm.weight": layers["self_attention.linear_qkv.layer_norm_weight"][i]})


def _mlp_to_hf(out: dict, layers: dict, i: int, hf: str, gated: bool) -> None:
    fc1 = layers["mlp.linear_fc1.weight"][i]
    if gated:
        out[f"{hf}DenseReluDense.wi_0.weight"], out[f"{hf}DenseReluDense.wi_1.weight"] = fc1.unbind(0)
    else:
        out[f"{hf}DenseReluDense.wi.weight"] = fc1
    out[f"{hf}DenseReluDense.wo.weight"] = layers["mlp.linear_fc2.weight"][i]
    out[f"{hf}layer_norm.weight"] = layers["mlp.linear_fc1.layer_norm_weight"][i]


def to_hf(weights: dict[str, torch.Tensor], cfg: Config, vocab: int) -> dict[str, torch.Tensor]:
    """Our global weights (stacked layers) -> a T5ForConditionalGeneration state dict with ``vocab`` rows."""
    heads, gated, out = _heads(cfg.model), _gated(cfg), {}
    hd = heads.head_dim
    for stack_name, count in _layers(cfg).items():
        layers = unstack(weights, f"{stack_name}.layers.")
        for i in range(count):
            hf = f"{stack_name}.block.{i}."
            _attention_to_hf(out, layers, i, hf, heads)
            if stack_name == "encoder":
                _mlp_to_hf(out, layers, i, f"{hf}layer.1.", gated)
                continue
            kv = layers["cross_attention.linear_kv.weight"][i].reshape(heads.heads, 2, hd, -1)
            out.update({f"{hf}layer.1.EncDecAttention.q.weight": layers["cross_attention.linear_q.weight"][i],
                        f"{hf}layer.1.EncDecAttention.k.weight": kv[:, 0].reshape(heads.heads * hd, -1),
                        f"{hf}layer.1.EncDecAttention.v.weight": kv[:, 1].reshape(heads.heads * hd, -1),
                        f"{hf}layer.1.EncDecAttention.o.weight": layers["cross_attention.linear_proj.weight"][i],
                        f"{hf}layer.1.layer_norm.weight": layers["pre_cross_attn_layernorm.weight"][i]})
            _mlp_to_hf(out, layers, i, f"{hf}layer.2.", gated)
        out[f"{stack_name}.block.0.layer.0.SelfAttention.{BIAS_TABLE}"] = \
            weights[f"{stack_name}_relative_pos_emb.{BIAS_TABLE}"]
        out[f"{stack_name}.final_layer_norm.weight"] = weights[f"{stack_name}.final_layernorm.weight"]
        out[f"{stack_name}.embed_tokens.weight"] = weights[EMBEDDING][:vocab]
    out["shared.weight"] = weights[EMBEDDING][:vocab]
    out["lm_head.weight"] = weights[HEAD][:vocab]
    return {k: v.contiguous() for k, v in out.items()}


def model_keys(hf) -> dict:
    """Our ``model.*`` config of a T5Config, or ValueError naming what has no counterpart."""
    act = IMPORT_ACTIVATIONS.get(hf.feed_forward_proj)
    if act is None:
        raise ValueError(f"T5 feed_forward_proj={hf.feed_forward_proj!r} has no counterpart here; supported: "
                         f"{', '.join(k for k, v in IMPORT_ACTIVATIONS.items() if v)}")
    if hf.d_kv * hf.num_heads != hf.d_model:
        raise ValueError(f"T5 d_kv={hf.d_kv} x num_heads={hf.num_heads} != d_model={hf.d_model}: attention width "
                         "other than the hidden size has no counterpart here")
    if getattr(hf, "scale_decoder_outputs", False):
        raise ValueError("T5 with tied word embeddings (decoder output scaled by d_model**-0.5, original T5 / "
                         "tie_word_embeddings=true) has no counterpart here; T5 v1.1 (untied) imports")
    keys = {"num_layers": hf.num_decoder_layers, "hidden_size": hf.d_model, "num_attention_heads": hf.num_heads,
            "ffn_hidden_size": hf.d_ff, "position_embedding": "relative",
            "relative_attention_num_buckets": hf.relative_attention_num_buckets,
            "relative_attention_max_distance": hf.relative_attention_max_distance, "softmax_scale": 1.0,
            "normalization": "rmsnorm", "activation": act, "bias": False, "tie_embeddings": False,
            "layernorm_epsilon": hf.layer_norm_epsilon, "hidden_dropout": float(hf.dropout_rate),
            "attention_dropout": float(hf.dropout_rate), "init_std": 1.0 / hf.d_model ** 0.5,
            "vocab_size": hf.vocab_size}
    if hf.num_layers != hf.num_decoder_layers:
        keys["encoder_num_layers"] = hf.num_layers
    return keys


def _attention_from_hf(layers: dict, state: dict, hf: str, heads: Heads) -> None:
    qkv = [state[f"{hf}layer.0.SelfAttention.{p}.weight"] for p in "qkv"]
    layers.setdefault("self_attention.linear_qkv.weight", []).append(join_qkv(*qkv, heads))
    layers.setdefault("self_attention.linear_proj.weight", []).append(state[f"{hf}layer.0.SelfAttention.o.weight"])
    layers.setdefault("self_attention.linear_qkv.layer_norm_weight", []).append(state[f"{hf}layer.0.layer_norm.weight"])


def _mlp_from_hf(layers: dict, state: dict, hf: str, gated: bool) -> None:
    fc1 = torch.stack([state[f"{hf}DenseReluDense.wi_0.weight"], state[f"{hf}DenseReluDense.wi_1.weight"]]) \
        if gated else state[f"{hf}DenseReluDense.wi.weight"]
    layers.setdefault("mlp.linear_fc1.weight", []).append(fc1)
    layers.setdefault("mlp.linear_fc2.weight", []).append(state[f"{hf}DenseReluDense.wo.weight"])
    layers.setdefault("mlp.linear_fc1.layer_norm_weight", []).append(state[f"{hf}layer_norm.weight"])


def from_hf(state: dict[str, torch.Tensor], hf, cfg: Config) -> dict[str, torch.Tensor]:
    """A T5ForConditionalGeneration state dict -> our global weights (stacked layers, rows as in ``state``)."""
    heads, gated, out = _heads(cfg.model), _gated(cfg), {}
    hd = heads.head_dim
    for stack_name, count in _layers(cfg).items():
        layers: dict[str, list] = {}
        for i in range(count):
            hf_ = f"{stack_name}.block.{i}."
            _attention_from_hf(layers, state, hf_, heads)
            if stack_name == "encoder":
                _mlp_from_hf(layers, state, f"{hf_}layer.1.", gated)
                continue
            k, v = (state[f"{hf_}layer.1.EncDecAttention.{p}.weight"].reshape(heads.heads, 1, hd, -1) for p in "kv")
            layers.setdefault("cross_attention.linear_kv.weight", []).append(
                torch.cat([k, v], dim=1).reshape(2 * heads.heads * hd, -1))
            for ours, theirs in (("cross_attention.linear_q.weight", "EncDecAttention.q.weight"),
                                 ("cross_attention.linear_proj.weight", "EncDecAttention.o.weight"),
                                 ("pre_cross_attn_layernorm.weight", "layer_norm.weight")):
                layers.setdefault(ours, []).append(state[f"{hf_}layer.1.{theirs}"])
            _mlp_from_hf(layers, state, f"{hf_}layer.2.", gated)
        out.update(stack(layers, f"{stack_name}.layers."))
        out[f"{stack_name}_relative_pos_emb.{BIAS_TABLE}"] = state[f"{stack_name}.block.0.layer.0.SelfAttention.{BIAS_TABLE}"]
        out[f"{stack_name}.final_layernorm.weight"] = state[f"{stack_name}.final_layer_norm.weight"]
    out[EMBEDDING] = state["shared.weight"]
    out[HEAD] = out["output_layer.weight"] = state["lm_head.weight"]
    return {k: v.contiguous() for k, v in out.items()}
