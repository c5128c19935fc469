"""Throughput of one training step against what a user would pick instead, same run.

    python -m benchmarks.peers [--smoke] [--steps 10] [--warmup 2] [--dtypes fp32 bf16] [--zero-stages 1 2]
    python -m torch.distributed.run --standalone --nproc-per-node 2 -m benchmarks.peers --zero-stages 1 2

Under torchrun the same comparison runs data-parallel: ours at DP=N (DeepSpeed ZeRO over
the DP group), the peers wrapped in PyTorch ``DistributedDataParallel`` on the same gloo
group, each rank with its own micro-batch; tokens/s is per rank, rank 0 prints.

Three systems train the same GPT (``common.FULL``: 6 layers, hidden 512, 8 heads, seq 256,
GPT-2 vocab padded to 50304, tied embeddings, learned positions, GELU, no dropout) on the
same batch, single process, all cores, forward + backward + clip-by-norm(1.0) + AdamW:

* **ours**: ``Trainer.train_step`` at TP=PP=DP=1 with the default engine (DeepSpeed ZeRO-1;
  ``train.precision=bf16`` is DeepSpeed's bf16 mixed precision: bf16 weights and grads,
  fp32 master weights and AdamW moments in the ZeRO optimizer);
* **HF transformers**: ``GPT2LMHeadModel`` built from a ``GPT2Config`` (SDPA attention);
* **nanoGPT**: a plain PyTorch model in nanoGPT's style with ``scaled_dot_product_attention``.

The peers keep fp32 weights and run bf16 under ``torch.autocast`` (both projects' own bf16
recipe), with ``torch.optim.AdamW(fused=True)`` (PyTorch's fastest CPU AdamW) and the same
weight-decay groups. Each round runs one step of every system in a rotating order (and one
large GEMM per dtype for the MFU peak), so machine drift hits all of them equally;
after ``--warmup`` rounds the median of ``--steps`` rounds is reported.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import FULL, SMOKE, GPTSize, build_trainer, gpt_overrides, machine, median

# --------------------------------------------------------------------------- nanoGPT-style model


class Block(nn.Module):
    def __init__(self, h: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(h), nn.LayerNorm(h)
        self.c_attn, self.c_proj = nn.Linear(h, 3 * h), nn.Linear(h, h)
        self.c_fc, self.mlp_proj = nn.Linear(h, 4 * h), nn.Linear(4 * h, h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(h, dim=2)
        q, k, v = (t.view(b, s, self.heads, h // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(b, s, h))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class NanoGPT(nn.Module):
    """nanoGPT's model.py, reduced to what the benchmark needs (same layout, SDPA flash path)."""

    def __init__(self, size: GPTSize):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(size.vocab, size.hidden), nn.Embedding(size.seq, size.hidden)
        self.blocks = nn.ModuleList(Block(size.hidden, size.heads) for _ in range(size.layers))
        self.ln_f = nn.LayerNorm(size.hidden)
        self.lm_head = nn.Linear(size.hidden, size.vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as nanoGPT
        for name, p in self.named_parameters():
            if name.endswith("weight") and p.dim() == 2:
                std = 0.02 / math.sqrt(2 * size.layers) if name.endswith(("c_proj.weight", "mlp_proj.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def hf_gpt2(size: GPTSize) -> nn.Module:
    """HF ``GPT2LMHeadModel`` from a config (no download), exact GELU like ours, SDPA."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    config = GPT2Config(n_layer=size.layers, n_embd=size.hidden, n_head=size.heads, n_positions=size.seq,
                        vocab_size=size.vocab, activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, attn_implementation="sdpa")
    return GPT2LMHeadModel(config)


def param_groups(model: nn.Module, weight_decay: float = 0.1) -> list[dict]:
    """The same AdamW groups as ours: no decay on biases and norm weights."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# --------------------------------------------------------------------------- systems


class PeerSystem:
    """A plain PyTorch training step: autocast forward, cross-entropy, backward, clip, AdamW."""

    def __init__(self, name: str, model: nn.Module, size: GPTSize, precision: str, logits: Callable):
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            model = nn.parallel.DistributedDataParallel(model)  # the peers' own data parallelism
        self.name, self.model, self.precision, self.logits = name, model, precision, logits
        try:
            self.opt = torch.optim.AdamW(param_groups(model), lr=1e-4, betas=(0.9, 0.95), fused=True)
        except (RuntimeError, TypeError):  # a torch without fused CPU AdamW
            self.opt = torch.optim.AdamW(param_groups(model), lr=1e-4, betas=(0.9, 0.95), foreach=True)
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        gen = torch.Generator().manual_seed(rank)
        tokens = torch.randint(0, size.vocab, (size.micro_batch, size.seq + 1), generator=gen)
        self.inputs, self.labels = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
        self.n_params = sum(p.numel() for p in model.parameters())
        self.phases: dict[str, list[float]] = {}

    def step(self) -> None:
        t = Phases(self.phases)
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            logits = self.logits(self.model, self.inputs)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), self.labels.flatten())
        t("forward")
        loss.backward()
        t("backward")
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0, foreach=True)
        self.opt.step()
        t("clip + AdamW")


class OursSystem:
    """Our Trainer's real step (schedule, engine, reduction, update) at TP=PP=DP=1.

    The schedule (forward + backward, with DeepSpeed's gradient hooks) and the engine step
    (ZeRO's flattening, clipping, AdamW, copy back to the bf16 weights) are timed apart.
    """

    def __init__(self, name: str, size: GPTSize, precision: str, zero_stage: int = 1):
        self.name, self.precision = name, precision
        world = int(os.environ.get("WORLD_SIZE", "1"))
        self.trainer = build_trainer(gpt_overrides(size, precision, global_batch=size.micro_batch * world,
                                                   zero_stage=zero_stage) + [f"parallel.nproc={world}"])
        self.n_params = sum(p.numel() for c in self.trainer.engine.model_chunks for p in c.parameters())
        self.step_no = 0
        self.phases: dict[str, list[float]] = {}
        for obj, attr, phase in ((self.trainer, "_run_schedule", "forward + backward"),
                                 (self.trainer.engine, "step", "engine step (clip + AdamW)")):
            setattr(obj, attr, self._timed(getattr(obj, attr), phase))

    def _timed(self, fn: Callable, phase: str) -> Callable:
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.phases.setdefault(phase, []).append(time.perf_counter() - t0)
        return timed

    def step(self) -> None:
        self.step_no += 1
        self.trainer.train_step(self.step_no)


class Phases:
    """Appends the time since the previous call to ``phases[name]``."""

    def __init__(self, phases: dict[str, list[float]]):
        self.phases, self.t0 = phases, time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.phases.setdefault(name, []).append(now - self.t0)
        self.t0 = now


def ours_name(zero_stage: int) -> str:
    """``ours`` is the default engine (ZeRO-1); other stages are named."""
    return "ours" if zero_stage == 1 else f"ours ZeRO-{zero_stage}"


def build_systems(size: GPTSize, precision: str, with_hf: bool, zero_stages: tuple[int, ...] = (1,)) -> list:
    systems = [OursSystem(ours_name(stage), size, precision, zero_stage=stage) for stage in zero_stages]
    if with_hf:
        systems.append(PeerSystem("HF transformers", hf_gpt2(size), size, precision,
                                  lambda m, x: m(input_ids=x).logits))
    systems.append(PeerSystem("nanoGPT", NanoGPT(size), size, precision, lambda m, x: m(x)))
    return systems


def gemm_seconds(n: int, dtype: torch.dtype, a_b: dict) -> float:
    """One n^3 matmul (operands cached per dtype), seconds."""
    if dtype not in a_b:
        a_b[dtype] = (torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype))
        torch.matmul(*a_b[dtype])  # warm-up: kernel selection, page faults
    a, b = a_b[dtype]
    t0 = time.perf_counter()
    torch.matmul(a, b)
    return time.perf_counter() - t0


def run(size: GPTSize, precisions: list[str], steps: int, warmup: int, gemm_n: int,
        with_hf: bool, zero_stages: tuple[int, ...] = (1,)) -> dict:
    """Alternating rounds over every (precision, system) and the GEMM peaks.

    Returns {precision: {system: {"tokens_per_s", "step_s", "phases", "n_params"}}, "gemm": {...}}
    with the per-step lists of the measured rounds (after ``warmup``).
    """
    systems = [(prec, s) for prec in precisions for s in build_systems(size, prec, with_hf, zero_stages)]
    times: dict[tuple[str, str], list[float]] = {(p, s.name): [] for p, s in systems}
    gemm: dict[str, list[float]] = {p: [] for p in precisions}
    operands: dict = {}
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    for round_no in range(warmup + steps):
        shift = round_no % len(systems)  # rotate who goes first
        for prec, system in systems[shift:] + systems[:shift]:
            t0 = time.perf_counter()
            system.step()
            if round_no >= warmup:
                times[(prec, system.name)].append(time.perf_counter() - t0)
        for prec in precisions:
            seconds = gemm_seconds(gemm_n, dtypes[prec], operands)
            if round_no >= warmup:
                gemm[prec].append(seconds)
    out: dict = {"gemm": {p: {"n": gemm_n, "tflops": 2 * gemm_n**3 / median(ts) / 1e12, "seconds": ts}
                          for p, ts in gemm.items()}, "profile": {}}
    for prec, system in systems:
        ts = times[(prec, system.name)]
        out.setdefault(prec, {})[system.name] = {
            "tokens_per_s": size.tokens_per_micro_batch / median(ts), "step_s": ts, "n_params": system.n_params,
            "phases": {k: median(v[-steps:]) for k, v in system.phases.items()}}
        out["profile"][f"{prec} {system.name}"] = profile_step(system)
    return out


CATEGORIES = [  # (category, substrings of aten op names), first match wins
    ("GEMM", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")),
    ("attention (SDPA)", ("scaled_dot_product", "flash_attention")),
    ("copies and casts", ("aten::copy_", "aten::cat", "aten::_to_copy", "aten::clone", "aten::contiguous")),
    ("optimizer math", ("aten::lerp", "aten::addcdiv", "aten::addcmul", "aten::sqrt", "_fused_adam",
                        "aten::_foreach")),
]


def profile_step(system) -> dict[str, float]:
    """Self CPU seconds of one profiled step, by op category (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        system.step()
    out: dict[str, float] = {}
    for ev in prof.key_averages():
        if not ev.key.startswith("aten::") and "_fused_adam" not in ev.key:
            continue
        cat = next((c for c, keys in CATEGORIES if any(k in ev.key for k in keys)), "other aten ops")
        out[cat] = out.get(cat, 0.0) + ev.self_cpu_time_total / 1e6
    return out


def table(result: dict, precisions: list[str]) -> str:
    """One row per system; ours rows also say how they compare with the faster peer."""
    lines = ["| dtype | system | params | median step (s) | tokens/s | vs the faster peer |", "|---|---|---|---|---|---|"]
    for prec in precisions:
        rows = result[prec]
        best = max((r["tokens_per_s"] for n, r in rows.items() if not n.startswith("ours")), default=None)
        for name, r in rows.items():
            ratio = f"{r['tokens_per_s'] / best:.2f}x" if best and name.startswith("ours") else ""
            lines.append(f"| {prec} | {name} | {r['n_params'] / 1e6:.1f}M | {median(r['step_s']):.3f} | "
                         f"{r['tokens_per_s']:,.0f} | {ratio} |")
    return "\n".join(lines)


def phase_table(result: dict, precisions: list[str]) -> str:
    """Median seconds per phase of the measured steps, and the op categories of one profiled step."""
    cats = [c for c, _ in CATEGORIES] + ["other aten ops"]
    lines = ["| dtype | system | phases (median s) | profiled step: " + " / ".join(cats) + " (s, self CPU) |",
             "|---|---|---|---|"]
    for prec in precisions:
        for name, r in result[prec].items():
            phases = ", ".join(f"{k} {v:.3f}" for k, v in r["phases"].items())
            prof = result["profile"][f"{prec} {name}"]
            lines.append(f"| {prec} | {name} | {phases} | " + " / ".join(f"{prof.get(c, 0.0):.3f}" for c in cats) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--zero-stages", nargs="+", type=int, default=[1], choices=[0, 1, 2, 3])
    args = parser.parse_args(argv)
    size = SMOKE if args.smoke else FULL
    with_hf = hf_available()
    result = run(size, args.dtypes, args.steps, args.warmup, 256 if args.smoke else 4096, with_hf,
                 tuple(args.zero_stages))
    if int(os.environ.get("RANK", "0")) != 0:
        return
    world = int(os.environ.get("WORLD_SIZE", "1"))
    print(f"{machine()['cpu']}, {torch.get_num_threads()} threads per process, {world} process(es)"
          f"{' (data parallel: tokens/s per rank)' if world > 1 else ''}; "
          f"load average {os.getloadavg()[0]:.1f}; command: python -m benchmarks.peers {' '.join(argv or sys.argv[1:])}")
    print()
    print(table(result, args.dtypes))
    print()
    print(phase_table(result, args.dtypes))


def hf_available() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        print("transformers is not installed (pip install -e '.[bench]'): the HF transformers row is skipped")
        return False
    return True


if __name__ == "__main__":
    main()
