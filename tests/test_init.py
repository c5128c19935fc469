"""Sharded seed-only initialisation (models/init.py): any TP rank's shard equals the slice of the
one-process tensor, the values are N(0, std), and the tensor-parallel attributes we set (megatron
sets none with ``perform_initialization=False``) are exactly those megatron sets itself.
The whole-model layout independence is proven end to end by test_equivalence / test_interop."""

import pytest
import torch
from scipy import stats

from dist_pretrain.models.init import fill_normal_shard, normal_range


def _shard_of(full: torch.Tensor, dim: int, stride: int, tp: int, rank: int) -> torch.Tensor:
    """Megatron's placement: ``stride`` blocks along ``dim``, the rank's slice of each, concatenated."""
    blocks = full.unflatten(dim, (stride, full.shape[dim] // stride))
    return blocks.chunk(tp, dim=dim + 1)[rank].flatten(dim, dim + 1)


@pytest.mark.parametrize("dim,stride,tp", [(0, 1, 2), (1, 1, 2), (0, 2, 2), (0, 2, 4), (1, 1, 4)])
def test_every_shard_is_the_slice_of_the_whole_tensor(monkeypatch, dim, stride, tp):
    monkeypatch.setattr("dist_pretrain.models.init.BLOCK", 37)  # ranges start and end inside blocks
    whole = torch.empty(16, 24)
    fill_normal_shard(whole, key=12345, std=0.02, dim=dim, stride=stride, tp=1, rank=0)
    for rank in range(tp):
        shape = list(whole.shape)
        shape[dim] //= tp
        shard = torch.empty(shape)
        fill_normal_shard(shard, key=12345, std=0.02, dim=dim, stride=stride, tp=tp, rank=rank)
        assert torch.equal(shard, _shard_of(whole, dim, stride, tp, rank)), (dim, stride, tp, rank)


def test_ranges_are_windows_of_one_stream_and_normal():
    values = normal_range(7, 0, 200_001)
    for start, count in [(1, 10), (65_535, 4), (65_536, 1), (99_999, 70_000), (200_000, 1)]:
        assert torch.equal(normal_range(7, start, count), values[start: start + count])
    assert not torch.equal(normal_range(8, 0, 100), values[:100])  # another parameter, another stream
    assert torch.equal(normal_range(7, 5, 10, std=0.5), values[5:15] * 0.5)
    assert stats.kstest(values.numpy(), "norm").pvalue > 1e-3
    assert abs(values.mean()) < 0.01 and abs(values.std() - 1) < 0.01


def test_tensor_parallel_attributes_match_megatrons_own(tmp_path):
    """Built once with megatron's initialisation and once without (ours marks the weights):
    the same ``tensor_model_parallel`` / ``partition_dim`` / ``partition_stride`` on every
    parameter, gated ``linear_fc1`` (stride 2), row-parallel projections and untied output."""
    from dist_pretrain.config import load_config
    from dist_pretrain.models.architecture import get_architecture
    from dist_pretrain.models.load import init_single_process
    from dist_pretrain.models.megatron_config import transformer_config
    from dist_pretrain.build import build_model_chunks

    init_single_process()
    cfg = load_config(None, ["model.num_layers=2", "model.hidden_size=32", "model.num_attention_heads=4",
                             "model.activation=swiglu", "model.num_query_groups=2", "model.tie_embeddings=false",
                             "model.seq_length=16"])
    attrs = {}
    for perform in (True, False):
        tconfig = transformer_config(cfg, on_gpu=False)
        tconfig.perform_initialization = perform
        [chunk] = build_model_chunks(cfg, get_architecture(cfg.model.arch), tconfig, 128)  # ours marks what is unmarked
        attrs[perform] = {n: (getattr(p, "tensor_model_parallel", False), getattr(p, "partition_dim", -1),
                              getattr(p, "partition_stride", 1)) for n, p in chunk.named_parameters()}
    assert attrs[False] == attrs[True]
    assert any(stride == 2 for _, _, stride in attrs[True].values())
    assert any(dim == 1 for _, dim, _ in attrs[True].values())
