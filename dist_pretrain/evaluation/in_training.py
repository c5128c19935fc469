"""In-context evaluation during pretraining (``eval.icl_tasks``, every ``eval.icl_interval`` steps).

The model being trained is scored where it is, at the training layout: its chunks (one per
pipeline stage) are wrapped as a ``CausalLM`` and the tasks run as ``dist-pretrain evaluate``
runs them, the data-parallel replicas sharing the items. The values go to TensorBoard as
``icl/<task>/<k>shot_<metric>`` (``acc``, ``acc_norm``, ``perplexity``, ``exact_match``).
Tasks and their demonstrations are loaded once, when training starts; an evaluation uses the
first ``limit`` items of each task, the same items every time, so the curves are comparable.
"""

from __future__ import annotations

import torch

from dist_pretrain.config import Config


class InContextEvaluator:
    def __init__(self, cfg: Config, chunks: list[torch.nn.Module], embedding_rows: int, device: torch.device):
        from dist_pretrain.evaluation.tasks import load_task
        from dist_pretrain.tasks.base import tokenizer_for
        from dist_pretrain.inference.model import CausalLM, known_vocab

        self.cfg = cfg
        self.tasks = [(load_task(t.task), t.shots, t.limit) for t in cfg.eval.icl_tasks]
        tok = tokenizer_for(cfg)
        self.lm = CausalLM(cfg=cfg, chunk=chunks[0], tokenizer=tok, vocab_size=known_vocab({}, cfg, tok, embedding_rows),
                           device=device, source=cfg.run_dir, softmax_rows=embedding_rows,
                           hidden_dtype=torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32)

    def due(self, step: int) -> bool:
        interval = self.cfg.eval.icl_interval
        return bool(interval) and (step % interval == 0 or step == self.cfg.train.steps)

    @torch.no_grad()
    def run(self) -> dict[str, float]:
        """``{"icl/<task>/<k>shot_<metric>": value}`` on every rank (the model in eval mode)."""
        from dist_pretrain.evaluation.runner import evaluate_task

        ev, values = self.cfg.eval, {}
        for task, shots, limit in self.tasks:
            for k in shots:
                for row in evaluate_task(self.lm, task, k, limit, ev.icl_seed, ev.icl_batch_size):
                    values[f"icl/{task.name}/{k}shot_{row['metric']}"] = float(row["value"])
        return values
