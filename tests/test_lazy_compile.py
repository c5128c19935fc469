"""megatron-core's import-time ``torch.compile`` decorations are deferred to the first call
(``dist_pretrain.lazy_compile``), and nothing else sees the replacement."""

import subprocess
import sys

from dist_pretrain.lazy_compile import deferred_compile


def test_deferred_compile_compiles_once_on_first_call_with_the_options():
    calls = []

    def fake_compile(fn, **options):
        calls.append((fn.__name__, options))
        return lambda *a, **k: ("compiled", fn(*a, **k))

    compile_later = deferred_compile(fake_compile)

    @compile_later
    def double(x):
        """doc kept"""
        return 2 * x

    @compile_later(dynamic=False)
    def triple(x):
        return 3 * x

    assert calls == [] and double.__name__ == "double" and double.__doc__ == "doc kept"
    assert double(2) == ("compiled", 4) and double(3) == ("compiled", 6)
    assert triple(1) == ("compiled", 3)
    assert calls == [("double", {}), ("triple", {"dynamic": False})]


def test_megatron_import_skips_the_compiler_and_restores_torch_compile():
    code = ("import sys, torch\n"
            "real = torch.compile\n"
            "import dist_pretrain.train\n"
            "from megatron.core.fusions.fused_bias_geglu import geglu\n"
            "assert torch.compile is real, 'torch.compile left replaced'\n"
            "assert 'torch._inductor.compile_fx' not in sys.modules, 'inductor loaded at import'\n"
            "assert geglu.__name__ == 'geglu' and geglu.__wrapped__.__module__.startswith('megatron')\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]

