"""``dist-pretrain plan``: will a config fit on the GPUs, and how long will a step take, before launching.

    dist-pretrain plan CONFIG [key=value ...] --world-size N [--gpu h100 | --peak-tflops X --memory-gb M]

Per GPU (the rank holding the most: the pipeline stage with the most parameters and activations):

* **model states** as this system holds them, which is what ``benchmarks/memory.py`` measures
  (``dist_pretrain/zero_memory.py`` makes DeepSpeed hold the ZeRO paper's bytes):
  ZeRO-0 (megatron DDP + its AdamW): weights, full gradients (fp32 ``main_grad`` in bf16),
  fp32 master weights (bf16) and Adam moments. DeepSpeed ZeRO-1/2: full weights; Adam moments
  and, for bf16 weights only, the fp32 master over DP (fp32 weights are their own master);
  gradients full until the step (ZeRO-1) or one compact partition (ZeRO-2), plus under bf16
  the step's fp32 copy of one AdamW sub-group (about 1/8 of the model) next to the partitions
  still waiting; the reduction bucket (``reduce_bucket_size`` elements in the weights' dtype,
  DeepSpeed's default 5e8). ZeRO-3: the weight and gradient partitions and optimizer states
  over DP, plus the gathered weights it keeps (``stage3_max_live_parameters``, by default the
  largest parameter, which it gathers whole anyway) and that parameter's whole gradient.
  Offload moves the optimizer partition (and ZeRO-3's weight partition) to host memory.
* **activations** of one micro-batch, the count ``benchmarks/activations.py`` validated
  (no dropout, fused SDPA: ``dist_pretrain.memory``), split over TP where megatron splits them,
  times the micro-batches in flight on the stage (1F1B: PP - stage; interleaved: megatron's
  warm-up count), and with full recomputation the layer inputs plus one layer recomputed.
* the **pipeline bubble** (p - 1) / (v m + p - 1), **FLOPs per step** (the architecture's count, the
  one the trainer's MFU uses), and a **step time** = FLOPs / (GPUs x peak x MFU) / (1 - bubble).

A layout that does not fit gets the cheapest single change that does (ZeRO stage, micro-batch,
recomputation, TP, PP, offload, more GPUs), each checked by ``preflight`` at its world size.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from dist_pretrain.config import (
    Config,
    deepspeed_config,
    load_config,
    padded_vocab_size,
)
from dist_pretrain.activation_memory import stage_activations
from dist_pretrain.errors import ConfigError, UserError, report_user_error

GiB = 2**30
# dense bf16 / TF32 peak TFLOP/s (SXM parts) and memory GiB of common GPUs
GPUS = {
    "h100": (989.0, 494.5, 80), "h200": (989.0, 494.5, 141), "h100-pcie": (756.0, 378.0, 80),
    "a100": (312.0, 156.0, 80), "a100-40gb": (312.0, 156.0, 40), "l40s": (362.0, 183.0, 48),
    "a10g": (70.0, 35.0, 24), "v100": (125.0, 15.7, 32), "mi300x": (1307.0, 653.7, 192), "b200": (2250.0, 1125.0, 180),
}
DS_REDUCE_BUCKET = 500_000_000  # DeepSpeed's default reduce_bucket_size (elements)


@dataclass
class Layout:
    tp: int
    pp: int
    vpp: int | None
    dp: int
    micro_batches: int  # per step per data-parallel replica


def layout_of(cfg: Config, world: int) -> Layout:
    par, tr = cfg.parallel, cfg.train
    dp = world // (par.tensor * par.pipeline)
    micro = tr.global_batch_size // (tr.micro_batch_size * dp)
    return Layout(par.tensor, par.pipeline, par.virtual_pipeline if par.pipeline > 1 else None, dp, micro)


# --------------------------------------------------------------------------- model states


def model_state_bytes(psi: int, dp: int, stage: int, precision: str, ds: dict | None = None,
                      offload_optimizer: bool = False, offload_params: bool = False,
                      groups: list[list[int]] | None = None, split_groups: bool = True) -> dict[str, float]:
    """Bytes one rank holds for ``psi`` parameters at ZeRO ``stage`` over ``dp`` ranks, as our
    engines hold them (``dist_pretrain/zero_memory.py``); ``host`` is what offload keeps in CPU
    memory. ``groups``: the rank's AdamW groups as per-parameter sizes (``count.stage_groups``;
    default: a single parameter of ``psi`` values), which size the sub-groups of bf16
    ZeRO-1/2 and the parameter ZeRO-3 gathers and reduces whole."""
    from dist_pretrain.zero_memory import sub_group_sizes

    e = 2 if precision == "bf16" else 4
    zero = (ds or {}).get("zero_optimization", {})
    if stage == 0:
        out = {"params": e * psi, "grads": 4 * psi, "optimizer": (12 if e == 2 else 8) * psi, "buckets": 0.0}
        return {**out, "host": 0.0}
    groups = groups or [[psi]]
    largest = max(max(g) for g in groups)
    partition = psi / dp
    bucket = e * float(zero.get("reduce_bucket_size", DS_REDUCE_BUCKET))
    if stage in (1, 2) and dp == 1 and not offload_optimizer and not zero.get("overlap_comm", False):
        bucket = 0.0  # one DP rank: gradients are added straight into the partition (zero_step.single_rank_reduction)
    # Adam m and v; the fp32 master partition only for bf16 weights (fp32 weights are their own
    # master: alias_fp32_master), and always with offload (its host copy is not aliased)
    optimizer = (8 + (4 if e == 2 or offload_optimizer else 0)) * partition
    host = optimizer + 4 * partition if offload_optimizer else 0.0  # + the fp32 gradient partition
    if offload_optimizer:
        optimizer = 0.0
    if stage in (1, 2):
        params = e * psi
        if offload_optimizer:
            grads = e * partition
        else:
            # bf16: the step casts one sub-group's reduced partition to fp32 (split_param_groups,
            # smallest first) while the partitions of the later sub-groups still wait; fp32: the
            # compact partition is used in place (use_compact_gradient_partitions)
            # (the engine splits only without pipeline parallelism: ``split_groups``)
            subs = (sub_group_sizes(groups) if split_groups else sorted(map(sum, groups))) if e == 2 else [psi]
            cast = [(e * sum(subs[i:]) + (4 if e == 2 else 0) * subs[i]) / dp for i in range(len(subs))]
            # ZeRO-1 holds full gradients until the step, which casts its first sub-group
            grads = e * psi + (4 * subs[0] / dp if e == 2 else 0) if stage == 1 else max(cast)
            if e == 2 and dp == 1:  # the cast goes into a buffer of the largest sub-group, kept
                grads = e * psi + 4 * max(subs)  # between steps (zero_step.kept_fp32_gradient_cast)
    else:
        # the partition, plus what DeepSpeed keeps gathered: up to stage3_max_live_parameters (the
        # engine's default: the largest parameter, zero3_defaults) and at least the largest
        # parameter, which is gathered whole; and that parameter's whole gradient before its
        # reduce-scatter (the memory benchmark's "stated buffers")
        live = max(largest, float(zero.get("stage3_max_live_parameters", largest)))
        params = e * live + (0 if offload_params else e * partition)
        grads = e * partition + e * largest
        host += e * partition if offload_params else 0.0
    return {"params": params, "grads": grads, "optimizer": optimizer, "buckets": bucket, "host": host}


def in_flight(layout: Layout, stage: int) -> float:
    """Micro-batches (in units of the stage's whole layer stack) whose activations a stage holds
    at once: 1 without pipelining, min(m, p - stage) with 1F1B, megatron's interleaved warm-up
    (2 (p - stage - 1) + (v - 1) p + 1 chunk-micro-batches, of 1/v of the stack each)."""
    p, m, v = layout.pp, layout.micro_batches, layout.vpp
    if p == 1:
        return 1.0
    if not v or v == 1:
        return float(min(m, p - stage))
    chunks = min(m * v, 2 * (p - stage - 1) + (v - 1) * p + 1)
    return chunks / v


def bubble_fraction(layout: Layout) -> float:
    p, m, v = layout.pp, layout.micro_batches, layout.vpp or 1
    return (p - 1) / (v * m + p - 1)


# --------------------------------------------------------------------------- the plan


@dataclass
class Plan:
    cfg: Config
    world: int
    layout: Layout
    vocab: int
    total_params: int  # the whole model's (one replica, unsharded)
    stage_params: list[int]
    stages: list[dict]  # per pipeline stage: params, states, activations, total
    worst: dict
    flops_per_step: float
    tokens_per_step: int
    bubble: float


def make_plan(cfg: Config, world: int, vocab: int, params_cache: dict | None = None) -> Plan:
    """The memory and time plan of ``cfg`` at ``world`` processes (``vocab``: the tokenizer's)."""
    from dist_pretrain.models.architecture import get_architecture
    from dist_pretrain.models.count import model_parameters, stage_groups, stage_parameters

    layout = layout_of(cfg, world)
    padded = padded_vocab_size(cfg, vocab)
    cache = params_cache if params_cache is not None else {}
    key = (cfg.model.model_dump_json(), padded)
    if key not in cache:
        cache[key] = model_parameters(cfg, padded)
    counts = stage_parameters(cache[key], cfg, layout.tp, layout.pp, layout.vpp)
    groups = stage_groups(cache[key], cfg, layout.tp, layout.pp, layout.vpp)
    from dist_pretrain.zero_memory import sub_group_sizes

    ds = deepspeed_config(cfg, layout.dp, layout.micro_batches) if cfg.parallel.zero_stage else {}
    stages = []
    for stage, psi in enumerate(counts):
        states = model_state_bytes(psi, layout.dp, cfg.parallel.zero_stage, cfg.train.precision, ds,
                                   cfg.parallel.offload_optimizer, cfg.parallel.offload_params, groups[stage],
                                   split_groups=len({len(sub_group_sizes(g)) for g in groups}) == 1)
        act = stage_activations(cfg, layout.tp, layout.pp, stage, padded)
        flight = in_flight(layout, stage)
        activations = act["peak"] + (flight - 1) * act["saved"]
        device = states["params"] + states["grads"] + states["optimizer"] + states["buckets"] + activations
        stages.append({"stage": stage, "psi": psi, **states, "micro_batch": act, "in_flight": flight,
                       "activations": activations, "device": device})
    arch = get_architecture(cfg.model.arch)
    return Plan(cfg, world, layout, padded, sum(p.numel for p in cache[key]), counts, stages, max(stages, key=lambda s: s["device"]),
                arch.flops_per_sample(cfg, padded) * cfg.train.global_batch_size,
                arch.tokens_per_sample(cfg) * cfg.train.global_batch_size, bubble_fraction(layout))


def step_seconds(plan: Plan, peak_tflops: float, mfu: float) -> float:
    return plan.flops_per_step / (plan.world * peak_tflops * 1e12 * mfu) / (1 - plan.bubble)


# --------------------------------------------------------------------------- advice


def candidates(cfg: Config, world: int) -> list[tuple[str, dict, int]]:
    """Single layout changes, cheapest first: (label, {section: {field: value}}, world size)."""
    par, tr, m = cfg.parallel, cfg.train, cfg.model
    out = [(f"parallel.zero_stage={z}", {"parallel": {"zero_stage": z}}, world)
           for z in range(max(par.zero_stage + 1, 1), 4)]
    micro = tr.micro_batch_size // 2
    while micro >= 1:
        out.append((f"train.micro_batch_size={micro}", {"train": {"micro_batch_size": micro}}, world))
        micro //= 2
    if m.recompute == "none":
        out.append(("model.recompute=full (about 1/3 more compute)", {"model": {"recompute": "full"}}, world))
    out += [(f"parallel.tensor={tp}", {"parallel": {"tensor": tp}}, world)
            for tp in (2, 4, 8) if tp > par.tensor and world % (tp * par.pipeline) == 0]
    out += [(f"parallel.pipeline={pp}", {"parallel": {"pipeline": pp}}, world)
            for pp in (2, 4, 8, 16) if pp > par.pipeline and world % (par.tensor * pp) == 0]
    if par.zero_stage and not par.offload_optimizer:
        out.append(("parallel.offload_optimizer=true (host memory, slower steps)",
                    {"parallel": {"offload_optimizer": True}}, world))
    out += [(f"{world * f} GPUs (world size x{f})", {}, world * f) for f in (2, 4, 8)]
    return out


def with_changes(cfg: Config, changes: dict) -> Config:
    return cfg.model_copy(update={section: getattr(cfg, section).model_copy(update=fields)
                                  for section, fields in changes.items()})


def advise(cfg: Config, world: int, vocab: int, memory_gib: float, cache: dict) -> tuple[str, Plan] | None:
    """The first candidate change that passes preflight's config rules and fits ``memory_gib``."""
    from dist_pretrain.config import config_problems

    for label, changes, w in candidates(cfg, world):
        new = with_changes(cfg, changes)
        try:
            if config_problems(new, w, vocab):
                continue
            plan = make_plan(new, w, vocab, cache)
        except UserError:
            continue
        if plan.worst["device"] <= memory_gib * GiB:
            return label, plan
    return None


# --------------------------------------------------------------------------- report / CLI


def size_text(nbytes: float) -> str:
    return f"{nbytes / GiB:,.2f} GiB" if nbytes >= GiB else f"{nbytes / 2**20:,.1f} MiB"


def report(plan: Plan, peak_tflops: float, memory_gib: float, mfu: float, gpu: str) -> str:
    lay, cfg, w = plan.layout, plan.cfg, plan.worst
    gb = size_text
    vpp = f" x VPP {lay.vpp}" if lay.vpp else ""
    lines = [(f"plan: {cfg.model.arch}, {plan.total_params:,} parameters "
              f"(padded vocab {plan.vocab:,}), world size {plan.world}: TP {lay.tp} x PP {lay.pp}{vpp} x DP {lay.dp}, "
              f"ZeRO-{cfg.parallel.zero_stage}, {cfg.train.precision}, micro-batch {cfg.train.micro_batch_size} x "
              f"{lay.micro_batches} per step, recompute {cfg.model.recompute}"), "",
             "| per GPU | " + " | ".join(f"stage {s['stage']}" for s in plan.stages) + " |",
             "|---|" + "---|" * len(plan.stages)]
    rows = [("parameters", lambda s: f"{s['psi']:,}"), ("weights", lambda s: gb(s["params"])),
            ("gradients", lambda s: gb(s["grads"])), ("optimizer states", lambda s: gb(s["optimizer"])),
            ("reduction buckets", lambda s: gb(s["buckets"])),
            ("activations / micro-batch (saved)", lambda s: gb(s["micro_batch"]["saved"])),
            ("micro-batches in flight", lambda s: f"{s['in_flight']:g}"),
            ("activations at peak", lambda s: gb(s["activations"])), ("device total", lambda s: gb(s["device"])),
            ("host (offload)", lambda s: gb(s["host"]))]
    for name, cell in rows:
        lines.append(f"| {name} | " + " | ".join(cell(s) for s in plan.stages) + " |")
    lines += ["", (f"activations per micro-batch, recompute none / full: "
                   f"{gb(_mb(plan, 'none'))} / {gb(_mb(plan, 'full'))} (stage {w['stage']})"),
              (f"pipeline bubble: {100 * plan.bubble:.1f}% of the step ((p-1)/(v*m+p-1), "
               f"p={lay.pp}, v={lay.vpp or 1}, m={lay.micro_batches})"),
              f"FLOPs per step: {plan.flops_per_step:.3e} ({plan.tokens_per_step:,} tokens)"]
    step = step_seconds(plan, peak_tflops, mfu)
    lines.append(f"predicted step: {step:.3g} s, {plan.tokens_per_step / step:,.0f} tokens/s "
                 f"at {100 * mfu:.0f}% MFU of {peak_tflops:g} TFLOP/s per GPU ({gpu})")
    need = w["device"]
    if need <= memory_gib * GiB:
        lines.append(f"fits: {gb(need)} needed on the fullest GPU (stage {w['stage']}), {memory_gib:g} GiB available")
    return "\n".join(lines)


def _mb(plan: Plan, recompute: str) -> float:
    model = plan.cfg.model.model_copy(update={"recompute": recompute})
    cfg = plan.cfg.model_copy(update={"model": model})
    return stage_activations(cfg, plan.layout.tp, plan.layout.pp, plan.worst["stage"], plan.vocab)["peak"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dist-pretrain plan", description="Per-GPU memory, FLOPs and step "
                                     "time of a config at a world size; exit 0 if it fits, 2 if not.")
    parser.add_argument("config", help="YAML config file")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    parser.add_argument("--world-size", type=int, required=True, help="GPUs (processes) in the job")
    parser.add_argument("--gpu", default=None, help=f"one of {', '.join(GPUS)} (default h100)")
    parser.add_argument("--peak-tflops", type=float, help="peak TFLOP/s per GPU (instead of --gpu)")
    parser.add_argument("--memory-gb", type=float, help="GPU memory in GiB (instead of --gpu)")
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation (default 0.4)")
    args = parser.parse_intermixed_args(argv)
    try:
        if args.world_size < 1:
            raise ConfigError(f"--world-size={args.world_size}: use a process count >= 1")
        if not 0 < args.mfu <= 1:
            raise ConfigError(f"--mfu={args.mfu}: use a fraction in (0, 1]")
        cfg = load_config(args.config, args.overrides)
        gpu = args.gpu or ("custom" if args.peak_tflops and args.memory_gb else "h100")
        if gpu != "custom" and gpu not in GPUS:
            raise ConfigError(f"--gpu={gpu!r}: use one of {', '.join(GPUS)}, or --peak-tflops and --memory-gb")
        bf16_peak, tf32_peak, memory = GPUS.get(gpu, (None, None, None))
        peak = args.peak_tflops or (bf16_peak if cfg.train.precision == "bf16" else tf32_peak)
        memory = args.memory_gb or memory
        from dist_pretrain.preflight import check

        found = check(cfg, args.world_size)
        found.raise_errors()
        if found.vocab_size is None:
            raise ConfigError("the vocabulary size is unknown: set model.vocab_size or point data at a manifest")
        cache: dict = {}
        plan = make_plan(cfg, args.world_size, found.vocab_size, cache)
    except UserError as err:
        return report_user_error(err)
    print(report(plan, peak, memory, args.mfu, gpu), flush=True)
    need = plan.worst["device"]
    if need <= memory * GiB:
        return 0
    advice = advise(cfg, args.world_size, found.vocab_size, memory, cache)
    hint = (f"try {advice[0]}: {advice[1].worst['device'] / GiB:,.2f} GiB per GPU, "
            f"{step_seconds(advice[1], peak, args.mfu):.3g} s per step" if advice
            else "no single change fits: use more GPUs with a larger TP x PP, or a smaller model")
    print(f"does not fit: {need / GiB:,.2f} GiB needed on stage {plan.worst['stage']}, {memory:g} GiB available; "
          f"{hint}", file=sys.stderr, flush=True)
    return 2
