"""Learning-rate schedule: linear warm-up, then cosine / linear decay to min_lr."""

import math

import pytest

from dist_pretrain.config import load_config
from dist_pretrain.lr_schedule import learning_rate


def _cfg(decay):
    return load_config(None, ["data.synthetic=true", "train.steps=100", "train.warmup_steps=10",
                              "train.lr=1e-3", "train.min_lr=1e-4", f"train.decay={decay}"])


@pytest.mark.parametrize("decay", ["cosine", "linear", "constant"])
def test_warmup_is_linear_from_zero(decay):
    cfg = _cfg(decay)
    assert learning_rate(1, cfg) == pytest.approx(1e-4)
    assert learning_rate(5, cfg) == pytest.approx(5e-4)
    assert learning_rate(10, cfg) == pytest.approx(1e-3)


def test_cosine_decays_to_min_lr():
    cfg = _cfg("cosine")
    assert learning_rate(55, cfg) == pytest.approx(1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * 0.5)))
    assert learning_rate(100, cfg) == pytest.approx(1e-4)
    lrs = [learning_rate(s, cfg) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_linear_and_constant():
    assert learning_rate(55, _cfg("linear")) == pytest.approx(1e-4 + 9e-4 * 0.5)
    assert learning_rate(100, _cfg("linear")) == pytest.approx(1e-4)
    assert learning_rate(77, _cfg("constant")) == pytest.approx(1e-3)
