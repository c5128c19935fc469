"""Fine-tuning options that need no process group: the head's optimizer groups (DeepSpeed's and
megatron's), encoder freezing, and the config rules that reject combinations which cannot work."""

import pytest
import torch

from dist_pretrain.config import load_config, validate
from dist_pretrain.errors import ConfigError
from dist_pretrain.finetune import freeze_all_but
from dist_pretrain.optim_groups import megatron_config_overrides, pad_group_count, param_groups
from dist_pretrain.preflight import check

HEAD = ("pooler.*", "classifier.*")


def _model() -> torch.nn.Module:
    m = torch.nn.Module()
    m.encoder = torch.nn.Linear(4, 4)
    m.pooler = torch.nn.Module()
    m.pooler.dense = torch.nn.Linear(4, 4)
    m.classifier = torch.nn.Linear(4, 2)
    return m


def test_a_stage_without_the_head_pads_its_group_count_without_changing_settings():
    """PP with a head: the first stage halves its largest group until it holds as many as the last."""
    m = torch.nn.Sequential(*(torch.nn.Linear(2, 2) for _ in range(3)))
    groups = param_groups([m], 0.01)
    padded = pad_group_count(groups, 4)
    assert len(padded) == 4
    assert [id(p) for g in padded for p in g["params"]] == [id(p) for g in groups for p in g["params"]]  # order
    settings = {id(p): (g["weight_decay"], g["lr_mult"]) for g in groups for p in g["params"]}
    for g in padded:  # each piece keeps the settings of the group it came from
        assert {settings[id(p)] for p in g["params"]} == {(g["weight_decay"], g["lr_mult"])}
    with pytest.raises(RuntimeError, match="cannot make 9 AdamW groups out of 6 parameters"):
        pad_group_count(groups, 9)


def test_head_parameters_get_their_own_learning_rate_groups():
    m = _model()
    groups = param_groups([m], 0.01, HEAD, head_lr_mult=10.0)
    by_id = {id(p): g for g in groups for p in g["params"]}
    assert by_id[id(m.classifier.weight)]["lr_mult"] == 10.0 and by_id[id(m.pooler.dense.bias)]["lr_mult"] == 10.0
    assert by_id[id(m.encoder.weight)]["lr_mult"] == 1.0
    assert by_id[id(m.classifier.bias)]["weight_decay"] == 0.0 and by_id[id(m.classifier.weight)]["weight_decay"] == 0.01
    assert len(by_id) == 6 and {g["lr_mult"] for g in param_groups([m], 0.01, HEAD)} == {1.0}


def test_megatron_groups_give_the_head_the_scaled_schedule_under_wrappers():
    """ZeRO-0: megatron's config_overrides, matched on the names its DDP (and bf16's
    Float16Module) give the parameters: ``module.module.classifier.weight``."""
    from megatron.core.optimizer import OptimizerConfig
    from megatron.core.optimizer_param_scheduler import combine_param_group_overrides

    wrapped = torch.nn.Module()
    wrapped.module = torch.nn.Module()
    wrapped.module.module = _model()
    config = OptimizerConfig(optimizer="adam", lr=1e-4, min_lr=1e-5, weight_decay=0.01)
    overrides = megatron_config_overrides(config, HEAD, head_lr_mult=10.0)
    merged = {name: combine_param_group_overrides([o for key, o in overrides.items() if key.matches(p, name)])
              for name, p in wrapped.named_parameters()}
    head = {"max_lr": pytest.approx(1e-3), "min_lr": pytest.approx(1e-4), "lr_mult": 10.0}
    assert merged["module.module.classifier.weight"] == head
    assert merged["module.module.pooler.dense.bias"] == {**head, "wd_mult": 0.0}
    assert merged["module.module.encoder.weight"] == {} and merged["module.module.encoder.bias"] == {"wd_mult": 0.0}
    assert len(megatron_config_overrides(config, HEAD)) == len(megatron_config_overrides(config)) == 1


def test_freezing_the_encoder_leaves_only_the_head_trainable():
    m = _model()
    freeze_all_but([m], HEAD)
    assert {n for n, p in m.named_parameters() if p.requires_grad} == \
        {"pooler.dense.weight", "pooler.dense.bias", "classifier.weight", "classifier.bias"}
    assert all(not p.requires_grad for p in m.encoder.parameters())
    assert len([p for g in param_groups([m], 0.01) for p in g["params"]]) == 4
    wrapped = torch.nn.Module()  # bf16: the chunk inside a Float16Module
    wrapped.module = _model()
    freeze_all_but([wrapped], HEAD)
    assert {n for n, p in wrapped.named_parameters() if p.requires_grad} == \
        {"module.pooler.dense.weight", "module.pooler.dense.bias", "module.classifier.weight", "module.classifier.bias"}


@pytest.mark.parametrize("overrides, message", [
    (["task.head_lr=1e-3", "task.name=text_to_text", "model.arch=t5"], "apply to the new head of classification"),
    (["task.freeze_encoder=true", "parallel.pipeline=2"], "task.freeze_encoder=true trains only the head"),
    (["task.best_metric=rouge_l"], "task.best_metric=rouge_l is not a classification metric"),
])
def test_finetuning_config_rules(overrides, message):
    cfg = load_config(None, ["model.arch=bert", "task.name=classification", "data.path=x", *overrides])
    with pytest.raises(ConfigError, match=message):
        validate(cfg, 2)


@pytest.mark.parametrize("layout", [["parallel.zero_stage=0"], ["parallel.zero_stage=0", "parallel.pipeline=2"],
                                    ["parallel.zero_stage=2"], ["parallel.zero_stage=1", "parallel.pipeline=2"]])
def test_head_lr_is_accepted_where_the_engines_support_it(layout):
    cfg = load_config(None, ["model.arch=bert", "task.name=classification", "data.path=x", "task.head_lr=1e-3", *layout])
    validate(cfg, 2)


def test_classification_needs_labelled_data():
    cfg = load_config("configs/bert/tiny.yaml", ["task.name=classification"])
    assert any("task.name=classification reads one labelled dataset" in e for e in check(cfg, 1).errors)


def test_text_scores_report_rouge_exact_match_and_the_share_of_distinct_outputs():
    """A model that answers every input of a task with the same phrase still scores ROUGE-L;
    ``distinct_outputs`` (overall and per task prefix) shows the collapse."""
    from dist_pretrain.tasks.text_to_text import text_scores

    class Words:  # ids are indices into a word list
        words = ["in", "a", "manner", "History", "of", "the", "city"]

        def decode(self, ids):
            return " ".join(self.words[i] for i in ids)

    records = [{"input": "define: quickly", "target": "in a quick manner"},
               {"input": "define: slowly", "target": "in a slow manner"},
               {"input": "summarize: The city was founded ...", "target": "History of the city"},
               {"input": "summarize: Its river ...", "target": "Geography"}]
    generated = {0: [0, 1, 2], 1: [0, 1, 2], 2: [3, 4, 5, 6], 3: [3]}
    metrics, rows = text_scores(records, generated, Words())
    assert [r["prediction"] for r in rows] == ["in a manner", "in a manner", "History of the city", "History"]
    assert metrics["distinct_outputs"] == 3 / 4
    assert metrics["define/distinct_outputs"] == 1 / 2 and metrics["summarize/distinct_outputs"] == 1.0
    assert metrics["summarize/exact_match"] == 1 / 2 and metrics["define/exact_match"] == 0.0
    assert metrics["define/rouge_l"] > 0.8  # 3 of 4 words in order: the same phrase scores for both
