"""Classifier metrics against hand-computed values and a direct scikit-learn attacker, with and without DDP."""

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


def reference_efficacy(retain: np.ndarray, test: np.ndarray, forget: np.ndarray, seed: int) -> float:
    """The attacker written out: sort, balance by a seeded draw without replacement, fit SVC, predict forget."""
    members, non_members = np.sort(retain), np.sort(test)
    size = min(len(members), len(non_members))
    rng = np.random.default_rng(seed)
    if len(members) > size:
        members = members[np.sort(rng.choice(len(members), size, replace=False))]
    elif len(non_members) > size:
        non_members = non_members[np.sort(rng.choice(len(non_members), size, replace=False))]
    assert len(members) == len(non_members) == size
    features = np.concatenate([members, non_members])[:, None]
    attacker = SVC(C=3, gamma="auto", kernel="rbf").fit(features, np.r_[np.ones(size), np.zeros(size)])
    return 100.0 * float((attacker.predict(np.sort(forget)[:, None]) == 0).mean())


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


@pytest.mark.parametrize(
    ("sizes", "seed"), [((300, 120, 80), 0), ((300, 120, 80), 7), ((90, 200, 50), 3), ((64, 64, 10), 0)]
)
def test_mia_efficacy_matches_direct_svc(sizes, seed):
    retain, test, forget = random_confidences(seed, *sizes)
    expected = reference_efficacy(retain.double().numpy(), test.double().numpy(), forget.double().numpy(), seed)
    assert mia_efficacy(retain, test, forget, seed=seed) == expected
    assert 0.0 < expected < 100.0  # the attacker is not trivially all one class here


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
    salun = {"UA": 2.85, "RA": 99.62, "TA": 93.93, "MIA": 14.39, "RTE": 2.66}  # SPEC section 6
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
