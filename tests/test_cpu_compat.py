"""The CPU-compatibility redirects do what megatron needs, and only without CUDA.

Each check runs in a fresh interpreter: the redirects are process-global by design.
"""

import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_cuda_devices_map_to_cpu():
    out = _run("""
        import torch
        from dist_pretrain import cpu_compat
        assert cpu_compat.enable()
        a = torch.zeros(2, device="cuda")
        b = torch.ones(2, device=torch.device("cuda", 0)).cuda()
        c = torch.empty(3, device=torch.cuda.current_device())
        d = a.to("cuda")
        print(a.device, b.device, c.device, d.device)
        torch.cuda.synchronize(); torch.cuda.empty_cache()
    """)
    assert out.split() == ["cpu"] * 4


def test_rng_redirects_drive_the_cpu_generator():
    _run("""
        import torch
        from dist_pretrain import cpu_compat
        cpu_compat.enable()
        from megatron.core.tensor_parallel import random as r
        torch.cuda.manual_seed(7); a = torch.rand(4)
        torch.manual_seed(7); b = torch.rand(4)          # no recursion through manual_seed_all
        assert torch.equal(a, b)
        state = r._get_cuda_rng_state(); x = torch.rand(3)
        r._set_cuda_rng_state(state); y = torch.rand(3)
        assert torch.equal(x, y)
        s2 = torch.cuda.get_rng_state(); x = torch.rand(2); torch.cuda.set_rng_state(s2)
        assert torch.equal(x, torch.rand(2))
        # megatron's model-parallel RNG tracker forks and restores on CPU
        from megatron.core import parallel_state
        r.model_parallel_cuda_manual_seed(123, tp_rank=0, ep_rank=0, etp_rank=0)
        before = torch.get_rng_state()
        with r.get_cuda_rng_tracker().fork():
            torch.rand(5)
        assert torch.equal(before, torch.get_rng_state())
    """)


def test_type_names_only_inside_megatron_optimizer():
    out = _run("""
        import torch
        from dist_pretrain import cpu_compat
        cpu_compat.enable()
        p = torch.zeros(2)
        print(p.type())
        import megatron.core.optimizer.clip_grads as cg
        ns = {"__name__": "megatron.core.optimizer.fake"}
        exec("def f(t):\\n    return t.type()", ns)
        print(ns["f"](p))
    """)
    assert out.split() == ["torch.FloatTensor", "torch.cuda.FloatTensor"]


def test_nothing_redirected_when_cuda_is_present():
    out = _run("""
        import torch
        torch.cuda.is_available = lambda: True
        original = torch.cuda.current_device
        from dist_pretrain import cpu_compat
        assert cpu_compat.enable() is False
        assert torch.cuda.current_device is original
        from torch.overrides import _get_current_function_mode_stack
        print(len(_get_current_function_mode_stack()))
    """)
    assert out.strip() == "0"


def test_backward_under_the_redirects_takes_every_calling_form():
    """The redirect mode runs backward itself (so custom autograd functions' backward allocate on
    the CPU too): each way of calling backward gives the gradients it gives without the mode."""
    out = _run("""
        import torch
        from dist_pretrain import cpu_compat

        def grads(call):
            x = torch.arange(1.0, 4.0, requires_grad=True)
            y = x * x
            call(y)
            return x.grad.tolist()

        g = torch.tensor([1.0, 0.5, -2.0])
        forms = [lambda y: y.backward(g), lambda y: y.backward(gradient=g),
                 lambda y: torch.autograd.backward(y, g), lambda y: torch.autograd.backward(y, grad_tensors=g),
                 lambda y: y.sum().backward(), lambda y: torch.autograd.backward([y.sum()])]
        plain = [grads(f) for f in forms]
        assert cpu_compat.enable()
        redirected = [grads(f) for f in forms]
        assert plain == redirected, (plain, redirected)
        print(redirected[1])
    """)
    assert out.split() == ["[2.0,", "2.0,", "-12.0]"]
