"""Model FLOPs utilisation against this machine's own measured GEMM peak.

The peak is the median throughput of large square matmuls (``peers.run`` times one per
dtype in every round, so the peak and the training steps see the same machine load).
Model FLOPs per token, forward + backward, two ways (both count full s x s attention, as
Megatron does, even for a causal model):

* Megatron (Narayanan et al., SC'21): 72·l·h²·(1 + s/(6h) + V/(12·l·h)) with ffn = 4h,
  in general 3·[l·(2h(h + 2h_kv) + 4sh + 2h² + 4h·ffn) + 2hV]
  (``dist_pretrain.models.flops.lm_flops_per_token``);
* 6N + 12·l·h·s (Kaplan et al.; PaLM appendix B): N = parameters that multiply activations,
  i.e. all but the position embedding (the tied token embedding is the logits matmul).
  It also counts biases and norms as 6 FLOPs per parameter, so it is a little higher.
"""

from __future__ import annotations

from benchmarks.common import GPTSize
from dist_pretrain.models.flops import lm_flops_per_token

MEGATRON_FORMULA = "3·[l·(6h² + 4sh + 2h² + 16h²) + 2hV] = 72·l·h²·(1 + s/(6h) + V/(12·l·h))"
SIX_N_FORMULA = "6N + 12·l·h·s, N = parameters without the position embedding"


def gpt_params(layers: int, hidden: int, ffn: int, vocab: int, seq: int) -> int:
    """Parameters of our GPT (tied embeddings, learned positions, biases, LayerNorm):
    per layer QKV 3h² + 3h, projection h² + h, MLP 2h·ffn + ffn + h, two LayerNorms 4h;
    token embedding V·h, positions s·h, final LayerNorm 2h."""
    per_layer = 4 * hidden * hidden + 2 * hidden * ffn + ffn + 9 * hidden
    return layers * per_layer + vocab * hidden + seq * hidden + 2 * hidden


def megatron_flops_per_token(size: GPTSize) -> float:
    return lm_flops_per_token(size.layers, size.hidden, 4 * size.hidden, size.seq, size.vocab)


def six_n_flops_per_token(size: GPTSize) -> float:
    n = gpt_params(size.layers, size.hidden, 4 * size.hidden, size.vocab, size.seq) - size.seq * size.hidden
    return 6 * n + 12 * size.layers * size.hidden * size.seq


def mfu_rows(peers: dict, size: GPTSize, precisions: list[str]) -> list[dict]:
    """Model TFLOP/s and MFU of every system of a ``peers.run`` result."""
    per_token = {"megatron": megatron_flops_per_token(size), "6N": six_n_flops_per_token(size)}
    rows = []
    for prec in precisions:
        peak = peers["gemm"][prec]["tflops"]
        for name, r in peers[prec].items():
            tflops = r["tokens_per_s"] * per_token["megatron"] / 1e12
            rows.append({"precision": prec, "system": name, "tflops": tflops, "peak": peak,
                         "mfu": tflops / peak,
                         "mfu_6n": r["tokens_per_s"] * per_token["6N"] / 1e12 / peak})
    return rows


def table(rows: list[dict], size: GPTSize, gemm_n: int) -> str:
    mt, sn = megatron_flops_per_token(size), six_n_flops_per_token(size)
    lines = [
        f"FLOPs per token (forward + backward) at l={size.layers}, h={size.hidden}, s={size.seq}, V={size.vocab}:",
        f"Megatron {MEGATRON_FORMULA} = {mt / 1e6:.1f} MFLOP; {SIX_N_FORMULA} = {sn / 1e6:.1f} MFLOP.",
        f"Peak: median {gemm_n}³ matmul, same process and threads, timed in every benchmark round.",
        "",
        "| dtype | system | model TFLOP/s (Megatron) | measured GEMM peak TFLOP/s | MFU (Megatron) | MFU (6N + attention) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['precision']} | {r['system']} | {r['tflops']:.3f} | {r['peak']:.3f} | "
                     f"{100 * r['mfu']:.1f}% | {100 * r['mfu_6n']:.1f}% |")
    return "\n".join(lines)
