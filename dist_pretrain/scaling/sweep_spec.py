"""The sweep file and the runs it expands to.

A sweep file (YAML) names a base training config and what varies::

    base: configs/gpt/demo.yaml        # relative to the sweep file
    overrides: [train.precision=fp32]  # for every run
    sweep_dir: runs/my-sweep           # default runs/<file name>
    sizes:                             # presets, explicit shapes, or an aspect-ratio rule
      - gpt-xs
      - {num_layers: 3, hidden_size: 96, num_attention_heads: 6}
      - {num_layers: [2, 4, 6], aspect_ratio: 32, head_size: 16}   # hidden = 32 x layers
    tokens: {per_param: [5, 10, 20]}   # or {explicit: [1e6, 2e6]} or {explicit: {gpt-xs: [...]}}
    lr: {rule: fixed}                  # base config's train.lr; or {rule: scaled, base: 1e-3,
                                       #   base_hidden: 128, exponent: 1.0} -> lr = base (128/h)^1
    schedule: {kind: wsd, decay_fraction: 0.2}   # or {kind: cosine}
    validation_batches: 32             # final validation, fixed set, with its standard error
    executor: {kind: local, parallel: 1}         # or {kind: slurm, throttle: 4, sbatch: [...]}

Every size gets one *task*: with ``wsd``, a stable-phase trunk trained in segments and one short
decay branch from the trunk's checkpoint per token budget (Hagele et al. 2024); with ``cosine``,
one full run per budget. A task runs its runs in order; a Slurm array task is one task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dist_pretrain.config import Config, ModelConfig, load_config
from dist_pretrain.errors import ConfigError

# named sizes (num_layers, hidden_size, num_attention_heads): head size 16 to 64, aspect ~32-64
PRESETS = {
    "gpt-nano": (2, 32, 2), "gpt-micro": (2, 64, 4), "gpt-xxs": (3, 96, 6), "gpt-xs": (4, 128, 8),
    "gpt-s": (4, 192, 6), "gpt-m": (6, 256, 8), "gpt-l": (8, 384, 6), "gpt-xl": (12, 512, 8),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ShapeRule(_Strict):
    num_layers: Union[int, list[int]]
    hidden_size: Optional[int] = Field(None, ge=1)
    num_attention_heads: Optional[int] = Field(None, ge=1)
    aspect_ratio: Optional[float] = Field(None, gt=0, description="hidden_size = aspect_ratio x num_layers")
    head_size: int = Field(64, ge=1, description="with aspect_ratio: heads = hidden / head_size")
    name: Optional[str] = None


class Tokens(_Strict):
    per_param: Optional[list[float]] = Field(None, description="D = x N (non-embedding) for each x")
    explicit: Optional[Union[list[float], dict[str, list[float]]]] = None


class LRRule(_Strict):
    rule: Literal["fixed", "scaled"] = "fixed"
    base: Optional[float] = Field(None, gt=0)
    base_hidden: int = Field(128, ge=1)
    exponent: float = 1.0


class Schedule(_Strict):
    kind: Literal["wsd", "cosine"] = "wsd"
    decay_fraction: float = Field(0.2, gt=0, lt=1, description="wsd: share of each budget spent decaying")


class Executor(_Strict):
    kind: Literal["local", "slurm"] = "local"
    parallel: int = Field(1, ge=1, description="local: tasks side by side (threads split)")
    throttle: int = Field(4, ge=1, description="slurm: array tasks running at once (%)")
    sbatch: list[str] = Field([], description="slurm: extra sbatch arguments")


class SweepSpec(_Strict):
    base: str
    overrides: list[str] = []
    sweep_dir: Optional[str] = None
    sizes: list[Union[str, ShapeRule]]
    tokens: Tokens
    lr: LRRule = LRRule()
    schedule: Schedule = Schedule()
    validation_batches: int = Field(32, ge=2)
    curve_points: int = Field(50, ge=2, description="points of the recorded loss-vs-tokens curve")
    executor: Executor = Executor()


@dataclass
class RunPlan:
    name: str
    run_dir: Path
    overrides: list[str]
    steps: int
    size: str
    kind: str  # "trunk" (wsd stable phase, no row), "branch" (wsd decay) or "cosine"
    resume_from: Optional[tuple[Path, int]] = None  # (trunk run_dir, step) for a branch's first start
    trunk_dir: Optional[Path] = None


@dataclass
class Task:
    size: str
    runs: list[RunPlan] = field(default_factory=list)


@dataclass
class Sweep:
    spec: SweepSpec
    path: Path
    base: Path
    dir: Path
    tasks: list[Task]


def gpt_param_counts(m: ModelConfig, vocab: int) -> tuple[int, int]:
    """(non-embedding, total) parameters of our megatron-core GPT. Non-embedding (Kaplan's N):
    the transformer layers and the final norm, without token / position embeddings and an untied
    output layer."""
    h, ffn = m.hidden_size, m.ffn
    kv = (m.num_query_groups or m.num_attention_heads) * (h // m.num_attention_heads)
    norm = 2 * h if m.normalization == "layernorm" else h
    gated = m.activation in ("swiglu", "geglu")
    qkv = h * (h + 2 * kv) + (h + 2 * kv) * m.bias
    proj = h * h + h * m.bias
    fc1 = h * ffn * (2 if gated else 1) + ffn * (2 if gated else 1) * m.bias
    fc2 = ffn * h + h * m.bias
    non_embedding = m.num_layers * (2 * norm + qkv + proj + fc1 + fc2) + norm
    embedding = vocab * h + (m.max_positions * h if m.position_embedding == "learned" else 0) \
        + (0 if m.tie_embeddings else vocab * h)
    return non_embedding, non_embedding + embedding


def shapes(spec: SweepSpec) -> list[tuple[str, dict]]:
    """(name, model overrides) of every size, in order."""
    out = []
    for item in spec.sizes:
        if isinstance(item, str):
            if item not in PRESETS:
                raise ConfigError(f"sweep size {item!r} is not a preset; presets: {', '.join(PRESETS)} "
                                  f"(or give num_layers / hidden_size / num_attention_heads)")
            layers, hidden, heads = PRESETS[item]
            out.append((item, {"num_layers": layers, "hidden_size": hidden, "num_attention_heads": heads}))
            continue
        layer_list = item.num_layers if isinstance(item.num_layers, list) else [item.num_layers]
        for layers in layer_list:
            if item.aspect_ratio is not None:
                hidden = max(item.head_size, round(item.aspect_ratio * layers / item.head_size) * item.head_size)
                heads = hidden // item.head_size
            elif item.hidden_size and item.num_attention_heads:
                hidden, heads = item.hidden_size, item.num_attention_heads
            else:
                raise ConfigError(f"sweep size {item.model_dump(exclude_none=True)}: give hidden_size and "
                                  f"num_attention_heads, or aspect_ratio (hidden = aspect_ratio x num_layers)")
            if hidden % heads:
                raise ConfigError(f"sweep size with hidden_size={hidden}: not divisible by {heads} heads")
            name = item.name if item.name and len(layer_list) == 1 else f"l{layers}-h{hidden}"
            out.append((name, {"num_layers": layers, "hidden_size": hidden, "num_attention_heads": heads}))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"sweep sizes repeat a name: {names}")
    return out


def load_sweep(path: str | Path) -> Sweep:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"sweep file {str(p)!r} does not exist")
    try:
        tree = yaml.safe_load(p.read_text()) or {}
        spec = SweepSpec.model_validate(tree)
    except yaml.YAMLError as err:
        raise ConfigError(f"sweep file {p} is not valid YAML ({err})") from None
    except ValidationError as err:
        lines = [f"{'.'.join(map(str, e['loc']))}={e.get('input')!r}: {e['msg']}" for e in err.errors()]
        raise ConfigError(f"sweep file {p}:\n  " + "\n  ".join(lines)) from None
    base = (p.parent / spec.base) if not Path(spec.base).is_absolute() else Path(spec.base)
    if not base.is_file():
        base = Path(spec.base)  # relative to the working directory
    load_config(base, spec.overrides)  # a bad base or override fails here, before anything runs
    sweep_dir = Path(spec.sweep_dir or f"runs/{p.stem}")
    return Sweep(spec, p, base, sweep_dir, [])


def budgets_for(spec: SweepSpec, size: str, n_params: int) -> list[float]:
    t = spec.tokens
    if (t.per_param is None) == (t.explicit is None):
        raise ConfigError("sweep tokens: give exactly one of per_param (tokens per non-embedding parameter) "
                          "or explicit (token counts)")
    if t.per_param is not None:
        return [x * n_params for x in t.per_param]
    if isinstance(t.explicit, dict):
        if size not in t.explicit:
            raise ConfigError(f"sweep tokens.explicit has no budgets for size {size!r} (it has "
                              f"{', '.join(t.explicit)})")
        return list(t.explicit[size])
    return list(t.explicit)


def learning_rate_for(spec: SweepSpec, cfg: Config, hidden: int) -> float:
    if spec.lr.rule == "fixed":
        return spec.lr.base or cfg.train.lr
    return (spec.lr.base or cfg.train.lr) * (spec.lr.base_hidden / hidden) ** spec.lr.exponent
