"""Config loading, overrides, cross-field validation and the generated DeepSpeed JSON.

Pure Python: no process groups, no megatron import. Every rejected config must raise
``ConfigError`` whose message names the offending key, the bad value and, where the code
has one to offer, what would fit.
"""
import json
import re
from pathlib import Path

import pytest

from dist_pretrain.config import (
    Config,
    ConfigError,
    deepspeed_config,
    load_config,
    padded_vocab_size,
    validate,
)

TINY = Path(__file__).resolve().parent.parent / "configs" / "gpt" / "tiny.yaml"


def tiny(*overrides: str) -> Config:
    return load_config(TINY, list(overrides))


def error_lines(message: str) -> list[str]:
    """The individual complaints of an ``invalid config:`` message."""
    head, *rest = message.split("\n")
    assert head == "invalid config:", message
    return [line.strip() for line in rest]


# --------------------------------------------------------------------------- bad configs

# (overrides on tiny.yaml, world size, tokenizer vocab, fragments the single error must hold)
BAD = [
    # ---- field-level (pydantic) errors, raised by load_config
    pytest.param(
        ["foo=1"], 1, None,
        ["unknown key foo", "valid keys here:", "model", "parallel", "train", "data", "deepspeed"],
        id="unknown-top-level-key",
    ),
    pytest.param(
        ["model.hiden_size=64"], 1, None,
        ["unknown key model.hiden_size", "valid keys here:", "hidden_size", "num_attention_heads",
         "ffn_hidden_size", "seq_length"],
        id="unknown-nested-key",
    ),
    pytest.param(
        ["parallel.zero=1"], 1, None,
        ["unknown key parallel.zero", "valid keys here:", "zero_stage", "tensor", "pipeline"],
        id="unknown-nested-key-parallel",
    ),
    pytest.param(
        ["train.steps=abc"], 1, None,
        ["train.steps='abc'", "valid integer"],
        id="wrong-type-int",
    ),
    pytest.param(
        ["model.tie_embeddings=maybe"], 1, None,
        ["model.tie_embeddings='maybe'", "valid boolean"],
        id="wrong-type-bool",
    ),
    pytest.param(
        ["train.micro_batch_size=0"], 1, None,
        ["train.micro_batch_size=0", "greater than or equal to 1"],
        id="zero-micro-batch",
    ),
    pytest.param(
        ["train.lr=-0.001"], 1, None,
        ["train.lr=-0.001", "greater than 0"],
        id="negative-lr",
    ),
    pytest.param(
        ["parallel.tensor=-2"], 1, None,
        ["parallel.tensor=-2", "greater than or equal to 1"],
        id="negative-tp",
    ),
    pytest.param(
        ["parallel.zero_stage=4"], 1, None,
        ["parallel.zero_stage=4", "less than or equal to 3"],
        id="zero-stage-out-of-range",
    ),
    pytest.param(
        ["train.precision=fp16"], 1, None,
        ["train.precision='fp16'", "'fp32'", "'bf16'"],
        id="precision-fp16",
    ),
    pytest.param(
        ["model.position_embedding=alibi"], 1, None,
        ["model.position_embedding='alibi'", "'learned'", "'rope'"],
        id="unknown-position-embedding",
    ),
    # ---- cross-field errors, raised by validate
    pytest.param(
        ["model.num_attention_heads=12", "model.hidden_size=96", "parallel.tensor=8"], 8, None,
        ["model.num_attention_heads=12 is not divisible by parallel.tensor=8"],
        id="heads-not-divisible-by-tp",
    ),
    pytest.param(
        ["model.num_query_groups=3"], 1, None,
        ["model.num_query_groups=3 does not divide model.num_attention_heads=4"],
        id="query-groups-not-dividing-heads",
    ),
    pytest.param(
        ["model.num_query_groups=2", "parallel.tensor=4"], 4, None,
        ["model.num_query_groups=2 is not divisible by parallel.tensor=4"],
        id="query-groups-not-divisible-by-tp",
    ),
    pytest.param(
        ["model.hidden_size=66"], 1, None,
        ["model.hidden_size=66 is not divisible by model.num_attention_heads=4"],
        id="hidden-not-divisible-by-heads",
    ),
    pytest.param(
        ["model.ffn_hidden_size=129", "parallel.tensor=2"], 2, None,
        ["model.ffn_hidden_size=129 is not divisible by parallel.tensor=2"],
        id="ffn-not-divisible-by-tp",
    ),
    pytest.param(
        ["parallel.tensor=2", "parallel.pipeline=2"], 6, None,
        ["world size 6", "parallel.tensor=2", "parallel.pipeline=2", "multiple of 4"],
        id="world-not-divisible-by-tp-pp",
    ),
    pytest.param(
        ["parallel.pipeline=2", "parallel.virtual_pipeline=3"], 2, None,
        ["model.num_layers=4", "parallel.pipeline=2", "parallel.virtual_pipeline=3", "multiple of 6"],
        id="layers-not-divisible-by-pp-vpp",
    ),
    pytest.param(
        ["parallel.virtual_pipeline=2"], 1, None,
        ["parallel.virtual_pipeline=2 needs parallel.pipeline > 1"],
        id="vpp-without-pp",
    ),
    pytest.param(
        ["parallel.zero_stage=3", "parallel.pipeline=2"], 2, None,
        ["parallel.zero_stage=3", "parallel.pipeline=2", "use zero_stage 1 or 2"],
        id="zero3-with-pp",
    ),
    pytest.param(
        ["parallel.offload_params=true", "parallel.zero_stage=2"], 1, None,
        ["parallel.offload_params=true", "needs parallel.zero_stage=3", "got 2"],
        id="offload-params-without-zero3",
    ),
    pytest.param(
        ["parallel.offload_optimizer=true", "parallel.zero_stage=0"], 1, None,
        ["parallel.offload_optimizer=true", "parallel.zero_stage >= 1", "got parallel.zero_stage=0"],
        id="offload-optimizer-with-zero0",
    ),
    pytest.param(
        ["train.global_batch_size=10"], 2, None,
        ["train.global_batch_size=10", "train.micro_batch_size=2", "data-parallel size 2",
         "use a multiple of 4"],
        id="global-batch-not-divisible",
    ),
    pytest.param(
        ["parallel.pipeline=2", "parallel.virtual_pipeline=2", "train.micro_batch_size=1",
         "train.global_batch_size=3"], 2, None,
        ["parallel.virtual_pipeline=2", "micro-batches (3)", "multiple of parallel.pipeline=2",
         "use train.global_batch_size=2"],
        id="interleaved-microbatches-not-multiple-of-pp",
    ),
    pytest.param(
        ["train.warmup_steps=7"], 1, None,
        ["train.warmup_steps=7 exceeds train.steps=6"],
        id="warmup-exceeds-steps",
    ),
    pytest.param(
        ["train.min_lr=0.01"], 1, None,
        ["train.min_lr=0.01 exceeds train.lr=0.001"],
        id="min-lr-exceeds-lr",
    ),
    pytest.param(
        ["model.seq_length=64", "model.max_position_embeddings=32"], 1, None,
        ["model.seq_length=64 exceeds model.max_position_embeddings=32"],
        id="seq-exceeds-max-positions",
    ),
    pytest.param(
        ["data.synthetic=false"], 1, None,
        ["data.path is not set", "data.path=DIR", "data.synthetic=true"],
        id="missing-data-path",
    ),
    pytest.param(
        ["parallel.tensor=2", "model.make_vocab_size_divisible_by=1"], 2, 501,
        ["padded vocab 501", "parallel.tensor=2", "raise model.make_vocab_size_divisible_by"],
        id="padded-vocab-not-divisible-by-tp",
    ),
    pytest.param(
        ["model.recompute=selective"], 1, None,
        ["model.recompute=selective", "use full or none"],
        id="recompute-selective",
    ),
    pytest.param(
        ["model.position_embedding=rope", "model.hidden_size=12"], 1, None,
        ["model.position_embedding=rope", "even head dim", "got 3"],
        id="rope-odd-head-dim",
    ),
    pytest.param(
        ["model.position_embedding=relative"], 1, None,
        ["model.position_embedding=relative is not built by model.arch=gpt", "it takes learned or rope"],
        id="relative-bias-outside-t5",
    ),
    pytest.param(
        ["model.arch=t5", "task.name=span_corruption", "model.position_embedding=rope"], 1, None,
        ["model.position_embedding=rope is not built by model.arch=t5", "it takes learned or relative"],
        id="rope-for-t5",
    ),
    pytest.param(
        ["model.arch=bert", "task.name=masked_lm", "model.position_embedding=rope"], 1, None,
        ["model.position_embedding=rope is not built by model.arch=bert", "it takes learned"],
        id="rope-for-bert",
    ),
    pytest.param(
        ["model.arch=t5", "task.name=span_corruption", "model.position_embedding=relative",
         "model.relative_attention_num_buckets=64",
         "model.relative_attention_max_distance=16"], 1, None,
        ["model.relative_attention_max_distance=16 must exceed", "relative_attention_num_buckets=64 // 2 = 32",
         "use at least 33"],
        id="relative-max-distance-below-exact-buckets",
    ),
    pytest.param(
        ["deepspeed.config=ds.json", "parallel.zero_stage=0"], 1, None,
        ["deepspeed.config", "parallel.zero_stage=0", "set zero_stage >= 1"],
        id="deepspeed-json-with-zero0",
    ),
]


@pytest.mark.parametrize("overrides, world_size, vocab, fragments", BAD)
def test_bad_config_is_rejected_with_a_precise_message(overrides, world_size, vocab, fragments):
    with pytest.raises(ConfigError) as info:
        cfg = load_config(TINY, overrides)
        validate(cfg, world_size, vocab)
    message = str(info.value)
    lines = error_lines(message)
    # exactly the one intended complaint, not collateral damage from the setup
    assert len(lines) == 1, message
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} missing from: {message}"


def test_unknown_nested_key_lists_only_that_sections_keys():
    with pytest.raises(ConfigError) as info:
        tiny("train.learning_rate=0.1")
    listed = str(info.value).split("valid keys here:")[1]
    keys = {k.strip() for k in listed.split(",")}
    assert keys == set(Config.model_fields["train"].annotation.model_fields)
    assert "lr" in keys and "model" not in keys


def test_validate_reports_every_problem_at_once():
    cfg = tiny("train.warmup_steps=7", "train.min_lr=0.01", "model.recompute=selective")
    with pytest.raises(ConfigError) as info:
        validate(cfg, 1)
    lines = error_lines(str(info.value))
    assert len(lines) == 3
    assert any("train.warmup_steps=7" in line for line in lines)
    assert any("train.min_lr=0.01" in line for line in lines)
    assert any("model.recompute=selective" in line for line in lines)


@pytest.mark.parametrize(
    "overrides, world_size",
    [
        (["train.global_batch_size=10"], 2),                      # "use a multiple of 4"
        (["parallel.pipeline=2", "parallel.virtual_pipeline=3"], 2),  # "use a multiple of 6"
        (["parallel.pipeline=2", "parallel.virtual_pipeline=2", "train.micro_batch_size=1",
          "train.global_batch_size=3"], 2),                       # "use train.global_batch_size=2"
        (["parallel.pipeline=4", "parallel.virtual_pipeline=2", "model.num_layers=8",
          "train.micro_batch_size=1", "train.global_batch_size=6"], 4),
    ],
    ids=["global-batch", "layers", "interleaved", "interleaved-pp4"],
)
def test_suggested_fix_actually_validates(overrides, world_size):
    """The value a message proposes must itself pass validation."""
    with pytest.raises(ConfigError) as info:
        validate(tiny(*overrides), world_size)
    message = str(info.value)
    if m := re.search(r"use train\.global_batch_size=(\d+)", message):
        fix = [f"train.global_batch_size={m.group(1)}"]
    elif m := re.search(r"model\.num_layers=.*use a multiple of (\d+)", message):
        fix = [f"model.num_layers={m.group(1)}"]
    elif m := re.search(r"train\.global_batch_size=.*use a multiple of (\d+)", message):
        fix = [f"train.global_batch_size={m.group(1)}"]
    else:
        pytest.fail(f"no suggestion in: {message}")
    validate(tiny(*overrides, *fix), world_size)


# --------------------------------------------------------------------------- loading errors


def test_override_without_equals_sign():
    with pytest.raises(ConfigError) as info:
        tiny("train.steps")
    assert "'train.steps'" in str(info.value)
    assert "key.sub=value" in str(info.value)


def test_override_into_a_value():
    with pytest.raises(ConfigError) as info:
        tiny("seed.x=1")
    assert "seed.x" in str(info.value) and "seed is a value, not a section" in str(info.value)


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert str(missing) in str(info.value)
    assert "does not exist" in str(info.value)


def test_config_file_that_is_not_a_mapping(tmp_path):
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert str(p) in str(info.value) and "mapping" in str(info.value)


def test_bad_key_in_yaml_file_is_reported_like_an_override(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model:\n  num_layers: 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert "model.num_layers=0" in str(info.value)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# --------------------------------------------------------------------------- good configs


def test_tiny_yaml_loads_with_its_values():
    cfg = tiny()
    assert (cfg.model.arch, cfg.task.name) == ("gpt", "causal_lm")
    assert cfg.run_dir == "runs/gpt-tiny"
    assert (cfg.model.num_layers, cfg.model.hidden_size, cfg.model.num_attention_heads) == (4, 64, 4)
    assert cfg.model.seq_length == 32 and cfg.model.vocab_size == 500
    assert cfg.model.ffn == 256                 # default 4 * hidden
    assert cfg.model.max_positions == 32        # default seq_length
    assert (cfg.train.micro_batch_size, cfg.train.global_batch_size) == (2, 8)
    assert cfg.train.lr == pytest.approx(1e-3) and cfg.train.min_lr == pytest.approx(1e-4)
    assert cfg.train.grad_clip == 0.0 and cfg.train.threads == 1
    assert cfg.data.synthetic is True and cfg.data.path is None
    # keys the file leaves out keep their defaults
    assert cfg.train.precision == "fp32" and cfg.parallel.virtual_pipeline is None


@pytest.mark.parametrize(
    "world_size, overrides",
    [
        (1, []),
        (2, []),                                                        # DP 2
        (2, ["parallel.tensor=2"]),                                     # TP 2
        (2, ["parallel.pipeline=2"]),                                   # PP 2
        (2, ["parallel.pipeline=2", "parallel.virtual_pipeline=2"]),    # interleaved
        (4, []),                                                        # DP 4
        (4, ["parallel.tensor=2", "parallel.pipeline=2"]),              # TP 2 x PP 2
        (4, ["parallel.tensor=4"]),                                     # TP 4
        (4, ["parallel.pipeline=4", "train.micro_batch_size=1"]),       # PP 4
        (4, ["parallel.zero_stage=3", "parallel.offload_params=true",
             "parallel.offload_optimizer=true"]),
        (4, ["parallel.tensor=2", "parallel.zero_stage=2", "train.precision=bf16"]),
    ],
)
def test_tiny_validates(world_size, overrides):
    cfg = tiny(*overrides)
    validate(cfg, world_size, cfg.model.vocab_size)  # no exception


def test_overrides_are_typed_through_yaml():
    cfg = tiny("train.lr=1e-3", "model.tie_embeddings=false", "train.steps=20",
               "train.grad_clip=2", "data.path=/data/shards", "model.ffn_hidden_size=null",
               "parallel.virtual_pipeline=2")
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == 1e-3
    assert cfg.model.tie_embeddings is False
    assert isinstance(cfg.train.steps, int) and cfg.train.steps == 20
    assert isinstance(cfg.train.grad_clip, float) and cfg.train.grad_clip == 2.0
    assert cfg.data.path == "/data/shards"
    assert cfg.model.ffn_hidden_size is None
    assert cfg.parallel.virtual_pipeline == 2


def test_override_replaces_the_file_value_and_last_one_wins():
    assert tiny().model.tie_embeddings is True
    assert tiny("model.tie_embeddings=false").model.tie_embeddings is False
    assert tiny("train.steps=7", "train.steps=9").train.steps == 9


def test_override_value_may_contain_equals_sign():
    assert tiny("run_dir=runs/a=b").run_dir == "runs/a=b"


def test_no_file_gives_defaults():
    cfg = load_config(None, ["data.synthetic=true"])
    assert cfg.model.num_layers == 2 and cfg.model.hidden_size == 128
    assert cfg.parallel.zero_stage == 1 and cfg.train.precision == "fp32"
    assert cfg.data.synthetic is True
    validate(cfg, 1)


def test_empty_file_gives_defaults(tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text("")
    assert load_config(p) == Config()


@pytest.mark.parametrize("vocab, multiple, padded", [(500, 128, 512), (512, 128, 512),
                                                     (50257, 128, 50304), (501, 1, 501)])
def test_padded_vocab_size(vocab, multiple, padded):
    cfg = tiny(f"model.make_vocab_size_divisible_by={multiple}")
    assert padded_vocab_size(cfg, vocab) == padded
    # independent of the TP size (keeps the loss identical across layouts)
    assert padded_vocab_size(tiny(f"model.make_vocab_size_divisible_by={multiple}",
                                  "parallel.tensor=4"), vocab) == padded


# --------------------------------------------------------------------------- DeepSpeed JSON


@pytest.mark.parametrize("micro, global_batch, dp", [(2, 8, 1), (2, 8, 2), (2, 8, 4), (1, 12, 3)])
def test_deepspeed_batch_keys(micro, global_batch, dp):
    cfg = tiny(f"train.micro_batch_size={micro}", f"train.global_batch_size={global_batch}")
    n_micro = global_batch // (micro * dp)
    ds = deepspeed_config(cfg, dp, n_micro)
    assert ds["train_micro_batch_size_per_gpu"] == micro * n_micro
    assert ds["gradient_accumulation_steps"] == 1
    assert ds["train_batch_size"] == global_batch
    # DeepSpeed's own consistency check: batch = micro x accumulation x DP
    assert ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * dp \
        == ds["train_batch_size"]


@pytest.mark.parametrize("precision, enabled", [("bf16", True), ("fp32", False)])
def test_deepspeed_precision_keys_follow_precision(precision, enabled):
    ds = deepspeed_config(tiny(f"train.precision={precision}"), 1, 4)
    # check_grad_overflow: an inf/NaN grad norm skips the update in bf16 too (fp32 does by itself)
    assert ds["bf16"] == {"enabled": enabled, "check_grad_overflow": True}
    # fp16 is always generated, and always off: train.precision has no fp16
    assert ds["fp16"] == {"enabled": False}


OFF = {"device": "none"}
CPU = {"device": "cpu"}


def test_deepspeed_zero_and_clipping_follow_config():
    ds = deepspeed_config(tiny("parallel.zero_stage=2", "train.grad_clip=0.5"), 1, 4)
    # reduce_scatter off: a default (config_rules.with_defaults) that a deepspeed.config JSON may change
    assert ds["zero_optimization"] == {"stage": 2, "offload_optimizer": OFF, "offload_param": OFF,
                                       "reduce_scatter": False}
    assert ds["gradient_clipping"] == 0.5


def test_deepspeed_json_may_turn_reduce_scatter_back_on(tmp_path):
    theirs = {"zero_optimization": {"reduce_scatter": True}}
    ds = deepspeed_config(tiny("parallel.zero_stage=1", f"deepspeed.config={_ds_json(tmp_path, theirs)}"), 1, 4)
    assert ds["zero_optimization"]["reduce_scatter"] is True
    assert "reduce_scatter" not in deepspeed_config(tiny("parallel.zero_stage=3"), 1, 4)["zero_optimization"]


@pytest.mark.parametrize(
    "overrides, offload_optimizer, offload_param",
    [
        (["parallel.zero_stage=1"], OFF, OFF),
        (["parallel.zero_stage=3"], OFF, OFF),
        (["parallel.zero_stage=2", "parallel.offload_optimizer=true"], CPU, OFF),
        (["parallel.zero_stage=3", "parallel.offload_params=true"], OFF, CPU),
        (["parallel.zero_stage=3", "parallel.offload_optimizer=true", "parallel.offload_params=true"],
         CPU, CPU),
    ],
    ids=["zero1", "zero3", "opt", "param", "both"],
)
def test_deepspeed_offload_keys_always_generated(overrides, offload_optimizer, offload_param):
    """Offload devices are always written ("none" when off) so no pass-through can fill them."""
    zero = deepspeed_config(tiny(*overrides), 1, 4)["zero_optimization"]
    assert zero["offload_optimizer"] == offload_optimizer
    assert zero["offload_param"] == offload_param


@pytest.mark.parametrize(
    "micro, global_batch, dp, n_micro",
    [
        (2, 8, 1, 3),    # 2 x 3 x 1 = 6 != 8
        (2, 8, 1, 5),    # 10 != 8
        (2, 8, 2, 4),    # n_micro for DP 1 passed with DP 2: 16 != 8
        (2, 8, 4, 4),    # 32 != 8
        (1, 12, 3, 3),   # 9 != 12
        (2, 8, 8, 0),    # 0 != 8
    ],
)
def test_deepspeed_config_rejects_inconsistent_batch_layout(micro, global_batch, dp, n_micro):
    """micro x num_microbatches x dp must equal the global batch, else DeepSpeed's batch is wrong."""
    cfg = tiny(f"train.micro_batch_size={micro}", f"train.global_batch_size={global_batch}")
    with pytest.raises(ConfigError) as info:
        deepspeed_config(cfg, dp, n_micro)
    message = str(info.value)
    assert f"train.global_batch_size={global_batch}" in message
    assert f"train.micro_batch_size={micro} " in message
    assert f"{n_micro} micro-batches" in message
    assert f"data-parallel size {dp}" in message
    # the consistent number of micro-batches for the same layout is accepted
    if global_batch % (micro * dp) == 0:
        good = deepspeed_config(cfg, dp, global_batch // (micro * dp))
        assert good["train_batch_size"] == global_batch


def test_deepspeed_batch_check_applies_with_a_passthrough_too(tmp_path):
    cfg = tiny(f"deepspeed.config={_ds_json(tmp_path, {'train_batch_size': 'auto'})}")
    with pytest.raises(ConfigError, match=r"train\.global_batch_size=8"):
        deepspeed_config(cfg, 2, 4)
    assert deepspeed_config(cfg, 2, 2)["train_batch_size"] == 8


def _ds_json(tmp_path, content) -> str:
    p = tmp_path / "ds.json"
    p.write_text(json.dumps(content))
    return str(p)


ZERO3_CONTRADICTION = ("deepspeed.config sets zero_optimization.stage=3 but parallel.zero_stage "
                       "gives 1; set it in one place (parallel.zero_stage)")


def test_deepspeed_passthrough_contradiction_is_an_error(tmp_path):
    path = _ds_json(tmp_path, {"zero_optimization": {"stage": 3}})
    cfg = tiny("parallel.zero_stage=1", f"deepspeed.config={path}")
    with pytest.raises(ConfigError) as info:
        deepspeed_config(cfg, 1, 4)
    # their key and value, our key and value, and where to set it
    assert str(info.value) == ZERO3_CONTRADICTION


def test_validate_catches_deepspeed_passthrough_contradiction(tmp_path):
    """Found by validate(), before any process group starts, as its single complaint."""
    cfg = tiny("parallel.zero_stage=1",
               f"deepspeed.config={_ds_json(tmp_path, {'zero_optimization': {'stage': 3}})}")
    with pytest.raises(ConfigError) as info:
        validate(cfg, 1)
    assert error_lines(str(info.value)) == [ZERO3_CONTRADICTION]


# (what the pass-through sets, overrides on tiny.yaml, DeepSpeed key, our key that generates it)
CONTRADICTIONS = [
    pytest.param({"train_batch_size": 16}, [], "train_batch_size=16", "train.global_batch_size",
                 id="train_batch_size"),
    pytest.param({"gradient_accumulation_steps": 4}, [], "gradient_accumulation_steps=4",
                 "train.global_batch_size", id="gradient_accumulation_steps"),
    # per-micro-batch size: ours is micro x n_micro = 8 at DP 1
    pytest.param({"train_micro_batch_size_per_gpu": 2}, [], "train_micro_batch_size_per_gpu=2",
                 "train.micro_batch_size", id="train_micro_batch_size_per_gpu"),
    pytest.param({"bf16": {"enabled": True}}, [], "bf16.enabled=True", "train.precision",
                 id="bf16-with-fp32"),
    pytest.param({"gradient_clipping": 1.0}, [], "gradient_clipping=1.0", "train.grad_clip",
                 id="gradient_clipping"),             # tiny.yaml sets grad_clip 0
    pytest.param({"zero_optimization": {"stage": 2}}, [], "zero_optimization.stage=2",
                 "parallel.zero_stage", id="zero-stage"),
    # keys that are off in our config and used to be left out, so a pass-through could set them
    pytest.param({"fp16": {"enabled": True}}, ["train.precision=bf16"], "fp16.enabled=True",
                 "train.precision", id="fp16-with-bf16"),
    pytest.param({"fp16": {"enabled": True}}, [], "fp16.enabled=True", "train.precision",
                 id="fp16-with-fp32"),
    pytest.param({"zero_optimization": {"offload_param": {"device": "cpu"}}}, [],
                 "zero_optimization.offload_param.device='cpu'", "parallel.offload_params",
                 id="offload_param-under-zero1"),
    pytest.param({"zero_optimization": {"offload_param": {"device": "nvme"}}},
                 ["parallel.zero_stage=3"], "zero_optimization.offload_param.device='nvme'",
                 "parallel.offload_params", id="offload_param-nvme-under-zero3"),
    pytest.param({"zero_optimization": {"offload_optimizer": {"device": "cpu", "pin_memory": True}}},
                 [], "zero_optimization.offload_optimizer.device='cpu'", "parallel.offload_optimizer",
                 id="offload_optimizer-when-off"),
    pytest.param({"zero_optimization": {"offload_optimizer": {"device": "none"}}},
                 ["parallel.zero_stage=2", "parallel.offload_optimizer=true"],
                 "zero_optimization.offload_optimizer.device='none'", "parallel.offload_optimizer",
                 id="offload_optimizer-turned-off"),
]


@pytest.mark.parametrize("theirs, overrides, ds_key, our_key", CONTRADICTIONS)
def test_deepspeed_passthrough_contradictions_name_both_keys(tmp_path, theirs, overrides, ds_key,
                                                             our_key):
    cfg = tiny(*overrides, f"deepspeed.config={_ds_json(tmp_path, theirs)}")
    with pytest.raises(ConfigError) as info:
        deepspeed_config(cfg, 1, 4)
    message = str(info.value)
    assert f"deepspeed.config sets {ds_key} but {our_key} gives " in message, message
    assert message.endswith(f"set it in one place ({our_key})"), message
    # and validate() reports the same, before any process group starts
    with pytest.raises(ConfigError) as info:
        validate(cfg, 1)
    assert error_lines(str(info.value)) == [message]


def test_validate_checks_the_passthrough_against_the_real_data_parallel_size(tmp_path):
    """At DP 4 one step is 2 x 1 samples per rank, at DP 1 it is 2 x 4: the JSON's 2 fits only DP 4."""
    cfg = tiny(f"deepspeed.config={_ds_json(tmp_path, {'train_micro_batch_size_per_gpu': 2})}")
    validate(cfg, 4)
    with pytest.raises(ConfigError) as info:
        validate(cfg, 1)
    assert "train_micro_batch_size_per_gpu=2" in str(info.value) and "gives 8" in str(info.value)
    # with TP 2 x PP 2 on 4 processes DP is 1 again
    cfg = tiny("parallel.tensor=2", "parallel.pipeline=2",
               f"deepspeed.config={_ds_json(tmp_path, {'train_micro_batch_size_per_gpu': 2})}")
    with pytest.raises(ConfigError, match="train_micro_batch_size_per_gpu=2"):
        validate(cfg, 4)


@pytest.mark.parametrize(
    "theirs, overrides",
    [
        ({"fp16": {"enabled": False}}, []),
        ({"fp16": {"enabled": "auto"}}, ["train.precision=bf16"]),
        ({"zero_optimization": {"offload_param": {"device": "none"}}}, []),
        ({"zero_optimization": {"offload_optimizer": {"device": "auto"}}}, []),
        ({"zero_optimization": {"offload_optimizer": {"device": "cpu", "pin_memory": True}}},
         ["parallel.zero_stage=2", "parallel.offload_optimizer=true"]),
        ({"zero_optimization": {"offload_param": {"device": "cpu"}, "stage": 3}},
         ["parallel.zero_stage=3", "parallel.offload_params=true"]),
    ],
    ids=["fp16-off", "fp16-auto", "offload_param-none", "offload_optimizer-auto",
         "offload_optimizer-cpu-agrees", "offload_param-cpu-agrees"],
)
def test_deepspeed_passthrough_agreeing_precision_and_offload_keys_are_accepted(tmp_path, theirs,
                                                                                overrides):
    cfg = tiny(*overrides, f"deepspeed.config={_ds_json(tmp_path, theirs)}")
    validate(cfg, 1)
    ds = deepspeed_config(cfg, 1, 4)
    plain = deepspeed_config(tiny(*overrides), 1, 4)
    assert ds["fp16"] == plain["fp16"] == {"enabled": False}
    for key in ("offload_optimizer", "offload_param"):
        assert ds["zero_optimization"][key]["device"] == plain["zero_optimization"][key]["device"]
    if "pin_memory" in json.dumps(theirs):   # their extra settings survive the merge
        assert ds["zero_optimization"]["offload_optimizer"]["pin_memory"] is True


def test_deepspeed_passthrough_merges_non_contradicting_keys(tmp_path):
    theirs = {
        "zero_optimization": {"stage": 1, "reduce_bucket_size": 5e7, "overlap_comm": True},
        "gradient_clipping": 0.0,            # agrees with ours
        "train_batch_size": "auto",          # "auto" is filled in from our config
        "communication_data_type": "fp32",   # only theirs
    }
    path = _ds_json(tmp_path, theirs)
    cfg = tiny("parallel.zero_stage=1", f"deepspeed.config={path}")
    validate(cfg, 1)
    ds = deepspeed_config(cfg, 1, 4)
    assert ds["zero_optimization"] == {"stage": 1, "reduce_bucket_size": 5e7, "overlap_comm": True,
                                       "offload_optimizer": OFF, "offload_param": OFF, "reduce_scatter": False}
    assert ds["train_batch_size"] == 8
    assert ds["communication_data_type"] == "fp32"
    assert ds["train_micro_batch_size_per_gpu"] == 8 and ds["gradient_accumulation_steps"] == 1
    # everything we generate is present and equal to the pass-through-free result
    plain = deepspeed_config(tiny("parallel.zero_stage=1"), 1, 4)
    for key, value in plain.items():
        if key == "zero_optimization":
            assert {k: ds[key][k] for k in value} == value
        else:
            assert ds[key] == value, key
    assert set(ds) == set(plain) | {"communication_data_type"}
    assert json.loads(Path(path).read_text()) == theirs  # the user's file is not rewritten


def test_missing_deepspeed_json_is_a_config_error(tmp_path):
    missing = tmp_path / "missing.json"
    cfg = tiny(f"deepspeed.config={missing}")
    with pytest.raises(ConfigError) as info:
        validate(cfg, 1)
    assert error_lines(str(info.value)) == [f"deepspeed.config={str(missing)!r} does not exist"]
    with pytest.raises(ConfigError, match="does not exist"):
        deepspeed_config(cfg, 1, 4)


@pytest.mark.parametrize(
    "text, complaint",
    [
        ('{"zero_optimization": {"stage": 1,}}', "is not valid JSON"),
        ("", "is not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('"zero"', "must hold a JSON object"),
    ],
    ids=["trailing-comma", "empty", "list", "string"],
)
def test_unreadable_deepspeed_json_is_a_config_error(tmp_path, text, complaint):
    p = tmp_path / "ds.json"
    p.write_text(text)
    cfg = tiny(f"deepspeed.config={p}")
    with pytest.raises(ConfigError) as info:
        validate(cfg, 1)
    lines = error_lines(str(info.value))
    assert len(lines) == 1 and lines[0].startswith(f"deepspeed.config={str(p)!r} {complaint}"), lines
    with pytest.raises(ConfigError, match=complaint):
        deepspeed_config(cfg, 1, 4)


# --------------------------------------------------------------------------- architecture and task


@pytest.mark.parametrize("arch, task", [("gpt", "causal_lm"), ("bert", "masked_lm"), ("t5", "span_corruption")])
def test_task_defaults_to_the_architectures_pretraining_task(arch, task):
    assert load_config(None, [f"model.arch={arch}"]).task.name == task


def test_old_family_config_loads_as_arch_and_task(tmp_path):
    """Configs and checkpoints written before the split: family -> model.arch, objective -> task."""
    old = tmp_path / "old.yaml"
    old.write_text("family: bert\nobjective: {mask_prob: 0.2, next_sentence_prediction: true}\n"
                   "data: {synthetic: true}\n")
    cfg = load_config(old)
    assert (cfg.model.arch, cfg.task.name, cfg.task.mask_prob) == ("bert", "masked_lm", 0.2)
    assert cfg.task.next_sentence_prediction and cfg.family == "bert"
    # what a checkpoint's meta.json now holds loads back to the same config
    assert Config.model_validate(cfg.model_dump()) == cfg


def test_family_contradicting_arch_is_an_error():
    with pytest.raises(ConfigError, match="family=bert .* and model.arch=t5 disagree"):
        load_config(None, ["family=bert", "model.arch=t5"])


def test_task_that_does_not_fit_the_architecture_is_an_error():
    cfg = load_config(None, ["model.arch=gpt", "task.name=masked_lm", "data.synthetic=true"])
    with pytest.raises(ConfigError, match="task.name=masked_lm does not fit model.arch=gpt; its tasks: causal_lm"):
        validate(cfg, 1)
