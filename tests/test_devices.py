"""Tensors on the training path are created on the device they meet (GPU-path guard, CPU-testable).

On a GPU, a CPU tensor mixed with CUDA ones raises (or, for a collective under NCCL, fails), and
no CPU test sees it. The static check lists every torch factory call without ``device=`` on the
training and checkpoint path: each must be here with the reason it belongs on the CPU. The
functional checks run the fixed paths with tensors on another device (``meta``) than the default.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from dist_pretrain.faults import poisoned
from dist_pretrain.optim_state import adam_step_tensor, group_of, moment_on

PKG = Path(__file__).resolve().parents[1] / "dist_pretrain"
TRAINING_PATH = ["train.py", "engine.py", "megatron_engine.py", "faults.py", "checkpoint.py", "optim_state.py",
                 "monitor.py", "runtime.py", "tasks/base.py", "models/gpt.py", "models/bert.py",
                 "models/t5.py", "models/init.py", "models/attention.py", "tasks/causal_lm.py",
                 "tasks/masked_lm.py", "tasks/span_corruption.py", "tasks/metrics.py"]
FACTORIES = {"tensor", "zeros", "ones", "empty", "full", "arange", "randn", "rand", "randint", "as_tensor"}
GLOO = "a CPU agreement all-reduced over the default group, which is cpu:gloo,cuda:nccl on GPUs"
CPU_ON_PURPOSE = {
    ("faults.py", "torch.tensor([local, timeout])"): GLOO,
    ("checkpoint.py", "torch.ones(1)"): GLOO,
    ("checkpoint.py", "torch.zeros(2)"): GLOO,
    ("checkpoint.py", 'torch.tensor(rng["torch"], dtype=torch.uint8)'): "RNG states are CPU byte tensors",
    ("checkpoint.py", 'torch.tensor(rng["cuda"], dtype=torch.uint8)'): "RNG states are CPU byte tensors",
    ("checkpoint.py", "torch.tensor(v, dtype=torch.uint8)"): "RNG tracker states are CPU byte tensors",
    ("checkpoint.py", "torch.empty(st.local_shape, dtype=torch.float32)"):
        "load template: checkpoints load on the CPU, optim_state moves moments to the parameter",
    ("optim_state.py", "torch.tensor(float(step), dtype=torch.get_default_dtype())"):
        "torch keeps AdamW's step on the CPU unless fused or capturable",
    ("models/init.py", "torch.empty(count)"): "initial values are drawn on the CPU (the same on every device), "
                                              "then copied into the parameter",
    ("models/init.py", "torch.empty(moved.shape, dtype=torch.float32)"):
        "CPU staging of a row-parallel shard's drawn values, copied into the parameter",
}


def factory_calls_without_device() -> set[tuple[str, str]]:
    found = set()
    for name in TRAINING_PATH:
        src = (PKG / name).read_text()
        for node in ast.walk(ast.parse(src)):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in FACTORIES
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
                    and not any(k.arg == "device" for k in node.keywords)):
                found.add((name, ast.get_source_segment(src, node)))
    return found


def test_every_tensor_on_the_training_path_has_a_device_or_a_reason():
    unexplained = factory_calls_without_device() - set(CPU_ON_PURPOSE)
    assert not unexplained, f"created without device= (on a GPU these meet CUDA tensors): {sorted(unexplained)}"
    stale = set(CPU_ON_PURPOSE) - factory_calls_without_device()
    assert not stale, f"allowed but gone (remove from CPU_ON_PURPOSE): {stale}"


def test_cpu_agreements_rely_on_a_gloo_backend_next_to_nccl():
    assert 'backend="cpu:gloo,cuda:nccl" if on_gpu else "gloo"' in (PKG / "runtime.py").read_text()


def _forward_step(device):
    def step(data_iterator, model):
        def loss_func(out):
            total = torch.ones((), device=device) * 3
            return total, torch.ones((), device=device, dtype=torch.int) * 2, {
                "lm loss": torch.stack([total, torch.ones((), device=device) * 2])}
        return None, loss_func
    return step


def test_nan_fault_poisons_sums_keeps_counts():
    _, loss_func = poisoned(_forward_step("cpu"))(iter([]), None)
    loss, tokens, logged = loss_func(None)
    assert loss.isnan() and int(tokens) == 2
    assert logged["lm loss"][0].isnan() and logged["lm loss"][1] == 2


def test_nan_fault_stays_on_the_logged_values_device():
    # a device other than the default: the old CPU poison tensor raised here (as on a GPU)
    _, loss_func = poisoned(_forward_step("meta"))(iter([]), None)
    _, _, logged = loss_func(None)
    assert logged["lm loss"].device.type == "meta"


@pytest.mark.parametrize("fused", [False, True])
def test_restored_adam_step_is_placed_as_torch_places_it(fused):
    p = torch.nn.Parameter(torch.randn(4))
    opt = torch.optim.AdamW([p], fused=fused)
    p.grad = torch.ones(4)
    opt.step()
    made = opt.state[p]["step"]
    restored = adam_step_tensor(group_of(opt, p), p, 1)
    assert (restored.device, restored.dtype, float(restored)) == (made.device, made.dtype, float(made))
    with pytest.raises(KeyError, match="none of the optimizer's groups"):
        group_of(opt, torch.nn.Parameter(torch.zeros(2)))


def test_restored_moments_follow_their_parameter():
    loaded = torch.arange(4.0)  # checkpoints load on the CPU
    on_meta = moment_on(loaded, torch.empty(4, device="meta"))
    assert on_meta.device.type == "meta"
    here = moment_on(loaded, torch.zeros(4))
    assert torch.equal(here, loaded) and here.data_ptr() != loaded.data_ptr()  # a copy, not the loaded buffer
