"""Cross-field rules of a run configuration, and the DeepSpeed JSON generated from it.

``config_problems`` lists every combination that cannot work at a world size (one line
each, naming the keys, the bad values and what would fit); ``validate`` raises them as one
``ConfigError``. No torch here: the launchers' pre-flight check runs these in a second.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from dist_pretrain.errors import ConfigError

if TYPE_CHECKING:
    from dist_pretrain.config import Config


def padded_vocab_size(cfg: Config, vocab_size: int) -> int:
    """Vocab padded to ``make_vocab_size_divisible_by``, independent of the TP size.

    Megatron pads to a multiple of ``divisible_by * TP``; padding independently of TP
    keeps the embedding (and so the loss) identical across layouts.
    """
    m = cfg.model.make_vocab_size_divisible_by
    return ((vocab_size + m - 1) // m) * m


def validate(cfg: Config, world_size: int, vocab_size: Optional[int] = None) -> None:
    """Reject combinations that cannot work, naming key, value and what would fit."""
    errors = config_problems(cfg, world_size, vocab_size)
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))


def _finetune_problems(cfg: Config, err) -> None:
    from dist_pretrain.config import TASK_METRICS as METRICS

    task, par = cfg.task, cfg.parallel
    if task.name not in METRICS:
        return
    if task.best_metric is not None and task.best_metric not in METRICS[task.name]:
        err(f"task.best_metric={task.best_metric} is not a {task.name} metric; use one of "
            f"{', '.join(METRICS[task.name])}")
    if task.freeze_encoder and par.pipeline > 1:
        err("task.freeze_encoder=true trains only the head, which lives on the last pipeline stage; use "
            "parallel.pipeline=1")
    if (task.head_lr is not None or task.freeze_encoder) and task.name != "classification":
        err(f"task.head_lr and task.freeze_encoder apply to the new head of classification, not {task.name}")


# what each architecture's model code builds (megatron-core's BertModel has learned positions only;
# relative is T5's bucketed bias)
POSITION_EMBEDDINGS = {"gpt": ("learned", "rope"), "bert": ("learned",), "t5": ("learned", "relative")}


def config_problems(cfg: Config, world_size: int, vocab_size: Optional[int] = None) -> list[str]:
    """Every cross-field problem of ``cfg`` at ``world_size`` processes, one line each."""
    from dist_pretrain.config import TASKS_OF_ARCH

    m, par, tr = cfg.model, cfg.parallel, cfg.train
    tp, pp, vpp = par.tensor, par.pipeline, par.virtual_pipeline
    errors: list[str] = []

    def err(msg: str) -> None:
        errors.append(msg)

    tasks = TASKS_OF_ARCH[m.arch]
    if cfg.task.name not in tasks:
        err(f"task.name={cfg.task.name} does not fit model.arch={m.arch}; its tasks: {', '.join(tasks)}")
    _finetune_problems(cfg, err)
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
    positions = POSITION_EMBEDDINGS[m.arch]
    if m.position_embedding not in positions:
        err(f"model.position_embedding={m.position_embedding} is not built by model.arch={m.arch}; it takes "
            f"{' or '.join(positions)}")
    exact = m.relative_attention_num_buckets // 2  # the decoder's exact-distance buckets
    if m.position_embedding == "relative" and m.relative_attention_max_distance <= exact:
        err(f"model.relative_attention_max_distance={m.relative_attention_max_distance} must exceed the exact "
            f"buckets, model.relative_attention_num_buckets={m.relative_attention_num_buckets} // 2 = {exact} "
            f"(the logarithmic buckets span the distances in between); use at least {exact + 1}")
    if m.seq_length > m.max_positions:
        err(f"model.seq_length={m.seq_length} exceeds model.max_position_embeddings={m.max_positions}")
    chunks = pp * (vpp or 1)
    if m.num_layers % chunks and m.arch != "t5":
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
    if tr.decay_steps is not None and tr.decay != "wsd":
        err(f"train.decay_steps={tr.decay_steps} is only used by train.decay=wsd (got decay={tr.decay}); "
            f"drop it or set train.decay=wsd")
    elif tr.decay == "wsd" and tr.decay_steps is not None and tr.decay_steps > tr.steps - tr.warmup_steps:
        err(f"train.decay_steps={tr.decay_steps} does not fit after the warm-up: at most train.steps - "
            f"train.warmup_steps = {tr.steps - tr.warmup_steps}")
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
    if m.arch == "t5" and pp > 1 and (pp != 2 or (vpp or 1) > 1 or par.zero_stage == 0):
        err(f"model.arch=t5 with parallel.pipeline={pp}, parallel.virtual_pipeline={vpp}, "
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
    errors += icl_problems(cfg)
    return errors


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


def icl_problems(cfg: Config) -> list[str]:
    """What keeps ``eval.icl_tasks`` from running on this training layout, one line each."""
    ev, par = cfg.eval, cfg.parallel
    if not ev.icl_tasks and not ev.icl_interval:
        return []
    errors = []
    if ev.icl_tasks and not ev.icl_interval:
        errors.append("eval.icl_tasks is set but eval.icl_interval=0: set eval.icl_interval=N (steps between "
                      "in-context evaluations) or remove eval.icl_tasks")
    if ev.icl_interval and not ev.icl_tasks:
        errors.append(f"eval.icl_interval={ev.icl_interval} but eval.icl_tasks is empty: add tasks, e.g. "
                      "eval.icl_tasks=[{task: polarity, shots: [0, 1]}]")
    if ev.icl_tasks and cfg.family != "gpt":
        errors.append(f"eval.icl_tasks scores continuations with a causal LM: model.arch={cfg.family} has none "
                      "(use model.arch=gpt, or remove eval.icl_tasks)")
    if ev.icl_tasks and par.virtual_pipeline and par.virtual_pipeline > 1:
        errors.append(f"eval.icl_tasks runs one model chunk per stage: parallel.virtual_pipeline="
                      f"{par.virtual_pipeline} is not supported with it (unset virtual_pipeline)")
    if ev.icl_tasks and par.zero_stage == 3:
        errors.append("eval.icl_tasks calls the model outside the DeepSpeed engine, where ZeRO-3's partitioned "
                      "weights are not gathered: use parallel.zero_stage 0, 1 or 2 with it")
    if ev.icl_tasks and cfg.data.synthetic:
        errors.append("eval.icl_tasks needs text: data.synthetic=true has no tokenizer (use real data)")
    from dist_pretrain.evaluation.tasks import BUILT_IN  # no torch there

    for t in ev.icl_tasks:
        if t.task not in BUILT_IN and not Path(t.task).is_file():
            errors.append(f"eval.icl_tasks: task {t.task!r} is neither a built-in task "
                          f"({', '.join(sorted(BUILT_IN))}) nor an existing JSONL file")
    return errors


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
        return with_defaults(generated)
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
    return with_defaults(merged)


def with_defaults(ds: dict) -> dict:
    """Settings a ``deepspeed.config`` JSON may override. ZeRO-1/2: ``reduce_scatter`` off, so a
    gradient bucket is all-reduced in place and each rank adds its partition's slice into its
    flat gradient partition. DeepSpeed's reduce-scatter path instead flattens the bucket again
    (a copy), reduces it, and copies the result back into the bucket (a second copy) on every
    step. Same sums for two ranks (checked bit for bit at DP=2); the equivalence tests cover more."""
    zero = ds.get("zero_optimization", {})
    if zero.get("stage") in (1, 2):
        zero.setdefault("reduce_scatter", False)
    return ds
