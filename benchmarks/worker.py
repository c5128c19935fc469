"""One torchrun job that runs many benchmark cases (``common.launch_worker`` starts it).

    python -m torch.distributed.run --nproc-per-node N -m benchmarks.worker CASES.json OUT.json

Each case builds a ``Trainer`` (parallel_state is rebuilt between cases) and either

* ``"kind": "train"``: runs ``Trainer.fit()`` exactly as ``launchers/torchrun.sh`` would, then
  reads rank 0's ``run_dir/history.jsonl``: median ``throughput/tokens_per_s`` and
  ``throughput/tflops_per_device`` over the steps after ``warmup``;
* ``"kind": "memory"``: trains two steps and, at the entry of the last AdamW step (gradients
  reduced, optimizer state allocated: the high-water mark of model state), counts the tensor
  storage each rank holds with ``dist_pretrain.memory.held_model_state``;
* ``"kind": "activations"``: one micro-batch's forward, counting the storages saved for
  backward on each rank (``benchmarks.activations.count_saved``).
"""

from __future__ import annotations

import gc
import json
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.common import ROOT, median


def _trainer(case: dict, world: int):
    from dist_pretrain.config import load_config
    from dist_pretrain.train import Trainer

    overrides = list(case["overrides"]) + [f"parallel.nproc={world}", f"run_dir={tempfile.mkdtemp(prefix='bench-')}"]
    config = ROOT / case["config"] if case.get("config") else None
    return Trainer(load_config(config, overrides))


def train_case(case: dict, world: int) -> dict:
    trainer = _trainer(case, world)
    trainer.fit()
    torch.distributed.barrier()
    if torch.distributed.get_rank() != 0:
        return {}
    history = [json.loads(line) for line in (Path(trainer.cfg.run_dir) / "history.jsonl").read_text().splitlines()]
    kept = history[case.get("warmup", 2):] or history
    return {
        "tokens_per_s": median(h["throughput/tokens_per_s"] for h in kept),
        "step_s": median(h["time/step_s"] for h in kept),
        "model_tflops": median(h["throughput/tflops_per_device"] for h in kept) * world,
        "data_wait_share": median(h["time/data_wait_share"] for h in kept),
        "steps_measured": len(kept),
        "tokens_per_step": trainer.tokens_per_step,
        "flops_per_step": trainer.flops_per_step,
        "params": sum(p.numel() for c in trainer.engine.model_chunks for p in c.parameters()),
    }


def memory_case(case: dict, world: int) -> dict:
    """Model-state bytes per rank at their high-water mark during the second training step.

    Counted after every parameter's gradient is accumulated in the last backward under
    DeepSpeed (ZeRO-1 still holds full gradients there, ZeRO-2 reduces them bucket by bucket;
    megatron's DDP keeps a fixed main_grad buffer), at the entry of
    the engine's optimizer step and of each AdamW step inside it (DeepSpeed makes the fp32
    gradient partition there); the count with the most params + grads + optimizer state wins.
    Other tensors alive at the optimizer step are counted too (``live_unreached``).
    """
    from dist_pretrain.memory import (
        find_torch_optimizers,
        held_model_state,
        live_storages,
    )

    baseline = live_storages()
    trainer = _trainer(case, world)
    engine = trainer.engine
    params = [p for c in engine.model_chunks for p in c.parameters()]
    best: dict = {}
    armed = [False]

    def count(scan: bool) -> None:
        if not armed[0]:
            return
        now = held_model_state(params, [engine.optimizer], baseline if scan else None)
        total = now["params"] + now["grads"] + now["optimizer"]
        kept = {k: best.get(k) for k in ("live_unreached", "buffers")}
        if total >= best.get("total", -1):
            best.update(now, total=total)
        # communication buffers and unreached tensors: their own high-water marks
        best["buffers"] = max(kept["buffers"] or 0, now["buffers"])
        best["live_unreached"] = max(kept["live_unreached"] or 0, now["live_unreached"] or 0)

    def wrap(opt):
        original = opt.step

        def step(*args, **kwargs):
            count(scan=True)
            return original(*args, **kwargs)
        opt.step = step

    for opt in [engine.optimizer] + find_torch_optimizers(engine.optimizer):
        wrap(opt)
    if not hasattr(engine.optimizer, "prepare_grads"):  # DeepSpeed: gradients live in .grad / buckets
        for p in params:  # (megatron's DDP adds each .grad into its main_grad buffer at once)
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(lambda _: count(scan=False))
    trainer.train_step(1)
    armed[0] = True  # AdamW's moments exist from the first update on: count the second step
    trainer.train_step(2)
    # unique parameters of the model (ZeRO-3 keeps the full count in ds_numel)
    result = {"psi": sum(getattr(p, "ds_numel", p.numel()) for p in params), **best,
              # ZeRO-3 gathers parameters whole: its stated budget and the one it must gather anyway
              "largest_param": max(getattr(p, "ds_numel", p.numel()) for p in params),
              "max_live_parameters": engine.engine.zero_max_live_parameters() if case["stage"] == 3 else 0}
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, result)
    return {"ranks": gathered}


def activations_case(case: dict, world: int) -> dict:
    from benchmarks.activations import count_saved

    saved = count_saved(_trainer(case, world))
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, saved)
    return {"ranks": gathered}


def main() -> None:
    from dist_pretrain.runtime import world_size_from_env

    cases, out = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
    world = world_size_from_env()
    results = {}
    for case in cases:
        run = {"train": train_case, "memory": memory_case, "activations": activations_case}[case["kind"]]
        try:
            results[case["name"]] = run(case, world)
        except Exception as err:  # noqa: BLE001 - the same error on every rank (config, code): next case
            results[case["name"]] = {"error": f"{type(err).__name__}: {err}"}
        gc.collect()
        torch.distributed.barrier()
    if torch.distributed.get_rank() == 0:
        out.write_text(json.dumps(results))


if __name__ == "__main__":
    main()
