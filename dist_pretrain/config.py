"""Run configuration: YAML files plus ``key.sub=value`` overrides, validated up front.

Everything is checked before any process group starts, so a bad value costs a second,
not a cluster allocation; every message names the key, the bad value and what would fit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ConfigError(ValueError):
    """A configuration that cannot work, with the reason."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    num_layers: int = Field(2, ge=1)
    hidden_size: int = Field(128, ge=1)
    num_attention_heads: int = Field(4, ge=1)
    ffn_hidden_size: Optional[int] = Field(None, ge=1, description="default 4 * hidden_size")
    seq_length: int = Field(128, ge=2)
    max_position_embeddings: Optional[int] = Field(None, ge=1, description="default seq_length")
    position_embedding: Literal["learned", "rope"] = "learned"
    rotary_base: int = Field(10000, ge=1)
    normalization: Literal["layernorm", "rmsnorm"] = "layernorm"
    activation: Literal["gelu", "gelu_tanh", "relu"] = Field(
        "gelu", description="MLP activation: gelu (erf), gelu_tanh (GPT-2's approximation), relu")
    bias: bool = Field(True, description="biases in the linear layers")
    num_query_groups: Optional[int] = Field(None, ge=1, description="key/value heads (GQA); default: one per "
                                                                   "attention head")
    tie_embeddings: bool = True
    hidden_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    attention_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    init_std: float = Field(0.02, gt=0.0)
    layernorm_epsilon: float = Field(1e-5, gt=0.0)
    recompute: Literal["none", "full", "selective"] = "none"
    make_vocab_size_divisible_by: int = Field(128, ge=1)
    decoder_seq_length: Optional[int] = Field(None, ge=2, description="T5 target length; default seq_length // 4")
    encoder_num_layers: Optional[int] = Field(None, ge=1, description="T5 encoder layers; default num_layers")
    vocab_size: Optional[int] = Field(None, ge=2, description="default: the tokenizer's")

    @property
    def ffn(self) -> int:
        return self.ffn_hidden_size or 4 * self.hidden_size

    @property
    def max_positions(self) -> int:
        return self.max_position_embeddings or self.seq_length


class ParallelConfig(_Section):
    tensor: int = Field(1, ge=1)
    pipeline: int = Field(1, ge=1)
    virtual_pipeline: Optional[int] = Field(None, ge=1)
    zero_stage: int = Field(1, ge=0, le=3)
    nproc: int = Field(1, ge=1, description="processes on this node")
    offload_optimizer: bool = False
    offload_params: bool = False
    timeout_minutes: float = Field(10.0, gt=0, description="a collective waiting longer fails (hung rank)")


class TrainConfig(_Section):
    steps: int = Field(100, ge=1)
    micro_batch_size: int = Field(4, ge=1)
    global_batch_size: int = Field(8, ge=1)
    lr: float = Field(6e-4, gt=0.0)
    min_lr: float = Field(6e-5, ge=0.0)
    warmup_steps: int = Field(10, ge=0)
    decay: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = Field(0.1, ge=0.0)
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0)
    adam_beta2: float = Field(0.95, ge=0.0, lt=1.0)
    adam_eps: float = Field(1e-8, gt=0.0)
    grad_clip: float = Field(1.0, ge=0.0, description="0 disables clipping")
    precision: Literal["fp32", "bf16"] = "fp32"
    log_interval: int = Field(10, ge=1)
    eval_interval: int = Field(0, ge=0, description="0 disables validation")
    eval_steps: int = Field(4, ge=1)
    threads: Optional[int] = Field(None, ge=1, description="torch intra-op threads per process")
    max_skipped_in_a_row: int = Field(5, ge=1, description="abort after this many consecutive steps "
                                                         "skipped for a non-finite loss or grad norm")


class BlendEntry(_Section):
    path: str
    weight: float = Field(gt=0.0)


class DataConfig(_Section):
    path: Optional[str] = Field(None, description="directory written by `dist-pretrain preprocess`")
    blend: Optional[list[BlendEntry]] = Field(None, description="several datasets with weights")
    synthetic: bool = Field(False, description="random tokens (tests only)")
    num_workers: int = Field(1, ge=0)
    shuffle_buffer: int = Field(256, ge=1, description="per-shard shuffle buffer of each sub-stream")
    on_corrupt: Literal["skip", "fail"] = "skip"
    valid_path: Optional[str] = Field(None, description="validation data; default: data.path or the "
                                                         "first blend entry")

    def sources(self) -> list[tuple[str, float]]:
        if self.blend:
            return [(b.path, b.weight) for b in self.blend]
        return [(self.path, 1.0)] if self.path else []


class MonitorConfig(_Section):
    tensorboard: bool = True
    peak_tflops: Optional[float] = Field(
        None, gt=0.0, description="per-device peak for MFU; default: measured GEMM peak"
    )


class CheckpointConfig(_Section):
    interval: int = Field(0, ge=0, description="steps between checkpoints, 0 = never")
    keep: int = Field(3, ge=1, description="newest checkpoints kept")
    keep_every: int = Field(0, ge=0, description="also keep every Nth step (0 = none)")
    resume: str = Field("auto", description="auto (newest good checkpoint in run_dir), none, or a step-N path")
    signals: list[Literal["SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT"]] = ["SIGTERM", "SIGUSR1"]
    exit_code: int = Field(99, ge=1, le=255, description="exit status after a signal / time-limit save")
    exit_after_minutes: Optional[float] = Field(None, gt=0)
    async_save: bool = Field(False, description="write checkpoint files in a forked background process "
                             "while training goes on (the final and signal-triggered saves still block)")
    init_from: Optional[str] = Field(None, description="weights only (fresh optimizer, step 0) from a checkpoint "
                                     "or run directory, or an imported HF model, when there is nothing to resume")
    init_allow_missing: list[str] = Field([], description="patterns of parameters init_from may lack (new heads)")
    init_allow_unexpected: list[str] = Field([], description="patterns of init_from weights the model lacks")


class ObjectiveConfig(_Section):
    """BERT masked LM and T5 span corruption settings (GPT's causal LM has none)."""

    mask_prob: float = Field(0.15, gt=0.0, lt=1.0)
    whole_word_masking: bool = False
    next_sentence_prediction: bool = Field(False, description="BERT binary head; off as in RoBERTa")
    noise_density: float = Field(0.15, gt=0.0, lt=1.0)
    mean_noise_span_length: float = Field(3.0, ge=1.0)
    tokenizer: Optional[str] = Field(None, description="for special / sentinel ids; default: the data's")


class DeepSpeedConfig(_Section):
    config: Optional[str] = Field(
        None, description="DeepSpeed JSON passed through; must not contradict our keys"
    )


class Config(_Section):
    family: Literal["gpt", "bert", "t5"] = "gpt"
    seed: int = 1234
    run_dir: str = "runs/default"
    model: ModelConfig = ModelConfig()
    parallel: ParallelConfig = ParallelConfig()
    train: TrainConfig = TrainConfig()
    data: DataConfig = DataConfig()
    monitor: MonitorConfig = MonitorConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()


# --------------------------------------------------------------------------- loading


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.sub=value")
    key, raw = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw != "" else None


def _set_path(tree: dict, path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(path)}: {part} is a value, not a section")
        node = child
    node[path[-1]] = value


def _format_validation_error(err: ValidationError, tree: dict) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            section = Config
            for part in e["loc"][:-1]:
                section = section.model_fields[str(part)].annotation
            allowed = ", ".join(section.model_fields)
            lines.append(f"unknown key {key}; valid keys here: {allowed}")
        else:
            lines.append(f"{key}={e.get('input')!r}: {e['msg']}")
    return "invalid config:\n  " + "\n  ".join(lines)


def load_config(path: Optional[str | Path] = None, overrides: list[str] = ()) -> Config:
    """Read a YAML config (or defaults), apply ``key.sub=value`` overrides, validate fields."""
    tree: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        tree = yaml.safe_load(p.read_text()) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping at the top level")
    for item in overrides:
        key, value = _parse_override(item)
        _set_path(tree, key, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, tree)) from None


# --------------------------------------------------------------------------- cross-field checks


def padded_vocab_size(cfg: Config, vocab_size: int) -> int:
    """Vocab padded to ``make_vocab_size_divisible_by``, independent of the TP size.

    Megatron pads to a multiple of ``divisible_by * TP``; padding independently of TP
    keeps the embedding (and so the loss) identical across layouts.
    """
    m = cfg.model.make_vocab_size_divisible_by
    return ((vocab_size + m - 1) // m) * m


def validate(cfg: Config, world_size: int, vocab_size: Optional[int] = None) -> None:
    """Reject combinations that cannot work, naming key, value and what would fit."""
    m, par, tr = cfg.model, cfg.parallel, cfg.train
    tp, pp, vpp = par.tensor, par.pipeline, par.virtual_pipeline
    errors: list[str] = []

    def err(msg: str) -> None:
        errors.append(msg)

    if world_size % (tp * pp):
        err(
            f"world size {world_size} is not divisible by parallel.tensor={tp} x "
            f"parallel.pipeline={pp}; use a process count that is a multiple of {tp * pp}"
        )
        dp = None
    else:
        dp = world_size // (tp * pp)
    if m.num_attention_heads % tp:
        err(f"model.num_attention_heads={m.num_attention_heads} is not divisible by parallel.tensor={tp}")
    if m.hidden_size % m.num_attention_heads:
        err(
            f"model.hidden_size={m.hidden_size} is not divisible by "
            f"model.num_attention_heads={m.num_attention_heads}"
        )
    elif m.position_embedding == "rope" and (m.hidden_size // m.num_attention_heads) % 2:
        err(f"model.position_embedding=rope needs an even head dim, got {m.hidden_size // m.num_attention_heads}")
    groups = m.num_query_groups or m.num_attention_heads
    if m.num_attention_heads % groups:
        err(f"model.num_query_groups={groups} does not divide model.num_attention_heads={m.num_attention_heads}")
    elif m.num_query_groups and groups % tp:
        err(f"model.num_query_groups={groups} is not divisible by parallel.tensor={tp}")
    if m.ffn % tp:
        err(f"model.ffn_hidden_size={m.ffn} is not divisible by parallel.tensor={tp}")
    if m.seq_length > m.max_positions:
        err(f"model.seq_length={m.seq_length} exceeds model.max_position_embeddings={m.max_positions}")
    chunks = pp * (vpp or 1)
    if m.num_layers % chunks and cfg.family != "t5":
        err(
            f"model.num_layers={m.num_layers} is not divisible by parallel.pipeline={pp} x "
            f"parallel.virtual_pipeline={vpp or 1}; use a multiple of {chunks}"
        )
    if vpp is not None and vpp > 1 and pp == 1:
        err(f"parallel.virtual_pipeline={vpp} needs parallel.pipeline > 1")
    if par.zero_stage == 3 and pp > 1:
        err(
            f"parallel.zero_stage=3 with parallel.pipeline={pp}: ZeRO-3 gathers parameters inside "
            "each forward and cannot run under the pipeline schedule; use zero_stage 1 or 2 with PP"
        )
    if par.offload_params and par.zero_stage != 3:
        err(f"parallel.offload_params=true needs parallel.zero_stage=3 (got {par.zero_stage})")
    if par.offload_optimizer and par.zero_stage == 0:
        err("parallel.offload_optimizer=true needs parallel.zero_stage >= 1 (got parallel.zero_stage=0)")
    if dp is not None:
        per_step = tr.micro_batch_size * dp
        if tr.global_batch_size % per_step:
            err(
                f"train.global_batch_size={tr.global_batch_size} is not divisible by "
                f"train.micro_batch_size={tr.micro_batch_size} x data-parallel size {dp}; "
                f"use a multiple of {per_step}"
            )
        else:
            n_micro = tr.global_batch_size // per_step
            if vpp and vpp > 1 and n_micro % pp:
                err(
                    f"interleaved pipeline (parallel.virtual_pipeline={vpp}) needs the number of "
                    f"micro-batches ({n_micro}) to be a multiple of parallel.pipeline={pp}; "
                    f"use train.global_batch_size={tr.micro_batch_size * dp * pp * max(1, n_micro // pp)}"
                )
    if tr.warmup_steps > tr.steps:
        err(f"train.warmup_steps={tr.warmup_steps} exceeds train.steps={tr.steps}")
    if tr.min_lr > tr.lr:
        err(f"train.min_lr={tr.min_lr} exceeds train.lr={tr.lr}")
    if cfg.data.path and cfg.data.blend:
        err("data.path and data.blend are both set; use data.path for one dataset or data.blend "
            "for several")
    elif not cfg.data.synthetic and not cfg.data.sources():
        err("data.path is not set; run `dist-pretrain preprocess ... --output DIR` and set data.path=DIR "
            "(or data.blend=[{path: DIR, weight: W}, ...], or data.synthetic=true for tests)")
    if vocab_size is not None and padded_vocab_size(cfg, vocab_size) % tp:
        err(
            f"padded vocab {padded_vocab_size(cfg, vocab_size)} is not divisible by parallel.tensor={tp}; "
            "raise model.make_vocab_size_divisible_by"
        )
    if cfg.family == "t5" and pp > 1 and (pp != 2 or (vpp or 1) > 1 or par.zero_stage == 0):
        err(f"family=t5 with parallel.pipeline={pp}, parallel.virtual_pipeline={vpp}, "
            f"parallel.zero_stage={par.zero_stage}: T5 pipelines as encoder stage + decoder stage, "
            "so use parallel.pipeline=2 without virtual pipeline, and parallel.zero_stage >= 1")
    if m.recompute == "selective":
        err("model.recompute=selective needs Transformer Engine's fused attention; use full or none")
    if cfg.deepspeed.config and par.zero_stage == 0:
        err("deepspeed.config is set but parallel.zero_stage=0 runs megatron's own DDP; set zero_stage >= 1")
    elif cfg.deepspeed.config and dp is not None and tr.global_batch_size % (tr.micro_batch_size * dp) == 0:
        try:  # the passed-through JSON is checked here, before any process group starts
            deepspeed_config(cfg, dp, tr.global_batch_size // (tr.micro_batch_size * dp))
        except ConfigError as e:
            err(str(e))
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))


# --------------------------------------------------------------------------- DeepSpeed JSON


# the config key that generates each DeepSpeed key (named in contradiction errors)
_DS_SOURCE = {
    "train_micro_batch_size_per_gpu": "train.micro_batch_size",
    "gradient_accumulation_steps": "train.global_batch_size",
    "train_batch_size": "train.global_batch_size",
    "gradient_clipping": "train.grad_clip",
    "bf16.enabled": "train.precision",
    "fp16.enabled": "train.precision",
    "zero_optimization.stage": "parallel.zero_stage",
    "zero_optimization.offload_optimizer.device": "parallel.offload_optimizer",
    "zero_optimization.offload_param.device": "parallel.offload_params",
}


def deepspeed_config(cfg: Config, dp_size: int, num_microbatches: int) -> dict:
    """DeepSpeed settings generated from our config, merged with a passed-through JSON.

    A key the JSON sets that we also generate must agree, else it is an error: the two
    sources are never combined silently. Offload and fp16 are always generated (as
    "none" / disabled when off) so a JSON cannot switch them on behind our checks.
    """
    tr, par = cfg.train, cfg.parallel
    if tr.micro_batch_size * num_microbatches * dp_size != tr.global_batch_size:
        raise ConfigError(
            f"train.global_batch_size={tr.global_batch_size} != train.micro_batch_size={tr.micro_batch_size} "
            f"x {num_microbatches} micro-batches x data-parallel size {dp_size}"
        )
    generated: dict[str, Any] = {
        # megatron's schedule drives all micro-batches of a step through one forward each
        # and already divides the loss by their number: to DeepSpeed one step is one
        # "micro-batch" of micro x num_microbatches samples (see engine.py).
        "train_micro_batch_size_per_gpu": tr.micro_batch_size * num_microbatches,
        "gradient_accumulation_steps": 1,
        "train_batch_size": tr.global_batch_size,
        "gradient_clipping": tr.grad_clip,
        # skip the update when the global grad norm is inf/NaN (DeepSpeed does so in fp32 by itself)
        "bf16": {"enabled": tr.precision == "bf16", "check_grad_overflow": True},
        "fp16": {"enabled": False},
        "zero_optimization": {
            "stage": par.zero_stage,
            "offload_optimizer": {"device": "cpu" if par.offload_optimizer else "none"},
            "offload_param": {"device": "cpu" if par.offload_params else "none"},
        },
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if not cfg.deepspeed.config:
        return generated
    path = Path(cfg.deepspeed.config)
    try:
        merged = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"deepspeed.config={str(path)!r} does not exist") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"deepspeed.config={str(path)!r} is not valid JSON: {err}") from None
    if not isinstance(merged, dict):
        raise ConfigError(f"deepspeed.config={str(path)!r} must hold a JSON object")

    def merge(ours: dict, theirs: dict, prefix: str) -> None:
        for key, value in ours.items():
            name = f"{prefix}{key}"
            if key not in theirs:
                theirs[key] = value
            elif isinstance(value, dict) and isinstance(theirs[key], dict):
                merge(value, theirs[key], name + ".")
            elif theirs[key] != value and theirs[key] != "auto":
                source = _DS_SOURCE.get(name, "parallel.*/train.*")
                raise ConfigError(
                    f"deepspeed.config sets {name}={theirs[key]!r} but {source} gives {value!r}; "
                    f"set it in one place ({source})"
                )
            else:
                theirs[key] = value

    merge(generated, merged, "")
    return merged
