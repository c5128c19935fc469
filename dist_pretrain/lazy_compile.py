"""Defer megatron-core's import-time ``torch.compile`` decorations to the first call.

megatron-core decorates its fused kernels (``megatron.core.fusions``: bias-GeLU, GeGLU,
SwiGLU, ...) with ``torch.compile`` when ``megatron.core`` is imported, and torch 2.13 loads
its inductor compiler to build those wrappers: measured here, 1.6 of the 4.5 CPU-seconds a
rank spends importing ``dist_pretrain.train``. Our model configs switch those fusions off
(``models/megatron_config.py``), so the compiler is loaded for nothing, once per rank, on every
launch. While ``megatron/core/__init__.py`` runs, ``torch.compile`` is replaced by a wrapper
that compiles on the first call with the same arguments: a fusion that is used is compiled as
before; one that is not costs nothing. ``torch.compile`` is restored right after, so no other
code sees the wrapper. ``python -m benchmarks.import_cost`` measures both ways.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import os
import sys

TARGET = "megatron.core"
EAGER_ENV = "DIST_PRETRAIN_EAGER_COMPILE"


def deferred_compile(real_compile):
    """A ``torch.compile`` look-alike that calls ``real_compile`` on the function's first call."""

    def compile_later(model=None, **options):
        if model is None:  # used as ``@torch.compile(**options)``
            return lambda fn: compile_later(fn, **options)
        compiled = None

        @functools.wraps(model)
        def first_call_compiles(*args, **kwargs):
            nonlocal compiled
            if compiled is None:
                compiled = real_compile(model, **options)
            return compiled(*args, **kwargs)

        return first_call_compiles

    return compile_later


class _DeferringLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        import torch

        real = torch.compile
        torch.compile = deferred_compile(real)
        try:
            self.loader.exec_module(module)
        finally:
            torch.compile = real

    def __getattr__(self, name):  # get_resource_reader, is_package, ... of the real loader
        return getattr(self.loader, name)


class _MegatronImportHook(importlib.abc.MetaPathFinder):
    """Finds ``megatron.core`` once, with a loader that defers the compile decorations."""

    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        sys.meta_path.remove(self)  # one shot: the real finders do the lookup
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _DeferringLoader(spec.loader)
        return spec


def install() -> None:
    """Hook the first import of ``megatron.core`` (nothing to do once it is imported, or with
    ``DIST_PRETRAIN_EAGER_COMPILE=1``: megatron's own import-time behaviour)."""
    if os.environ.get(EAGER_ENV) == "1" or TARGET in sys.modules \
            or any(isinstance(f, _MegatronImportHook) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _MegatronImportHook())
