"""Fine-tuning options that need no process group: the head's optimizer groups, encoder
freezing, and the config rules that reject combinations which cannot work."""

import pytest
import torch

from dist_pretrain.config import load_config, validate
from dist_pretrain.engine import _param_groups
from dist_pretrain.errors import ConfigError
from dist_pretrain.finetune import freeze_all_but
from dist_pretrain.preflight import check

HEAD = ("pooler.*", "classifier.*")


def _model() -> torch.nn.Module:
    m = torch.nn.Module()
    m.encoder = torch.nn.Linear(4, 4)
    m.pooler = torch.nn.Module()
    m.pooler.dense = torch.nn.Linear(4, 4)
    m.classifier = torch.nn.Linear(4, 2)
    return m


def test_head_parameters_get_their_own_learning_rate_groups():
    m = _model()
    groups = _param_groups([m], 0.01, HEAD, head_lr_mult=10.0)
    by_id = {id(p): g for g in groups for p in g["params"]}
    assert by_id[id(m.classifier.weight)]["lr_mult"] == 10.0 and by_id[id(m.pooler.dense.bias)]["lr_mult"] == 10.0
    assert by_id[id(m.encoder.weight)]["lr_mult"] == 1.0
    assert by_id[id(m.classifier.bias)]["weight_decay"] == 0.0 and by_id[id(m.classifier.weight)]["weight_decay"] == 0.01
    assert len(by_id) == 6 and {g["lr_mult"] for g in _param_groups([m], 0.01, HEAD)} == {1.0}


def test_freezing_the_encoder_leaves_only_the_head_trainable():
    m = _model()
    freeze_all_but([m], HEAD)
    assert {n for n, p in m.named_parameters() if p.requires_grad} == \
        {"pooler.dense.weight", "pooler.dense.bias", "classifier.weight", "classifier.bias"}
    assert all(not p.requires_grad for p in m.encoder.parameters())
    assert len([p for g in _param_groups([m], 0.01) for p in g["params"]]) == 4


@pytest.mark.parametrize("overrides, message", [
    (["task.head_lr=1e-3", "parallel.zero_stage=0"], "task.head_lr=0.001 needs parallel.zero_stage >= 1"),
    (["task.freeze_encoder=true", "parallel.pipeline=2"], "task.freeze_encoder=true trains only the head"),
    (["task.best_metric=rouge_l"], "task.best_metric=rouge_l is not a classification metric"),
])
def test_finetuning_config_rules(overrides, message):
    cfg = load_config(None, ["model.arch=bert", "task.name=classification", "data.path=x", *overrides])
    with pytest.raises(ConfigError, match=message):
        validate(cfg, 2)


def test_classification_needs_labelled_data():
    cfg = load_config("configs/bert/tiny.yaml", ["task.name=classification"])
    assert any("task.name=classification reads one labelled dataset" in e for e in check(cfg, 1).errors)
