"""``dist-pretrain export SRC --output DIR``: a checkpoint as a HuggingFace model directory.

Runs on one process whatever layout the checkpoint was saved at (``models.load`` reshards
to TP = PP = 1). Writes ``config.json``, ``model.safetensors`` and ``generation_config.json``
with ``transformers``' own ``save_pretrained``, plus the tokenizer the data was made with.
Before the directory gets its final name, the exported model is loaded back with
``AutoModelFor*.from_pretrained`` and run next to ours on a few real token sequences
(``verify``): above tolerance nothing final is written. Converters that silently produce
gibberish (a wrong QKV order, shifted vocab rows) are what this check exists for.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

from dist_pretrain.config import Config
from dist_pretrain.interop.verify import compare_logits, seq2seq_sequences, token_sequences

TOLERANCE = 1e-3  # max |logit difference| allowed (fp32 on both sides differs by ~1e-6)
MIN_TOP1 = 0.99


class ExportError(RuntimeError):
    """A model that cannot be exported, or an export that failed its check."""


def architecture_for(cfg: Config):
    """The HF architecture module for ``cfg`` (``interop.gpt2``, ...), or ExportError saying why not."""
    from dist_pretrain.interop import gpt2, llama, megatron_bert, t5

    if cfg.family == "gpt":
        arch = gpt2 if cfg.model.position_embedding == "learned" else llama
    elif cfg.family == "bert":
        arch = megatron_bert
    elif cfg.family == "t5":
        arch = t5
    else:
        raise ExportError(f"export of family={cfg.family} is not implemented yet; GPT exports to "
                          "GPT2LMHeadModel (learned positions) or LlamaForCausalLM (rotary positions), BERT to "
                          "MegatronBertForMaskedLM / MegatronBertForPreTraining, T5 v1.1-style to "
                          "T5ForConditionalGeneration")
    reason = arch.unsupported(cfg)
    if reason:
        raise ExportError(f"cannot export to {arch.model_type}: {reason}")
    return arch


def hf_auto_class(arch, config) -> str:
    """The transformers Auto class for ``arch``; an architecture whose HF class depends on the
    model (BERT with or without its NSP head) picks it from ``config`` (ours or the HF one)."""
    return arch.auto_class(config) if callable(arch.auto_class) else arch.auto_class


def exported_vocab(meta: dict, rows: int) -> int:
    """Rows to export: all of them (padded rows take part in the softmax), or the original
    vocab of a model that ``dist-pretrain import`` padded."""
    return int(meta.get("hf", {}).get("vocab_size") or rows)


def hf_tokenizer(cfg: Config, name: str | None, directory: Path):
    """(our tokenizer, HF ``PreTrainedTokenizerFast``) of ``name``, else the one an import left in
    the checkpoint directory, else the training data's; None when there is none (synthetic data)."""
    from transformers import PreTrainedTokenizerFast

    from dist_pretrain.data.tokenizer import TextTokenizer, load_tokenizer

    if name is None and (directory / "tokenizer.json").is_file():
        name = str(directory / "tokenizer.json")
    if name is None:
        if cfg.data.synthetic or not cfg.data.sources():
            return None
        from dist_pretrain.data.loader import read_manifest

        name = read_manifest(cfg.data.sources()[0][0])["tokenizer"]["name"]
    tok = load_tokenizer(name)
    if not isinstance(tok, TextTokenizer):
        return tok, sentencepiece_for_hf(tok)
    specials = {f"{role}_token": tok.tokenizer.id_to_token(i) for role, i in tok.special_ids.items()
                if role in ("eos", "bos", "pad", "unk", "cls", "sep", "mask")}
    extra = {}
    if cfg.family == "bert":  # sentence pairs: tokenizer(a, b) gives the token types the model was trained with
        extra = {"model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
                 "model_max_length": cfg.model.max_positions}
    return tok, PreTrainedTokenizerFast(tokenizer_object=tok.tokenizer, **specials, **extra)


def sentencepiece_for_hf(tok):
    """A HF fast tokenizer that encodes like our SentencePiece model (``SpmConverter`` follows the
    model's own normalizer, dummy prefix, byte fallback and user-defined pieces, the sentinels
    ``<extra_id_N>`` among them), with T5's ``</s>`` appended when special tokens are added."""
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SpmConverter

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tok.sp.serialized_model_proto())
    backend = SpmConverter.build_tokenizer_from_spm_proto(proto, [(p.piece, p.score) for p in proto.pieces])
    if backend is None:
        raise ExportError(f"tokenizer {tok.name}: SentencePiece model type {proto.trainer_spec.model_type} cannot "
                          "be converted to a HF tokenizer")
    names = {role: tok.sp.id_to_piece(i) for role, i in tok.special_ids.items()}
    backend.post_processor = processors.TemplateProcessing(
        single=["$A", names["eos"]], pair=["$A", names["eos"], "$B", names["eos"]],
        special_tokens=[(names["eos"], tok.eos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, **{f"{r}_token": t for r, t in names.items()})


def check_tokenizer(tok, directory: Path) -> None:
    """``AutoTokenizer.from_pretrained(directory)`` must give our ids on the check's texts."""
    from transformers import AutoTokenizer

    from dist_pretrain.interop.verify import TEXTS

    theirs = AutoTokenizer.from_pretrained(directory)
    for text in TEXTS:
        if theirs(text, add_special_tokens=False)["input_ids"] != tok.encode_batch([text])[0]:
            raise ExportError(f"the exported tokenizer encodes {text[:40]!r}... differently from {tok.name}; "
                              "nothing was written")


def export(src: str | Path, output: str | Path, tokenizer: str | None = None, tolerance: float = TOLERANCE,
           min_top1: float = MIN_TOP1, sequences: int = 4) -> dict:
    """Export ``src`` (a checkpoint or run directory) to ``output``; returns the check's numbers."""
    from dist_pretrain.models.load import (
        checkpoint_meta,
        load_pretrained,
        resolve_checkpoint,
    )

    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise ExportError(f"--output {output} exists and is not empty; choose a new directory")
    directory = resolve_checkpoint(src)
    cfg, chunks = load_pretrained(directory)
    return export_model(cfg, chunks, output, checkpoint_meta(directory), hf_tokenizer(cfg, tokenizer, directory),
                        tolerance, min_top1, sequences)


def check_inputs(cfg: Config, tokenizer, vocab: int, sequences: int, hf_config):
    """Real token sequences for the check: ``[sequences, seq_length]``, or for T5 (encoder input,
    decoder input starting with the decoder start id), or for BERT a dict of masked sentence pairs."""
    if cfg.family == "bert":  # masked sentence pairs, token types, padding
        from dist_pretrain.interop.megatron_bert import check_inputs as bert_inputs

        return bert_inputs(tokenizer, vocab, cfg, sequences)
    if cfg.family == "t5":
        from dist_pretrain.models.t5 import decoder_length

        return seq2seq_sequences(tokenizer, vocab, cfg.model.seq_length, decoder_length(cfg), sequences, cfg.seed,
                                 hf_config.decoder_start_token_id)
    return token_sequences(tokenizer, vocab, cfg.model.seq_length, sequences, cfg.seed)


def export_model(cfg: Config, chunks: list[torch.nn.Module], output: Path, meta: dict | None = None,
                 tokenizer=None, tolerance: float = TOLERANCE, min_top1: float = MIN_TOP1,
                 sequences: int = 4) -> dict:
    """Export a one-process model in memory (``models.load.build_model`` / ``load_pretrained``)."""
    import transformers

    from dist_pretrain.models.load import model_weights

    transformers.utils.logging.disable_progress_bar()
    arch = architecture_for(cfg)
    weights = model_weights(chunks)
    vocab = exported_vocab(meta or {}, weights["embedding.word_embeddings.weight"].shape[0])
    if tokenizer is not None and tokenizer[0].vocab_size > vocab:
        raise ExportError(f"tokenizer {tokenizer[0].name} has {tokenizer[0].vocab_size} tokens, the model only "
                          f"{vocab}")
    auto = getattr(transformers, hf_auto_class(arch, cfg))
    if cfg.family == "t5":  # pad / EOS / decoder-start ids: those of an imported model, else the tokenizer's
        imported = {k: v for k, v in (meta or {}).get("hf", {}).get("special_ids", {}).items() if v is not None}
        special = imported or (tokenizer[0].special_ids if tokenizer is not None else None)
        hf_config = arch.hf_config(cfg, vocab, special)
    else:
        hf_config = arch.hf_config(cfg, vocab)
    if cfg.family == "bert" and tokenizer is not None and "pad" in tokenizer[0].special_ids:
        hf_config.pad_token_id = tokenizer[0].special_ids["pad"]
    model = auto.from_config(hf_config, dtype=torch.float32)
    if hasattr(arch, "prepare_hf_model"):
        arch.prepare_hf_model(model)
    model.load_state_dict(arch.to_hf(weights, cfg, vocab), strict=True)
    tmp = output.with_name(output.name + ".tmp-export")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        if hasattr(arch, "finish_export"):
            arch.finish_export(tmp)
        if tokenizer is not None:
            tokenizer[1].save_pretrained(tmp)
            check_tokenizer(tokenizer[0], tmp)
        reloaded = auto.from_pretrained(tmp, dtype=torch.float32)
        ids = check_inputs(cfg, tokenizer[0] if tokenizer else None, vocab, sequences, hf_config)
        result = compare_logits(arch, chunks[0], reloaded, ids, cfg)
        if isinstance(ids, dict):  # BERT: the real (unpadded) tokens
            tokens = int(ids["padding_mask"].sum())
        else:
            tokens = sum(int(t.numel()) for t in ids) if isinstance(ids, tuple) else int(ids.numel())
        result.update(architecture=type(reloaded).__name__, vocab=vocab, tokens=tokens,
                      sequences=len(ids["tokens"]) if isinstance(ids, dict) else None)
        if result["max_abs_diff"] > tolerance or result["top1_agreement"] < min_top1:
            raise ExportError(f"exported {result['architecture']} disagrees with the checkpoint: max |dlogit| "
                              f"{result['max_abs_diff']:.3g} (tolerance {tolerance:g}), top-1 agreement "
                              f"{result['top1_agreement']:.4f} (needs {min_top1:g}); nothing was written")
        if output.exists():
            output.rmdir()
        tmp.rename(output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dist-pretrain export", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="checkpoint directory (step-N) or run directory")
    parser.add_argument("--output", required=True, help="new directory for the HF model")
    parser.add_argument("--tokenizer", help="tokenizer to include (default: the training data's)")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE, help="max |logit difference| allowed")
    args = parser.parse_args(argv)
    from dist_pretrain.checkpoint import CheckpointError
    from dist_pretrain.models.load import WeightsError

    try:
        r = export(args.src, args.output, args.tokenizer, args.tolerance)
    except (ExportError, CheckpointError, WeightsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if r["architecture"].endswith("ForSequenceClassification"):  # one logit row per sequence
        print(f"exported {r['architecture']} (vocab {r['vocab']}) to {args.output}; checked on {r['sequences']} "
              f"sequences ({r['tokens']} tokens, pairs and padding): max |dlogit| {r['max_abs_diff']:.2e}, argmax "
              f"agreement {r['top1_agreement']:.4f}")
        return 0
    print(f"exported {r['architecture']} (vocab {r['vocab']}) to {args.output}; checked on {r['tokens']} tokens: "
          f"max |dlogit| {r['max_abs_diff']:.2e}, top-1 agreement {r['top1_agreement']:.4f}"
          + (f" (NSP head: max |dlogit| {r['nsp_max_abs_diff']:.2e})" if "nsp_max_abs_diff" in r else ""))
    return 0
