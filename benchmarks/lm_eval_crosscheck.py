"""Cross-check ``dist-pretrain evaluate`` against lm-evaluation-harness on multiple choice.

    pip install lm-eval==0.4.13 accelerate torch==2.13.0 transformers==5.24.0   # not a CI dependency
    python benchmarks/lm_eval_crosscheck.py [--src CHECKPOINT --hf ITS_EXPORT] [--limit 200] [--shots 0,1,5]

Without ``--src`` it makes a random GPT-2-style model (2 x 64, GPT-2 vocabulary) in a
temporary directory, imports it into our checkpoint format and exports that back with
``dist-pretrain export`` (so lm-eval reads what our export writes). Each task (gensim's
analogies and polarity sentences, as llm-foundry ``{query, choices, gold}`` JSONL) is given to
lm-eval as a local YAML task (``output_type: multiple_choice``) and to ``dist-pretrain
evaluate`` as the same file, at each shot count (lm-eval's ``--num_fewshot``, its default
few-shot seed 1234 = our ``--seed``; our demonstrations follow its sampler, see
``dist_pretrain/evaluation/prompts.py``). ``fewshot_split: test`` makes lm-eval exclude the item
from its own demonstrations, as we always do: without it lm-eval samples from the test docs
without excluding the item. Prints acc / acc_norm from both and the largest
difference; exits 1 if any differs.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
fewshot_split: test
output_type: multiple_choice
doc_to_text: "{{{{query}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def sh(*args: str, env=None) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(args[:4])} ... failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout


def make_model(work: Path) -> tuple[Path, Path]:
    sh(sys.executable, "-c", f"""
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from dist_pretrain.data.tokenizer import load_tokenizer
torch.manual_seed(0)
cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=50257, n_positions=128, initializer_range=0.2,
                 bos_token_id=50256, eos_token_id=50256)
GPT2LMHeadModel(cfg).save_pretrained("{work}/random")
load_tokenizer("gpt2").tokenizer.save("{work}/random/tokenizer.json")
""")
    sh(sys.executable, "-m", "dist_pretrain", "import", f"{work}/random", "--output", f"{work}/ours")
    sh(sys.executable, "-m", "dist_pretrain", "export", f"{work}/ours", "--output", f"{work}/exported")
    return work / "ours", work / "exported"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", help="our checkpoint (default: a random model made here)")
    parser.add_argument("--hf", help="its export (dist-pretrain export SRC --output HF)")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--shots", default="0,1,5")
    args = parser.parse_args()
    shots = [int(k) for k in args.shots.split(",")]
    work = Path(tempfile.mkdtemp(prefix="lm-eval-crosscheck-"))
    src, hf = (Path(args.src), Path(args.hf)) if args.src else make_model(work)
    from dist_pretrain.evaluation.tasks import analogies, polarity

    (work / "tasks").mkdir()
    names = []
    for task in (analogies(), polarity()):
        path = work / f"{task.name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in task.test[:args.limit]))
        name = f"crosscheck_{task.name}"
        (work / "tasks" / f"{name}.yaml").write_text(YAML.format(name=name, path=path))
        names.append((task.name, name, path))
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    lm_eval = Path(sys.executable).with_name("lm_eval")
    theirs = {}
    for k in shots:
        out = work / f"lm_eval_out_{k}"
        sh(str(lm_eval), "--model", "hf", "--model_args", f"pretrained={hf},dtype=float32", "--tasks",
           ",".join(n for _, n, _ in names), "--include_path", str(work / "tasks"), "--device", "cpu",
           "--batch_size", "16", "--num_fewshot", str(k), "--output_path", str(out), env=env)
        theirs[k] = json.loads(Path(max(glob.glob(str(out / "**/results_*.json"), recursive=True))).read_text())["results"]
    ours_out = work / "ours.json"
    sh(sys.executable, "-m", "dist_pretrain", "evaluate", str(src), *[a for _, _, p in names for a in ("--task", str(p))],
       "--shots", ",".join(map(str, shots)), "--output", str(ours_out))
    ours = {(r["task"], r["shots"], r["metric"]): r for r in json.loads(ours_out.read_text())}
    print("| task | shots | metric | n | dist-pretrain evaluate | lm-eval 0.4.13 (hf, export) | difference |")
    print("|---|---|---|---|---|---|---|")
    worst = 0.0
    for task, name, _ in names:
        for k in shots:
            for metric in ("acc", "acc_norm"):
                row = ours[(task, k, metric)]
                a, b = row["value"], theirs[k][name][f"{metric},none"]
                worst = max(worst, abs(a - b))
                print(f"| {task} | {k} | {metric} | {row['n']} | {a:.4f} | {b:.4f} | {a - b:+.4f} |")
    print(f"largest difference: {worst:.4g} (work directory {work})")
    return 0 if worst == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
