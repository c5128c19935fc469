"""Model-state and activation memory: the published formulas, and a count of what is really held.

Theory, bytes per data-parallel rank for Ψ parameters over N ranks (Rajbhandari et al., "ZeRO",
SC'20, section 3 / figure 1), mixed precision (16-bit weights and gradients; fp32 master
weights and Adam moments, K = 12 bytes of optimizer state per parameter):

    stage 0: 2Ψ + 2Ψ + 12Ψ        stage 1: 2Ψ + 2Ψ + 12Ψ/N
    stage 2: 2Ψ + (2 + 12)Ψ/N     stage 3: (2 + 2 + 12)Ψ/N

fp32 training needs no master copy (the weights are the master): 4Ψ weights, 4Ψ gradients
and K = 8 (Adam m and v), partitioned the same way (stage 1: 4Ψ + 4Ψ + 8Ψ/N, ...).

Activations: Korthikanti et al., "Reducing Activation Recomputation in Large Transformer
Models" (2022), eq. 1: s·b·h·(34 + 5·a·s/h) bytes per layer with 16-bit activations and 1-byte
dropout masks, no recomputation; with full recomputation only each layer's input, 2sbh.

``held_model_state`` counts what an engine really holds: the storage (not RSS) of every
tensor reachable from the model's parameters and the optimizer objects, each storage once,
classified as parameters, gradients, optimizer state or other.
"""

from __future__ import annotations

import gc
from collections import deque
from collections.abc import Iterable
from typing import Any

import torch

# --------------------------------------------------------------------------- theory


def zero_model_state_bytes(psi: float, n: int, stage: int, precision: str) -> dict[str, float]:
    """Per-rank bytes of parameters, gradients and optimizer state (ZeRO paper; fp32 variant above)."""
    if precision == "bf16":
        p, g, k = 2.0, 2.0, 12.0
    elif precision == "fp32":
        p, g, k = 4.0, 4.0, 8.0
    else:
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0..3, got {stage}")
    return {
        "params": psi * p / (n if stage >= 3 else 1),
        "grads": psi * g / (n if stage >= 2 else 1),
        "optimizer": psi * k / (n if stage >= 1 else 1),
    }


def korthikanti_layer_bytes(s: int, b: int, h: int, a: int) -> float:
    """Activation bytes one transformer layer saves for backward: sbh(34 + 5as/h)."""
    return s * b * h * (34 + 5 * a * s / h)


def flash_no_dropout_layer_bytes(s: int, b: int, h: int, a: int, value_bytes: int) -> float:
    """The same count for our layer: no dropout, fused SDPA attention, ``value_bytes`` per value.

    Korthikanti's 34sbh bytes are 16sbh 16-bit values (LayerNorm inputs 2, QKV input 1, Q K V
    3, attention-projection input 1, MLP input 1, GeLU input 4, fc2 input 4) plus two 1-byte
    dropout masks; 5as^2b are the unfused attention's softmax, its dropout mask and output.
    Without dropout there are no masks; fused SDPA saves no s^2 tensor but its output O (which
    is the projection's input, one storage) and a fp32 log-sum-exp per query and head:
    16sbh values + 4asb bytes (LayerNorm's per-token mean and rstd are left out: 4sb values).
    """
    return 16 * s * b * h * value_bytes + 4 * a * s * b


# --------------------------------------------------------------------------- what is held


def _storage_key(t: torch.Tensor) -> tuple[int, int] | None:
    if t.device.type == "meta":  # shape-only placeholders (DeepSpeed keeps some) hold no memory
        return None
    try:
        st = t.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None
    if st.nbytes() == 0:
        return None
    return st.data_ptr(), st.nbytes()


def _walk(roots: Iterable[tuple[str, Any]], max_depth: int = 6):
    """(path, tensor) for every tensor reachable from ``roots`` through containers and the
    attributes of optimizer / DeepSpeed / megatron objects (breadth first, each object once)."""
    seen: set[int] = set()
    queue = deque((path, obj, 0) for path, obj in roots)
    while queue:
        path, obj, depth = queue.popleft()
        if id(obj) in seen or depth > max_depth:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            yield path, obj
            grad = obj.grad if obj.requires_grad or obj.is_leaf else None
            if grad is not None:
                queue.append((path + ".grad", grad, depth + 1))
            for attr in ("main_grad", "ds_tensor"):
                extra = getattr(obj, attr, None)
                if isinstance(extra, torch.Tensor):
                    queue.append((f"{path}.{attr}", extra, depth + 1))
            continue
        if isinstance(obj, torch.nn.Module):
            continue  # modules are reached through their parameters only
        if isinstance(obj, dict):
            for k, v in obj.items():
                queue.append((f"{path}[{k if isinstance(k, (str, int)) else type(k).__name__}]", v, depth + 1))
        elif isinstance(obj, (list, tuple, set, frozenset)):
            for i, v in enumerate(obj):
                queue.append((f"{path}[{i}]", v, depth + 1))
        else:
            module = type(obj).__module__ or ""
            if module.startswith(("deepspeed", "megatron", "torch.optim", "dist_pretrain")) \
                    and hasattr(obj, "__dict__"):
                for k, v in vars(obj).items():
                    if k not in ("module", "_engine", "engine", "model", "param_names"):
                        queue.append((f"{path}.{k}", v, depth + 1))


def _category(path: str, key, param_keys: set) -> str:
    lower = path.lower()
    if key in param_keys or lower.endswith(".ds_tensor"):
        return "params"
    if "exp_avg" in lower or ".state[" in lower:
        return "optimizer"
    if "ipg" in lower or "bucket" in lower:
        return "buffers"
    if "grad" in lower:
        return "grads"
    if "fp32" in lower or "master" in lower or "param_groups" in lower:
        return "optimizer"
    return "other"


def live_storages() -> set[tuple[int, int]]:
    """Storages of every tensor the garbage collector knows (a baseline for ``held_model_state``)."""
    keys = set()
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor):
            key = _storage_key(obj)
            if key is not None:
                keys.add(key)
    return keys


def held_model_state(parameters: list[torch.nn.Parameter], optimizers: list[Any],
                     baseline: set | None = None) -> dict[str, Any]:
    """Bytes this process holds for parameters, gradients, optimizer state, communication
    buffers and other tensors reachable from them (with where each came from).

    Each tensor storage counts once, under the first category it is found in (parameters
    first: flat buffers that parameters are views of count as parameters). ``live_unreached``
    is the storage of every other live tensor the garbage collector knows that was not in
    ``baseline`` (storages alive before the engine was built): a check that nothing big was
    missed; it needs a scan of all objects, so it is skipped (None) without a baseline.
    """
    param_keys = {_storage_key(p.data) for p in parameters} - {None}
    roots = [(f"param{i}", p) for i, p in enumerate(parameters)]
    roots += [(f"opt{i}", o) for i, o in enumerate(optimizers)]
    found: dict[tuple[int, int], tuple[str, str]] = {}
    # a storage found on several paths takes the first category here: parameters are views of
    # flat buffers, and ZeRO-2's gradients are views of its reduction bucket
    order = {"params": 0, "buffers": 1, "grads": 2, "optimizer": 3, "other": 4}
    for path, t in _walk(roots):
        key = _storage_key(t)
        if key is None:
            continue
        cat = _category(path, key, param_keys)
        if key not in found or order[cat] < order[found[key][0]]:
            found[key] = (cat, path)
    totals = {c: 0 for c in order}
    where: dict[str, dict[str, int]] = {c: {} for c in order}
    for (ptr, nbytes), (cat, path) in found.items():
        totals[cat] += nbytes
        label = _path_label(path)
        where[cat][label] = where[cat].get(label, 0) + nbytes
    live = None
    if baseline is not None:
        live = sum(key[1] for key in live_storages() - set(found) - baseline)
    return {**totals, "live_unreached": live, "where": where}


def _path_label(path: str) -> str:
    """``opt0.single_partition_of_fp32_groups[1].grad`` -> ``single_partition_of_fp32_groups[].grad``."""
    import re

    label = re.sub(r"\[[^\]]*\]", "[]", path)
    return re.sub(r"^(param|opt)\d+\.?", "", label) or "parameter storage"


def find_torch_optimizers(obj: Any) -> list[torch.optim.Optimizer]:
    """The torch optimizers inside an engine's optimizer wrapper(s), found by walking it."""
    out, seen = [], set()
    for path, o in _walk_objects([("root", obj)]):
        if isinstance(o, torch.optim.Optimizer) and type(o).__module__.startswith("torch.optim") \
                and id(o) not in seen:
            seen.add(id(o))
            out.append(o)
    return out


def _walk_objects(roots, max_depth: int = 4):
    seen: set[int] = set()
    queue = deque((p, o, 0) for p, o in roots)
    while queue:
        path, obj, depth = queue.popleft()
        if id(obj) in seen or depth > max_depth or isinstance(obj, (torch.Tensor, torch.nn.Module)):
            continue
        seen.add(id(obj))
        yield path, obj
        if isinstance(obj, dict):
            queue.extend((f"{path}[]", v, depth + 1) for v in obj.values())
        elif isinstance(obj, (list, tuple)):
            queue.extend((f"{path}[]", v, depth + 1) for v in obj)
        elif (type(obj).__module__ or "").startswith(("deepspeed", "megatron", "dist_pretrain")) \
                and hasattr(obj, "__dict__"):
            queue.extend((f"{path}.{k}", v, depth + 1) for k, v in vars(obj).items())
