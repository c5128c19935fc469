"""Parallel-layout equivalence: every layout must reproduce the single-process loss curve.

``python -m dist_pretrain.tools.equivalence`` launches torchrun with 1, 2 and 4 CPU
processes (gloo), trains the tiny GPT config for a few fp32 steps in each layout from
the same seed-only initial weights, and prints loss and grad-norm deviations from the
one-process run. Layouts of one world size share one launch (parallel_state is rebuilt
between them). Exit status 1 when any layout deviates by more than ``--rtol``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CONFIG = CONFIGS / "gpt" / "tiny.yaml"

# name -> (world size, reference variant, overrides)
VARIANTS = {
    "tied": [],
    "untied": ["model.tie_embeddings=false"],
    "clip": ["train.grad_clip=0.5"],
    "rope": ["model.position_embedding=rope"],
    # the architecture options (model.normalization / bias / num_query_groups / activation): Llama-style,
    # whose gated linear_fc1 is TP-sharded as [gate_r; up_r] on each rank (stride 2)
    "llama-style": ["model.position_embedding=rope", "model.normalization=rmsnorm", "model.bias=false",
                    "model.num_query_groups=2", "model.activation=swiglu", "model.ffn_hidden_size=96"],
}
LAYOUTS = {
    "TP2": (2, "tied", ["parallel.tensor=2"]),
    "PP2": (2, "tied", ["parallel.pipeline=2"]),
    "PP2 untied": (2, "untied", ["parallel.pipeline=2"]),
    "PP2xVPP2": (2, "tied", ["parallel.pipeline=2", "parallel.virtual_pipeline=2"]),
    "DP2 ZeRO-1": (2, "tied", ["parallel.zero_stage=1"]),
    "DP2 ZeRO-2": (2, "tied", ["parallel.zero_stage=2"]),
    "DP2 ZeRO-3": (2, "tied", ["parallel.zero_stage=3"]),
    "DP2 ZeRO-2 clip": (2, "clip", ["parallel.zero_stage=2"]),
    "DP2 ZeRO-2 offload optimizer": (2, "tied", ["parallel.zero_stage=2", "parallel.offload_optimizer=true"]),
    "DP2 ZeRO-3 offload params+optimizer": (2, "tied", ["parallel.zero_stage=3", "parallel.offload_optimizer=true",
                                                       "parallel.offload_params=true"]),
    "TP2 recompute": (2, "tied", ["parallel.tensor=2", "model.recompute=full"]),
    "TP2 ZeRO-0 (megatron DDP)": (2, "tied", ["parallel.tensor=2", "parallel.zero_stage=0"]),
    "DP2 ZeRO-0 (megatron DDP)": (2, "tied", ["parallel.zero_stage=0"]),
    "PP2xVPP2 ZeRO-0 clip": (2, "clip", ["parallel.pipeline=2", "parallel.virtual_pipeline=2",
                                         "parallel.zero_stage=0"]),
    "TP2xPP2": (4, "tied", ["parallel.tensor=2", "parallel.pipeline=2"]),
    "TP2xPP2 rope": (4, "rope", ["parallel.tensor=2", "parallel.pipeline=2"]),
    "TP2xPP2 Llama-style (rmsnorm, no bias, GQA, swiglu)": (4, "llama-style", ["parallel.tensor=2",
                                                                                "parallel.pipeline=2"]),
    "TP2xDP2 ZeRO-1": (4, "tied", ["parallel.tensor=2", "parallel.zero_stage=1"]),
    "TP2xDP2 ZeRO-3": (4, "tied", ["parallel.tensor=2", "parallel.zero_stage=3"]),
    "PP2xDP2 ZeRO-1": (4, "tied", ["parallel.pipeline=2", "parallel.zero_stage=1"]),
    "PP2xDP2 ZeRO-2": (4, "tied", ["parallel.pipeline=2", "parallel.zero_stage=2"]),
    "PP2xDP2 ZeRO-1 untied": (4, "untied", ["parallel.pipeline=2", "parallel.zero_stage=1"]),
    "PP2xDP2 ZeRO-2 untied": (4, "untied", ["parallel.pipeline=2", "parallel.zero_stage=2"]),
    "PP2xDP2 ZeRO-0 (megatron DDP)": (4, "tied", ["parallel.pipeline=2", "parallel.zero_stage=0"]),
    "PP2xVPP2xDP2 ZeRO-2 clip": (4, "clip", ["parallel.pipeline=2", "parallel.virtual_pipeline=2",
                                             "parallel.zero_stage=2"]),
}
# T5 v1.1's architecture options: relative position bias (each TP rank gets its heads' slice of
# the bias; the encoder's table on stage 0, the decoder's on stage 1), softmax scale 1, RMSNorm,
# no biases, gated tanh-GELU, untied head
T5_V11 = ["config=t5", "model.position_embedding=relative", "model.softmax_scale=1.0", "model.normalization=rmsnorm",
          "model.bias=false", "model.activation=geglu_tanh", "model.tie_embeddings=false", "model.ffn_hidden_size=96"]
VARIANTS["t5-v1.1"] = T5_V11
LAYOUTS["T5 v1.1-style TP2xPP2 (relative bias, scale 1, rmsnorm, geglu_tanh, untied)"] = (
    4, "t5-v1.1", ["parallel.tensor=2", "parallel.pipeline=2"])
# BERT and T5 (configs/<family>/tiny.yaml): the same engine and schedules, other models
for _family in ("bert", "t5"):
    VARIANTS[_family] = [f"config={_family}"]
    LAYOUTS.update({
        f"{_family.upper()} TP2": (2, _family, ["parallel.tensor=2"]),
        f"{_family.upper()} PP2": (2, _family, ["parallel.pipeline=2"]),
        f"{_family.upper()} DP2 ZeRO-1": (2, _family, ["parallel.zero_stage=1"]),
        f"{_family.upper()} DP2 ZeRO-2": (2, _family, ["parallel.zero_stage=2"]),
        f"{_family.upper()} TP2xPP2": (4, _family, ["parallel.tensor=2", "parallel.pipeline=2"]),
    })


# --------------------------------------------------------------------------- worker (torchrun)


def _tp_replicated_check(trainer) -> dict | None:
    """Largest difference of a TP-replicated parameter between tensor-parallel ranks, and how
    many such parameters were compared; None where there is nothing to compare (TP = 1)."""
    import torch
    from megatron.core import parallel_state

    from dist_pretrain.checkpoint_shards import whole_parameters

    group = parallel_state.get_tensor_model_parallel_group()
    tp = parallel_state.get_tensor_model_parallel_world_size()
    if tp == 1:
        return None
    worst = torch.zeros(1, dtype=torch.float64)
    compared = torch.zeros(1, dtype=torch.float64)
    for chunk in trainer.engine.model_chunks:
        replicated = [p for p in chunk.module.parameters() if not getattr(p, "tensor_model_parallel", False)]
        with whole_parameters(chunk.module):  # ZeRO-3 holds only a DP partition between forwards
            for p in replicated:
                gathered = [torch.empty_like(p) for _ in range(tp)]
                torch.distributed.all_gather(gathered, p.detach().contiguous(), group=group)
                compared += 1
                for g in gathered[1:]:
                    worst = torch.maximum(worst, (g - gathered[0]).abs().max().double().reshape(1))
    torch.distributed.all_reduce(worst, op=torch.distributed.ReduceOp.MAX)
    torch.distributed.all_reduce(compared, op=torch.distributed.ReduceOp.MIN)
    return {"max_diff": float(worst), "params": int(compared)}


def _groups_seen(trainer) -> dict:
    """Data- and model-parallel sizes as the engine (DeepSpeed or megatron) sees them."""
    import torch
    from megatron.core import parallel_state

    from dist_pretrain.engine import MegatronMPU, ZeroEngine

    seen = {"dp": parallel_state.get_data_parallel_world_size(),
            "mp": MegatronMPU.get_model_parallel_world_size()}
    if isinstance(trainer.engine, ZeroEngine):
        ds = trainer.engine.engine
        seen["deepspeed_dp"] = ds.dp_world_size
        seen["deepspeed_dp_group"] = torch.distributed.get_world_size(ds.optimizer.dp_process_group)
        seen["deepspeed_mp"] = ds.mp_world_size
    return seen


def worker(cases: list[dict], out: str, steps: int) -> None:
    import torch

    from dist_pretrain.config import load_config
    from dist_pretrain.train import Trainer

    results = {}
    for case in cases:
        config = CONFIG
        overrides = [f"train.steps={steps}", "train.log_interval=1000", "monitor.tensorboard=false",
                     f"parallel.nproc={int(os.environ['WORLD_SIZE'])}", "monitor.peak_tflops=1",
                     "checkpoint.save_final=false", f"run_dir={tempfile.mkdtemp()}"]
        for item in case["overrides"]:
            if item.startswith("config="):  # which family's tiny config
                config = CONFIGS / item.split("=", 1)[1] / "tiny.yaml"
            else:
                overrides.append(item)
        trainer = Trainer(load_config(config, overrides))
        history = trainer.fit()
        results[case["name"]] = {
            "loss": [h["train/loss"] for h in history],
            "grad_norm": [h["train/grad_norm"] for h in history],
            "skipped_steps": [h["train/skipped_steps"] for h in history],
            "tokens_per_s": [h["throughput/tokens_per_s"] for h in history],
            "device": str(trainer.rt.device),
            "tp_replicated": _tp_replicated_check(trainer),
            "groups": _groups_seen(trainer),
        }
        torch.distributed.barrier()
    if torch.distributed.get_rank() == 0:
        Path(out).write_text(json.dumps(results))


# --------------------------------------------------------------------------- driver


def launch(world: int, cases: list[dict], steps: int, workdir: Path, env: dict | None = None,
           timeout: float | None = None, tag: str = "") -> dict:
    """Run ``cases`` (``{"name", "overrides"}``) in one torchrun launch of ``world`` processes;
    returns each case's per-step values. ``env`` adds variables (e.g. ``CUDA_VISIBLE_DEVICES=""``
    for a CPU run on a GPU machine, or a fault injection)."""
    case_file, out = workdir / f"cases{world}{tag}.json", workdir / f"out{world}{tag}.json"
    case_file.write_text(json.dumps(cases))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
           "-m", "dist_pretrain.tools.equivalence", "--worker", str(case_file), "--out", str(out),
           "--steps", str(steps)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun with {world} processes failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return json.loads(out.read_text())


def rel_dev(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b))


def run(layouts: dict, steps: int) -> tuple[dict, dict]:
    """Reference runs (1 process) and layout runs; returns (references, results)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        variants = sorted({v for _, v, _ in layouts.values()})
        refs = launch(1, [{"name": v, "overrides": VARIANTS[v]} for v in variants], steps, tmp)
        results = {}
        for world in sorted({w for w, _, _ in layouts.values()}):
            cases = [{"name": n, "overrides": VARIANTS[v] + o}
                     for n, (w, v, o) in layouts.items() if w == world]
            results.update(launch(world, cases, steps, tmp))
    return refs, results


def table(layouts: dict, refs: dict, results: dict, rtol: float) -> tuple[str, bool]:
    lines = [f"| layout | procs | loss max rel dev | grad-norm max rel dev | TP-replica max diff | ok (rtol {rtol:g}) |",
             "|---|---|---|---|---|---|"]
    all_ok = True
    for name, (world, variant, _) in layouts.items():
        r, ref = results[name], refs[variant]
        dl, dg = rel_dev(r["loss"], ref["loss"]), rel_dev(r["grad_norm"], ref["grad_norm"])
        replicas = r["tp_replicated"]
        ok = dl <= rtol and dg <= rtol and (replicas is None or replicas["max_diff"] == 0.0)
        all_ok &= ok
        shown = "n/a (TP 1)" if replicas is None else f"{replicas['max_diff']:.1e} ({replicas['params']} params)"
        lines.append(f"| {name} | {world} | {dl:.2e} | {dg:.2e} | {shown} | {'yes' if ok else 'NO'} |")
    return "\n".join(lines), all_ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--only", nargs="*", help="layout names to run (default: all)")
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(Path(args.worker).read_text()), args.out, args.steps)
        return 0
    layouts = {k: v for k, v in LAYOUTS.items() if not args.only or k in args.only}
    refs, results = run(layouts, args.steps)
    text, ok = table(layouts, refs, results, args.rtol)
    print(f"fp32, {args.steps} steps, tiny GPT / BERT / T5 (configs/*/tiny.yaml), gloo on CPU; "
          "reference = 1 process of the same family\n")
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
