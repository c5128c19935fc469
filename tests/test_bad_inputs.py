"""Bad inputs as a new user makes them, through the real launchers: one clean error, exit 2.

Every case runs ``launchers/torchrun.sh`` (its pre-flight ``dist-pretrain check`` at the
world size it is about to start) and asserts: exit status 2, the message names the key or
file, no ``Traceback`` anywhere in the output, nothing written to an existing run
directory, and well under 60 s. A few go through ``launchers/mpirun.sh`` here and
``slurm/pretrain.sbatch`` in ``test_slurm.py``. Problems that only show once the process
groups exist (a shard that goes bad mid-run with ``data.on_corrupt=fail``, a checkpoint
that fails to verify when the pre-flight was bypassed) are printed once, by rank 0, and
no rank hangs.
"""
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from launch import demo_shards, run_group

ROOT = Path(__file__).resolve().parents[1]
GPT, BERT, T5 = (str(ROOT / f"configs/{f}/tiny.yaml") for f in ("gpt", "bert", "t5"))
QUICK = ["monitor.peak_tflops=1", "monitor.tensorboard=false"]
ENV = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
LIMIT_S = 60


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Real GPT-2 shards (seq 64, 64 samples a shard), broken copies of them, a real
    checkpoint, and an existing run directory that no failed launch may touch."""
    root = tmp_path_factory.mktemp("bad_inputs")
    good = demo_shards(root, samples_per_shard=64)
    manifest = json.loads((good / "manifest.json").read_text())
    d = {"good": good, "root": root}

    def variant(name, edit=None, files=None):
        path = root / name
        shutil.copytree(good, path)
        if edit is not None:
            m = json.loads(json.dumps(manifest))
            edit(m)
            (path / "manifest.json").write_text(json.dumps(m))
        if files is not None:
            files(path)
        d[name] = path

    variant("garbage", files=lambda p: (p / "manifest.json").write_text('{"splits": {"train": [1, 2,,'))
    variant("array", files=lambda p: (p / "manifest.json").write_text("[1, 2, 3]"))
    variant("nokey", edit=lambda m: m.pop("tokenizer"))
    variant("noshardkey", edit=lambda m: m["splits"]["train"]["shards"][3].pop("samples"))
    train0 = manifest["splits"]["train"]["shards"][0]["path"]
    valid0 = manifest["splits"]["valid"]["shards"][0]["path"]
    variant("missing", files=lambda p: (p / train0).unlink())
    variant("truncated", files=lambda p: (p / train0).write_bytes((p / train0).read_bytes()[:3000]))
    variant("badvalid", files=lambda p: (p / valid0).write_bytes((p / valid0).read_bytes()[:3000]))
    variant("novalid", edit=lambda m: m["splits"]["valid"].update(shards=[], samples=0))
    variant("tinyvalid", edit=lambda m: m["splits"]["valid"].update(
        shards=m["splits"]["valid"]["shards"][-1:], samples=m["splits"]["valid"]["shards"][-1]["samples"]))
    variant("seq32", edit=lambda m: m.update(seq_len=32))
    variant("othertok", edit=lambda m: m["tokenizer"].update(name="bert", vocab_hash="0" * 16))
    (root / "empty").mkdir()
    (root / "afile").write_text("not a directory\n")
    (root / "ds_garbage.json").write_text("{train_batch_size: 8")
    (root / "ds_contradicts.json").write_text(json.dumps({"train_micro_batch_size_per_gpu": 3}))
    (root / "syntax.yaml").write_text("family: gpt\ntrain: {steps: [1, 2}\n")
    (root / "list.yaml").write_text("- family: gpt\n")

    # a real checkpoint (tiny GPT, two steps, the final save), a corrupt copy and its run dir
    ckpt_run = root / "ckpt_run"
    r = run_group(["bash", str(ROOT / "launchers/torchrun.sh"), GPT, f"run_dir={ckpt_run}", "train.steps=2",
                   *QUICK], timeout=180, env=ENV)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"final checkpoint: {ckpt_run}/checkpoints/step-00000002" in r.stdout
    d["ckpt_run"] = ckpt_run
    d["ckpt"] = ckpt_run / "checkpoints/step-00000002"
    corrupt = root / "corrupt_ckpt"
    shutil.copytree(d["ckpt"], corrupt)
    victim = max((p for p in corrupt.rglob("*.distcp")), key=lambda p: p.stat().st_size)
    victim.write_bytes(b"\0" * victim.stat().st_size)
    d["corrupt_ckpt"] = corrupt

    existing = root / "existing_run"
    (existing / "checkpoints").mkdir(parents=True)
    (existing / "history.jsonl").write_text('{"step": 1}\n')
    d["existing"] = existing
    return d


def snapshot(path: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in [path, *path.rglob("*")]}


# (id, config, args with {placeholders}, fragments the error must hold)
CASES = [
    # ---- parallel layout and world size
    ("tp-not-dividing-world", GPT, ["parallel.tensor=2", "--nproc", "3"],
     ["world size 3 is not divisible by parallel.tensor=2"]),
    ("tp-above-heads", GPT, ["parallel.tensor=8", "--nproc", "8"],
     ["model.num_attention_heads=4 is not divisible by parallel.tensor=8"]),
    ("zero3-with-pp", GPT, ["parallel.pipeline=2", "parallel.zero_stage=3", "--nproc", "2"],
     ["parallel.zero_stage=3 with parallel.pipeline=2"]),
    ("zero-stage-4", GPT, ["parallel.zero_stage=4"], ["parallel.zero_stage=4"]),
    ("vpp-without-pp", GPT, ["parallel.virtual_pipeline=2"], ["parallel.virtual_pipeline=2 needs parallel.pipeline > 1"]),
    ("layers-vs-pp", GPT, ["parallel.pipeline=3", "--nproc", "3"], ["model.num_layers=4 is not divisible by parallel.pipeline=3"]),
    ("offload-params-zero1", GPT, ["parallel.offload_params=true"], ["parallel.offload_params=true needs parallel.zero_stage=3"]),
    ("offload-optimizer-zero0", GPT, ["parallel.offload_optimizer=true", "parallel.zero_stage=0"],
     ["parallel.offload_optimizer=true needs parallel.zero_stage >= 1"]),
    ("t5-pp4", T5, ["parallel.pipeline=4", "--nproc", "4"], ["model.arch=t5 with parallel.pipeline=4"]),
    ("nproc-zero", GPT, ["--nproc", "0"], ["parallel.nproc=0"]),
    ("nproc-not-a-number", GPT, ["--nproc", "two"], ["parallel.nproc='two'"]),
    ("nproc-without-value", GPT, ["--nproc"], ["--nproc needs a process count"]),
    # ---- batch sizes and schedule
    ("global-batch-not-divisible", GPT, ["train.global_batch_size=7"], ["train.global_batch_size=7 is not divisible"]),
    ("global-batch-vs-dp", GPT, ["train.global_batch_size=6", "--nproc", "2"],
     ["train.global_batch_size=6 is not divisible by train.micro_batch_size=2 x data-parallel size 2"]),
    ("warmup-above-steps", GPT, ["train.warmup_steps=200"], ["train.warmup_steps=200 exceeds train.steps=6"]),
    ("min-lr-above-lr", GPT, ["train.min_lr=0.1"], ["train.min_lr=0.1 exceeds train.lr=0.001"]),
    ("negative-lr", GPT, ["train.lr=-1"], ["train.lr=-1"]),
    ("steps-not-a-number", GPT, ["train.steps=many"], ["train.steps='many'"]),
    ("precision-fp16", GPT, ["train.precision=fp16"], ["train.precision='fp16'"]),
    ("eval-steps-zero", GPT, ["train.eval_steps=0"], ["train.eval_steps=0", "or all"]),
    ("eval-all-synthetic", GPT, ["train.eval_steps=all", "train.eval_interval=2"],
     ["train.eval_steps=all needs a validation split"]),
    ("recompute-selective", GPT, ["model.recompute=selective"], ["model.recompute=selective"]),
    ("heads-vs-hidden", GPT, ["model.num_attention_heads=3"],
     ["model.hidden_size=64 is not divisible by model.num_attention_heads=3"]),
    ("signal-sigkill", GPT, ["checkpoint.signals=[SIGKILL]"], ["checkpoint.signals"]),
    # ---- keys, overrides, the YAML file
    ("unknown-key", GPT, ["train.bogus=1"], ["unknown key train.bogus", "valid keys here"]),
    ("unknown-section", GPT, ["optimizer.lr=1"], ["unknown key optimizer"]),
    ("override-without-equals", GPT, ["train.steps"], ["'train.steps' is not of the form key.sub=value"]),
    ("override-bad-yaml", GPT, ["train.steps=[1"], ["override 'train.steps=[1'", "not valid YAML"]),
    ("override-into-a-value", GPT, ["seed.x=1"], ["seed is a value, not a section"]),
    ("config-missing", "{root}/nope.yaml", [], ["config file", "nope.yaml' does not exist"]),
    ("config-yaml-syntax", "{root}/syntax.yaml", [], ["syntax.yaml' is not valid YAML", "line 2"]),
    ("config-not-a-mapping", "{root}/list.yaml", [], ["list.yaml' must hold a mapping"]),
    ("config-is-a-directory", "{root}/empty", [], ["empty' is a directory; give a YAML file"]),
    # ---- DeepSpeed JSON
    ("deepspeed-missing", GPT, ["deepspeed.config={root}/nope.json"], ["deepspeed.config=", "nope.json' does not exist"]),
    ("deepspeed-garbage", GPT, ["deepspeed.config={root}/ds_garbage.json"], ["ds_garbage.json' is not valid JSON"]),
    ("deepspeed-contradicts", GPT, ["deepspeed.config={root}/ds_contradicts.json"],
     ["deepspeed.config sets train_micro_batch_size_per_gpu=3 but train.micro_batch_size"]),
    ("deepspeed-with-zero0", GPT, ["deepspeed.config={root}/ds_contradicts.json", "parallel.zero_stage=0"],
     ["deepspeed.config is set but parallel.zero_stage=0"]),
    # ---- data
    ("data-path-unset", GPT, ["data.synthetic=false"], ["data.path is not set"]),
    ("data-path-and-blend", GPT, ["data.synthetic=false", "data.path={good}", "data.blend=[{{path: {good}, weight: 1}}]"],
     ["data.path and data.blend are both set"]),
    ("data-dir-missing", GPT, ["data.synthetic=false", "data.path={root}/nope"],
     ["data directory", "nope' does not exist", "dist-pretrain preprocess"]),
    ("data-no-manifest", GPT, ["data.synthetic=false", "data.path={root}/empty"], ["empty/manifest.json not found"]),
    ("manifest-garbage", GPT, ["data.synthetic=false", "data.path={garbage}"],
     ["garbage/manifest.json is not valid JSON", "line 1 column"]),
    ("manifest-array", GPT, ["data.synthetic=false", "data.path={array}"], ["array/manifest.json holds a JSON list"]),
    ("manifest-lacks-key", GPT, ["data.synthetic=false", "data.path={nokey}"], ["nokey/manifest.json lacks key tokenizer"]),
    ("manifest-shard-lacks-key", GPT, ["data.synthetic=false", "data.path={noshardkey}"],
     ["noshardkey/manifest.json lacks key splits.train.shards[3].samples"]),
    ("shard-missing", GPT, ["data.synthetic=false", "data.path={missing}", "model.vocab_size=null", "model.seq_length=64"],
     ["1 shard(s) listed in", "missing/manifest.json are missing"]),
    ("shard-truncated-fail", GPT, ["data.synthetic=false", "data.path={truncated}", "model.vocab_size=null",
                                   "model.seq_length=64", "data.on_corrupt=fail"],
     ["data.on_corrupt=fail and 1 shard(s) of", "3000 bytes, manifest says"]),
    ("seq-length-vs-shards", GPT, ["data.synthetic=false", "data.path={good}", "model.vocab_size=null"],
     ["model.seq_length=32 but data.path=", "--seq-len 64; set model.seq_length=64"]),
    ("bert-on-lm-data", BERT, ["data.synthetic=false", "data.path={good}", "model.vocab_size=null"],
     ["task.name=masked_lm (model.arch=bert) needs data preprocessed with --format docs"]),
    ("blend-seq-len-differs", GPT, ["data.synthetic=false", "data.blend=[{{path: {good}, weight: 1}}, {{path: {seq32}, weight: 1}}]",
                                    "model.vocab_size=null", "model.seq_length=64"],
     ["seq32 has seq_len 32", "blended datasets must share tokenizer and sequence length"]),
    ("valid-shard-truncated", GPT, ["data.synthetic=false", "data.path={badvalid}", "model.vocab_size=null",
                                    "model.seq_length=64", "train.eval_interval=2"],
     ["1 validation shard(s) of", "badvalid"]),
    ("no-valid-split", GPT, ["data.synthetic=false", "data.path={novalid}", "model.vocab_size=null",
                             "model.seq_length=64", "train.eval_interval=2"],
     ["train.eval_interval=2 needs validation data", "no 'valid' shards"]),
    ("eval-steps-too-many", GPT, ["data.synthetic=false", "data.path={good}", "model.vocab_size=null",
                                  "model.seq_length=64", "train.eval_interval=2", "train.eval_steps=100"],
     ["train.eval_steps=100 needs 100 x train.global_batch_size=8 = 800 validation samples", "use train.eval_steps=65"]),
    ("valid-smaller-than-a-batch", GPT, ["data.synthetic=false", "data.path={tinyvalid}", "model.vocab_size=null",
                                         "model.seq_length=64", "train.eval_interval=2", "train.global_batch_size=16",
                                         "--nproc", "2"],
     ["fewer than one global batch (train.global_batch_size=16)", "tinyvalid"]),
    ("valid-path-other-tokenizer", GPT, ["data.synthetic=false", "data.path={good}", "data.valid_path={othertok}",
                                         "model.vocab_size=null", "model.seq_length=64", "train.eval_interval=2"],
     ["data.valid_path=", "validation data must use the training data's tokenizer"]),
    # ---- checkpoints and run_dir
    ("resume-path-missing", GPT, ["checkpoint.resume={root}/runs/nope/step-00000004"],
     ["checkpoint.resume=", "step-00000004 does not exist"]),
    ("resume-a-run-dir", GPT, ["checkpoint.resume={ckpt_run}"],
     ["is a directory of checkpoints, not one checkpoint", "step-00000002"]),
    ("resume-corrupt", GPT, ["checkpoint.resume={corrupt_ckpt}"],
     ["corrupt_ckpt is not a usable checkpoint", "does not match its sha256"]),
    ("resume-other-shape", GPT, ["checkpoint.resume={ckpt}", "model.hidden_size=128"],
     ["model.hidden_size=128 but checkpoint", "saved with model.hidden_size=64"]),
    ("auto-resume-other-family", BERT, ["run_dir={ckpt_run}"], ["is a gpt model but model.arch=bert"]),
    ("run-dir-is-a-file", GPT, ["run_dir={root}/afile"], ["afile is a file"]),
]


def _fill(items, inputs):
    return [s.format(**{k: str(v) for k, v in inputs.items()}) for s in items]


def _assert_clean_error(r, fragments, seconds):
    out = r.stdout + r.stderr
    assert r.returncode == 2, f"exit {r.returncode}\n{out[-3000:]}"
    assert "Traceback" not in out, out[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    print("\n".join(errors))
    assert errors, out[-3000:]
    for fragment in fragments:
        assert any(fragment in line for line in errors), f"{fragment!r} not in {errors}"
    assert seconds < LIMIT_S


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_through_torchrun_launcher(inputs, case):
    _, config, args, fragments = case
    args = _fill(args, inputs)
    if not any(a.startswith("run_dir=") for a in args):
        args.insert(0, f"run_dir={inputs['existing']}")
    before = snapshot(inputs["existing"])
    t0 = time.monotonic()
    r = run_group(["bash", str(ROOT / "launchers/torchrun.sh"), _fill([config], inputs)[0], *QUICK, *args],
                  timeout=LIMIT_S, env=ENV, cwd=inputs["root"])
    _assert_clean_error(r, _fill(fragments, inputs), time.monotonic() - t0)
    assert snapshot(inputs["existing"]) == before


def test_bad_input_through_mpirun_launcher(inputs):
    env = {k: v for k, v in ENV.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_", "MASTER_"))}
    before = snapshot(inputs["existing"])
    t0 = time.monotonic()
    r = run_group(["bash", str(ROOT / "launchers/mpirun.sh"), GPT, f"run_dir={inputs['existing']}",
                   "parallel.tensor=2", "-n", "3"], timeout=LIMIT_S, env=env)
    _assert_clean_error(r, ["world size 3 is not divisible by parallel.tensor=2"], time.monotonic() - t0)
    assert "mpirun.sh:" not in r.stderr  # no MPI job was started
    assert snapshot(inputs["existing"]) == before


def test_check_command_says_ok_and_debug_shows_the_traceback(inputs, capsys, monkeypatch):
    from dist_pretrain.cli import main

    good = ["data.synthetic=false", f"data.path={inputs['good']}", "model.vocab_size=null", "model.seq_length=64",
            "train.eval_interval=2", "train.eval_steps=all", f"run_dir={inputs['existing']}"]
    assert main(["check", GPT, *good, "--world-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "ok: gpt causal_lm at world size 2: TP 1 x PP 1 x DP 2" in out and "65 x 8 validation samples" in out
    monkeypatch.setenv("DIST_PRETRAIN_DEBUG", "1")
    assert main(["check", str(inputs["root"] / "syntax.yaml")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "error: config file" in err


def test_shard_corrupted_mid_run_stops_every_rank_with_one_message(inputs, tmp_path):
    """The sizes match the manifest (the pre-flight passes), the contents do not: the ranks
    stop together at the step whose data failed; rank 0 prints it once."""
    data = tmp_path / "data"
    shutil.copytree(inputs["good"], data)
    for tar in data.glob("train-*.tar"):
        blob = bytearray(tar.read_bytes())
        blob[1536:1536 + 4096] = bytes(4096)  # zeroed tar blocks: the archive ends early
        tar.write_bytes(bytes(blob))
    run_dir = tmp_path / "run"
    t0 = time.monotonic()
    r = run_group(["bash", str(ROOT / "launchers/torchrun.sh"), GPT, *QUICK, "data.synthetic=false",
                   f"data.path={data}", "model.vocab_size=null", "model.seq_length=64", "data.on_corrupt=fail",
                   f"run_dir={run_dir}", "--nproc", "2"], timeout=180, env=ENV)
    _assert_clean_error(r, ["training data: corrupt shard", str(data)], time.monotonic() - t0)
    assert len([line for line in r.stderr.splitlines() if line.startswith("error: ")]) == 1, r.stderr
    assert "Sending process" not in r.stderr and "ChildFailedError" not in r.stderr


def test_checkpoint_failing_verification_after_startup_is_printed_once(inputs, tmp_path):
    """torchrun started by hand (no pre-flight): rank 0 verifies the checkpoint once the process
    groups exist; every rank stops, one message, exit 2."""
    t0 = time.monotonic()
    r = run_group([sys.executable, "-m", "dist_pretrain.torchrun", "--standalone", "--nproc-per-node", "2",
                   "-m", "dist_pretrain", "train", GPT, *QUICK, "parallel.nproc=2", f"run_dir={tmp_path / 'run'}",
                   f"checkpoint.resume={inputs['corrupt_ckpt']}"], timeout=180, env=ENV)
    _assert_clean_error(r, ["resume: checkpoint.resume=", "is not a usable checkpoint", "sha256"],
                        time.monotonic() - t0)
    assert len([line for line in r.stderr.splitlines() if line.startswith("error: ")]) == 1, r.stderr
