"""Evaluation of fine-tuning runs: every example of a split, scored from its prediction.

Pretraining validation averages per-batch [sum, count] pairs. A fine-tuned model is
judged instead on whole-split metrics computed from every prediction: accuracy and
macro-F1 (scikit-learn) for classification; exact match and ROUGE-L (rouge-score) of
greedy generations for text-to-text. The split is walked once in order on every rank
(``data/epochs.py``: the last batch is padded). The last pipeline stage's first tensor
rank of each data-parallel replica keeps its predictions, and they are gathered to every
rank, so all ranks return the same numbers.

``Selection`` keeps the best validation result by ``task.best_metric``. At each new best
the test split is evaluated too; the test numbers reported at the end are those of the
best checkpoint, as if it had been reloaded. ``run_dir/predictions.jsonl`` holds the best
checkpoint's test predictions (validation ones when there is no test split).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from megatron.core import parallel_state

from dist_pretrain.checkpoint_shards import bare_model
from dist_pretrain.config import TASK_METRICS as METRICS
from dist_pretrain.optim_groups import is_head_parameter


def derived_config(cfg, report):
    """``cfg`` with what the data decides: train.steps from train.epochs, the label names."""
    train, task = cfg.train, cfg.task
    if report.steps is not None and report.steps != train.steps:
        train = train.model_copy(update={"steps": report.steps})
    if report.labels is not None and task.labels is None:
        task = task.model_copy(update={"labels": report.labels})
    return cfg.model_copy(update={"train": train, "task": task})


def freeze_all_but(chunks: list[torch.nn.Module], patterns: tuple[str, ...]) -> None:
    """task.freeze_encoder: only the parameters matching ``patterns`` (the new head) train
    (names as the bare chunk has them: a bf16 chunk's ``Float16Module`` prefix is ignored)."""
    for chunk in chunks:
        for name, p in chunk.named_parameters():
            if not is_head_parameter(name, patterns):
                p.requires_grad_(False)


def best_metric(cfg) -> str:
    return cfg.task.best_metric or next(iter(METRICS[cfg.task.name]))


def _gather(items: list) -> list:
    """Every rank's ``items``, concatenated in rank order, on every rank."""
    every: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(every, items)
    return [x for part in every for x in part]


def _holds_outputs(rt) -> bool:
    return parallel_state.is_pipeline_last_stage(ignore_virtual=True) and rt.tp_rank == 0


def classification_scores(records: list[dict], logits: dict[int, torch.Tensor], labels: list[str]) -> tuple[dict, list]:
    """Accuracy, macro-F1 and mean loss of a split, and one prediction row per example."""
    from sklearn.metrics import accuracy_score, f1_score

    truth, pred, loss, rows = [], [], 0.0, []
    for index, record in enumerate(records):
        row_logits = logits[index].float()
        y = labels.index(record["label"])
        p = int(row_logits.argmax())
        truth.append(y)
        pred.append(p)
        loss += float(torch.nn.functional.cross_entropy(row_logits[None], torch.tensor([y])))
        probs = torch.softmax(row_logits, -1)
        rows.append({"index": index, **record, "prediction": labels[p], "probability": round(float(probs[p]), 6)})
    metrics = {"accuracy": accuracy_score(truth, pred),
               "macro_f1": f1_score(truth, pred, average="macro", labels=list(range(len(labels))), zero_division=0),
               "loss": loss / max(len(records), 1)}
    return metrics, rows


class Evaluator:
    """Whole-split evaluation for a ``Trainer`` whose task is classification or text_to_text."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.cfg = trainer.cfg

    @torch.no_grad()
    def evaluate(self, split: str) -> tuple[dict[str, float], list[dict]]:
        """(metrics, prediction rows) of ``split``; the same on every rank."""
        from dist_pretrain.data.epochs import steps_per_epoch
        from dist_pretrain.tasks.labelled import split_examples
        from dist_pretrain.train import to_device

        t = self.trainer
        examples, records = split_examples(self.cfg.data.path, split)
        steps = steps_per_epoch(len(examples), self.cfg.train.global_batch_size)
        t.engine.train(False)
        try:
            data = to_device(t._batches(split), t.rt.device)
            if self.cfg.task.name == "classification":
                return classification_scores(records, self._logits(data, steps), list(self.cfg.task.labels))
            from dist_pretrain.tasks.text_to_text import text_scores

            return text_scores(records, self._generate(data, steps), t.task.tokenizer(self.cfg))
        finally:
            t.task.collected = None
            t.engine.train(True)

    def _logits(self, data, steps: int) -> dict[int, torch.Tensor]:
        t = self.trainer
        t.task.collected = []
        for _ in range(steps):
            t._run_schedule(t._fetch(data, "evaluation data"), forward_only=True)
        return dict(_gather(t.task.collected if _holds_outputs(t.rt) else []))

    def _generate(self, data, steps: int) -> dict[int, list[int]]:
        """Greedy generation of every example, a global batch at a time: with the encoder once and
        the decoder's KV caches (``inference.seq2seq.greedy_targets``), or, under ZeRO-3 (whose
        partitioned weights only the engine's forward gathers), through the training schedule
        once per position (see tasks/text_to_text.py)."""
        if self.cfg.parallel.zero_stage != 3:
            return self._generate_cached(data, steps)
        t, cfg = self.trainer, self.cfg
        eos, pad = (t.task.tokenizer(cfg).special_ids[k] for k in ("eos", "pad"))
        length = min(cfg.task.max_new_tokens or cfg.model.decoder_length, cfg.model.decoder_length)
        out: dict[int, list[int]] = {}
        for _ in range(steps):
            micro = [next(data) for _ in range(t.num_microbatches)]
            for mb in micro:
                mb["dec_input"].fill_(pad)
                mb["dec_mask"].fill_(1)
            try:
                for position in range(length):
                    t.task.position, t.task.collected = position, []
                    t._run_schedule(iter(micro), forward_only=True)
                    new = dict(_gather(t.task.collected if _holds_outputs(t.rt) else []))
                    for index, token in new.items():
                        out.setdefault(index, []).append(token)
                    if position + 1 < length:
                        for mb in micro:
                            for row, index in enumerate(mb["index"].tolist()):
                                if index in new:
                                    mb["dec_input"][row, position + 1] = new[index]
                    if all(eos in out[i] for i in new):  # the same on every rank: gathered
                        break
            finally:
                t.task.position = None
        return {i: tokens[:tokens.index(eos)] if eos in tokens else tokens for i, tokens in out.items()}

    def _generate_cached(self, data, steps: int) -> dict[int, list[int]]:
        from dist_pretrain.inference.model import known_vocab
        from dist_pretrain.inference.seq2seq import greedy_targets

        t, cfg = self.trainer, self.cfg
        tok = t.task.tokenizer(cfg)
        eos, pad = (tok.special_ids[k] for k in ("eos", "pad"))
        length = min(cfg.task.max_new_tokens or cfg.model.decoder_length, cfg.model.decoder_length)
        model = bare_model(t.engine.model_chunks[0])
        vocab = known_vocab({}, cfg, tok, t.vocab_size)
        out: list[tuple[int, list[int]]] = []
        for _ in range(steps):  # this replica's micro-batches of a global batch, decoded as one batch
            micro = [next(data) for _ in range(t.num_microbatches)]
            batch = {k: torch.cat([mb[k] for mb in micro]) for k in ("enc_tokens", "enc_mask", "weight", "index")}
            live = batch["weight"] > 0
            targets = greedy_targets(model, batch["enc_tokens"], batch["enc_mask"], pad, eos, length, vocab, live)
            if targets is not None and _holds_outputs(t.rt):
                out += [(i, targets[row]) for row, i in enumerate(batch["index"].tolist()) if live[row]]
        return dict(_gather(out))


class Selection:
    """The best validation result so far, and the test result at that point."""

    def __init__(self, trainer):
        self.trainer, self.cfg = trainer, trainer.cfg
        self.metric = best_metric(self.cfg)
        self.larger_is_better = METRICS[self.cfg.task.name][self.metric]
        self.best: float | None = None
        self.best_step: int | None = None
        self.test: dict[str, float] = {}
        self.evaluator = Evaluator(trainer)
        self.has_test = _split_size(self.cfg.data.path, "test") > 0

    def evaluate(self, step: int) -> dict[str, float]:
        """val/* values at ``step`` (and val/best_<metric>); at a new best the test split is
        evaluated too and ``best_step`` becomes ``step``."""
        start = time.perf_counter()
        metrics, rows = self.evaluator.evaluate("valid")
        value = metrics[self.metric]
        improved = self.best is None or (value > self.best if self.larger_is_better else value < self.best)
        values = {f"val/{k}": v for k, v in metrics.items()}
        if improved:
            self.best, self.best_step = value, step
            if self.has_test:
                test, rows = self.evaluator.evaluate("test")
                self.test = {f"test/{k}": v for k, v in test.items()}
            self._write_predictions(rows, "test" if self.has_test else "valid", step)
        values[f"val/best_{self.metric}"] = self.best
        if self.trainer.rt.is_logging_rank:
            shown = " | ".join(f"{k.removeprefix('val/')} {v:.4f}" for k, v in values.items())
            print(f"validation at step {step}: {shown}{' (new best)' if improved else ''} "
                  f"[{time.perf_counter() - start:.1f} s{' with the test split' if improved and self.has_test else ''}]",
                  flush=True)
        return values

    def final(self) -> dict[str, float]:
        """The test metrics of the best checkpoint, logged at the last step. Without validation
        (train.eval_interval=0) the final weights are tested."""
        start = time.perf_counter()
        if self.best is None and self.has_test:
            test, rows = self.evaluator.evaluate("test")
            self.test = {f"test/{k}": v for k, v in test.items()}
            self._write_predictions(rows, "test", self.trainer.current_step)
        if self.test and self.trainer.rt.is_logging_rank:
            where = f"best validation {self.metric} at step {self.best_step}" if self.best is not None else "final"
            shown = " | ".join(f"{k.removeprefix('test/')} {v:.4f}" for k, v in self.test.items())
            took = f" [{time.perf_counter() - start:.1f} s]" if self.best is None else ""
            print(f"test ({where}): {shown}{took}", flush=True)
        return dict(self.test)

    def mark_best(self, root: Path, step: int) -> None:
        """``checkpoints/best`` names the best checkpoint (kept by pruning)."""
        if self.trainer.rt.is_logging_rank:
            tmp = root / "best.tmp"
            tmp.write_text(f"step-{step:08d}\n")
            tmp.replace(root / "best")
            print(f"best checkpoint ({self.metric} {self.best:.4f}): {root / f'step-{step:08d}'}", flush=True)

    def state_dict(self) -> dict:
        return {"metric": self.metric, "best": self.best, "best_step": self.best_step, "test": self.test}

    def load_state_dict(self, state: dict | None) -> None:
        if state and state.get("metric") == self.metric:
            self.best, self.best_step, self.test = state["best"], state["best_step"], dict(state["test"])

    def _write_predictions(self, rows: list[dict], split: str, step: int) -> None:
        if not self.trainer.rt.is_logging_rank:
            return
        path = Path(self.cfg.run_dir) / "predictions.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".jsonl.tmp")
        with open(tmp, "w") as f:
            for row in rows:
                f.write(json.dumps({"split": split, "step": step, **row}, ensure_ascii=False) + "\n")
        tmp.replace(path)


def _split_size(path: str, split: str) -> int:
    from dist_pretrain.data.manifest import read_manifest

    return int(read_manifest(path)["splits"].get(split, {}).get("samples", 0))
