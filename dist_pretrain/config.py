"""Run configuration: YAML files plus ``key.sub=value`` overrides, validated up front.

Everything is checked before any process group starts, so a bad value costs a second,
not a cluster allocation; every message names the key, the bad value and what would fit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dist_pretrain.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# architecture -> the tasks it can be trained on; the first is its pretraining task (the default)
TASKS_OF_ARCH = {
    "gpt": ("causal_lm",),
    "bert": ("masked_lm", "classification"),
    "t5": ("span_corruption", "text_to_text"),
}
# task -> the `dist-pretrain preprocess --format` its data is made with
DATA_FORMAT_OF_TASK = {"causal_lm": "lm", "masked_lm": "docs", "span_corruption": "docs",
                       "classification": "classification", "text_to_text": "seq2seq"}
FINETUNE_TASKS = ("classification", "text_to_text")
# fine-tuning task -> its validation metrics (True: larger is better); the first picks the best checkpoint
TASK_METRICS = {"classification": {"accuracy": True, "macro_f1": True, "loss": False},
                "text_to_text": {"rouge_l": True, "exact_match": True, "loss": False}}


class ModelConfig(_Section):
    arch: Literal["gpt", "bert", "t5"] = Field("gpt", description="architecture: gpt (decoder), bert (encoder), "
                                                                 "t5 (encoder-decoder)")
    num_layers: int = Field(2, ge=1)
    hidden_size: int = Field(128, ge=1)
    num_attention_heads: int = Field(4, ge=1)
    ffn_hidden_size: Optional[int] = Field(None, ge=1, description="default 4 * hidden_size")
    seq_length: int = Field(128, ge=2)
    max_position_embeddings: Optional[int] = Field(None, ge=1, description="default seq_length")
    position_embedding: Literal["learned", "rope", "relative"] = Field(
        "learned", description="learned absolute, rope (GPT), or relative: T5's bucketed position bias added to "
                               "the attention logits, one table per encoder / decoder stack")
    rotary_base: int = Field(10000, ge=1)
    relative_attention_num_buckets: int = Field(32, ge=2, description="T5 relative bias buckets (half exact, half "
                                                                     "logarithmic)")
    relative_attention_max_distance: int = Field(128, ge=2, description="T5 relative bias: distances from here on "
                                                                       "share the last bucket")
    softmax_scale: Optional[float] = Field(None, gt=0.0, description="scale of the attention logits q.k; default "
                                           "1/sqrt(head_dim); T5 uses 1.0 (its init scales the queries instead)")
    normalization: Literal["layernorm", "rmsnorm"] = "layernorm"
    activation: Literal["gelu", "gelu_tanh", "relu", "swiglu", "geglu", "geglu_tanh"] = Field(
        "gelu", description="MLP activation: gelu (erf), gelu_tanh (GPT-2's approximation), relu; gated: "
                            "swiglu (silu(gate) * up, Llama), geglu (gelu(gate) * up), geglu_tanh (the tanh "
                            "approximation: T5 v1.1's gated-gelu)")
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

    @property
    def decoder_length(self) -> int:
        """T5's target (decoder) length."""
        return self.decoder_seq_length or max(2, self.seq_length // 4)


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
    epochs: Optional[int] = Field(None, ge=1, description="fine-tuning: passes over the training split; sets "
                                  "train.steps to epochs x ceil(examples / global_batch_size)")
    micro_batch_size: int = Field(4, ge=1)
    global_batch_size: int = Field(8, ge=1)
    lr: float = Field(6e-4, gt=0.0)
    min_lr: float = Field(6e-5, ge=0.0)
    warmup_steps: int = Field(10, ge=0)
    decay: Literal["cosine", "linear", "constant", "wsd"] = Field(
        "cosine", description="after warm-up: cosine / linear to min_lr, constant, or wsd (warmup-stable-decay: "
                              "constant, then the last decay_steps fall to min_lr as 1 - sqrt)")
    decay_steps: Optional[int] = Field(None, ge=1, description="wsd: length of the final decay; default 20% of steps")
    weight_decay: float = Field(0.1, ge=0.0)
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0)
    adam_beta2: float = Field(0.95, ge=0.0, lt=1.0)
    adam_eps: float = Field(1e-8, gt=0.0)
    grad_clip: float = Field(1.0, ge=0.0, description="0 disables clipping")
    precision: Literal["fp32", "bf16"] = "fp32"
    log_interval: int = Field(10, ge=1)
    eval_interval: int = Field(0, ge=0, description="0 disables validation")
    eval_steps: Union[int, str] = Field(4, description="validation batches (of global_batch_size samples "
                                        "each) per evaluation, or all: every full global batch of the split")
    threads: Optional[int] = Field(None, ge=1, description="torch intra-op threads per process")
    max_skipped_in_a_row: int = Field(5, ge=1, description="abort after this many consecutive steps "
                                                         "skipped for a non-finite loss or grad norm")

    @field_validator("eval_steps", mode="before")
    @classmethod
    def _eval_steps(cls, value):
        if value == "all" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError("use a number of validation batches >= 1, or all (the whole split)")


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
    save_final: bool = Field(True, description="save a checkpoint after the last step, whatever the interval")
    async_save: bool = Field(False, description="write checkpoint files in a forked background process "
                             "while training goes on (the final and signal-triggered saves still block)")
    init_from: Optional[str] = Field(None, description="weights only (fresh optimizer, step 0) from a checkpoint "
                                     "or run directory, or an imported HF model, when there is nothing to resume")
    init_allow_missing: list[str] = Field([], description="patterns of parameters init_from may lack (new heads)")
    init_allow_unexpected: list[str] = Field([], description="patterns of init_from weights the model lacks")


class TaskConfig(_Section):
    """What the architecture is trained to do, and that task's settings.

    ``name`` defaults to the architecture's pretraining task (``TASKS_OF_ARCH``). Masked LM
    (BERT) and span corruption (T5) have settings; causal LM (GPT) has none.
    """

    name: Literal["causal_lm", "masked_lm", "span_corruption", "classification", "text_to_text"] = Field(
        "causal_lm", description="causal_lm (gpt), masked_lm or classification (bert), span_corruption or "
                                 "text_to_text (t5); default: the architecture's pretraining task")
    mask_prob: float = Field(0.15, gt=0.0, lt=1.0)
    whole_word_masking: bool = False
    next_sentence_prediction: bool = Field(False, description="BERT binary head; off as in RoBERTa")
    noise_density: float = Field(0.15, gt=0.0, lt=1.0)
    mean_noise_span_length: float = Field(3.0, ge=1.0)
    tokenizer: Optional[str] = Field(None, description="for special / sentinel ids; default: the data's")
    # fine-tuning (classification, text_to_text)
    labels: Optional[list[str]] = Field(None, description="classification: label names in id order; default: "
                                        "the data's (saved with checkpoints and exports)")
    classifier_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout before the classification layer")
    head_lr: Optional[float] = Field(None, gt=0.0, description="learning rate of the new head (pooler and "
                                     "classifier); default train.lr; follows the same schedule")
    freeze_encoder: bool = Field(False, description="train only the head (classification)")
    best_metric: Optional[str] = Field(None, description="validation metric that picks the best checkpoint: "
                                       "accuracy, macro_f1, loss (classification; default accuracy), exact_match, "
                                       "rouge_l, loss (text_to_text; default rouge_l)")
    max_new_tokens: Optional[int] = Field(None, ge=1, description="text_to_text evaluation: generated tokens; "
                                          "default model.decoder_seq_length")


class IclTask(_Section):
    """One in-context task run during training (``dist-pretrain evaluate``'s semantics)."""

    task: str = Field(description="built-in task (lambada-demo, analogies, polarity, quiz, quiz-mc) or a JSONL file")
    shots: Union[int, list[int]] = Field(0, description="demonstrations per prompt: a count or a list of counts")
    limit: Optional[int] = Field(100, ge=1, description="items per evaluation (the first ones); null: all")

    @field_validator("shots", mode="after")
    @classmethod
    def _shots(cls, value):
        shots = [value] if isinstance(value, int) else list(value)
        if not shots or any(isinstance(k, bool) or k < 0 for k in shots):
            raise ValueError("use a number of demonstrations >= 0, or a non-empty list of them, e.g. [0, 1, 5]")
        return shots


class EvalConfig(_Section):
    """In-context evaluation of a GPT during pretraining: TensorBoard ``icl/<task>/<k>shot_<metric>``."""

    icl_tasks: list[IclTask] = Field([], description="[{task, shots, limit}], run every icl_interval steps")
    icl_interval: int = Field(0, ge=0, description="steps between in-context evaluations (and after the last); "
                              "0 = never")
    icl_batch_size: int = Field(16, ge=1)
    icl_seed: int = Field(1234, description="seed of the demonstration draws")


class DeepSpeedConfig(_Section):
    config: Optional[str] = Field(
        None, description="DeepSpeed JSON passed through; must not contradict our keys"
    )


class Config(_Section):
    seed: int = 1234
    run_dir: str = "runs/default"
    model: ModelConfig = ModelConfig()
    parallel: ParallelConfig = ParallelConfig()
    train: TrainConfig = TrainConfig()
    data: DataConfig = DataConfig()
    monitor: MonitorConfig = MonitorConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    task: TaskConfig = TaskConfig()
    eval: EvalConfig = EvalConfig()
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()

    @model_validator(mode="before")
    @classmethod
    def _from_family(cls, tree: Any) -> Any:
        """Configs (and checkpoints) written before architecture and task were separate:
        ``family: X`` is ``model.arch: X`` with X's pretraining task, and the ``objective``
        section is now ``task``. The task defaults to the architecture's pretraining task."""
        if not isinstance(tree, dict):
            return tree
        tree = dict(tree)
        model = dict(tree.get("model") or {})
        task = dict(tree.get("task") or {})
        if "family" in tree:
            family = tree.pop("family")
            if model.get("arch", family) != family:
                raise ValueError(f"family={family} (the old name of model.arch) and model.arch={model['arch']} "
                                 "disagree; keep only model.arch")
            model["arch"] = family
        if "objective" in tree:
            old = tree.pop("objective") or {}
            if not isinstance(old, dict):
                raise ValueError(f"objective={old!r} must be a section (it is now called task)")
            task = {**old, **task}
        arch = model.get("arch", "gpt")
        if "name" not in task and arch in TASKS_OF_ARCH:
            task["name"] = TASKS_OF_ARCH[arch][0]
        tree["model"], tree["task"] = model, task
        return tree

    @property
    def family(self) -> str:
        """The architecture (``model.arch``), under the name it had before tasks were separate."""
        return self.model.arch


# --------------------------------------------------------------------------- loading


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.sub=value")
    key, raw = item.split("=", 1)
    try:
        return key.strip().split("."), yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({_yaml_problem(err)}); "
                          "quote it, e.g. key='text'") from None


def _yaml_problem(err: yaml.YAMLError) -> str:
    """The parser's complaint with its line and column, in one line."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or type(err).__name__
    where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
    context = getattr(err, "context", None)
    return f"{problem}{where}" + (f" ({context})" if context else "")


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
        if not key:  # a whole-config rule (the family -> model.arch migration)
            lines.append(e["msg"].removeprefix("Value error, "))
        elif e["type"] == "extra_forbidden":
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
        if p.is_dir():
            raise ConfigError(f"config file {str(p)!r} is a directory; give a YAML file (configs/...)")
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {_yaml_problem(err)}") from None
        except UnicodeDecodeError as err:
            raise ConfigError(f"config file {str(p)!r} is not a text file ({err.reason})") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping at the top level")
    for item in overrides:
        key, value = _parse_override(item)
        _set_path(tree, key, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, tree)) from None


# cross-field rules and the DeepSpeed JSON live in config_rules; importable from here too
from dist_pretrain.config_rules import (  # noqa: E402,F401
    config_problems,
    deepspeed_config,
    padded_vocab_size,
    validate,
)
