"""Tokens/s and MFU of the demo configs of every family (``configs/<family>/demo.yaml``).

Run as configured (GPT and BERT with TP=2, T5 with PP=2: encoder stage + decoder stage; bf16,
ZeRO-1, 2 processes x 1 thread) on synthetic tokens with the demo tokenizer's vocabulary
size, so the number is the model's and not the data loader's (``benchmarks/data_loader.py``
measures that). Model FLOPs are each family's own formula (``flops_per_sample``).
"""

from __future__ import annotations

DEMO_VOCAB = {"gpt": 50257, "bert": 30522, "t5": 8000}


def cases(smoke: bool, steps: int, warmup: int) -> list[dict]:
    out = []
    for family, vocab in DEMO_VOCAB.items():
        overrides = ["data.synthetic=true", f"train.steps={warmup + steps}", "train.warmup_steps=1", "train.eval_interval=0",
                     "train.log_interval=1000000", "monitor.tensorboard=false", "monitor.peak_tflops=1",
                     "checkpoint.resume=none", "checkpoint.interval=0"]
        if smoke:  # the tiny config in the demo's layout
            config = f"configs/{family}/tiny.yaml"
            overrides += ["parallel.pipeline=2" if family == "t5" else "parallel.tensor=2", "train.precision=bf16"]
        else:
            config = f"configs/{family}/demo.yaml"
            overrides += [f"model.vocab_size={vocab}"]
        out.append({"name": family, "kind": "train", "config": config, "warmup": warmup, "overrides": overrides})
    return out


def table(results: dict, peak_tflops: float) -> str:
    lines = [("| family | config | tokens/step | median step (s) | tokens/s | model TFLOP/s | "
             "MFU vs bf16 GEMM peak |"), "|---|---|---|---|---|---|---|"]
    layout = {"gpt": "TP=2", "bert": "TP=2", "t5": "PP=2"}
    for name, r in results.items():
        lines.append(f"| {name} | demo, {layout[name]}, bf16 | {r['tokens_per_step']} | {r['step_s']:.3f} | {r['tokens_per_s']:,.0f} | "
                     f"{r['model_tflops']:.3f} | {100 * r['model_tflops'] / peak_tflops:.1f}% |")
    return "\n".join(lines)
