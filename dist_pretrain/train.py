"""The training loop, one for all architectures and tasks.

An architecture (``dist_pretrain.models.architecture``) supplies the model chunks; a task
(``dist_pretrain.tasks``) the batches and the forward step with its loss and metrics;
megatron-core's pipeline schedule runs the micro-batches of a
step (no pipelining, 1F1B or interleaved) and the engine (DeepSpeed ZeRO, or megatron's
own DDP at ZeRO stage 0) reduces gradients and applies the AdamW update.

What the loop is built from lives beside it: the model chunks and the engine (``build.py``),
the learning-rate schedule (``lr_schedule.py``), the optimizer groups (``optim_groups.py``) and
the starting point, resumed or initialized from another run (``resume.py``).
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func

from dist_pretrain import versions
from dist_pretrain.build import build_engine, build_model_chunks
from dist_pretrain.config import FINETUNE_TASKS, Config, padded_vocab_size
from dist_pretrain.errors import agree
from dist_pretrain.faults import (
    StopSignals,
    StopTraining,
    TrainingAborted,
    fault_nan_steps,
    poisoned,
)
from dist_pretrain.finetune import Selection, derived_config, freeze_all_but
from dist_pretrain.lr_schedule import learning_rate
from dist_pretrain.models.architecture import get_architecture
from dist_pretrain.models.megatron_config import transformer_config
from dist_pretrain.monitor import (
    Monitor,
    TimedIterator,
    measure_gemm_tflops,
    memory_gb,
    throughput,
)
from dist_pretrain.resume import init_weights_from, restore, resume_path
from dist_pretrain.runtime import (
    Runtime,
    init_distributed,
    seed_everything,
    world_size_from_env,
)
from dist_pretrain.tasks import get_task


def fan_out(iterator: Iterator, n: int) -> list[Iterator]:
    """The same micro-batch stream for each of ``n`` interleaved chunks on this rank."""
    return list(itertools.tee(iterator, n)) if n > 1 else [iterator]


def to_device(batches, device: torch.device):
    """Move each batch to the training device (a no-op on CPU)."""
    for batch in batches:
        yield {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
               for k, v in batch.items()}


def _tag(key: str) -> str:
    return key.replace(" ", "_")


def _global_metrics(outputs: list[dict], keys: list[str], rt: Runtime) -> dict[str, float]:
    """Each [sum, count] pair the loss function logged, reduced over the global batch.

    Only the last pipeline stage has them; TP ranks hold copies, so tensor rank 0 of the
    last stage contributes and the all-reduce sums data-parallel replicas.
    """
    totals = torch.zeros(len(keys), 2, dtype=torch.float64, device=rt.device)  # NCCL reduces GPU tensors
    if parallel_state.is_pipeline_last_stage(ignore_virtual=True) and rt.tp_rank == 0:
        for out in outputs:
            for i, key in enumerate(keys):
                totals[i] += out[key].detach().double().to(rt.device)
    torch.distributed.all_reduce(totals)
    return {key: float(t[0] / t[1]) if t[1] > 0 else float("nan") for key, t in zip(keys, totals)}


class Trainer:
    def __init__(self, cfg: Config):
        versions.check()  # DeepSpeed / megatron-core internals: an untested version is an error
        from dist_pretrain.preflight import check

        report = check(cfg, world_size_from_env(), verify_checkpoint=False)  # rank 0 verifies it below
        report.raise_errors()
        cfg = derived_config(cfg, report)
        vocab, self.eval_steps = report.vocab_size, report.eval_steps
        self.cfg = cfg
        par = cfg.parallel
        self.rt = init_distributed(par.tensor, par.pipeline, par.virtual_pipeline, par.timeout_minutes)
        if self.rt.is_logging_rank:
            for warning in report.warnings:
                print(f"warning: {warning}", flush=True)
            if report.eval_note and cfg.train.eval_interval:
                print(report.eval_note, flush=True)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        seed_everything(cfg.seed)
        self.arch = get_architecture(cfg.model.arch)
        self.task = get_task(cfg.task.name)
        self.metric_keys = self.task.metric_keys(cfg)
        self.vocab_size = padded_vocab_size(cfg, vocab)
        self.tconfig = transformer_config(cfg, self.rt.on_gpu)
        self.num_microbatches = cfg.train.global_batch_size // (cfg.train.micro_batch_size * self.rt.dp)
        chunks = build_model_chunks(cfg, self.arch, self.tconfig, self.vocab_size)
        self.num_chunks = len(chunks)
        resume_from = resume_path(cfg, self.rt)
        if resume_from is None and cfg.checkpoint.init_from:
            init_weights_from(cfg, self.arch, chunks, self.rt)
        head = self.arch.head_parameter_names(cfg)
        if cfg.task.freeze_encoder:
            freeze_all_but(chunks, head)
        self.engine = build_engine(cfg, self.rt, chunks, self.tconfig, self.num_microbatches, head)
        self.selection = Selection(self) if cfg.task.name in FINETUNE_TASKS else None
        self.current_step = 0
        self.icl = None
        if cfg.eval.icl_tasks:
            from dist_pretrain.evaluation.in_training import InContextEvaluator

            self.icl = InContextEvaluator(cfg, chunks, self.vocab_size, self.rt.device)
        self.start_step, self.skipped_steps = restore(self, resume_from)
        self.skipped_in_a_row = 0
        self.forward_backward = get_forward_backward_func()
        self.monitor = Monitor(cfg.run_dir, self.rt.is_logging_rank, cfg.monitor.tensorboard,
                               cfg.train.log_interval)
        self.train_stream = self._batches("train")
        self.train_data = TimedIterator(to_device(self.train_stream, self.rt.device))
        self.flops_per_step = cfg.train.global_batch_size * self.arch.flops_per_sample(cfg, self.vocab_size)
        self.tokens_per_step = cfg.train.global_batch_size * self.arch.tokens_per_sample(cfg)
        self.peak_tflops = cfg.monitor.peak_tflops or measure_gemm_tflops(
            torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32, self.rt.device)

    def _batches(self, split: str):
        return self.task.batches(self.cfg, split, self.rt.dp_rank, self.rt.dp,
                                 self.cfg.train.micro_batch_size, self.cfg.seed, self.vocab_size,
                                 start_step=self.start_step if split == "train" else 0)

    def _fetch(self, data, what: str):
        """This step's micro-batches, read before the schedule starts: a data error (a corrupt
        shard with data.on_corrupt=fail) on any rank stops every rank here, together, instead
        of leaving the others waiting in the schedule's collectives."""
        return iter(agree(lambda: [next(data) for _ in range(self.num_microbatches)], what))

    def _run_schedule(self, data, forward_only: bool, poison: bool = False) -> list[dict]:
        iterators = fan_out(data, self.num_chunks)
        step_func = poisoned(self.task.forward_step) if poison else self.task.forward_step
        return self.forward_backward(
            forward_step_func=step_func,
            data_iterator=iterators if self.num_chunks > 1 else iterators[0],
            model=self.engine.model_chunks,
            num_microbatches=self.num_microbatches,
            seq_length=self.cfg.model.seq_length,
            micro_batch_size=self.cfg.train.micro_batch_size,
            forward_only=forward_only,
        )

    def train_step(self, step: int) -> dict[str, float]:
        lr = learning_rate(step, self.cfg)
        self.engine.train()
        t0 = time.perf_counter()
        data = self._fetch(self.train_data, "training data")
        outputs = self._run_schedule(data, forward_only=False, poison=step in fault_nan_steps())
        grad_norm, applied = self.engine.step(lr)
        metrics = _global_metrics(outputs, self.metric_keys, self.rt)
        step_s = time.perf_counter() - t0
        data_wait = self.train_data.take_wait()
        values = {**{f"train/{_tag(k)}": v for k, v in metrics.items()},
                  "train/loss": metrics[self.task.loss_key], "train/lr": lr, "train/grad_norm": grad_norm,
                  "time/step_s": step_s, "time/data_wait_s": data_wait,
                  "time/data_wait_share": data_wait / step_s, "memory/peak_gb": memory_gb(self.rt.device)}
        values.update(throughput(self.tokens_per_step, self.flops_per_step, step_s,
                                 self.rt.env.world_size, self.peak_tflops))
        skipped = getattr(self.train_stream, "skipped_shards", None)
        if skipped is not None:
            values["data/corrupt_shards_skipped"] = float(len(skipped))
        self._count_skip(step, applied and math.isfinite(values["train/loss"]), values)
        return values

    def _count_skip(self, step: int, ok: bool, values: dict) -> None:
        """Non-finite loss / grad norm: the update was skipped; abort after too many in a row."""
        if ok:
            self.skipped_in_a_row = 0
        else:
            self.skipped_steps += 1
            self.skipped_in_a_row += 1
            if self.rt.is_logging_rank:
                print(f"warning: step {step} skipped: loss {values['train/loss']}, grad norm "
                      f"{values['train/grad_norm']} ({self.skipped_in_a_row} in a row)", flush=True)
        values["train/skipped_steps"] = float(self.skipped_steps)
        limit = self.cfg.train.max_skipped_in_a_row
        if self.skipped_in_a_row >= limit:
            raise TrainingAborted(
                f"{limit} consecutive steps (up to step {step}) had a non-finite loss or grad norm "
                f"(last: loss {values['train/loss']}, grad norm {values['train/grad_norm']}); no update "
                f"was applied and no checkpoint written since: resume from the last checkpoint in "
                f"{self.cfg.run_dir}/checkpoints with a lower train.lr or other data"
            )

    def data_state(self) -> dict:
        """Where the training stream stands (for checkpoints): global steps handed out, and a
        fine-tuning run's best validation result so far."""
        state = getattr(self.train_stream, "state_dict", None)
        state = state() if state else {}
        if self.selection is not None:
            state["selection"] = self.selection.state_dict()
        return state

    @torch.no_grad()
    def evaluate(self, stop: StopSignals | None = None) -> dict[str, float]:
        if self.selection is not None:  # fine-tuning: whole-split metrics (dist_pretrain.finetune)
            return self.selection.evaluate(self.current_step)
        self.engine.train(False)
        batches = self._batches("valid")
        data = to_device(batches, self.rt.device)
        totals: dict[str, float] = {}
        batch_losses = []
        try:
            for _ in range(self.eval_steps):
                if stop is not None and stop.agreed():  # a stop signal cuts validation short
                    return {}
                outputs = self._run_schedule(self._fetch(data, "validation data"), forward_only=True)
                for key, value in _global_metrics(outputs, self.metric_keys, self.rt).items():
                    totals[key] = totals.get(key, 0.0) + value / self.eval_steps
                    if key == self.task.loss_key:
                        batch_losses.append(value)
        finally:
            # stop this pass's loader workers now: left running they block the process exit
            data.close()
            if hasattr(batches, "close"):
                batches.close()
        self.engine.train(True)
        val_loss = totals.pop(self.task.loss_key)
        # standard error of the mean over the validation batches (each a global batch's mean)
        se = statistics.stdev(batch_losses) / math.sqrt(len(batch_losses)) if len(batch_losses) > 1 else float("nan")
        return {"val/loss": val_loss, "val/loss_se": se, "val/perplexity": math.exp(min(val_loss, 50.0)),
                **{f"val/{_tag(k)}": v for k, v in totals.items()}}

    def in_context_evaluation(self, step: int) -> dict[str, float]:
        """``eval.icl_tasks`` on the model as it is (``dist_pretrain.evaluation.in_training``)."""
        self.engine.train(False)
        try:
            values = self.icl.run()
        finally:
            self.engine.train(True)
        if self.rt.is_logging_rank:
            print(f"in-context evaluation at step {step}: "
                  + " | ".join(f"{k[4:]} {v:.4f}" for k, v in values.items()), flush=True)
        return values

    def fit(self) -> list[dict[str, Any]]:
        """Train to ``train.steps``; returns this run's per-step values.

        Checkpoints every ``checkpoint.interval`` steps and after the last step (with
        ``checkpoint.save_final``, the default, also when there is no interval). After a stop signal
        (or ``checkpoint.exit_after_minutes``) every rank agrees at the next step boundary,
        a checkpoint is saved and the process exits with ``checkpoint.exit_code``
        (``StopTraining``), which Slurm scripts turn into a requeue.
        """
        from dist_pretrain import checkpoint

        cfg = self.cfg
        history = []
        stop = StopSignals(cfg.checkpoint.signals, cfg.checkpoint.exit_after_minutes)
        saver = checkpoint.Checkpointer(self)
        if self.rt.is_logging_rank:
            print(f"training {cfg.model.arch} {cfg.task.name} | TP {self.rt.tp} PP {self.rt.pp} "
                  f"VPP {self.rt.vpp or 1} DP {self.rt.dp} | ZeRO-{cfg.parallel.zero_stage} | {cfg.train.precision} | "
                  f"{self.num_microbatches} micro-batches of {cfg.train.micro_batch_size} | "
                  f"{self.rt.backend} | peak {self.peak_tflops:.2f} TFLOP/s/dev", flush=True)
            Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        try:
            for step in range(self.start_step + 1, cfg.train.steps + 1):
                self.current_step = step
                values = self.train_step(step)
                last = step == cfg.train.steps
                if self._evaluate_now(step):
                    values.update(self.evaluate(stop))
                    if self.rt.is_logging_rank and "val/perplexity" in values:
                        print(f"validation at step {step}: loss {values['val/loss']:.4f} | "
                              f"perplexity {values['val/perplexity']:.2f}", flush=True)
                if self.icl is not None and self.icl.due(step):
                    values.update(self.in_context_evaluation(step))
                best = self.selection is not None and self.selection.best_step == step
                if last and self.selection is not None:
                    values.update(self.selection.final())
                self.monitor.scalars(step, values)
                self.monitor.console(step, cfg.train.steps, values)
                history.append({"step": step, **values})
                self._append_history(history[-1])
                stopping = stop.agreed()
                stall = saver.poll()
                if stall > 0.05:  # a background save finalized at this boundary
                    self.monitor.scalars(step, {"checkpoint/finalize_stall_s": stall})
                    if self.rt.is_logging_rank:
                        print(f"background checkpoint finalized after step {step}: training stalled "
                              f"{stall:.2f}s", flush=True)
                interval = cfg.checkpoint.interval
                periodic = (interval and step % interval == 0) or (last and (interval or cfg.checkpoint.save_final)) \
                    or best
                # a step whose update was skipped (non-finite) may start a divergence: keep `latest`
                if (periodic and not self.skipped_in_a_row) or stopping:
                    stall = saver.save(step, block=last or stopping)
                    if best:
                        self.selection.mark_best(saver.root, step)
                    self.monitor.scalars(step, {"checkpoint/stall_s": stall})
                    if self.rt.is_logging_rank:
                        print(f"checkpoint of step {step}: training stalled {stall:.2f}s"
                              f"{' (files written in the background)' if saver.in_flight else ''}", flush=True)
                    if last and self.rt.is_logging_rank:
                        print(f"final checkpoint: {saver.root / f'step-{step:08d}'}", flush=True)
                if stopping:
                    raise StopTraining(cfg.checkpoint.exit_code, f"{stop.reason}: checkpoint of step {step} saved")
        finally:
            stop.restore()
            self.monitor.close()
            if hasattr(self.train_stream, "close"):
                self.train_stream.close()
        if self.rt.is_logging_rank:
            (Path(cfg.run_dir) / "history.json").write_text(json.dumps(history, indent=1))
        return history

    def _evaluate_now(self, step: int) -> bool:
        """Every train.eval_interval steps, after the last step and, fine-tuning, at each epoch end."""
        every = self.cfg.train.eval_interval
        if not every:
            return False
        epoch_end = self.selection is not None and step % self.train_stream.steps_per_epoch == 0
        return step % every == 0 or step == self.cfg.train.steps or epoch_end

    def _append_history(self, values: dict) -> None:
        """One JSON line per step in run_dir/history.jsonl, across resumed runs."""
        if self.rt.is_logging_rank:
            with open(Path(self.cfg.run_dir) / "history.jsonl", "a") as f:
                f.write(json.dumps(values) + "\n")



def train(cfg: Config) -> list[dict[str, Any]]:
    return Trainer(cfg).fit()
