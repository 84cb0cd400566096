"""Classifier metrics against hand-computed values and the attacker of docs/method.md, 'Classifier metrics', with and
without DDP."""

import doctest
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.svm import SVC

import salun_lightning.metrics.functional as functional
import salun_lightning.metrics.mia as mia
from salun_lightning.metrics import MIAEfficacy, accuracy_percent, average_gap, mia_efficacy, true_label_confidence


def logits_for(confidence: torch.Tensor, labels: torch.Tensor, num_classes: int = 3) -> torch.Tensor:
    """Logits whose softmax gives ``confidence`` on the true label and spreads the rest evenly."""
    rest = (1 - confidence) / (num_classes - 1)
    probabilities = rest.unsqueeze(1).repeat(1, num_classes)
    probabilities[torch.arange(len(labels)), labels] = confidence
    return probabilities.double().log()


def random_confidences(seed: int, retain: int, test: int, forget: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.rand(retain, generator=generator) ** 0.2,  # members: mostly confident
        torch.rand(test, generator=generator) ** 1.5,  # non-members: spread out, overlapping
        torch.rand(forget, generator=generator) ** 0.5,
    )


# --- true_label_confidence / accuracy_percent ---


def test_true_label_confidence_hand_values():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)], [5.0, 5.0]])
    confidence = true_label_confidence(logits, torch.tensor([1, 0, 1]))
    torch.testing.assert_close(confidence, torch.tensor([0.75, 0.25, 0.5]))


def test_true_label_confidence_upcasts_half_precision():
    confidence = true_label_confidence(torch.zeros(2, 4, dtype=torch.float16), torch.tensor([0, 3]))
    assert confidence.dtype == torch.float32
    torch.testing.assert_close(confidence, torch.full((2,), 0.25))


def test_accuracy_percent_hand_values():
    scores = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0], [0.0, 4.0, 1.0], [1.0, 0.0, 0.0]])
    labels = torch.tensor([0, 2, 2, 0])
    assert accuracy_percent(scores, labels) == 75.0
    assert accuracy_percent(torch.tensor([1, 1, 0]), torch.tensor([1, 0, 0])) == pytest.approx(200 / 3)


@pytest.mark.parametrize(
    ("logits", "labels", "match"),
    [
        (torch.zeros(3), torch.zeros(3, dtype=torch.long), r"logits must have shape \(N, C\)"),
        (torch.zeros(3, 2), torch.zeros(2, dtype=torch.long), r"labels must have shape \(3,\)"),
        (torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), "empty"),
        (torch.zeros(2, 2), torch.zeros(2), "integer tensor"),
        (torch.zeros(2, 2), torch.tensor([0, 2]), r"labels must lie in \[0, 2\)"),
        (torch.tensor([[0.0, float("nan")]]), torch.tensor([0]), "NaN"),
    ],
)
def test_logits_and_labels_errors(logits, labels, match):
    with pytest.raises(ValueError, match=match):
        true_label_confidence(logits, labels)
    if logits.ndim == 2:  # a 1-d ``preds`` holds class indices for accuracy_percent
        with pytest.raises(ValueError, match=match):
            accuracy_percent(logits, labels)


def test_accuracy_percent_prediction_errors():
    with pytest.raises(ValueError, match="matching labels"):
        accuracy_percent(torch.tensor([0, 1]), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="empty"):
        accuracy_percent(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))


# --- mia_efficacy ---


def test_mia_efficacy_separable_hand_values():
    generator = torch.Generator().manual_seed(0)
    members = 0.95 + 0.05 * torch.rand(40, generator=generator)  # ~1.0
    non_members = 0.05 + 0.1 * torch.rand(25, generator=generator)  # ~0.1
    half_and_half = torch.tensor([1.0] * 6 + [0.1] * 6)
    assert mia_efficacy(members, non_members, half_and_half) == 50.0
    assert mia_efficacy(members, non_members, torch.tensor([1.0, 0.99, 0.97])) == 0.0
    assert mia_efficacy(members, non_members, torch.tensor([0.1, 0.08, 0.12, 0.0])) == 100.0


@pytest.mark.parametrize(("member", "non_member"), [(1.0, 0.0), (0.9, 0.3), (0.3, 0.9)])
@pytest.mark.parametrize(("n_retain", "n_test"), [(5, 8), (1000, 10), (10, 1000)])
def test_mia_efficacy_two_point_shadow_set_splits_at_the_midpoint(member, non_member, n_retain, n_test):
    """All members at ``a``, all non-members at ``b``: a forget value is a non-member iff it is nearer ``b``.

    By hand: with two distinct training points and K(u, v) = exp(-(u - v) ** 2) (gamma="auto" is 1 for one
    feature), sum(alpha * y) = 0 puts the same total dual weight A on both points, so
    f(x) = A * (K(a, x) - K(b, x)) + rho; the margin conditions f(a) = 1 and f(b) = -1 give rho = 0 and
    A = 1 / (1 - K(a, b)) <= 3.31 < C * min(n_retain, n_test), so both points are free support vectors.
    Hence f(x) < 0 exactly when |x - b| < |x - a|. Copies of a point do not move f, so balancing 1000 against
    10 identical values must give the same answer as 5 against 8.
    """
    # Fails on: swapped labels or reporting the member share (gives 100 - expected), a fraction instead of a
    # percentage, a fixed threshold (e.g. "confidence < 0.5 is a non-member": wrong at s = 0.55 for 0.9/0.3 and
    # for every point of 0.3/0.9), or a balancing step that crashes or empties a group when sizes differ.
    retain, test = torch.full((n_retain,), member), torch.full((n_test,), non_member)
    steps = [0.0, 0.2, 0.4, 0.55, 0.7, 0.9, 1.0]  # forget = a + s * (b - a); nearer b iff s > 0.5: 4 of 7
    forget = torch.tensor([member + s * (non_member - member) for s in steps])
    assert mia_efficacy(retain, test, forget) == pytest.approx(400 / 7)
    assert mia_efficacy(retain, test, forget[:3]) == 0.0
    assert mia_efficacy(retain, test, forget[3:]) == 100.0
    assert mia_efficacy(retain, test, forget[[0, 3, 4, 5]]) == 75.0


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("larger", ["retain", "test"])
def test_mia_efficacy_identical_larger_group_equals_equal_sizes(larger, seed):
    """The larger group, all one value, is cut down to the smaller group's size: only copies are dropped.

    So 2000 copies against 40 values must give exactly the result of 40 copies against the same 40 values
    (the attacker then sees identical training sets), whatever the seed.
    """
    # Fails on: no balancing, or class_weight instead of subsampling (the 40 values sit within 0.1 of the copies,
    # where C=3 caps each copy's dual weight, so 2000 copies outweigh 40 and move the boundary), or drawing
    # from / resampling the smaller group (a subsample of the 40 spread values changes the attacker).
    generator = torch.Generator().manual_seed(seed)
    forget = torch.linspace(0, 1, 201)
    spread = 0.08 * torch.rand(40, generator=generator)
    if larger == "retain":
        smaller = 0.9 + spread  # non-members just below the members at 1.0
        balanced = mia_efficacy(torch.ones(40), smaller, forget, seed=seed)
        assert mia_efficacy(torch.ones(2000), smaller, forget, seed=seed) == balanced
    else:
        smaller = 0.02 + spread  # members just above the non-members at 0.0
        balanced = mia_efficacy(smaller, torch.zeros(40), forget, seed=seed)
        assert mia_efficacy(smaller, torch.zeros(2000), forget, seed=seed) == balanced
    assert 0.0 < balanced < 100.0  # the boundary lies inside [0, 1], so a moved boundary shows


@pytest.mark.parametrize(("n_retain", "n_test"), [(60, 25), (25, 60)])
def test_mia_efficacy_fits_the_spec_attacker_on_a_balanced_shadow_set(monkeypatch, n_retain, n_test):
    """The attacker as docs/method.md ('Classifier metrics') states it, observed through a recording stand-in for
    ``SVC``.

    Retain and test values are disjoint (retain >= 0.4 > test), so a fit value tells its group by hand.
    """
    # Fails on: other C / gamma / kernel, swapped member and non-member labels, unequal class counts (no
    # balancing or class_weight), a draw with replacement (repeated retain values), subsampling the smaller
    # group, predicting on anything but D_f, or a seed that is ignored (unseeded or fixed generator).
    calls = []

    class RecordingSVC:
        def __init__(self, *args, **kwargs):
            self.svc = SVC(*args, **kwargs)
            self.record = {"params": self.svc.get_params()}
            calls.append(self.record)

        def fit(self, features, targets):
            self.record["fit"] = (np.array(features, dtype=float), np.array(targets, dtype=float))
            self.svc.fit(features, targets)
            return self

        def predict(self, features):
            self.record["predict"] = np.array(features, dtype=float)
            return self.svc.predict(features)

    monkeypatch.setattr(functional, "SVC", RecordingSVC)
    retain = 0.4 + torch.arange(n_retain, dtype=torch.float64) / 100
    test = torch.arange(n_test, dtype=torch.float64) / 100
    forget = torch.tensor([0.05, 0.9, 0.3, 0.7, 0.5], dtype=torch.float64)
    for seed in (1, 1, 2):
        mia_efficacy(retain, test, forget, seed=seed)
    assert len(calls) == 3
    record = calls[0]
    params = {key: record["params"][key] for key in ("C", "gamma", "kernel", "class_weight")}
    assert params == {"C": 3, "gamma": "auto", "kernel": "rbf", "class_weight": None}
    features, targets = record["fit"]
    size = min(n_retain, n_test)
    assert features.shape == (2 * size, 1) and sorted(set(targets.tolist())) == [0.0, 1.0]
    members, non_members = np.sort(features[targets == 1, 0]), np.sort(features[targets == 0, 0])
    assert len(members) == len(non_members) == size
    larger, smaller = (members, non_members) if n_retain > n_test else (non_members, members)
    larger_values = (retain if n_retain > n_test else test).numpy()
    np.testing.assert_array_equal(smaller, np.sort((test if n_retain > n_test else retain).numpy()))  # whole
    assert len(np.unique(larger)) == size and np.isin(larger, larger_values).all()  # a subset, no repeats
    np.testing.assert_array_equal(np.sort(record["predict"][:, 0]), np.sort(forget.numpy()))
    np.testing.assert_array_equal(calls[1]["fit"][0], features)  # same seed, same draw
    assert not np.array_equal(calls[2]["fit"][0], features)  # another seed, another of C(60, 25) subsets


def test_mia_efficacy_ignores_sample_order():
    retain, test, forget = random_confidences(1, 150, 60, 40)
    generator = torch.Generator().manual_seed(5)
    permuted = [values[torch.randperm(len(values), generator=generator)] for values in (retain, test, forget)]
    assert mia_efficacy(*permuted, seed=2) == mia_efficacy(retain, test, forget, seed=2)


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ((torch.zeros(0), torch.ones(3), torch.ones(2)), "retain_confidence is empty"),
        ((torch.ones(3), torch.zeros(0), torch.ones(2)), "test_confidence is empty"),
        ((torch.ones(3), torch.ones(3), torch.zeros(0)), "forget_confidence is empty"),
        ((torch.ones(3, 1), torch.ones(3), torch.ones(2)), r"retain_confidence must be 1-d, got shape \(3, 1\)"),
        ((torch.ones(3), torch.tensor([0.5, float("nan")]), torch.ones(2)), "test_confidence contains NaN"),
    ],
)
def test_mia_efficacy_errors(arguments, match):
    with pytest.raises(ValueError, match=match):
        mia_efficacy(*arguments)


# --- average_gap ---


def test_average_gap_hand_values():
    retrain = {"UA": 5.24, "RA": 100.0, "TA": 94.26, "MIA": 12.88, "RTE": 43.29}
    salun = {"UA": 2.85, "RA": 99.62, "TA": 93.93, "MIA": 14.39, "RTE": 2.66}  # docs/method.md, 'Reference numbers'
    assert average_gap(salun, retrain) == pytest.approx((2.39 + 0.38 + 0.33 + 1.51) / 4)
    assert round(average_gap(salun, retrain), 2) == 1.15
    assert average_gap(retrain, retrain) == 0.0
    assert average_gap({"UA": 1.0, "TA": 3.0}, {"UA": 4.0, "TA": 2.0}, keys=("UA", "TA")) == 2.0


def test_average_gap_errors():
    retrain = {"UA": 5.0, "RA": 100.0, "TA": 94.0, "MIA": 12.0}
    with pytest.raises(ValueError, match=r"method has no 'MIA'"):
        average_gap({"UA": 5.0, "RA": 100.0, "TA": 94.0}, retrain)
    with pytest.raises(ValueError, match=r"retrain has no 'RTE'"):
        average_gap({"RTE": 1.0}, retrain, keys=("RTE",))
    with pytest.raises(ValueError, match=r"retrain\['TA'\] is NaN"):
        average_gap(retrain, {**retrain, "TA": float("nan")})
    with pytest.raises(ValueError, match="non-empty sequence"):
        average_gap(retrain, retrain, keys=())
    with pytest.raises(ValueError, match="non-empty sequence"):
        average_gap(retrain, retrain, keys="UA")


# --- MIAEfficacy ---


def split_batches(seed: int) -> list[tuple[torch.Tensor, torch.Tensor, str]]:
    """Batches of logits and labels for every split, with confidences from ``random_confidences``."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for split, confidence in zip(("retain", "test", "forget"), random_confidences(seed, 70, 45, 30)):
        labels = torch.randint(0, 3, (len(confidence),), generator=generator)
        for chunk in torch.arange(len(confidence)).split(16):
            batches.append((logits_for(confidence[chunk], labels[chunk]), labels[chunk], split))
    return batches


def functional_value(batches, seed: int) -> float:
    """The functional result on all batches, with confidences in the metric's default dtype (float32)."""
    confidences = {
        split: torch.cat([true_label_confidence(logits, labels) for logits, labels, s in batches if s == split]).float()
        for split in ("retain", "test", "forget")
    }
    return mia_efficacy(confidences["retain"], confidences["test"], confidences["forget"], seed=seed)


def test_mia_metric_accumulates_like_functional():
    batches = split_batches(0)
    metric = MIAEfficacy(seed=4)
    for logits, labels, split in batches[::-1]:
        metric.update(logits, labels, split=split)
    value = metric.compute()
    assert value.ndim == 0 and value.dtype == torch.float32
    assert value.item() == pytest.approx(functional_value(batches, seed=4))
    assert MIAEfficacy.higher_is_better and not MIAEfficacy.is_differentiable and not MIAEfficacy.full_state_update
    metric.reset()
    assert metric.retain_confidence == metric.test_confidence == metric.forget_confidence == []


def test_mia_metric_errors():
    with pytest.raises(ValueError, match="seed must be an int"):
        MIAEfficacy(seed=0.5)
    metric = MIAEfficacy()
    with pytest.raises(ValueError, match=r"split must be one of \('retain', 'test', 'forget'\), got 'train'"):
        metric.update(torch.zeros(2, 3), torch.tensor([0, 1]), split="train")
    metric.update(torch.zeros(2, 3), torch.tensor([0, 1]), split="retain")
    metric.update(torch.zeros(2, 3), torch.tensor([0, 1]), split="forget")
    with pytest.raises(ValueError, match=r"no 'test' samples; call update\(logits, labels, split='test'\)"):
        metric.compute()


def test_mia_metric_merge_state_equals_single_process():
    batches = split_batches(1)
    shards = [MIAEfficacy(seed=2), MIAEfficacy(seed=2)]
    for index, (logits, labels, split) in enumerate(batches):
        shards[index % 2].update(logits, labels, split=split)
    shards[0].merge_state(shards[1])
    assert shards[0].compute().item() == pytest.approx(functional_value(batches, seed=2))


def _ddp_worker(rank: int, world_size: int, store: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        batches = split_batches(2)
        metric = MIAEfficacy(seed=3)
        # Uneven shards; rank 1 sees no forget batch at all (the empty-state corner case).
        mine = [b for i, b in enumerate(batches) if (rank == 0 if b[2] == "forget" else i % 2 == rank)]
        for logits, labels, split in mine:
            metric.update(logits, labels, split=split)
        torch.save(metric.compute(), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_mia_metric_ddp_gloo(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    expected = functional_value(split_batches(2), seed=3)
    for rank in range(2):
        assert torch.load(tmp_path / f"rank{rank}.pt").item() == pytest.approx(expected)


@pytest.mark.parametrize("module", [functional, mia])
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
