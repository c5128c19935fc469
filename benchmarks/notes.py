"""The "reading the numbers" section of the report.

Every number in it comes from the run being reported (``res``), and an explanation is written
only where the measurements show the effect it explains: a smoke run or a GPU run gets the
statements its own numbers support, nothing carried over from another machine's report. The
mechanisms named (DeepSpeed and megatron attributes, config defaults) are where the bytes and
seconds live in the code; ``benchmarks/memory.py`` finds the bytes under those names.
"""

from __future__ import annotations

from benchmarks.common import GPTSize
from dist_pretrain.models.flops import lm_flops_per_token


def _fwd_bwd(r: dict) -> float:
    ph = r["phases"]
    return ph.get("forward + backward", ph.get("forward", 0.0) + ph.get("backward", 0.0))


def _update(r: dict) -> float:
    ph = r["phases"]
    return ph.get("engine step (clip + AdamW)", ph.get("clip + AdamW", 0.0))


def throughput(res: dict) -> list[str]:
    p = res["peers"]
    out = []
    for prec in ("fp32", "bf16"):
        if prec not in p:
            continue
        rows = p[prec]
        peer_names = [n for n in rows if not n.startswith("ours")]
        fastest = max(peer_names, key=lambda n: rows[n]["tokens_per_s"])
        ours, best = rows["ours"], rows[fastest]
        ratio = ours["tokens_per_s"] / best["tokens_per_s"]
        out.append(f"- **{prec}**: ours {ours['tokens_per_s']:,.0f} tokens/s = **{ratio:.2f}x** the faster peer "
                   f"({fastest}, {best['tokens_per_s']:,.0f}) — goal >= 1.0x {'met' if ratio >= 1.0 else 'NOT met'}. "
                   f"Forward + backward: ours {_fwd_bwd(ours):.3f} s, {fastest} {_fwd_bwd(best):.3f} s; "
                   f"the update: ours' engine step {_update(ours):.3f} s, {fastest}'s clip + fused AdamW "
                   f"{_update(best):.3f} s.")
        gap_update = _update(ours) - _update(best)
        gap_compute = _fwd_bwd(ours) - _fwd_bwd(best)
        if ratio < 1.0 and gap_update > max(gap_compute, 0.0):
            out.append(f"  - The update accounts for {gap_update:.3f} s of the gap, forward + backward for "
                       f"{gap_compute:+.3f} s. Our engine step is DeepSpeed's ZeRO step: it checks every gradient "
                       "for inf/NaN and computes the norm per parameter (`get_grad_norm_direct`), flattens the "
                       "gradients into the partition (and in bf16 copies them to fp32), runs the fused AdamW on "
                       "the fp32 partition and copies the master weights back to the model.")
    if "fp32" in p and "bf16" in p:
        gemm = p["gemm"]["bf16"]["tflops"] / p["gemm"]["fp32"]["tflops"]
        step = p["bf16"]["ours"]["tokens_per_s"] / p["fp32"]["ours"]["tokens_per_s"]
        line = f"- bf16 GEMMs run {gemm:.2f}x faster than fp32 here; our step gains {step:.2f}x"
        if step < gemm:
            line += " (the update, norms, copies, softmax and LayerNorm do not speed up with the GEMMs)"
        out.append(line + ".")
    profile = p.get("profile", {})
    ours_casts = profile.get("bf16 ours", {}).get("copies and casts")
    peer_casts = {n: profile.get(f"bf16 {n}", {}).get("copies and casts") for n in ("HF transformers", "nanoGPT")}
    peer_casts = {n: v for n, v in peer_casts.items() if v is not None}
    if ours_casts is not None and peer_casts:
        out.append("- Copies and casts in one profiled bf16 step: ours " f"{ours_casts:.3f} s, "
                   + ", ".join(f"{n} {v:.3f} s" for n, v in peer_casts.items())
                   + ". Our weights are bf16 already (DeepSpeed bf16); the peers' autocast re-casts fp32 weights "
                   "in every forward; ours copy gradients into the fp32 partition and weights back at the step.")
    return out


def mfu(res: dict, size: GPTSize) -> list[str]:
    rows = {(r["precision"], r["system"]): r for r in res["mfu"]}
    n = res["peers"].get("gemm", {}).get("bf16", res["peers"].get("gemm", {}).get("fp32", {})).get("n")
    out = []
    for prec, goal in (("bf16", 0.35), ("fp32", None)):
        r = rows.get((prec, "ours"))
        if r:
            out.append(f"- {prec}: ours reaches {100 * r['mfu']:.1f}% of the measured {prec} GEMM peak "
                       f"({r['peak']:.3f} TFLOP/s)" + (f"; goal {100 * goal:.0f}% {'met' if r['mfu'] >= goal else 'NOT met'}"
                                                       if goal else "") + ".")
    if any(r["mfu"] < 0.9 for r in rows.values()):
        out.append(f"- The formula counts matmuls only; the update, the norms, the softmax over the {size.vocab}-word "
                   f"vocabulary and the LayerNorms are work it does not count, and the {size.hidden}-wide layer "
                   f"GEMMs are smaller than the {n}³ one that sets the peak.")
    return out


def _bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _row(memory: list[dict], name: str) -> dict | None:
    return next((r for r in memory if r["name"] == name), None)


def _per_param(row: dict, part: str, where: str | None = None) -> float:
    if where is None:
        return row["measured"][part] / row["psi"]
    return sum(v for k, v in row["where"][part].items() if where in k) / row["psi"]


def memory_notes(memory: list[dict]) -> list[str]:
    """Each known gap between measured model-state bytes and the ZeRO paper, where this run shows it."""
    out = []
    for prec in ("fp32", "bf16"):
        zero0 = _row(memory, f"{prec} ZeRO-0")
        if zero0 is None:
            continue
        grads, want = _per_param(zero0, "grads"), zero0["theory"]["grads"] / zero0["psi"]
        if grads > 1.05 * want:
            out.append(f"- **ZeRO-0 {prec}: gradients {grads:.2f} bytes/param where the paper counts {want:.2f}.** "
                       "megatron-core's DDP accumulates and all-reduces gradients in fp32 "
                       "(`grad_reduce_in_fp32=True` in `dist_pretrain/megatron_engine.py`, for exact reductions).")
        elif abs(zero0["ratio"] - 1.0) < 0.01:
            out.append(f"- ZeRO-0 {prec} matches the paper ({zero0['ratio']:.3f}x).")
    fp32_z1 = _row(memory, "fp32 ZeRO-1")
    if fp32_z1 is not None:
        master = _per_param(fp32_z1, "optimizer", "fp32")
        if master > 0.1:
            out.append(f"- **DeepSpeed keeps an fp32 master partition in fp32 training too**: {master:.2f} bytes/param "
                       "under `single_partition_of_fp32_groups` / `fp32_partitioned_groups_flat`, on top of the "
                       "moments the paper counts for an fp32 optimizer whose weights are the master.")
    for row in memory:
        if "ZeRO-0" in row["name"] or "released" in row["name"]:
            continue
        reduced = sum(_per_param(row, "grads", k) for k in ("averaged_gradients", "grad_partitions_flat_buffer"))
        fp32_copy = _per_param(row, "grads", "single_partition_of_fp32_groups")
        if reduced > 0 and fp32_copy > 0:
            out.append(f"- **{row['name']}: two gradient copies at the step**: the reduced partition "
                       f"({reduced:.2f} bytes/param under `averaged_gradients` / `grad_partitions_flat_buffer`) "
                       f"and the fp32 copy made for AdamW ({fp32_copy:.2f} bytes/param, `.grad` of the fp32 "
                       "partition).")
    for prec in ("fp32", "bf16"):
        kept, released = _row(memory, f"{prec} ZeRO-3"), _row(memory, f"{prec} ZeRO-3, params released")
        if kept and released and _per_param(kept, "params") > 1.2 * _per_param(released, "params"):
            out.append(f"- **ZeRO-3 {prec} keeps parameters gathered by default**: {_per_param(kept, 'params'):.2f} "
                       f"bytes/param of parameters, {_per_param(released, 'params'):.2f} with "
                       "`stage3_max_live_parameters` and `stage3_max_reuse_distance` at 0 (the 'params released' "
                       "row); their defaults (1e9) leave a model this small gathered after its first use.")
    for row in memory:
        if row.get("stated", 0) > 0:
            out.append(f"- {row['name']}: {row['stated'] / row['psi']:.2f} bytes/param of stated buffers: the "
                       "gathered parameters DeepSpeed may keep (at least the largest parameter, gathered whole; "
                       "here the tied embedding) and that parameter's full gradient before its reduce-scatter.")
    ok = [row for row in memory if "ZeRO-0" not in row["name"]]
    if ok:
        worst = max(ok, key=lambda r: r.get("ratio_stated", r["ratio"]))
        out.append(f"- ZeRO-1/2/3: largest measured / (paper + stated buffers) is "
                   f"{worst.get('ratio_stated', worst['ratio']):.3f} ({worst['name']}; the goal is <= 1.05).")
    buffers = {row["name"]: row["buffers"] for row in memory if row.get("buffers", 0) >= 2**20}
    if buffers:
        shown = ", ".join(f"{name} {_bytes(b)}" for name, b in buffers.items())
        out.append(f"- **Reduction buffers are sized by config, not by the model** ({shown} per rank): "
                   "DeepSpeed's `reduce_bucket_size` (5e8 elements by default). Set a smaller one in "
                   "`deepspeed.config` for small models; the paper's formulas and the ratios above leave them out.")
    return out


def activation_notes(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        prec = r["precision"]
        ratio = r["per_layer"] / r["ours_formula"]
        if abs(ratio - 1.0) <= 0.01:
            out.append(f"- **{prec}, no dropout, fused SDPA: a layer keeps {r['per_layer'] / 2**20:.2f} MiB, "
                       f"{ratio:.3f}x our count of 16sbh values + the attention log-sum-exp**: LayerNorm inputs, "
                       "QKV input, Q K V, attention output, MLP input, GeLU input and output. Korthikanti's "
                       f"34sbh + 5as²b ({r['korthikanti'] / 2**20:.2f} MiB) counts dropout masks and the unfused "
                       "attention's s² tensors.")
        else:
            out.append(f"- {prec}: a layer keeps {r['per_layer'] / 2**20:.2f} MiB, {ratio:.3f}x our 16sbh count: "
                       "something beyond the counted tensors is saved for the backward (see the table).")
        dropout = r.get("per_layer_dropout")
        if dropout and dropout > r["korthikanti"]:
            out.append(f"- **{prec} with dropout 0.1: {dropout / 2**20:.2f} MiB per layer, above Korthikanti's "
                       f"{r['korthikanti'] / 2**20:.2f} MiB**: PyTorch's CPU SDPA has no fused kernel with dropout, "
                       "and its math fallback keeps the softmax, the dropout mask and the dropped probabilities as "
                       "s² tensors.")
        if r["checkpoint_per_layer"] == r["checkpoint_formula"]:
            out.append(f"- {prec}, full recomputation: {r['checkpoint_per_layer'] / 2**20:.2f} MiB per layer, exactly "
                       f"each layer's input (sbh values); outside the layer stack {r['outside'] / 2**20:.1f} MiB "
                       "(embedding output, logits and the loss's fp32 softmax) that recomputation does not touch.")
    return out


def scaling(res: dict, size: GPTSize) -> list[str]:
    s = res["scaling"]
    half = size.layers // 2
    layers = lm_flops_per_token(half, size.hidden, 4 * size.hidden, size.seq, 0)
    last = lm_flops_per_token(half, size.hidden, 4 * size.hidden, size.seq, size.vocab)
    base, dp = s["1 process x 2 threads"]["tokens_per_s"], s["DP=2 (ZeRO-1)"]["tokens_per_s"]
    tp, pp = s["TP=2"]["tokens_per_s"], s["PP=2"]["tokens_per_s"]
    if dp >= base:
        dp_line = (f"- DP=2 (2 processes x 1 thread) gives {dp / base:.2f}x the tokens/s of 1 process x 2 threads: "
                   "each rank runs whole GEMMs on one core, at the price of one gradient all-reduce per step over "
                   "gloo on loopback.")
    else:
        dp_line = (f"- DP=2 (2 processes x 1 thread) gives {dp / base:.2f}x the tokens/s of 1 process x 2 threads: "
                   "DP pays a gradient all-reduce of the whole model per step over gloo (plus a ZeRO-1 all-gather "
                   "of the updated weights) that threads do not.")
    micro = s["PP=2"].get("tokens_per_step", 0) // (size.seq * size.micro_batch) or None
    bubble = f"(p-1)/(m+p-1) = {100 / (micro + 1):.0f}% of the step with m = {micro} micro-batches" if micro else ""
    return [
        dp_line,
        (f"- TP=2 runs at {tp / dp:.2f}x DP=2: every layer does two synchronous all-reduces of the s·b·h "
         "activations forward and two backward, and each core gets half-width GEMMs; in exchange each rank holds "
         "half the weights, gradients and optimizer state."),
        (f"- PP=2 runs at {pp / dp:.2f}x DP=2: 1F1B has a bubble {bubble}, and the last stage also runs the "
         f"{size.vocab}-wide logits and the loss, {last / layers:.1f}x the FLOPs of the first stage's {half} "
         "layers (Megatron's formula)."),
    ]


def notes(res: dict, size: GPTSize) -> str:
    lines = ["## Reading the numbers", ""]
    if "peers" in res:
        lines += ["Throughput:", ""] + throughput(res) + ["", "MFU:", ""] + mfu(res, size) + [""]
    if "activations" in res:
        lines += ["Activation memory:", ""] + activation_notes(res["activations"]) + [""]
    if "scaling" in res:
        lines += ["Scaling:", ""] + scaling(res, size) + [""]
    if "memory" in res:
        lines += ["Model-state memory (the gaps to the ZeRO paper):", ""] + memory_notes(res["memory"]) + [""]
    return "\n".join(lines)
