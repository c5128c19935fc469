"""Activation memory of one micro-batch, with and without full recomputation, against
Korthikanti et al.'s count.

    python -m benchmarks.activations [--smoke]

Method. On a CPU there is no allocator high-water mark to read, so we count what autograd
keeps: one forward of a micro-batch through our model (the Trainer's engine and
forward step, loss included) runs under ``torch.autograd.graph.saved_tensors_hooks``, whose
pack hook sees every tensor saved for backward. Each tensor's *storage* is counted once
(views and tensors saved by several ops share one), parameters are left out (weights are
saved for backward but are not activations), and each storage is attributed to where it was
first saved: inside a transformer layer, in the layer stack but between layers (the
checkpointed layer inputs under ``model.recompute=full``), or outside the stack (embedding,
final norm, logits, loss). At the end of the forward these storages are the activation
memory the micro-batch holds: its peak, save for transient buffers. With recomputation
the backward re-runs one layer at a time, so its peak is the checkpoints plus one layer's
activations (the no-recompute per-layer figure).
"""

from __future__ import annotations

import argparse
import logging

import torch

from benchmarks.common import FULL, SMOKE, GPTSize, build_trainer, gpt_overrides
from dist_pretrain.memory import flash_no_dropout_layer_bytes, korthikanti_layer_bytes


class SavedCounter:
    """Pack hook + layer hooks: bytes of unique saved storages per region."""

    def __init__(self, model: torch.nn.Module, param_storages: set[int]):
        self.param_storages = param_storages
        self.seen: set[int] = set()
        self.bytes = {"layers": 0, "between layers": 0, "outside": 0}
        self.region = "outside"
        self.depth = 0
        # GPT / BERT: ``decoder`` is the stack; T5: ``encoder`` and ``decoder`` (one of them on a
        # pipeline stage that holds only the other's layers)
        for block in (getattr(model, name, None) for name in ("encoder", "decoder")):
            if block is None:
                continue
            block.register_forward_pre_hook(lambda *_: self._enter("between layers"))
            block.register_forward_hook(lambda *_: self._enter("outside"))
            for layer in block.layers:
                layer.register_forward_pre_hook(lambda *_: self._enter("layers"))
                layer.register_forward_hook(lambda *_: self._enter("between layers"))

    def _enter(self, region: str) -> None:
        self.region = region

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in self.seen and key not in self.param_storages and storage.nbytes():
            self.seen.add(key)
            self.bytes[self.region] += storage.nbytes()
        return t


def saved_bytes(size: GPTSize, precision: str, recompute: str, dropout: float = 0.0) -> dict:
    trainer = build_trainer(gpt_overrides(size, precision) + [
        f"model.recompute={recompute}", f"model.hidden_dropout={dropout}", f"model.attention_dropout={dropout}"])
    return count_saved(trainer)


def count_saved(trainer) -> dict:
    """Bytes of the storages one micro-batch's forward (loss included) saves for backward on
    this rank, by region (the layers of ``decoder.layers`` and, for T5, ``encoder.layers``)."""
    # on CPU megatron's dropout RNG fork is the CPU generator itself and says so once per layer
    logging.getLogger("megatron.core.tensor_parallel.random").setLevel(logging.ERROR)
    chunk = trainer.engine.model_chunks[0]
    model = chunk.module
    while not (hasattr(model, "decoder") or hasattr(model, "encoder")):  # DeepSpeed / Float16Module / DDP wrappers
        model = model.module
    params = {p.untyped_storage().data_ptr() for p in chunk.parameters()}
    counter = SavedCounter(model, params)
    batch = next(iter(trainer._batches("train")))
    trainer.engine.train()
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
        output, loss_func = trainer.task.forward_step(iter([batch]), chunk)
        loss = loss_func(output)[0]
    del loss, output
    return dict(counter.bytes)


def run(size: GPTSize, precisions: list[str]) -> list[dict]:
    s, b, h, a, layers = size.seq, size.micro_batch, size.hidden, size.heads, size.layers
    rows = []
    for precision in precisions:
        value_bytes = 2 if precision == "bf16" else 4
        plain = saved_bytes(size, precision, "none")
        full = saved_bytes(size, precision, "full")
        per_layer = plain["layers"] / layers
        dropout = saved_bytes(size, precision, "none", dropout=0.1) if precision == "bf16" else None
        rows.append({
            "precision": precision,
            "per_layer_dropout": dropout["layers"] / layers if dropout else None,
            "per_layer": per_layer,
            "korthikanti": korthikanti_layer_bytes(s, b, h, a),
            "ours_formula": flash_no_dropout_layer_bytes(s, b, h, a, value_bytes),
            # the final LayerNorm's input sits between the layers in both runs
            "checkpoint_per_layer": (full["layers"] + full["between layers"] - plain["between layers"]) / layers,
            "checkpoint_formula": s * b * h * value_bytes,
            "stack_plain": plain["layers"] + plain["between layers"],
            "stack_recompute": full["layers"] + full["between layers"],
            "outside": plain["outside"],
            "total_plain": sum(plain.values()),
            "total_recompute": sum(full.values()),
            "peak_recompute": sum(full.values()) + per_layer,
        })
    return rows


def table(rows: list[dict], size: GPTSize) -> str:
    mib = 2**20
    lines = [f"s={size.seq}, b={size.micro_batch}, h={size.hidden}, a={size.heads}, L={size.layers}; MiB per micro-batch",
             "",
             ("| dtype | per layer: measured | with dropout 0.1 (unfused attention) | Korthikanti sbh(34+5as/h) | no dropout, fused SDPA: 16sbh·e + 4asb | "
             "recompute: per layer measured | layer input sbh·e | layer stack: none / full | "
             "outside the stack (logits, loss) | micro-batch peak: none / full recompute |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        drop = f"{r['per_layer_dropout'] / mib:.2f}" if r["per_layer_dropout"] else "-"
        lines.append(
            f"| {r['precision']} | {r['per_layer'] / mib:.2f} | {drop} | {r['korthikanti'] / mib:.2f} | "
            f"{r['ours_formula'] / mib:.2f} ({r['per_layer'] / r['ours_formula']:.2f}x) | "
            f"{r['checkpoint_per_layer'] / mib:.2f} | {r['checkpoint_formula'] / mib:.2f} | "
            f"{r['stack_plain'] / mib:.1f} / {r['stack_recompute'] / mib:.1f} | {r['outside'] / mib:.1f} | "
            f"{r['total_plain'] / mib:.1f} / {r['peak_recompute'] / mib:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    size = SMOKE if args.smoke else FULL
    print(table(run(size, ["bf16", "fp32"]), size))


if __name__ == "__main__":
    main()
