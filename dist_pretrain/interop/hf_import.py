"""``dist-pretrain import HF_DIR --output DIR``: a HuggingFace model as one of our checkpoints.

The output is a checkpoint directory (megatron ``dist_checkpointing``, whole fp32 tensors
under global names, ``meta.json`` with the config, ``manifest.json`` with checksums) that
holds weights only, plus ``config.yaml``: train or fine-tune from it at any TP / PP / DP
with ``checkpoint.init_from=DIR`` (fresh optimizer, step 0), or export it again. The vocab
is padded with zero rows to ``model.make_vocab_size_divisible_by`` as training needs; the
original size is kept in ``meta.json`` so that export writes exactly the rows it read
(HF -> import -> export is bit-identical). The import is checked like an export: our model
and the HF model must give the same logits on the same tokens.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

import torch
import yaml

from dist_pretrain.config import Config, padded_vocab_size
from dist_pretrain.interop.hf_export import hf_auto_class
from dist_pretrain.interop.layout import pad_rows
from dist_pretrain.interop.verify import compare_logits, seq2seq_sequences, token_sequences

VOCAB_TABLES = ("embedding.word_embeddings.weight", "output_layer.weight", "output_layer.bias",
                "lm_head.output_layer.weight")


class HFImportError(RuntimeError):
    """A HF model that cannot be imported, with the reason."""


def architecture_for_hf(model_type: str):
    from dist_pretrain.interop import gpt2, llama, megatron_bert, t5

    known = {arch.model_type: arch for arch in (gpt2, llama, megatron_bert, t5)}
    if model_type == "bert":
        raise HFImportError("HF model_type 'bert' (BertForMaskedLM) is post-LN (a LayerNorm after each residual "
                            "sum and on the embeddings); megatron-core's BertModel is pre-LN and cannot represent "
                            "it. A pre-LN MegatronBert (model_type 'megatron-bert') can be imported")
    if model_type not in known:
        raise HFImportError(f"HF model_type {model_type!r} cannot be imported; supported: {', '.join(known)}")
    return known[model_type]


def write_weights_checkpoint(chunks, cfg: Config, output: Path, extra_meta: dict, sections: dict | None = None) -> None:
    """A weights-only checkpoint of a one-process model: the training format, no optimizer."""
    from megatron.core import dist_checkpointing

    from dist_pretrain.checkpoint import parameter_shards, sha256_file

    state = {f"{i}": dataclasses.replace(st, key=f"model.{st.key}", dtype=torch.float32,
                                         data=p.detach().float().reshape(st.local_shape).contiguous())
             for i, (p, st) in enumerate(parameter_shards(chunks))}
    output.mkdir(parents=True)
    dist_checkpointing.save(state, str(output))
    layout = {"tp": 1, "pp": 1, "vpp": None, "dp": 1, "zero_stage": cfg.parallel.zero_stage}
    (output / "meta.json").write_text(json.dumps({"step": 0, "data": {}, "config": cfg.model_dump(), "layout": layout,
                                                  "rng": [], "weights_only": True, **extra_meta}))
    (output / "config.yaml").write_text(
        "# imported; train from it with checkpoint.init_from=<this directory> and data.path=...\n"
        + yaml.safe_dump({"family": cfg.family, "model": cfg.model.model_dump(exclude_none=True), **(sections or {})},
                         sort_keys=False))
    files = {str(p.relative_to(output)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(output.rglob("*")) if p.is_file()}
    (output / "manifest.json").write_text(json.dumps({"step": 0, "files": files}, indent=1))


def import_hf(hf_dir: str | Path, output: str | Path, tolerance: float = 1e-3) -> dict:
    import transformers

    from dist_pretrain.data.tokenizer import load_tokenizer
    from dist_pretrain.models.load import build_model, init_single_process, load_weights

    transformers.utils.logging.disable_progress_bar()
    hf_dir, output = Path(hf_dir), Path(output)
    if output.exists() and any(output.iterdir()):
        raise HFImportError(f"--output {output} exists and is not empty; choose a new directory")
    hf_cfg = transformers.AutoConfig.from_pretrained(hf_dir)
    arch = architecture_for_hf(hf_cfg.model_type)
    try:
        auto = hf_auto_class(arch, hf_cfg)
        keys = arch.model_keys(hf_cfg)
        sections = arch.config_sections(hf_cfg) if hasattr(arch, "config_sections") else {}
    except ValueError as err:
        raise HFImportError(f"{hf_dir}: {err}") from None
    model = getattr(transformers, auto).from_pretrained(hf_dir, dtype=torch.float32)
    family = getattr(arch, "family", "gpt" if arch.model_type in ("gpt2", "llama") else arch.model_type)
    cfg = Config.model_validate({"family": family, "model": keys, **sections})
    reason = arch.unsupported(cfg)
    if reason:
        raise HFImportError(f"{hf_dir}: {reason}")
    vocab = keys["vocab_size"]
    rows = padded_vocab_size(cfg, vocab)
    weights = arch.from_hf(model.state_dict(), hf_cfg, cfg)
    weights.update({k: pad_rows(weights[k], rows) for k in VOCAB_TABLES if k in weights})
    init_single_process()
    chunks = build_model(cfg, rows)
    load_weights(chunks, weights)  # every name and shape checked
    tokenizer = load_tokenizer(str(hf_dir)) if (hf_dir / "tokenizer.json").is_file() else None
    if hasattr(arch, "check_inputs"):
        short = cfg.model_copy(update={"model": cfg.model.model_copy(
            update={"seq_length": min(cfg.model.seq_length, 64)})})
        ids = arch.check_inputs(tokenizer, vocab, short, 4)
    elif cfg.family == "t5":
        ids = seq2seq_sequences(tokenizer, vocab, 64, 16, 4, cfg.seed, hf_cfg.decoder_start_token_id or 0)
    else:
        ids = token_sequences(tokenizer, vocab, min(cfg.model.seq_length, 64), 4, cfg.seed)
    result = compare_logits(arch, chunks[0], model, ids, cfg)
    if result["max_abs_diff"] > tolerance:
        raise HFImportError(f"imported model disagrees with {hf_dir}: max |dlogit| {result['max_abs_diff']:.3g} "
                           f"(tolerance {tolerance:g}); nothing was written")
    tmp = output.with_name(output.name + ".tmp-import")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        special = {role: getattr(hf_cfg, f"{role}_token_id", None) for role in ("pad", "eos", "decoder_start")}
        write_weights_checkpoint(chunks, cfg, tmp, {"hf": {"model_type": hf_cfg.model_type, "vocab_size": vocab,
                                                           "source": str(hf_dir), "special_ids": special}},
                                 sections)
        if tokenizer is not None:
            shutil.copy(hf_dir / "tokenizer.json", tmp / "tokenizer.json")
        if output.exists():
            output.rmdir()
        os.replace(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result.update(architecture=type(model).__name__, vocab=vocab, padded_vocab=rows)
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dist-pretrain import", description=__doc__.split("\n\n")[0])
    parser.add_argument("hf_dir", help="a transformers model directory (save_pretrained)")
    parser.add_argument("--output", required=True, help="new checkpoint directory")
    args = parser.parse_args(argv)
    from dist_pretrain.models.load import WeightsError

    try:
        r = import_hf(args.hf_dir, args.output)
    except (HFImportError, WeightsError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    nsp = f" (NSP head: max |dlogit| {r['nsp_max_abs_diff']:.2e})" if "nsp_max_abs_diff" in r else ""
    print(f"imported {r['architecture']} (vocab {r['vocab']}, padded to {r['padded_vocab']}) to {args.output}; "
          f"max |dlogit| {r['max_abs_diff']:.2e}, top-1 agreement {r['top1_agreement']:.4f}{nsp}; train from it with "
          f"checkpoint.init_from={args.output}")
    return 0
