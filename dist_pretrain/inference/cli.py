"""``dist-pretrain generate SRC --prompt P ...``: text from a GPT or T5 checkpoint, with KV caches.

One process by default; under torchrun / srun with ``--tensor N`` / ``--pipeline N`` every
rank runs the same steps, the tokens are chosen once on the last stage and shared, and only
rank 0 prints or writes. One prompt is streamed as it is generated; several are batched
(``--batch-size`` at a time) and printed when done. ``--output FILE.jsonl`` writes one row
``{"prompt", "completion", "token_ids"}`` per prompt (``token_ids``: generated ids only; for
T5 without the decoder-start id). A T5 prompt is its input text: a task prefix
(``summarize: ...``) or sentinels (``I <extra_id_0> this``) are written in it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dist_pretrain.errors import UserError, report_user_error
from dist_pretrain.inference.model import InferenceError


def read_prompts(args) -> list[str]:
    """``--prompt`` values, then the lines of ``--prompt-file`` (a ``.jsonl`` file: each row's
    ``prompt`` field, else plain text: one prompt per non-empty line, ``\\n`` escapes kept)."""
    prompts = list(args.prompt or [])
    if args.prompt_file:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise InferenceError(f"--prompt-file {path} does not exist")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            if path.suffix == ".jsonl":
                try:
                    prompts.append(json.loads(line)["prompt"])
                except (ValueError, KeyError, TypeError):
                    raise InferenceError(f"--prompt-file {path} line {n}: not a JSON object with a "
                                         "\"prompt\" field") from None
            else:
                prompts.append(line.replace("\\n", "\n"))
    if not prompts:
        raise InferenceError("no prompt: give --prompt TEXT (repeatable) or --prompt-file FILE")
    return prompts


class Streamer:
    """Prints one row's text as it grows, holding back what may still turn out to be the start
    of a stop string or an incomplete UTF-8 character."""

    def __init__(self, prompt: str, tokenizer, stop: list[str], out=sys.stdout):
        self.prompt, self.tokenizer, self.stop, self.out, self.printed = prompt, tokenizer, stop, out, 0
        self.started = False

    def start(self) -> None:
        if not self.started:  # the prompt, once the first token has come
            self.out.write(self.prompt)
            self.started = True

    def __call__(self, row: int, ids: list[int]) -> None:
        text = self.tokenizer.decode([i for i in ids if i != self.tokenizer.eos_id]).rstrip("\ufffd")
        hold = max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        self.emit(text[:len(text) - hold])

    def emit(self, text: str) -> None:
        self.start()
        if len(text) > self.printed and not any(s in text for s in self.stop if s):
            self.out.write(text[self.printed:])
            self.out.flush()
            self.printed = len(text)

    def finish(self, completion: str) -> None:
        self.start()
        self.out.write(completion[self.printed:] + "\n")
        self.out.flush()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dist-pretrain generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="run directory (newest checkpoint), checkpoint directory or imported model")
    parser.add_argument("--prompt", action="append", help="a prompt (repeat for a batch)")
    parser.add_argument("--prompt-file", help="prompts, one per line (or .jsonl rows with \"prompt\")")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: off)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus: smallest set reaching p (1: off)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--greedy", action="store_true", help="always the most likely token")
    parser.add_argument("--stop", action="append", default=[], help="stop at this string (repeatable)")
    parser.add_argument("--ignore-eos", action="store_true", help="keep going after EOS")
    parser.add_argument("--output", help="write JSONL rows {prompt, completion, token_ids}")
    parser.add_argument("--tokenizer", help="tokenizer (default: the checkpoint's or its training data's)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per batch")
    parser.add_argument("--tensor", type=int, default=1, help="tensor-parallel size (under torchrun)")
    parser.add_argument("--pipeline", type=int, default=1, help="pipeline-parallel size (under torchrun)")
    args = parser.parse_args(argv)
    from dist_pretrain.runtime import discover_launch_env

    rank0 = discover_launch_env().rank == 0
    try:
        return run(args, rank0)
    except (UserError, ValueError) as err:
        return report_user_error(err, rank0)
    finally:
        from dist_pretrain.runtime import shutdown

        if "torch" in sys.modules:
            shutdown()


def run(args, rank0: bool) -> int:
    from dist_pretrain.inference.generate import generate
    from dist_pretrain.inference.model import CausalLM, load_lm
    from dist_pretrain.inference.sampling import SamplingParams

    prompts = read_prompts(args)
    if args.batch_size < 1:
        raise InferenceError(f"--batch-size must be >= 1, got {args.batch_size}")
    sampling = SamplingParams(greedy=args.greedy, temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, seed=args.seed)
    lm = load_lm(args.src, args.tokenizer, args.tensor, args.pipeline)
    # a T5 output is a new text, not a continuation: shown under its input
    seq2seq = not isinstance(lm, CausalLM)
    side, shown = ("right", "\n=> ") if seq2seq else ("left", "")
    rows = []
    for start in range(0, len(prompts), args.batch_size):
        batch = prompts[start:start + args.batch_size]
        streamer = Streamer(batch[0] + shown, lm.tokenizer, args.stop) if len(prompts) == 1 and rank0 else None
        done = generate(lm, batch, args.max_new_tokens, sampling, args.stop, not args.ignore_eos,
                        on_token=streamer)
        for c in done:
            if c.truncated_prompt_tokens and rank0:
                print(f"warning: prompt {len(rows) + 1}: {c.truncated_prompt_tokens} tokens dropped (from the "
                      f"{side}) to fit {lm.max_positions} positions", file=sys.stderr)
            if streamer:
                streamer.finish(c.completion)
            elif rank0:
                print(f"--- [{len(rows) + 1}] ({c.finish_reason}, {len(c.token_ids)} tokens)\n{c.prompt}{shown}{c.completion}")
            rows.append(c.row())
    if args.output and rank0:
        with open(args.output, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        print(f"wrote {len(rows)} rows to {args.output}", file=sys.stderr)
    return 0
