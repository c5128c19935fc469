"""Will this config run? One check for every launcher and command, before anything starts.

``dist-pretrain check CONFIG [key=value ...] [--world-size N | --nnodes N]`` runs it for
a user; ``launchers/torchrun.sh``, ``launchers/mpirun.sh`` and ``slurm/pretrain.sbatch``
run it with the world size they are about to start and exit 2 on an error, so no process
group, allocation or rank starts for a config that cannot work. The trainer runs the same
check on every rank before its process groups exist. It covers:

* the config: YAML syntax, fields and values, cross-field rules at this world size
  (``config_rules``), the DeepSpeed JSON;
* the data: every manifest readable, its shards on disk (of the right size: with
  ``data.on_corrupt=fail`` a wrong size is an error, with ``skip`` a warning), datasets
  that agree on tokenizer and sequence length, the data format of the task, and a
  validation split that feeds ``train.eval_steps`` global batches;
* the checkpoint to resume from: an explicit ``checkpoint.resume`` path that exists, is
  one checkpoint and verifies; the model shape it was saved with;
* ``run_dir``: a directory (or creatable), not a file.

No torch import: the check takes about a second, and writes nothing.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from dist_pretrain.checkpoint_files import step_dirs, verify
from dist_pretrain.config import DATA_FORMAT_OF_TASK, FINETUNE_TASKS, Config, config_problems, load_config
from dist_pretrain.data.manifest import (
    DataError,
    eval_steps_for,
    missing_shards_message,
    read_manifest,
    shard_problems,
    split_shards,
)
from dist_pretrain.errors import EXIT_USER_ERROR, ConfigError, UserError, report_user_error

# model keys whose change makes a checkpoint's tensors the wrong shape
SHAPE_KEYS = ["num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size", "encoder_num_layers",
              "position_embedding", "relative_attention_num_buckets", "max_position_embeddings", "tie_embeddings", "vocab_size",
              "make_vocab_size_divisible_by"]


@dataclass
class Report:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    vocab_size: int | None = None  # the tokenizer's (unpadded), when the data gives it
    eval_steps: int | None = None  # validation steps of global_batch_size samples
    eval_note: str = ""  # which validation samples are evaluated
    steps: int | None = None  # train.steps, or what train.epochs makes of it
    labels: list[str] | None = None  # classification: label names in id order (the data's)

    def raise_errors(self) -> None:
        if self.errors:
            raise ConfigError("invalid config:\n  " + "\n  ".join(self.errors))


def check(cfg: Config, world_size: int, verify_checkpoint: bool = True) -> Report:
    """Every problem of ``cfg`` at ``world_size`` processes (one line each), and what the run needs."""
    report = Report(steps=cfg.train.steps)
    if cfg.task.name in FINETUNE_TASKS:
        _check_labelled_data(cfg, report)
    else:
        _check_data(cfg, report)
    if cfg.data.synthetic:
        report.vocab_size = cfg.model.vocab_size or 512
        if cfg.train.eval_steps == "all":
            report.errors.append("train.eval_steps=all needs a validation split, and data.synthetic=true "
                                 "has none; use a number of batches")
        else:
            report.eval_steps = int(cfg.train.eval_steps)
    report.errors[:0] = config_problems(cfg, world_size, report.vocab_size)
    _check_run_dir(cfg, report)
    _check_resume(cfg, report, verify_checkpoint)
    return report


def _manifest(path: str, report: Report) -> dict | None:
    try:
        return read_manifest(path)
    except DataError as err:
        report.errors.append(str(err))
        return None


def _check_data(cfg: Config, report: Report) -> None:
    if cfg.data.synthetic or not cfg.data.sources():
        return  # config_problems says what is missing
    manifests = []
    for path, _ in cfg.data.sources():
        manifest = _manifest(path, report)
        if manifest is None:
            continue
        manifests.append((path, manifest))
        try:
            shards = split_shards(path, manifest, "train")
        except DataError as err:
            report.errors.append(str(err))
            continue
        missing, wrong = shard_problems(path, shards)
        if missing:
            report.errors.append(missing_shards_message(path, missing))
        if wrong and cfg.data.on_corrupt == "fail":
            report.errors.append(f"data.on_corrupt=fail and {len(wrong)} shard(s) of {path} do not have the "
                                 f"size in its manifest, e.g. {wrong[0]}; re-run `dist-pretrain preprocess` "
                                 "or set data.on_corrupt=skip")
        elif wrong:
            report.warnings.append(f"{len(wrong)} shard(s) of {path} do not have the size in its manifest "
                                   f"and will be skipped (data.on_corrupt=skip), e.g. {wrong[0]}")
    if not manifests:
        return
    first_path, first = manifests[0]
    for path, man in manifests[1:]:
        for key, value, first_value in [("tokenizer vocab_hash", man["tokenizer"]["vocab_hash"],
                                         first["tokenizer"]["vocab_hash"]),
                                        ("seq_len", man["seq_len"], first["seq_len"])]:
            if value != first_value:
                report.errors.append(f"data.blend: {path} has {key} {value} but {first_path} has {first_value}; "
                                     "blended datasets must share tokenizer and sequence length")
    _check_format(cfg, first_path, first, "data.path", report)
    report.vocab_size = cfg.model.vocab_size or int(first["tokenizer"]["vocab_size"])
    if cfg.train.eval_interval:
        _check_validation(cfg, first_path, first, report)


def _check_labelled_data(cfg: Config, report: Report) -> None:
    """Fine-tuning data: one labelled dataset (``preprocess --format classification|seq2seq``)
    whose examples fit the model; train.epochs becomes steps; labels come from it."""
    task, tr = cfg.task.name, cfg.train
    if cfg.data.synthetic or cfg.data.blend:
        report.errors.append(f"task.name={task} reads one labelled dataset: set data.path=DIR from `dist-pretrain "
                             f"preprocess --format {DATA_FORMAT_OF_TASK[task]}` (not data.synthetic or data.blend)")
        return
    if not cfg.data.path:
        return  # config_problems says so
    if not os.path.isdir(cfg.data.path):
        report.errors.append(f"data.path={cfg.data.path} does not exist; create it with: dist-pretrain preprocess "
                             f"--format {DATA_FORMAT_OF_TASK[task]} --input FILES --tokenizer T --seq-len "
                             f"{cfg.model.seq_length} --output {cfg.data.path}")
        return
    manifest = _manifest(cfg.data.path, report)
    if manifest is None:
        return
    report.vocab_size = cfg.model.vocab_size or int(manifest["tokenizer"]["vocab_size"])
    if not _check_format(cfg, cfg.data.path, manifest, "data.path", report):
        return
    if manifest["seq_len"] > cfg.model.seq_length:
        report.errors.append(f"data.path={cfg.data.path} was preprocessed with --seq-len {manifest['seq_len']}, "
                             f"longer than model.seq_length={cfg.model.seq_length}; set model.seq_length >= "
                             f"{manifest['seq_len']} or preprocess again")
    if task == "text_to_text" and manifest["target_len"] > cfg.model.decoder_length:
        report.errors.append(f"data.path={cfg.data.path} has --target-len {manifest['target_len']}, longer than "
                             f"model.decoder_seq_length={cfg.model.decoder_length}; raise model.decoder_seq_length")
    if task == "classification":
        report.labels = list(manifest["labels"])
        if cfg.task.labels is not None and list(cfg.task.labels) != report.labels:
            report.errors.append(f"task.labels={cfg.task.labels} but data.path={cfg.data.path} has labels "
                                 f"{report.labels} (in id order); leave task.labels unset")
    splits = {s: int(manifest["splits"].get(s, {}).get("samples", 0)) for s in ("train", "valid", "test")}
    if splits["train"] == 0:
        report.errors.append(f"data.path={cfg.data.path} has no training examples (files named *train*, or "
                             "records left by --val-fraction / --test-fraction)")
        return
    if tr.epochs:
        report.steps = tr.epochs * math.ceil(splits["train"] / tr.global_batch_size)  # data/epochs.py
    if tr.eval_interval and splits["valid"] == 0:
        report.errors.append(f"train.eval_interval={tr.eval_interval} needs a validation split, and "
                             f"data.path={cfg.data.path} has none: preprocess with --val-fraction or a file "
                             "named *validation*, or set train.eval_interval=0")
    report.eval_steps = math.ceil(splits["valid"] / tr.global_batch_size)
    report.eval_note = (f"validation: all {splits['valid']} examples of {cfg.data.path}; test: {splits['test']}"
                        if splits["valid"] else "")


def _check_format(cfg: Config, path: str, manifest: dict, key: str, report: Report) -> bool:
    fmt = str(manifest.get("format", ""))
    packed = fmt.startswith("dist_pretrain.lm")
    wanted = DATA_FORMAT_OF_TASK[cfg.task.name]
    kind = fmt.removeprefix("dist_pretrain.").split("/")[0]
    if kind != wanted:
        what = "--format lm (packed sequences)" if wanted == "lm" else f"--format {wanted}"
        report.errors.append(f"task.name={cfg.task.name} (model.arch={cfg.model.arch}) needs data preprocessed "
                             f"with {what}; {key}={path} has format {manifest.get('format')!r}")
        return False
    if packed and manifest["seq_len"] != cfg.model.seq_length:
        report.errors.append(f"model.seq_length={cfg.model.seq_length} but {key}={path} was preprocessed with "
                             f"--seq-len {manifest['seq_len']}; set model.seq_length={manifest['seq_len']}")
    return True


def _check_validation(cfg: Config, first_path: str, first: dict, report: Report) -> None:
    path = cfg.data.valid_path or first_path
    manifest = first if path == first_path else _manifest(path, report)
    if manifest is None:
        return
    if manifest is not first:
        if manifest["tokenizer"]["vocab_hash"] != first["tokenizer"]["vocab_hash"]:
            report.errors.append(f"data.valid_path={path} was made with tokenizer {manifest['tokenizer']['name']!r}, "
                                 f"the training data {first_path} with {first['tokenizer']['name']!r}; "
                                 "validation data must use the training data's tokenizer")
        _check_format(cfg, path, manifest, "data.valid_path", report)
    try:
        shards = split_shards(path, manifest, "valid")
    except DataError as err:
        report.errors.append(f"train.eval_interval={cfg.train.eval_interval} needs validation data: {err}; "
                             "or set train.eval_interval=0")
        return
    missing, wrong = shard_problems(path, shards)
    if missing:
        report.errors.append(missing_shards_message(path, missing))
    if wrong:
        report.errors.append(f"{len(wrong)} validation shard(s) of {path} do not have the size in its manifest, "
                             f"e.g. {wrong[0]}; re-run `dist-pretrain preprocess` for {path}")
    total, batch = sum(s["samples"] for s in shards), cfg.train.global_batch_size
    try:
        report.eval_steps = eval_steps_for(cfg.train.eval_steps, batch, total, path)
    except DataError as err:
        report.errors.append(str(err))
        return
    left = total - report.eval_steps * batch
    report.eval_note = f"validation: {report.eval_steps} x {batch} of the {total} samples of {path}"
    if cfg.train.eval_steps == "all" and left:
        report.eval_note += (f" (train.eval_steps=all: the last {left} are left out, they do not fill a "
                             "global batch)")


def _check_run_dir(cfg: Config, report: Report) -> None:
    run_dir = Path(cfg.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        report.errors.append(f"run_dir={cfg.run_dir} is a file; use a directory (it gets checkpoints, "
                             "TensorBoard events and history.jsonl)")
        return
    existing = next((p for p in [run_dir, *run_dir.absolute().parents] if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        report.errors.append(f"run_dir={cfg.run_dir}: {existing} is not writable; choose a run_dir you can write")


def _check_resume(cfg: Config, report: Report, verify_checkpoint: bool) -> None:
    how = cfg.checkpoint.resume
    if how == "none":
        return
    if how == "auto":
        latest = Path(cfg.run_dir) / "checkpoints" / "latest"
        if latest.is_file():
            _check_shapes(cfg, latest.parent / latest.read_text().strip(), report)
        return
    path = Path(how)
    key = f"checkpoint.resume={how}"
    if not path.exists():
        report.errors.append(f"{key} does not exist; give a checkpoint directory (RUN_DIR/checkpoints/step-N), "
                             "auto (the newest good one in run_dir) or none")
        return
    steps = step_dirs(path / "checkpoints") or step_dirs(path)
    if path.is_dir() and not (path / "manifest.json").exists() and steps:
        report.errors.append(f"{key} is a directory of checkpoints, not one checkpoint; use "
                             f"checkpoint.resume={steps[-1][1]} (the newest), or run_dir with checkpoint.resume=auto")
        return
    problem = verify(path) if verify_checkpoint else None
    if problem:
        report.errors.append(f"{key} is not a usable checkpoint: {problem}")
        return
    _check_shapes(cfg, path, report)


def _check_shapes(cfg: Config, path: Path, report: Report) -> None:
    """A checkpoint saved for another model shape cannot load: say which key differs."""
    try:
        saved = json.loads((path / "meta.json").read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # verification (here or at resume) names the damage
    saved_arch = saved.get("model", {}).get("arch", saved.get("family"))
    if saved_arch != cfg.model.arch:
        report.errors.append(f"checkpoint {path} is a {saved_arch} model but model.arch={cfg.model.arch}; "
                             "use another run_dir or checkpoint.resume=none")
        return
    now = cfg.model.model_dump()
    for key in SHAPE_KEYS:
        if key in saved.get("model", {}) and saved["model"][key] != now.get(key):
            report.errors.append(f"model.{key}={now.get(key)!r} but checkpoint {path} was saved with "
                                 f"model.{key}={saved['model'][key]!r}; set it back, or use another run_dir or "
                                 "checkpoint.resume=none")


def _summary(cfg: Config, world_size: int, report: Report) -> str:
    par, tr = cfg.parallel, cfg.train
    dp = world_size // (par.tensor * par.pipeline)
    data = "synthetic" if cfg.data.synthetic else ", ".join(p for p, _ in cfg.data.sources())
    evals = (f"{report.eval_steps} x {tr.global_batch_size} validation samples every {tr.eval_interval} steps"
             if tr.eval_interval else "no validation")
    if cfg.task.name in FINETUNE_TASKS and tr.eval_interval:
        evals = f"{report.eval_note} every {tr.eval_interval} steps and at each epoch end"
    epochs = f" ({tr.epochs} epochs)" if tr.epochs else ""
    return (f"ok: {cfg.model.arch} {cfg.task.name} at world size {world_size}: TP {par.tensor} x PP {par.pipeline} "
            f"x DP {dp}, ZeRO-{par.zero_stage}, {report.steps} steps{epochs} of {tr.global_batch_size} samples; "
            f"data {data}; {evals}; run_dir {cfg.run_dir}")


def _value(cfg: Config, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dist-pretrain check", description="Will this config run? "
                                     "Checks config, data, checkpoint and paths; exit 0 if so, 2 if not.")
    parser.add_argument("config", help="YAML config file")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    parser.add_argument("--world-size", type=int, help="processes in the job (default: nnodes x parallel.nproc)")
    parser.add_argument("--nnodes", type=int, default=1, help="nodes, for the default world size")
    parser.add_argument("--print", dest="keys", default="", help="print these config values (comma-separated "
                        "dotted keys) on one line instead of the summary (for launcher scripts)")
    args = parser.parse_args(argv)
    for name in ("world_size", "nnodes"):
        value = getattr(args, name)
        if value is not None and value < 1:
            return report_user_error(ConfigError(f"--{name.replace('_', '-')}={value}: use a process count >= 1"))
    try:
        cfg = load_config(args.config, args.overrides)
        world_size = args.world_size or args.nnodes * cfg.parallel.nproc
        report = check(cfg, world_size)
        values = [str(_value(cfg, key)) for key in args.keys.split(",") if key]
    except UserError as err:
        return report_user_error(err)
    except AttributeError as err:
        return report_user_error(ConfigError(f"--print {args.keys}: {err}"))
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if report.errors:
        for problem in report.errors:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(" ".join(values) if args.keys else _summary(cfg, world_size, report), flush=True)
    return 0
