"""Cost and accuracy of the global gradient norm's per-parameter work (1 thread, min of 7 rounds).

    python benchmarks/grad_norm.py [fp32|bf16]

Gradients shaped like the benchmark GPT's (6 x 512, vocab 50304, tied): DeepSpeed 0.19.8's
``get_grad_norm_direct`` (an fp64 copy of each gradient, then ``vector_norm``), the same through
``torch._foreach_norm(dtype=float64)``, a plain fp32 ``vector_norm`` (fast, 0.2-0.4% off), and
``dist_pretrain.zero_step.squared_norm`` (fp32 row norms summed in fp64: what the engine uses).
Prints milliseconds and the relative error of each total against the fp64 one.
"""
import sys
import time

import torch

from dist_pretrain.zero_step import squared_norm

torch.set_num_threads(1)
torch.manual_seed(0)
# the FULL benchmark GPT's parameter shapes (6 x 512, vocab 50304, tied)
h, L, V = 512, 6, 50304
shapes = [(V, h), (256, h)] + L * [(h,), (h,), (3 * h, h), (3 * h,), (h, h), (h,), (h,), (h,), (4 * h, h), (4 * h,), (h, 4 * h), (h,)] + [(h,), (h,)]
dt = torch.bfloat16 if sys.argv[1:] == ["bf16"] else torch.float32
gs = [torch.randn(s).to(dt) for s in shapes]
def orig():
    return torch.stack([torch.linalg.vector_norm(g.to(torch.float64), 2) for g in gs]).pow(2).sum().float()
def fe64():
    return torch.stack(torch._foreach_norm(gs, 2, dtype=torch.float64)).pow(2).sum().float()
def vn32():
    return torch.stack([torch.linalg.vector_norm(g, 2) for g in gs]).double().pow(2).sum().float()
def chunked():
    return torch.stack([squared_norm(g) for g in gs]).sum().float()
best = {}
for r in range(7):
    for f in (orig, fe64, vn32, chunked):
        t = time.perf_counter(); v = f(); t = time.perf_counter() - t
        best[f.__name__] = min(best.get(f.__name__, 9e9), t)
print(dt, {k: round(v * 1000, 1) for k, v in best.items()}, "ms (min of 7, 1 thread)", "rel err vs fp64:", {f.__name__: abs(float(f()) - float(orig())) / float(orig()) for f in (fe64, vn32, chunked)})
