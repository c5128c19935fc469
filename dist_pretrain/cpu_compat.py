"""Run megatron-core on a machine without CUDA (gloo + CPU): every redirect lives here.

megatron-core 0.16.1 assumes a GPU in a handful of places. On a CPU-only machine
``enable()`` redirects exactly those, and nothing is touched when CUDA is present, so
the same training code runs on NCCL + GPUs unchanged. Each redirect names the call
sites it serves:

* ``torch.cuda.current_device`` -> 0. Used as ``device=torch.cuda.current_device()``
  when megatron allocates buffers (``tensor_parallel/layers.py`` weights with
  ``use_cpu_initialization=False``, the schedules' ``total_num_tokens``,
  ``finalize_model_grads``); the device itself is then mapped to CPU by the mode below.
* ``torch.cuda.synchronize`` / ``empty_cache`` -> no-ops (timers, ``dist_checkpointing``).
* CUDA RNG state: ``torch.cuda.get_rng_state`` / ``set_rng_state`` / ``manual_seed``
  and megatron's private ``tensor_parallel.random._get_cuda_rng_state`` /
  ``_set_cuda_rng_state`` -> the CPU default generator. They serve the model-parallel
  RNG tracker (``model_parallel_cuda_manual_seed``, dropout forks) and activation
  recomputation (``CheckpointFunction`` saves and restores the RNG state).
  ``torch.cuda.manual_seed`` maps to ``torch.default_generator.manual_seed`` and not
  to ``torch.manual_seed``: the latter calls ``torch.cuda.manual_seed_all``, which
  would recurse if it were redirected too. Because the two generators are then one, the
  tracker's check "CPU RNG state changed within GPU RNG context" fires on every dropout
  fork; that one log message is filtered out (``_SameGeneratorFilter``).
* Tensors created or moved with a CUDA device (``device="cuda"``, ``device=0``,
  ``.cuda()``, ``.to("cuda")``; about 40 sites: every pipeline schedule's
  ``torch.zeros(1, device="cuda")`` token counters, ``clip_grads``, the optimizer's
  found-inf buffers, ``p2p_communication`` shapes) -> CPU, through one
  ``TorchFunctionMode`` (``_CudaToCpuMode``). A mode is per thread: it is pushed on the
  thread that trains, and pushed again for the backward pass (custom autograd functions'
  backward, e.g. megatron's scatter of T5's relative position bias, allocate on CUDA too).
* ``Tensor.type()`` -> ``torch.cuda.*Tensor`` names, only when called from
  ``megatron.core.optimizer`` (``clip_grads`` asserts ``torch.cuda.FloatTensor``,
  ``optimizer.py`` and ``distrib_optimizer.py`` dispatch on it and raise TypeError for
  CPU names).
"""

from __future__ import annotations

import contextlib
import logging
import sys

import torch
from torch.overrides import TorchFunctionMode

_ENABLED = False
_MODE: "_CudaToCpuMode | None" = None


def needed() -> bool:
    """True when there is no usable CUDA device, so megatron needs the redirects."""
    return not torch.cuda.is_available()


def _is_cuda(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    # an int device index means a CUDA ordinal for torch factories
    return isinstance(device, int) and not isinstance(device, bool)


_CPU = torch.device("cpu")
_TYPE_NAMES_FOR_OPTIMIZER = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
}


def _called_from_megatron_optimizer() -> bool:
    frame = sys._getframe(2)
    for _ in range(4):
        if frame is None:
            return False
        if frame.f_globals.get("__name__", "").startswith("megatron.core.optimizer"):
            return True
        frame = frame.f_back
    return False


class _CudaToCpuMode(TorchFunctionMode):
    """Maps CUDA devices in torch calls to CPU (see the module docstring for the sites)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            if name in _TYPE_NAMES_FOR_OPTIMIZER and _called_from_megatron_optimizer():
                return _TYPE_NAMES_FOR_OPTIMIZER[name]
            return name
        device = kwargs.get("device")
        if device is not None and _is_cuda(device):
            kwargs["device"] = _CPU
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda(args[1]):
            args = (args[0], _CPU, *args[2:])
        if func is torch.autograd.backward or func is torch.Tensor.backward:
            # a mode is off while its own handler runs, and the whole backward pass runs inside
            # this call: custom autograd functions' backward (megatron's all-gather behind
            # scatter_to_tensor_model_parallel_region, used for T5's relative position bias)
            # allocate on torch.cuda.current_device() too. Run the engine with the mode on.
            if func is torch.Tensor.backward and "gradient" in kwargs:  # Tensor.backward(gradient=...)
                kwargs["grad_tensors"] = kwargs.pop("gradient")
            with self:
                return _run_backward(*args, **kwargs)
        return func(*args, **kwargs)


def _run_backward(tensors, grad_tensors=None, retain_graph=None, create_graph=False, inputs=None):
    """``torch.autograd.backward`` without its torch-function dispatch (which would pop the mode
    again): the autograd engine's entry point, as megatron's own ``custom_backward`` calls it."""
    from torch.autograd import Variable

    tensors = (tensors,) if isinstance(tensors, torch.Tensor) else tuple(tensors)
    if grad_tensors is None:
        grad_tensors = (None,) * len(tensors)
    elif isinstance(grad_tensors, torch.Tensor):
        grad_tensors = (grad_tensors,)
    # as torch.autograd.backward: a scalar output without a gradient gets 1
    grads = tuple(torch.ones_like(t) if g is None and t.numel() == 1 else g for t, g in zip(tensors, grad_tensors))
    inputs = () if inputs is None else ((inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs))
    Variable._execution_engine.run_backward(
        tensors, grads, create_graph if retain_graph is None else retain_graph, create_graph, inputs,
        allow_unreachable=True, accumulate_grad=True)


def enable() -> bool:
    """Install the redirects when CUDA is absent; returns whether they are active.

    Idempotent. Must run on the thread that trains, before megatron builds the model.
    """
    global _ENABLED, _MODE
    if not needed():
        return False
    if _ENABLED:
        return True
    import megatron.core.tensor_parallel.random as mcore_random

    def get_rng_state(device=None, **_):
        return torch.get_rng_state()

    def set_rng_state(state, device=None, **_):
        torch.set_rng_state(state)

    torch.cuda.current_device = lambda: 0
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.empty_cache = lambda: None
    torch.cuda.get_rng_state = get_rng_state
    torch.cuda.set_rng_state = set_rng_state
    torch.cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))
    mcore_random._get_cuda_rng_state = get_rng_state
    mcore_random._set_cuda_rng_state = set_rng_state
    logging.getLogger(mcore_random.__name__).addFilter(_SameGeneratorFilter())

    _MODE = _CudaToCpuMode()
    _MODE.__enter__()
    _ENABLED = True
    return True


def suspended():
    """A context in which torch calls skip the CUDA -> CPU mode (and any other torch-function
    override): for hot loops that create nothing on "cuda", such as the decode steps of
    generation once the KV cache exists, where the mode's Python call on every op is a
    measurable share of a step. A no-op when the redirects are off. Uses
    ``torch._C.DisableTorchFunction`` (private; when a torch lacks it the mode stays on)."""
    disable = getattr(torch._C, "DisableTorchFunction", None)
    if not _ENABLED or disable is None:
        return contextlib.nullcontext()
    return disable()


class _SameGeneratorFilter(logging.Filter):
    """Drops the tracker's warning that the CPU RNG moved inside a CUDA-RNG fork: on CPU the
    "CUDA" generator is the CPU one, so dropout inside the fork always moves it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "CPU RNG state changed within GPU RNG context" not in record.getMessage()


def disable_deepspeed_shm_comm() -> None:
    """Skip DeepSpeed's shm-comm op build on CPU.

    ``deepspeed.init_distributed`` compiles a shared-memory all-reduce op (~75 s here)
    that only DeepSpeed inference uses. ``deepspeed.comm`` re-exports ``torch`` under
    the name ``torch``, so the module is fetched with importlib.
    """
    import importlib

    ds_comm_torch = importlib.import_module("deepspeed.comm.torch")
    ds_comm_torch.build_shm_op = lambda: None
