"""ZeRO stage 0: megatron-core's own DDP and optimizer (the classic Megatron-LM wiring).

Gradients accumulate in megatron's contiguous fp32 grad buffers and are all-reduced
over the data-parallel group at the end of the step (``finalize_model_grads``, which
also sums tied embedding grads across the first and last stage); megatron's optimizer
clips by the global norm across TP x PP and applies AdamW. Same interface as
``engine.ZeroEngine``, so the training loop does not know which one it drives.
"""

from __future__ import annotations

import math

import torch
from megatron.core.distributed import (
    DistributedDataParallel,
    DistributedDataParallelConfig,
    finalize_model_grads,
)
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

from dist_pretrain.optim_groups import megatron_config_overrides
from dist_pretrain.optim_state import adam_step_tensor, group_of, moment_on


class MegatronDDPEngine:
    def __init__(self, chunks: list[torch.nn.Module], train_cfg, tconfig, head: tuple[str, ...] = (),
                 head_lr_mult: float = 1.0):
        ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                                   use_distributed_optimizer=False)
        self.model_chunks = [
            # megatron-LM buckets only the first chunk's grads
            DistributedDataParallel(config=tconfig, ddp_config=ddp_config, module=chunk,
                                    disable_bucketing=(i > 0))
            for i, chunk in enumerate(chunks)
        ]
        opt_config = OptimizerConfig(
            optimizer="adam", lr=train_cfg.lr, min_lr=train_cfg.min_lr,
            weight_decay=train_cfg.weight_decay, adam_beta1=train_cfg.adam_beta1,
            adam_beta2=train_cfg.adam_beta2, adam_eps=train_cfg.adam_eps,
            clip_grad=train_cfg.grad_clip, bf16=tconfig.bf16, params_dtype=torch.float32,
            use_distributed_optimizer=False,
        )
        # megatron builds the groups: no weight decay on biases / norms, and a fine-tuning head's
        # own learning rate (optim_groups.py)
        self.optimizer = get_megatron_optimizer(
            opt_config, self.model_chunks, config_overrides=megatron_config_overrides(opt_config, head, head_lr_mult))
        self.no_sync = ([c.no_sync for c in self.model_chunks] if len(self.model_chunks) > 1
                        else self.model_chunks[0].no_sync)
        self.finalize_grads = finalize_model_grads
        self.weight_decay = train_cfg.weight_decay
        self.zero_grad()

    def zero_grad(self) -> None:
        for chunk in self.model_chunks:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()

    def step(self, lr: float) -> tuple[float, bool]:
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)  # a fine-tuning head's groups: task.head_lr
            # megatron marks biases / norms with wd_mult=0, applied by its LR scheduler,
            # which we do not use: apply it here or they would be decayed.
            group["weight_decay"] = self.weight_decay * group.get("wd_mult", 1.0)
        # megatron skips only on fp16 loss-scale overflow: check the global norm first, after
        # prepare_grads() has moved the DDP buffer's main_grad into .grad (idempotent; step()
        # repeats it)
        found_inf = self.optimizer.prepare_grads()
        norm = float(self.optimizer.get_grad_norm())
        if found_inf or not math.isfinite(norm):
            self.zero_grad()
            return norm, False
        _, grad_norm, _ = self.optimizer.step()
        self.zero_grad()
        return (float(grad_norm) if grad_norm is not None else norm), True

    # ------------------------------------------------------------------ checkpoint state

    def _main_params(self) -> dict[int, tuple[torch.nn.Parameter, torch.optim.Optimizer]]:
        """model parameter -> (fp32 main parameter, torch optimizer holding its state)."""
        out = {}
        for opt in getattr(self.optimizer, "chained_optimizers", [self.optimizer]):
            if hasattr(opt, "float16_groups"):  # bf16: fp32 main copies of the bf16 params
                for low, high in zip(opt.float16_groups, opt.fp32_from_float16_groups):
                    out.update({id(p): (m, opt.optimizer) for p, m in zip(low, high)})
                for group in getattr(opt, "fp32_from_fp32_groups", []):
                    out.update({id(p): (p, opt.optimizer) for p in group})
            else:  # fp32: the model parameters are the main parameters
                for group in opt.optimizer.param_groups:
                    out.update({id(p): (p, opt.optimizer) for p in group["params"]})
        return out

    def master_state(self, p):
        main, opt = self._main_params()[id(p)]
        state = opt.state.get(main, {})
        return main.detach().float(), {m: state.get(m) for m in ("exp_avg", "exp_avg_sq")}

    def load_master_state(self, values, step: int) -> None:
        mains = self._main_params()
        with torch.no_grad():
            for p, master, moments in values:
                main, opt = mains[id(p)]
                main.copy_(master)
                p.data.copy_(master.to(p.dtype))
                state = opt.state[main]
                # checkpoints load on the CPU: moments go to the main parameter's device
                state["step"] = adam_step_tensor(group_of(opt, main), main, step)
                for name, value in moments.items():
                    state[name] = moment_on(value, main)

    def train(self, mode: bool = True) -> None:
        for chunk in self.model_chunks:
            chunk.train(mode)
