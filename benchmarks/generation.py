"""Generation speed: ``dist_pretrain.inference.generate`` against transformers' ``generate`` on
the same weights, prefill and decode tokens/s at batch 1 and 8.

    python benchmarks/generation.py [--src CHECKPOINT --hf ITS_EXPORT] [--prompt-tokens 128] [--new 64]

Without ``--src`` a random GPT of the demo's shape (4 x 256, 8 heads, GPT-2 vocabulary, 256
positions) is made with transformers and imported. Both sides decode greedily with a KV cache,
in fp32, on the CPU (or the GPU when there is one), ignoring EOS so every row makes ``--new``
tokens. Prefill time is the time to the first new token; decode tokens/s counts the rest.
Each measurement is the median of ``--repeat`` runs; the two sides alternate.

Wall time is what a user waits; on a shared machine it mostly measures the other jobs, so
the table also gives the rates from the process's CPU time (all its threads, counted only
while they run): with ``--threads 1`` that is the work each side does per token, whatever
else runs on the machine. The load average is printed with the table.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def make_model(work: Path) -> tuple[Path, Path]:
    from transformers import GPT2Config, GPT2LMHeadModel

    from dist_pretrain.data.tokenizer import load_tokenizer

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=4, n_embd=256, n_head=8, vocab_size=50257, n_positions=256, bos_token_id=50256,
                     eos_token_id=50256)
    GPT2LMHeadModel(cfg).save_pretrained(work / "hf")
    load_tokenizer("gpt2").tokenizer.save(str(work / "hf/tokenizer.json"))
    subprocess.run([sys.executable, "-m", "dist_pretrain", "import", str(work / "hf"), "--output", str(work / "ours")],
                   check=True, capture_output=True)
    return work / "ours", work / "hf"


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of ``fn()``."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src")
    parser.add_argument("--hf")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    from dist_pretrain.inference import SamplingParams, generate, load_causal_lm

    src, hf_dir = (Path(args.src), Path(args.hf)) if args.src else make_model(Path(tempfile.mkdtemp()))
    lm = load_causal_lm(src)
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).to(lm.device).eval()
    greedy = SamplingParams(greedy=True)
    text = " ".join(["The history of the city goes back to the Roman period, when a fort stood by the river."] * 40)
    prompt_ids = lm.tokenizer.encode_batch([text])[0][:args.prompt_tokens]
    prompt = lm.tokenizer.decode(prompt_ids)
    import os

    print(f"device {lm.device}, torch threads {torch.get_num_threads()}, prompt {len(prompt_ids)} tokens, "
          f"{args.new} new tokens, fp32, greedy, KV cache on both sides, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
    print("| batch | side | prefill tokens/s | decode tokens/s | ms per decode step | decode tokens/CPU-s | "
          "CPU-ms per decode step |")
    print("|---|---|---|---|---|---|---|")
    for batch in (1, 8):
        prompts = [prompt] * batch
        ids = torch.tensor([prompt_ids] * batch, device=lm.device)

        def ours(n, prompts=prompts):
            generate(lm, prompts, n, greedy, stop_at_eos=False)

        def theirs(n, ids=ids):
            with torch.no_grad():
                hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                            min_new_tokens=n, pad_token_id=lm.tokenizer.eos_id)

        times: dict[str, dict[int, list]] = {"ours": {1: [], args.new: []}, "HF": {1: [], args.new: []}}
        for _ in range(args.repeat):
            for side, fn in (("ours", ours), ("HF", theirs)):
                for n in (1, args.new):
                    times[side][n].append(timed(lambda fn=fn, n=n: fn(n)))
        rates = {}
        for side in ("ours", "HF"):
            first, total = (statistics.median(t[0] for t in times[side][n]) for n in (1, args.new))
            first_cpu, total_cpu = (statistics.median(t[1] for t in times[side][n]) for n in (1, args.new))
            decode, decode_cpu = max(total - first, 1e-9), max(total_cpu - first_cpu, 1e-9)
            rates[side] = batch * (args.new - 1) / decode_cpu
            print(f"| {batch} | {side} | {batch * len(prompt_ids) / first:,.0f} | "
                  f"{batch * (args.new - 1) / decode:,.0f} | {1000 * decode / (args.new - 1):.2f} | "
                  f"{rates[side]:,.0f} | {1000 * decode_cpu / (args.new - 1):.2f} |")
        print(f"| {batch} | ours / HF (decode, CPU time) | | | | {rates['ours'] / rates['HF']:.2f}x | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
