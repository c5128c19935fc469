"""Evaluation: our continuation log-likelihoods equal transformers' on the same weights (and so
do acc / acc_norm computed from them), few-shot prompts (seeded, never the item itself,
delimiters), task files and the built-in tasks, intervals. The comparison with
lm-evaluation-harness itself is ``benchmarks/lm_eval_crosscheck.py`` (lm-eval is not a CI
dependency); its output is quoted in the README.
"""

import json
import os
import subprocess
import sys

import pytest

from dist_pretrain.evaluation.prompts import build_context, demonstrations
from dist_pretrain.evaluation.runner import wilson
from dist_pretrain.evaluation.tasks import (
    Task,
    analogies,
    lambada_demo,
    load_task_file,
    polarity,
)
from dist_pretrain.inference.model import InferenceError

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def mc_task(n=6):
    rows = [{"query": f"Q{i}?", "choices": [f"a{i}", f"b{i}"], "gold": i % 2} for i in range(n)]
    return Task(name="t", kind="multiple_choice", test=rows, description="Answer.\n")


def test_few_shot_prompts_are_seeded_and_never_show_the_item():
    task = mc_task()
    assert build_context(task, 2, 0, 1) == "Answer.\nQ2?"
    for i in range(6):
        demos = demonstrations(task, i, 5, seed=7)
        assert task.test[i] not in demos and len(demos) == 5
    ctx = build_context(task, 0, 2, 7)
    assert ctx == build_context(task, 0, 2, 7) and ctx != build_context(task, 0, 2, 8)
    parts = ctx[len("Answer.\n"):].split("\n\n")
    assert len(parts) == 3 and parts[-1] == "Q0?"
    for part in parts[:2]:  # question, target delimiter, gold answer
        i = int(part[1:part.index("?")])
        assert part == f"Q{i}? {task.test[i]['choices'][i % 2]}"
    with pytest.raises(InferenceError, match="6 shots need 6 demonstrations, the pool has 5"):
        build_context(task, 0, 6, 1)


def test_task_files_and_built_in_tasks(tmp_path):
    good = tmp_path / "lm.jsonl"
    good.write_text('{"context": "a b", "continuation": " c"}\n{"context": "d", "continuation": " e"}\n')
    assert load_task_file(good).kind == "lm"
    bad = tmp_path / "mc.jsonl"
    bad.write_text('{"query": "q", "choices": ["x", "y"], "gold": 2}\n')
    with pytest.raises(InferenceError, match="gold=2 is not an index into its 2 choices"):
        load_task_file(bad)
    odd = tmp_path / "odd.jsonl"
    odd.write_text('{"question": "q"}\n')
    with pytest.raises(InferenceError, match="needs the keys of one task kind"):
        load_task_file(odd)
    an = analogies()
    assert len(an.test) == 19544
    assert all(len(r["choices"]) == 4 and len(set(r["choices"])) == 4 for r in an.test)
    assert len({r["query"].split()[0] for r in an.test[:50]}) > 20  # seeded order mixes sections
    pol = polarity()
    assert len(pol.test) == 200 and sum(r["gold"] for r in pol.test) == 100
    lam = lambada_demo()
    assert len(lam.test) >= 100 and len(lam.train) >= 100
    assert all(r["continuation"][0] == " " and r["continuation"][1:].isalpha() for r in lam.test)
    assert not {r["context"] for r in lam.test} & {r["context"] for r in lam.train}


def test_wilson_interval():
    lo, hi = wilson(8, 10)  # textbook value: 0.490 - 0.943
    assert abs(lo - 0.4902) < 1e-3 and abs(hi - 0.9433) < 1e-3
    assert wilson(0, 188)[0] == 0.0 and wilson(188, 188)[1] == 1.0  # never "-0.0000" in the table


def test_log_likelihoods_and_accuracies_equal_transformers(tmp_path):
    """A random GPT-2 imported into our format; our scores against HF's forward on the same
    tokens, and acc / acc_norm against the same rule applied to HF's numbers; exact match
    after whitespace normalisation on answers that are (and one that is not) the greedy text."""
    task = tmp_path / "mc.jsonl"
    rows = [{"query": f"Question {i}: which word comes next after {w}?", "choices": c, "gold": i % len(c)}
            for i, (w, c) in enumerate([("red", ["blue", "green apple", "yellow"]), ("one", ["two", "three"]),
                                         ("north", ["south", "east", "west wind", "up"]), ("cat", ["dog", "a"])])]
    task.write_text("".join(json.dumps(r) + "\n" for r in rows))
    script = f"""
import json, torch
from transformers import GPT2Config, GPT2LMHeadModel
from dist_pretrain.data.tokenizer import load_tokenizer
from dist_pretrain.interop.hf_import import import_hf
from dist_pretrain.inference.model import load_causal_lm
from dist_pretrain.evaluation.scoring import score_requests, split_tokens
from dist_pretrain.evaluation.tasks import load_task_file
from dist_pretrain.evaluation.prompts import build_context
from dist_pretrain.evaluation.runner import evaluate_task
if __name__ == "__main__":
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=50257, n_positions=64, initializer_range=0.2,
                     bos_token_id=50256, eos_token_id=50256)
    hf = GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained("{tmp_path}/hf")
    load_tokenizer("gpt2").tokenizer.save("{tmp_path}/hf/tokenizer.json")
    import_hf("{tmp_path}/hf", "{tmp_path}/ours")
    lm = load_causal_lm("{tmp_path}/ours")
    task = load_task_file("{task}")
    reqs = [(build_context(task, i, 1, 3), " " + c) for i, r in enumerate(task.test) for c in r["choices"]]
    reqs.append(("", "An empty context starts from EOS"))
    ours = [s.loglik for s in score_requests(lm, reqs, batch_size=3)]
    theirs = []
    for ctx, cont in reqs:
        a, b = split_tokens(lm.tokenizer, ctx, cont)
        ids = torch.tensor([a + b])
        lp = torch.log_softmax(hf(input_ids=ids).logits[0, :-1].float(), -1)
        theirs.append(float(lp[len(a) - 1:].gather(-1, ids[0, len(a):, None]).sum()))
    res = {{r["metric"]: r["value"] for r in evaluate_task(lm, task, 1, seed=3, batch_size=3)}}
    # generative: answers that are the greedy text (re-spaced), and one that is not
    from dist_pretrain.evaluation.tasks import Task
    from dist_pretrain.inference import SamplingParams, generate
    qs = ["Question: what is red?\\nAnswer:", "Question: what is blue?\\nAnswer:", "Question: why?\\nAnswer:"]
    said = [c.completion for c in generate(lm, qs, 32, SamplingParams(greedy=True), stop=["\\n"])]
    answers = ["  " + said[0].replace(" ", "   ") + " ", said[1], said[2] + " and more"]
    gen = Task(name="g", kind="generate", test=[{{"context": q, "answer": a}} for q, a in zip(qs, answers)])
    res["exact_match"] = evaluate_task(lm, gen, 0)[0]["value"]
    print(json.dumps([ours, theirs, res]))
"""
    proc = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-5000:]
    ours, theirs, res = json.loads(proc.stdout.splitlines()[-1])
    assert max(abs(a - b) for a, b in zip(ours, theirs)) < 1e-3, (ours, theirs)
    it = iter(theirs)
    acc, acc_norm = [], []
    for r in rows:
        ll = [next(it) for _ in r["choices"]]
        norm = [x / len(c) for x, c in zip(ll, r["choices"])]
        acc.append(ll.index(max(ll)) == r["gold"])
        acc_norm.append(norm.index(max(norm)) == r["gold"])
    assert res == {"acc": sum(acc) / 4, "acc_norm": sum(acc_norm) / 4, "exact_match": 2 / 3}, (res, acc, acc_norm)


def test_data_parallel_evaluate_under_torchrun_equals_one_process(random_gpt2, tmp_path):
    """Two replicas (torchrun, 2 processes) share 7 items of each kind (4 and 3) and gather the
    outcomes: every row equal to one process, item counts included; rank 0 alone prints."""
    _, ours = random_gpt2
    words = ["red", "one", "north", "cat", "sun", "tree", "river"]
    files = {
        "mc.jsonl": [{"query": f"After {w} comes", "choices": [" blue", " two words", " up"], "gold": i % 3}
                     for i, w in enumerate(words)],
        "lm.jsonl": [{"context": f"The {w} is near the", "continuation": " house"} for w in words],
        "gen.jsonl": [{"context": f"Q: {w}?\nA:", "answer": "yes"} for w in words],
    }
    for name, rows in files.items():
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["-m", "dist_pretrain", "evaluate", str(ours), *[a for f in files for a in ("--task", str(tmp_path / f))],
            "--shots", "0,2", "--batch-size", "2"]
    one = subprocess.run([sys.executable, *args, "--output", str(tmp_path / "one.json")], env=ENV,
                         capture_output=True, text=True, timeout=600, check=False)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          *args[1:], "--output", str(tmp_path / "two.json")], env=ENV, capture_output=True, text=True,
                         timeout=600, check=False)
    assert two.returncode == 0, two.stderr[-3000:]
    single, parallel = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert len(single) == (2 + 2 + 1) * 2 and all(r["n"] == 7 for r in single)
    for a, b in zip(single, parallel):
        assert {k: v for k, v in a.items() if k not in ("value", "ci95")} == \
            {k: v for k, v in b.items() if k not in ("value", "ci95")}
        assert b["value"] == pytest.approx(a["value"], rel=1e-6), (a, b)
    assert two.stdout.count("| task | shots |") == 1


def test_quiz_tasks_from_bsdgames():
    """Debian's bsdgames quiz files (installed by .ci/run): patterns resolved to one canonical
    spelling plus every accepted one; multiple choice with distractors of the same section."""
    from dist_pretrain.evaluation.quiz import canonical, spellings
    from dist_pretrain.evaluation.tasks import load_task

    assert canonical("Bras['i|i'|i]lia") == "Brasilia" and canonical("Central Africa{n Rep{ublic}}") == \
        "Central African Republic"
    assert spellings("Vienna|Wien") == ["Vienna", "Wien"] and spellings("{The }Gambia") == ["The Gambia", "Gambia"]
    assert "Port-au-Prince" in spellings("Port[-| ]au[-| ]Prince")
    gen, mc = load_task("quiz"), load_task("quiz-mc")
    assert len(gen.test) == len(mc.test) == 374  # 271 capitals, 103 elements
    assert {"context": "Q: What is the capital of Austria?\nA:", "answer": ["Vienna", "Wien"]} in gen.test
    assert {"context": "Q: Which chemical element has the symbol Fe?\nA:", "answer": ["Iron"]} in gen.test
    for row in mc.test:
        assert len(set(row["choices"])) == 4 and 0 <= row["gold"] < 4
    iron = next(r for r in mc.test if "symbol Fe?" in r["query"])
    elements = {r["answer"][0] for r in gen.test if "chemical element" in r["context"]}
    assert iron["choices"][iron["gold"]] == "Iron" and set(iron["choices"]) <= elements  # distractors: elements
    assert build_context(gen, 0, 1, 5).count("\nA: ") == 1  # a demonstration shows its first accepted answer
