"""saliency_mask against a brute-force reference: exact masks, ties, chunking, errors."""

import pytest
import torch

import salun_lightning.callbacks.weight_saliency.selection as weight_saliency
from salun_lightning.callbacks import kept_count, saliency_mask
from tests.reference import brute_force_mask


def random_saliency(generator: torch.Generator, kind: str) -> dict[str, torch.Tensor]:
    count = int(torch.randint(1, 5, (1,), generator=generator))
    out = {}
    for i in range(count):
        shape = tuple(int(s) for s in torch.randint(1, 7, (int(torch.randint(1, 4, (1,), generator=generator)),), generator=generator))
        if kind == "continuous":
            value = torch.rand(shape, generator=generator)
        elif kind == "ties":
            value = torch.randint(0, 3, shape, generator=generator).float()
        elif kind == "signed":
            value = torch.randn(shape, generator=generator)
        else:  # signed ties, tiny magnitudes, signed zeros
            value = torch.randint(-2, 3, shape, generator=generator).float() * 1e-30
            value[value == 0] = -0.0
        out[f"layer{i}.weight"] = value
    return out


@pytest.mark.parametrize("kind", ["continuous", "ties", "signed", "signed_ties"])
def test_matches_brute_force_reference(kind):
    generator = torch.Generator().manual_seed(1234)
    for _ in range(60):
        saliency = random_saliency(generator, kind)
        for ratio in (0.05, 0.29, 0.5, 0.77, 1.0):
            expected = brute_force_mask(saliency, ratio)
            actual = saliency_mask(saliency, ratio)
            assert list(actual) == list(saliency)
            for name in saliency:
                assert actual[name].dtype == torch.bool
                assert torch.equal(actual[name], expected[name]), (kind, ratio, name)


def test_ties_across_chunks_follow_tensor_then_index_order(monkeypatch):
    monkeypatch.setattr(weight_saliency, "_CHUNK", 7)
    saliency = {"a": torch.ones(10), "b": torch.ones(4, 5), "c": torch.full((3,), 2.0)}
    mask = saliency_mask(saliency, 0.5)  # N = 33, k = 16: the three 2.0 values, then 13 ties in order
    assert mask["c"].all()
    assert mask["a"].all()
    assert mask["b"].reshape(-1).tolist() == [True] * 3 + [False] * 17


def test_large_random_input_keeps_exactly_k():
    generator = torch.Generator().manual_seed(0)
    saliency = {"w": torch.rand(1_000_003, generator=generator), "b": torch.rand(777, 13, generator=generator)}
    mask = saliency_mask(saliency, 0.5)
    total = sum(v.numel() for v in saliency.values())
    assert sum(int(m.sum()) for m in mask.values()) == total // 2
    threshold = min(saliency[n][mask[n]].min() for n in mask)
    assert max(saliency[n][~mask[n]].max() for n in mask) <= threshold


def test_input_is_not_modified():
    saliency = {"w": torch.rand(1000)}
    copy = saliency["w"].clone()
    saliency_mask(saliency, 0.3)
    assert torch.equal(saliency["w"], copy)


def test_bfloat16_input_and_small_ratio():
    saliency = {"w": torch.tensor([1.0, 4.0, 2.0, 3.0], dtype=torch.bfloat16)}
    assert saliency_mask(saliency, 0.25)["w"].tolist() == [False, True, False, False]
    assert not saliency_mask(saliency, 0.2)["w"].any()  # floor(0.2 * 4) = 0


def test_kept_count_uses_decimal_ratio():
    assert kept_count(0.29, 100) == 29  # 0.29 * 100 == 28.999999999999996 in binary floating point
    assert kept_count(0.5, 11) == 5
    assert kept_count(1.0, 7) == 7


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5])
def test_ratio_out_of_range(ratio):
    with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\]"):
        saliency_mask({"w": torch.rand(4)}, ratio)


def test_nan_is_an_error():
    with pytest.raises(ValueError, match="saliency for 'w' contains NaN"):
        saliency_mask({"v": torch.rand(4), "w": torch.tensor([1.0, float("nan")])}, 0.5)


def test_integer_saliency_is_an_error():
    with pytest.raises(ValueError, match="has dtype torch.int64; give a floating-point tensor"):
        saliency_mask({"w": torch.arange(4)}, 0.5)


def _sharded_worker(rank: int, world_size: int, store: str, cases: list, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        masks = [saliency_mask(parts[rank], ratio, group=dist.group.WORLD) for parts, ratio in cases]
        torch.save(masks, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sharded_selection_over_two_gloo_ranks(tmp_path):
    import torch.multiprocessing as mp

    generator = torch.Generator().manual_seed(7)
    whole = {"a": torch.rand(1000, generator=generator), "b": torch.randn(37, 3, generator=generator)}
    continuous = [{"a": whole["a"][:400], "b": whole["b"][:20]}, {"a": whole["a"][400:], "b": whole["b"][20:]}]
    tied = [{"a": torch.tensor([2.0, 1.0, 1.0, 0.0]), "b": torch.tensor([1.0, 3.0])},
            {"a": torch.tensor([1.0, 1.0, 2.0]), "b": torch.zeros(0), "c": torch.tensor([1.0, 0.0])}]
    mp.spawn(_sharded_worker, args=(2, str(tmp_path / "store"), [(continuous, 0.3), (tied, 0.5)], str(tmp_path)),
             nprocs=2, join=True)
    (continuous0, tied0), (continuous1, tied1) = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))

    # signed values without ties: the mask of the union, computed by one process, whatever the split
    expected = saliency_mask(whole, 0.3)
    assert torch.equal(torch.cat([continuous0["a"], continuous1["a"]]), expected["a"])
    assert torch.equal(torch.cat([continuous0["b"], continuous1["b"]]), expected["b"])

    # N = 11, k = floor(0.5 * 11) = 5: the 3.0 and the two 2.0 values, then 2 of the six 1.0 values: rank 0's
    # first two in (tensor, index) order, although rank 1 also holds 1.0 values (and an empty tensor)
    assert tied0["a"].tolist() == [True, True, True, False]
    assert tied0["b"].tolist() == [False, True]
    assert tied1["a"].tolist() == [False, False, True]
    assert tied1["b"].numel() == 0 and tied1["c"].tolist() == [False, False]
