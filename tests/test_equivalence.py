"""Every parallel layout reproduces the one-process fp32 loss curve (real torchrun, gloo).

One torchrun launch per world size (1, 2, 4) runs all its layouts; the table is
written to the pytest temp dir and printed with ``-s``.
"""

import pytest

from dist_pretrain.tools.equivalence import LAYOUTS, rel_dev, run, table

STEPS = 5
RTOL = 1e-5


@pytest.fixture(scope="module")
def equivalence(tmp_path_factory):
    refs, results = run(LAYOUTS, STEPS)
    text, _ = table(LAYOUTS, refs, results, RTOL)
    (tmp_path_factory.mktemp("equivalence") / "table.md").write_text(text)
    print("\n" + text)
    return refs, results


def test_reference_learns(equivalence):
    refs, _ = equivalence
    for variant, ref in refs.items():
        assert len(ref["loss"]) == STEPS and len(set(ref["loss"])) == STEPS, (variant, ref["loss"])
    assert refs["tied"]["loss"][-1] < refs["tied"]["loss"][0], refs["tied"]["loss"]


def test_clip_variant_actually_clips(equivalence):
    refs, _ = equivalence
    # grad_clip=0.5 in the clip variant: clipping is active only if the norm exceeds it
    assert min(refs["clip"]["grad_norm"]) > 0.5
    assert refs["clip"]["loss"][1:] != refs["tied"]["loss"][1:]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_matches_single_process(equivalence, layout):
    refs, results = equivalence
    world, variant, _ = LAYOUTS[layout]
    got, ref = results[layout], refs[variant]
    assert len(got["loss"]) == STEPS
    assert rel_dev(got["loss"], ref["loss"]) <= RTOL, (got["loss"], ref["loss"])
    assert rel_dev(got["grad_norm"], ref["grad_norm"]) <= RTOL, (got["grad_norm"], ref["grad_norm"])
    # parameters replicated across tensor-parallel ranks (norms, row-parallel biases) stay identical;
    # measured only where there are TP ranks to compare, and then over every such parameter
    if _size(LAYOUTS[layout][2], "parallel.tensor") > 1:
        assert got["tp_replicated"] is not None and got["tp_replicated"]["params"] > 0, got["tp_replicated"]
        assert got["tp_replicated"]["max_diff"] == 0.0, got["tp_replicated"]
    else:
        assert got["tp_replicated"] is None


def _size(overrides, key):
    return next((int(o.split("=")[1]) for o in overrides if o.startswith(key + "=")), 1)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_engine_sees_megatron_groups(equivalence, layout):
    """The mpu adapter: DeepSpeed's data-parallel group is megatron's, its model-parallel
    group spans TP x PP (without the adapter it would treat TP ranks as data parallel)."""
    _, results = equivalence
    world, _, overrides = LAYOUTS[layout]
    tp, pp = _size(overrides, "parallel.tensor"), _size(overrides, "parallel.pipeline")
    seen = results[layout]["groups"]
    assert seen["dp"] == world // (tp * pp)
    assert seen["mp"] == tp * pp
    if "deepspeed_dp" in seen:
        assert seen["deepspeed_dp"] == seen["deepspeed_dp_group"] == world // (tp * pp)
        assert seen["deepspeed_mp"] == tp * pp
