"""BERT (megatron-core ``BertModel``) <-> ``MegatronBertForMaskedLM`` / ``MegatronBertForPreTraining``.

megatron-core's BERT is pre-LN: each layer normalises *before* attention and before the
MLP, the encoder ends with a final LayerNorm, and the embeddings (word + position +
token type) go in without a LayerNorm. Plain ``BertForMaskedLM`` is post-LN (a LayerNorm
after every residual sum and one on the embeddings) and cannot represent it;
``MegatronBertModel`` is exactly this shape (``attention.ln``, ``ln``, ``encoder.ln``, no
embedding LayerNorm). The MLM head is the same on both sides: dense h x h, erf GELU,
LayerNorm, then the output projection tied to the word embeddings with its own bias
(megatron's ``output_layer.bias`` = HF's ``cls.predictions.bias``). HF uses one
``hidden_act`` for the MLP and that head, megatron's head always uses ``F.gelu``: only
``model.activation=gelu`` is representable.

With ``task.next_sentence_prediction`` our model also has megatron's pooler (dense +
tanh on the first token) and binary head; both map one to one to HF's ``bert.pooler`` and
``cls.seq_relationship`` (label 0 = B continues A, 1 = random B on both sides), so such a
model exports as ``MegatronBertForPreTraining`` (which ``AutoModelForMaskedLM`` also
loads, dropping the NSP head with a warning) and nothing is silently lost. Without NSP it
exports as ``MegatronBertForMaskedLM``.

``encoder_to_hf`` / ``encoder_from_hf`` map the embeddings, the layers, the final LayerNorm
and (when present) the pooler under a prefix; the heads are mapped separately so that
other heads compose with the same encoder map.

A fine-tuned classifier (``task.name=classification``, ``models.bert.BertClassifier``:
pooler dense + tanh on ``[CLS]``, dropout, linear to the labels) is exactly
``MegatronBertForSequenceClassification`` (``bert.pooler`` -> dropout -> ``classifier``). The
label names (``task.labels``) become ``id2label`` / ``label2id``; HF has no classifier
dropout of its own (it reuses ``hidden_dropout_prob``), which only matters when training.
"""

from __future__ import annotations

import numpy as np
import torch

from dist_pretrain.config import Config
from dist_pretrain.interop.layout import Heads, join_qkv, split_qkv, stack, unstack

name = "megatron_bert"
model_type = "megatron-bert"
family = "bert"
LAYERS = "encoder.layers."
PREFIX = "bert."  # the encoder inside every MegatronBertFor* model
CLASSES = {"MegatronBertForMaskedLM": "AutoModelForMaskedLM", "MegatronBertForPreTraining": "AutoModelForPreTraining",
           "MegatronBertForSequenceClassification": "AutoModelForSequenceClassification"}

# ours (per layer, after "encoder.layers.") -> HF (after "encoder.layer.{i}.")
LAYER_MAP = [
    ("self_attention.linear_qkv.layer_norm_weight", "attention.ln.weight"),
    ("self_attention.linear_qkv.layer_norm_bias", "attention.ln.bias"),
    ("self_attention.linear_proj.weight", "attention.output.dense.weight"),
    ("self_attention.linear_proj.bias", "attention.output.dense.bias"),
    ("mlp.linear_fc1.layer_norm_weight", "ln.weight"),
    ("mlp.linear_fc1.layer_norm_bias", "ln.bias"),
    ("mlp.linear_fc1.weight", "intermediate.dense.weight"),
    ("mlp.linear_fc1.bias", "intermediate.dense.bias"),
    ("mlp.linear_fc2.weight", "output.dense.weight"),
    ("mlp.linear_fc2.bias", "output.dense.bias"),
]
# ours -> HF (after PREFIX); the word embedding is cut to the exported vocab
EMBEDDING_MAP = [
    ("embedding.word_embeddings.weight", "embeddings.word_embeddings.weight"),
    ("embedding.position_embeddings.weight", "embeddings.position_embeddings.weight"),
    ("embedding.tokentype_embeddings.weight", "embeddings.token_type_embeddings.weight"),
    ("encoder.final_layernorm.weight", "encoder.ln.weight"),
    ("encoder.final_layernorm.bias", "encoder.ln.bias"),
]
POOLER_MAP = [("pooler.dense.weight", "pooler.dense.weight"), ("pooler.dense.bias", "pooler.dense.bias")]
MLM_MAP = [
    ("lm_head.dense.weight", "cls.predictions.transform.dense.weight"),
    ("lm_head.dense.bias", "cls.predictions.transform.dense.bias"),
    ("lm_head.layer_norm.weight", "cls.predictions.transform.LayerNorm.weight"),
    ("lm_head.layer_norm.bias", "cls.predictions.transform.LayerNorm.bias"),
]
NSP_MAP = [("binary_head.weight", "cls.seq_relationship.weight"), ("binary_head.bias", "cls.seq_relationship.bias")]
CLASSIFIER_MAP = [("classifier.weight", "classifier.weight"), ("classifier.bias", "classifier.bias")]


def unsupported(cfg: Config) -> str | None:
    """Why MegatronBert cannot represent this model, or None."""
    m = cfg.model
    if cfg.family != "bert":
        return f"family {cfg.family} is not a BERT"
    if cfg.task.name not in ("masked_lm", "classification"):
        return f"task.name={cfg.task.name}: mapped are masked LM (+ NSP) and sequence classification"
    if cfg.task.name == "classification" and not cfg.task.labels:
        return "task.name=classification without task.labels: the label names give num_labels and id2label"
    if m.activation != "gelu":
        return (f"MegatronBert has one hidden_act for the MLP and the MLM head, whose megatron GELU is erf "
                f"(model.activation=gelu, not {m.activation})")
    if m.normalization != "layernorm" or not m.bias:
        return "MegatronBert has LayerNorm with bias and biased linear layers"
    if (m.num_query_groups or m.num_attention_heads) != m.num_attention_heads:
        return "MegatronBert has no grouped-query attention"
    return None


def auto_class(config) -> str:
    """The transformers Auto class of a model with ``config`` (ours or a MegatronBertConfig)."""
    if isinstance(config, Config):
        if config.task.name == "classification":
            return CLASSES["MegatronBertForSequenceClassification"]
        return CLASSES["MegatronBertForPreTraining" if config.task.next_sentence_prediction
                       else "MegatronBertForMaskedLM"]
    archs = list(config.architectures or [])
    if len(archs) != 1 or archs[0] not in CLASSES:
        raise ValueError(f"architectures={archs}: importable are {', '.join(CLASSES)} (other heads have no "
                         "counterpart in our BERT)")
    return CLASSES[archs[0]]


def _heads(cfg: Config) -> Heads:
    m = cfg.model
    return Heads(m.num_attention_heads, m.num_attention_heads, m.hidden_size // m.num_attention_heads)


def hf_config(cfg: Config, vocab: int, pad_token_id: int = 0):
    from transformers import MegatronBertConfig

    m, labels = cfg.model, {}
    if cfg.task.name == "classification":
        names = list(cfg.task.labels)
        labels = {"num_labels": len(names), "id2label": dict(enumerate(names)),
                  "label2id": {n: i for i, n in enumerate(names)}, "problem_type": "single_label_classification"}
    return MegatronBertConfig(**labels,
        vocab_size=vocab, hidden_size=m.hidden_size, num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_attention_heads, intermediate_size=m.ffn, hidden_act="gelu",
        hidden_dropout_prob=m.hidden_dropout, attention_probs_dropout_prob=m.attention_dropout,
        max_position_embeddings=m.max_positions, type_vocab_size=2, initializer_range=m.init_std,
        layer_norm_eps=m.layernorm_epsilon, pad_token_id=pad_token_id, tie_word_embeddings=True,
    )


def encoder_to_hf(weights: dict[str, torch.Tensor], cfg: Config, vocab: int,
                  prefix: str = PREFIX) -> dict[str, torch.Tensor]:
    """Embeddings, layers, final LayerNorm and the pooler (when ``weights`` has one) ->
    ``MegatronBertModel`` names under ``prefix``, the word embedding cut to ``vocab`` rows."""
    heads, layers, out = _heads(cfg), unstack(weights, LAYERS), {}
    for i in range(cfg.model.num_layers):
        hf = f"{prefix}encoder.layer.{i}."
        for ours, theirs in LAYER_MAP:
            out[hf + theirs] = layers[ours][i]
        for kind in ("weight", "bias"):
            q, k, v = split_qkv(layers[f"self_attention.linear_qkv.{kind}"][i], heads)
            out.update({f"{hf}attention.self.query.{kind}": q, f"{hf}attention.self.key.{kind}": k,
                        f"{hf}attention.self.value.{kind}": v})
    top = EMBEDDING_MAP + (POOLER_MAP if "pooler.dense.weight" in weights else [])
    out.update({prefix + theirs: weights[ours] for ours, theirs in top})
    out[prefix + EMBEDDING_MAP[0][1]] = out[prefix + EMBEDDING_MAP[0][1]][:vocab]
    return out


def encoder_from_hf(state: dict[str, torch.Tensor], cfg: Config, prefix: str = PREFIX) -> dict[str, torch.Tensor]:
    """Inverse of ``encoder_to_hf`` (rows as in ``state``; the pooler when ``state`` has one)."""
    heads, layers = _heads(cfg), {}
    for i in range(cfg.model.num_layers):
        hf = f"{prefix}encoder.layer.{i}."
        for ours, theirs in LAYER_MAP:
            layers.setdefault(ours, []).append(state[hf + theirs])
        for kind in ("weight", "bias"):
            qkv = [state[f"{hf}attention.self.{p}.{kind}"] for p in ("query", "key", "value")]
            layers.setdefault(f"self_attention.linear_qkv.{kind}", []).append(join_qkv(*qkv, heads))
    out = stack(layers, LAYERS)
    top = EMBEDDING_MAP + (POOLER_MAP if prefix + POOLER_MAP[0][1] in state else [])
    out.update({ours: state[prefix + theirs] for ours, theirs in top})
    return out


def to_hf(weights: dict[str, torch.Tensor], cfg: Config, vocab: int) -> dict[str, torch.Tensor]:
    """Our global weights -> a MegatronBertForMaskedLM (or, with the binary head,
    MegatronBertForPreTraining; or, for a classifier, MegatronBertForSequenceClassification)
    state dict with ``vocab`` rows."""
    out = encoder_to_hf(weights, cfg, vocab)
    if cfg.task.name == "classification":
        out.update({theirs: weights[ours] for ours, theirs in CLASSIFIER_MAP})
        return {k: v.contiguous() for k, v in out.items()}
    heads = MLM_MAP + (NSP_MAP if "binary_head.weight" in weights else [])
    out.update({theirs: weights[ours] for ours, theirs in heads})
    bias = weights["output_layer.bias"][:vocab]
    out.update({"cls.predictions.bias": bias, "cls.predictions.decoder.bias": bias,
                "cls.predictions.decoder.weight": out[PREFIX + EMBEDDING_MAP[0][1]]})  # tied
    return {k: v.contiguous() for k, v in out.items()}


def from_hf(state: dict[str, torch.Tensor], hf, cfg: Config) -> dict[str, torch.Tensor]:
    """A MegatronBertForMaskedLM / ForPreTraining / ForSequenceClassification state dict -> our global weights."""
    out = encoder_from_hf(state, cfg)
    if cfg.task.name == "classification":
        out.update({ours: state[theirs] for ours, theirs in CLASSIFIER_MAP})
        return {k: v.contiguous() for k, v in out.items()}
    heads = MLM_MAP + (NSP_MAP if cfg.task.next_sentence_prediction else [])
    out.update({ours: state[theirs] for ours, theirs in heads})
    out["output_layer.bias"] = state["cls.predictions.bias"]
    return {k: v.contiguous() for k, v in out.items()}


def model_keys(hf) -> dict:
    """Our ``model.*`` config of a MegatronBertConfig, or ValueError naming what has no counterpart."""
    if hf.hidden_act != "gelu":
        raise ValueError(f"MegatronBert hidden_act={hf.hidden_act!r}: megatron's MLM head applies the erf GELU, "
                         "so only hidden_act='gelu' has a counterpart here")
    if hf.is_decoder or hf.add_cross_attention:
        raise ValueError("a MegatronBert decoder (is_decoder / add_cross_attention) has no counterpart here")
    if hf.type_vocab_size != 2:
        raise ValueError(f"MegatronBert type_vocab_size={hf.type_vocab_size}: our BERT has 2 token types")
    if not hf.tie_word_embeddings:
        raise ValueError("MegatronBert with tie_word_embeddings=False: our BERT ties the MLM output to the "
                         "word embeddings")
    if hf.hidden_size % hf.num_attention_heads:
        raise ValueError(f"hidden_size={hf.hidden_size} is not a multiple of num_attention_heads")
    return {"num_layers": hf.num_hidden_layers, "hidden_size": hf.hidden_size,
            "num_attention_heads": hf.num_attention_heads, "ffn_hidden_size": hf.intermediate_size,
            "seq_length": hf.max_position_embeddings, "max_position_embeddings": hf.max_position_embeddings,
            "position_embedding": "learned", "activation": "gelu", "layernorm_epsilon": hf.layer_norm_eps,
            "hidden_dropout": float(hf.hidden_dropout_prob),
            "attention_dropout": float(hf.attention_probs_dropout_prob),
            "init_std": hf.initializer_range, "vocab_size": hf.vocab_size}


def config_sections(hf) -> dict:
    """Config sections besides ``model`` that the HF class implies: the NSP head, or the
    classification task with its label names in id order."""
    auto = auto_class(hf)
    if auto == CLASSES["MegatronBertForSequenceClassification"]:
        if hf.problem_type not in (None, "single_label_classification") or hf.num_labels < 2:
            raise ValueError(f"problem_type={hf.problem_type!r}, num_labels={hf.num_labels}: our classifier is "
                             "single-label over 2 or more labels (softmax cross-entropy)")
        return {"task": {"name": "classification", "labels": [str(hf.id2label[i]) for i in range(hf.num_labels)],
                         "classifier_dropout": float(hf.hidden_dropout_prob)}}  # HF's classifier dropout
    return {"task": {"next_sentence_prediction": auto == CLASSES["MegatronBertForPreTraining"]}}


# --------------------------------------------------------------------------- the logit check


def check_inputs(tokenizer, vocab: int, cfg: Config, count: int = 4) -> dict[str, torch.Tensor]:
    """``count`` masked BERT examples as training builds them (``objectives.mlm.bert_example``:
    [CLS] A [SEP] B [SEP] with token types 0 and 1, 15% of positions chosen 80/10/10) from real
    English (``verify.TEXTS``), or seeded random ids without a tokenizer. Always sentence pairs,
    also for a model trained without NSP: both token-type rows are exported and checked. Every
    other example is shortened so that it ends in padding: the attention mask is checked too."""
    from dist_pretrain.interop.verify import TEXTS
    from dist_pretrain.objectives.mlm import MLMConfig, bert_example
    from dist_pretrain.tasks.masked_lm import BERT_SPECIALS

    if cfg.task.name == "classification":
        return classification_inputs(tokenizer, vocab, cfg, count)
    length, rng = cfg.model.seq_length, np.random.default_rng(cfg.seed)
    mlm = MLMConfig(mask_prob=0.15, nsp=True)
    if tokenizer is not None:
        specials, real_vocab = tokenizer.special_ids, tokenizer.vocab_size
        docs = [np.asarray(tokenizer.encode_batch([t])[0], np.int64) for t in TEXTS]
    else:
        specials, real_vocab = BERT_SPECIALS, vocab
        docs = [rng.integers(110, vocab, size=length).astype(np.int64) for _ in TEXTS]
    rows = {"tokens": [], "token_types": [], "padding_mask": []}
    for i in range(count):
        tokens = docs[i % len(docs)][:length]
        half = len(tokens) // 2
        sentences = np.array([half, len(tokens) - half], np.int64)
        other = docs[(i + 1) % len(docs)]
        other = (other, np.array([len(other)], np.int64))
        real = length if i % 2 == 0 else max(3, length // 2)
        example = bert_example(tokens, sentences, real, specials, real_vocab, rng, mlm, other=other)
        fill = {"tokens": specials["pad"], "token_types": 0, "padding_mask": 0}
        for key, value in fill.items():
            rows[key].append(np.pad(example[key], (0, length - real), constant_values=value))
    return {k: torch.from_numpy(np.stack(v)) for k, v in rows.items()}


def classification_inputs(tokenizer, vocab: int, cfg: Config, count: int = 4) -> dict[str, torch.Tensor]:
    """``count`` unmasked classifier inputs as fine-tuning builds them
    (``tasks.classification.classification_example``) from real English: even ones
    ``[CLS] a [SEP] b [SEP]`` pairs (token types 0 and 1), odd ones single sentences; every
    other pair and every other single sentence is short and ends in padding."""
    from dist_pretrain.data.labelled import fit_pair
    from dist_pretrain.interop.verify import TEXTS
    from dist_pretrain.tasks.classification import classification_example
    from dist_pretrain.tasks.masked_lm import BERT_SPECIALS

    length, rng = cfg.model.seq_length, np.random.default_rng(cfg.seed)
    if tokenizer is not None:
        specials = tokenizer.special_ids
        docs = [tokenizer.encode_batch([t])[0] for t in TEXTS]
    else:
        specials = BERT_SPECIALS
        docs = [rng.integers(110, vocab, size=length).tolist() for _ in TEXTS]
    rows = {"tokens": [], "token_types": [], "padding_mask": []}
    for i in range(count):
        short = (i // 2) % 2 == 1
        a, b = docs[i % len(docs)], (docs[(i + 1) % len(docs)] if i % 2 == 0 else [])
        budget = (length if not short else max(5, length // 2)) - (3 if b else 2)
        a, b = fit_pair(a, b, budget) if b else (a[:budget], [])
        example = classification_example({"tokens": np.asarray(a), "pair": np.asarray(b, np.int64),
                                          "label": np.zeros(1, np.int64)}, rng, seq_len=length, specials=specials)
        for key in rows:
            rows[key].append(example[key])
    return {k: torch.from_numpy(np.stack(v)) for k, v in rows.items()}


@torch.no_grad()
def our_outputs(chunk: torch.nn.Module, inputs: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(MLM logits [b, s, V] with all padded rows, NSP logits [b, 2] or None) of our one-process
    model; a classifier's (class logits [b, num_labels], None)."""
    if hasattr(chunk, "classifier"):
        return chunk(inputs["tokens"], inputs["padding_mask"], tokentype_ids=inputs["token_types"]), None
    return chunk(inputs["tokens"], inputs["padding_mask"], tokentype_ids=inputs["token_types"], lm_labels=None)


@torch.no_grad()
def hf_outputs(model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    out = model(input_ids=inputs["tokens"], attention_mask=inputs["padding_mask"],
                token_type_ids=inputs["token_types"])
    logits = out.logits if hasattr(out, "logits") else out.prediction_logits
    return logits, getattr(out, "seq_relationship_logits", None)
