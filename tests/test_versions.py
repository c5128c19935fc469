"""Untested DeepSpeed / megatron-core versions: an error at start-up naming the internals at risk,
unless DIST_PRETRAIN_ALLOW_UNTESTED_VERSIONS=1."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dist_pretrain import versions

ROOT = Path(__file__).resolve().parents[1]


def test_pins_match_pyproject_and_the_installed_versions():
    pyproject = (ROOT / "pyproject.toml").read_text()
    for name, version in versions.PINNED.items():
        assert re.search(rf'"{name}=={re.escape(version)}"', pyproject), name
        assert versions.installed(name) == version
    assert versions.check() == []


def test_another_version_is_an_error_naming_the_internals():
    with pytest.raises(versions.UntestedVersionError) as err:
        versions.check({"deepspeed": "0.20.0", "megatron-core": "0.16.1"}, env={})
    text = str(err.value)
    assert "deepspeed 0.20.0 is installed" in text and "0.19.8" in text
    assert "_backward_prologue" in text and versions.OVERRIDE_ENV in text
    assert "megatron-core" not in text.split("Install")[0]  # the pinned one is not blamed


def test_the_override_turns_it_into_a_warning(capsys):
    found = {"deepspeed": "0.19.8", "megatron-core": "0.17.0"}
    problems = versions.check(found, env={versions.OVERRIDE_ENV: "1"})
    assert len(problems) == 1
    err = capsys.readouterr().err
    assert "warning: megatron-core 0.17.0 is installed" in err and "_get_cuda_rng_state" in err
    with pytest.raises(versions.UntestedVersionError):
        versions.check(found, env={versions.OVERRIDE_ENV: "0"})


def test_training_refuses_to_start_with_another_version():
    code = ("import sys, importlib.metadata as m; real = m.version; "
            "m.version = lambda n: '0.20.0' if n == 'deepspeed' else real(n); "
            "from dist_pretrain.cli import main; sys.exit(main(['train', 'configs/gpt/tiny.yaml']))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(versions.OVERRIDE_ENV, None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: deepspeed 0.20.0 is installed" in proc.stderr and "Traceback" not in proc.stderr
