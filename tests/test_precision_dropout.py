"""bf16 (pipeline and ZeRO-2 included) tracks fp32; dropout runs under TP and a fixed layout
is deterministic run to run."""

import math

import pytest

from dist_pretrain.tools.equivalence import launch, rel_dev

DROPOUT = ["model.hidden_dropout=0.1", "model.attention_dropout=0.1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bf16")
    cases = [
        {"name": "fp32 ref", "overrides": ["parallel.pipeline=2", "parallel.zero_stage=2"]},
        {"name": "bf16 PP2 ZeRO-2", "overrides": ["parallel.pipeline=2", "parallel.zero_stage=2",
                                                  "train.precision=bf16"]},
        {"name": "bf16 TP2 ZeRO-1", "overrides": ["parallel.tensor=2", "train.precision=bf16"]},
        {"name": "dropout TP2 a", "overrides": ["parallel.tensor=2", *DROPOUT]},
        {"name": "dropout TP2 b", "overrides": ["parallel.tensor=2", *DROPOUT]},
        {"name": "no dropout TP2", "overrides": ["parallel.tensor=2"]},
    ]
    return launch(2, cases, 5, tmp)


@pytest.mark.parametrize("name", ["bf16 PP2 ZeRO-2", "bf16 TP2 ZeRO-1"])
def test_bf16_tracks_fp32(runs, name):
    got, ref = runs[name]["loss"], runs["fp32 ref"]["loss"]
    assert all(math.isfinite(x) for x in got)
    assert got != ref  # really ran in bf16
    assert rel_dev(got, ref) < 2e-2, (got, ref)


def test_dropout_is_deterministic_for_a_fixed_layout(runs):
    assert runs["dropout TP2 a"]["loss"] == runs["dropout TP2 b"]["loss"]
    assert runs["dropout TP2 a"]["loss"] != runs["no dropout TP2"]["loss"]
    replicas = runs["dropout TP2 a"]["tp_replicated"]
    assert replicas["params"] > 0 and replicas["max_diff"] == 0.0, replicas
