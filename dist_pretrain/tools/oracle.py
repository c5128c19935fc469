"""An independent oracle: our model at TP2 x PP2 against HF ``transformers`` on the same batch.

The equivalence matrix (``tools/equivalence.py``) compares every layout with one process
of *the same code*, so a bug every layout shares (loss normalisation, attention, init, the
engine wrapper) would pass it. Here, in fp32:

1. the seed-only initial weights are built on one process and exported (``export_model``,
   itself checked against transformers), with the first step's micro-batches;
2. our trainer runs one step at TP2 x PP2 with ZeRO-1 (BERT: ZeRO-2) (4 torchrun processes,
   gloo) and saves;
3. transformers runs the same micro-batches from the exported initial weights: the loss
   (megatron's: mean over micro-batches of each one's token mean; BERT: each micro-batch's
   mean over its masked tokens plus, with NSP, its mean NSP loss -- the masking (80/10/10)
   is decided once, in the saved micro-batches, and both sides read those same tokens),
   backward, clipping by global norm, ``torch.optim.AdamW`` with the same LR, betas, eps and
   weight-decay groups;
4. the step-1 checkpoint is exported (``dist-pretrain export``) and compared per tensor:
   ||ours - HF|| / ||HF|| (L2), and the largest elementwise difference of the two updates
   relative to the largest HF update (reported: summation order in fp32 shows there).
   A tensor that starts at zero and whose gradient is zero analytically -- attention key
   biases, kept apart by MegatronBert: a constant added to every score of a query cancels in
   the softmax -- holds fp32 rounding noise (~1e-11) on both sides after the step: a tensor
   the HF step moves by less than 1e-3 lr is compared against lr * sqrt(numel) (the largest
   first step Adam can take on it) instead of its own norm, and left out of the elementwise
   update comparison.

``python -m dist_pretrain.tools.oracle`` prints the loss and weight deviations per family.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
LAYOUT = ["parallel.tensor=2", "parallel.pipeline=2"]
# adam_eps=1e-3 (about the largest gradient here): Adam's first step is g / (|g| + eps), which with
# the usual 1e-8 is sign(g) -- blind to the gradient's scale (a loss normalised wrongly would pass)
# and, for the many |g| ~ 1e-8, sensitive to fp32 summation order. With eps at the gradients'
# scale the update is ~linear in g, so the comparison sees the gradient itself.
COMMON = ["parallel.zero_stage=1", "train.steps=1", "train.warmup_steps=0", "train.decay=constant", "train.adam_eps=1e-3", "train.grad_clip=1.0", "train.precision=fp32", "monitor.tensorboard=false",
          "monitor.peak_tflops=1", "train.log_interval=1"]
# the tiny GPT as LlamaForCausalLM: rotary positions, RMSNorm, SwiGLU, no biases, GQA, untied head
LLAMA_STYLE = ["model.position_embedding=rope", "model.normalization=rmsnorm", "model.activation=swiglu",
               "model.bias=false", "model.num_query_groups=2", "model.ffn_hidden_size=96",
               "model.tie_embeddings=false", "train.grad_clip=0.5"]  # its first grad norm is ~0.9: clip it
# the tiny T5 as T5ForConditionalGeneration (configs/t5/v1.1-style.yaml's options): relative position bias,
# unscaled logits, RMSNorm, no biases, gated tanh-GELU, untied head; encoder on stage 0, decoder on stage 1
T5_V11 = ["model.position_embedding=relative", "model.softmax_scale=1.0", "model.normalization=rmsnorm",
          "model.bias=false", "model.activation=geglu_tanh", "model.tie_embeddings=false", "model.ffn_hidden_size=96",
          "model.layernorm_epsilon=1e-6"]
# name -> (config, overrides)
CASES = {
    "GPT-2-style": (CONFIGS / "gpt" / "tiny.yaml", ["model.tie_embeddings=false"]),
    "GPT-2-style tied": (CONFIGS / "gpt" / "tiny.yaml", []),
    "Llama-style": (CONFIGS / "gpt" / "tiny.yaml", LLAMA_STYLE),
    # megatron-core BertModel as MegatronBertForPreTraining: MLM + NSP (pooler, binary head, token
    # types), padded examples, ZeRO-2
    "BERT": (CONFIGS / "bert" / "tiny.yaml", ["task.next_sentence_prediction=true", "parallel.zero_stage=2"]),
    # MLM only, as MegatronBertForMaskedLM (the tool runs it; the suite keeps the case above)
    "BERT MLM-only": (CONFIGS / "bert" / "tiny.yaml", []),
    "T5 v1.1": (CONFIGS / "t5" / "tiny.yaml", T5_V11),
}


# --------------------------------------------------------------------------- subprocess: initial weights


def prepare(config: str, overrides: list[str], out: Path) -> None:
    """Export the seed-only initial weights and save the first step's micro-batches."""
    from dist_pretrain.config import load_config, padded_vocab_size
    from dist_pretrain.interop.hf_export import export_model
    from dist_pretrain.models.load import (
        build_model,
        init_single_process,
        one_process_config,
    )
    from dist_pretrain.preflight import check

    cfg = one_process_config(load_config(config, overrides))
    report = check(cfg, 1, verify_checkpoint=False)
    report.raise_errors()
    vocab = padded_vocab_size(cfg, report.vocab_size)
    init_single_process()
    chunks = build_model(cfg, vocab)
    export_model(cfg, chunks, out / "initial")
    tr = cfg.train
    from dist_pretrain.tasks import get_task

    stream = get_task(cfg.task.name).batches(cfg, "train", 0, 1, tr.micro_batch_size, cfg.seed, vocab)
    torch.save([next(stream) for _ in range(tr.global_batch_size // tr.micro_batch_size)], out / "batches.pt")


# --------------------------------------------------------------------------- transformers' side


def hf_loss(model, batch: dict, family: str) -> tuple[torch.Tensor, dict]:
    """(this micro-batch's training objective, the [sum, count] pairs our trainer logs)."""
    ce = torch.nn.functional.cross_entropy
    if family == "gpt":
        tokens = batch["tokens"]
        logits = model(input_ids=tokens[:, :-1]).logits
        loss = ce(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
        n = float(tokens[:, 1:].numel())
        return loss, {"loss": (loss.detach() * n, n)}
    if family == "bert":
        out = model(input_ids=batch["tokens"], attention_mask=batch["padding_mask"],
                    token_type_ids=batch["token_types"])
        logits = out.logits if hasattr(out, "logits") else out.prediction_logits
        mask = batch["loss_mask"].float()
        lm_sum = (ce(logits.flatten(0, 1).float(), batch["labels"].flatten(), reduction="none") * mask.flatten()).sum()
        n = mask.sum()
        loss, logged = lm_sum / n.clamp_min(1), {"loss": (lm_sum.detach(), float(n))}
        nsp = getattr(out, "seq_relationship_logits", None)
        if nsp is not None:
            nsp_loss = ce(nsp.float(), batch["nsp_label"])
            b = float(batch["nsp_label"].numel())
            loss, logged["nsp loss"] = loss + nsp_loss, (nsp_loss.detach() * b, b)
        return loss, logged
    if family == "t5":  # a span-corruption batch: padded encoder input and targets
        logits = model(input_ids=batch["enc_tokens"], attention_mask=batch["enc_mask"],
                       decoder_input_ids=batch["dec_input"], decoder_attention_mask=batch["dec_mask"]).logits
        per_token = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(),
                                                      reduction="none")
        total, n = (per_token * batch["loss_mask"].flatten()).sum(), float(batch["loss_mask"].sum())
        return total / max(n, 1.0), {"loss": (total.detach(), n)}
    raise NotImplementedError(f"oracle for family={family} is not implemented yet")


def hf_step(hf_dir: Path, batches: list[dict], cfg) -> tuple[dict, float, dict, dict]:
    """One training step of the HF model as our trainer defines it; returns (the logged losses as
    our trainer reduces them over the global batch, grad norm before clipping, weights after,
    weights before)."""
    import transformers

    from dist_pretrain.interop.hf_export import architecture_for, hf_auto_class
    from dist_pretrain.lr_schedule import learning_rate

    config = transformers.AutoConfig.from_pretrained(hf_dir)
    auto = hf_auto_class(architecture_for(cfg), cfg)
    model = getattr(transformers, auto).from_pretrained(hf_dir, config=config, dtype=torch.float32)
    model.train()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tr = cfg.train
    objectives, logged = [], {}
    for b in batches:
        objective, pairs = hf_loss(model, b, cfg.family)
        objectives.append(objective)
        for key, (total, count) in pairs.items():
            old = logged.get(key, (0.0, 0.0))
            logged[key] = (old[0] + float(total), old[1] + count)
    loss = torch.stack(objectives).mean()  # megatron: each micro-batch's mean, averaged
    loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, tr.grad_clip if tr.grad_clip > 0 else float("inf"))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if not (p.dim() == 1 or n.endswith("bias"))],
               "weight_decay": tr.weight_decay},
              {"params": [p for n, p in named if p.dim() == 1 or n.endswith("bias")], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=learning_rate(1, cfg), betas=(tr.adam_beta1, tr.adam_beta2), eps=tr.adam_eps)
    opt.step()
    after = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {k: total / count for k, (total, count) in logged.items()}, float(grad_norm), after, before


# --------------------------------------------------------------------------- driver


def _run(cmd: list[str], what: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc.stdout


def run_case(name: str, workdir: Path) -> dict:
    from safetensors.torch import load_file

    from dist_pretrain.config import load_config
    from dist_pretrain.lr_schedule import learning_rate

    config, extra = CASES[name]
    overrides = COMMON + extra
    workdir.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "dist_pretrain.tools.oracle", "--prepare", str(workdir), str(config), *overrides],
         "exporting the initial weights")
    run_dir = workdir / "run"
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4", "-m", "dist_pretrain",
          "train", str(config), *overrides, *LAYOUT, "parallel.nproc=4", "checkpoint.interval=1",
          f"run_dir={run_dir}"], "training one step at TP2 x PP2")
    export_out = _run([sys.executable, "-m", "dist_pretrain", "export", str(run_dir), "--output",
                       str(workdir / "after")], "exporting the step-1 checkpoint")
    logged = json.loads((run_dir / "history.jsonl").read_text().splitlines()[0])
    cfg = load_config(config, overrides)
    lr = learning_rate(1, cfg)
    hf_losses, hf_norm, hf_after, hf_before = hf_step(workdir / "initial", torch.load(workdir / "batches.pt"), cfg)
    hf_loss_value = hf_losses["loss"]
    ours_after = load_file(workdir / "after" / "model.safetensors")
    weight_dev, update_dev = {}, {}
    for key, ours in ours_after.items():
        theirs, start = hf_after[key], hf_before[key]
        moved = (theirs - start).abs().max()
        if moved > 1e-3 * lr:
            weight_dev[key] = float((ours - theirs).norm() / theirs.norm().clamp_min(1e-12))
            update_dev[key] = float(((ours - start) - (theirs - start)).abs().max() / moved)
        else:  # zero before and an analytically zero gradient (key biases): fp32 noise on both sides
            weight_dev[key] = float((ours - theirs).norm() / (lr * theirs.numel() ** 0.5))
    extra = {}
    if "nsp loss" in hf_losses:
        ours_nsp, hf_nsp = logged["train/nsp_loss"], hf_losses["nsp loss"]
        extra = {"ours_nsp_loss": ours_nsp, "hf_nsp_loss": hf_nsp, "nsp_loss_rel_dev": abs(ours_nsp - hf_nsp) / hf_nsp}
    return {"ours_loss": logged["train/loss"], "hf_loss": hf_loss_value, **extra,
            "zero_stage": cfg.parallel.zero_stage,
            "loss_rel_dev": abs(logged["train/loss"] - hf_loss_value) / abs(hf_loss_value),
            "grad_norm_rel_dev": abs(logged["train/grad_norm"] - hf_norm) / hf_norm, "grad_norm": hf_norm,
            "grad_clip": cfg.train.grad_clip,
            "weight_rel_dev": weight_dev, "update_rel_dev": update_dev, "export": export_out.strip().splitlines()[-1]}


def table(results: dict) -> str:
    header = ("| family | layout | ours loss | HF loss | loss rel dev | grad norm (HF) | grad-norm rel dev | "
              "max weight rel dev (L2, per tensor) | tensor | max update rel dev (elementwise) |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        worst = max(r["weight_rel_dev"], key=r["weight_rel_dev"].get)
        lines.append(f"| {name} | TP2xPP2 ZeRO-{r['zero_stage']} | {r['ours_loss']:.7f} | {r['hf_loss']:.7f} | "
                     f"{r['loss_rel_dev']:.1e} | "
                     f"{r['grad_norm']:.4f} | {r['grad_norm_rel_dev']:.1e} | "
                     f"{r['weight_rel_dev'][worst]:.1e} | {worst} | {max(r['update_rel_dev'].values()):.1e} |")
    for name, r in results.items():
        if "nsp_loss_rel_dev" in r:
            lines.append(f"\n{name} NSP loss: ours {r['ours_nsp_loss']:.7f}, HF {r['hf_nsp_loss']:.7f}, "
                         f"rel dev {r['nsp_loss_rel_dev']:.1e}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepare", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--only", nargs="*", help=f"cases (default: all of {', '.join(CASES)})")
    parser.add_argument("--rtol", type=float, default=1e-5)
    args = parser.parse_args(argv)
    if args.prepare:
        prepare(args.prepare[1], args.prepare[2:], Path(args.prepare[0]))
        return 0
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or CASES:
            results[name] = run_case(name, Path(tmp) / name.replace(" ", "_"))
    print("fp32, one step, synthetic batch; weights compared after `dist-pretrain export`\n")
    print(table(results))
    ok = all(r["loss_rel_dev"] <= args.rtol and r["grad_norm_rel_dev"] <= args.rtol
             and r.get("nsp_loss_rel_dev", 0.0) <= args.rtol
             and max(r["weight_rel_dev"].values()) <= args.rtol for r in results.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
