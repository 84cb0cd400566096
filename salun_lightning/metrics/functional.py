"""Classifier unlearning metrics as plain functions (docs/method.md, 'Classifier metrics'), free of any torchmetrics
state.

UA = 100 - ``accuracy_percent`` on the forget set, RA and TA = ``accuracy_percent`` on the retain and test
sets, MIA = ``mia_efficacy`` and Avg. Gap = ``average_gap`` against a retrain run on the same split.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from sklearn.svm import SVC
from torch import Tensor

__all__ = ["accuracy_percent", "average_gap", "mia_efficacy", "true_label_confidence"]


def _check_logits_and_labels(logits: Tensor, labels: Tensor) -> None:
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (N, C), got {tuple(logits.shape)}")
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels must have shape ({logits.shape[0]},) to match logits, got {tuple(labels.shape)}")
    if logits.shape[0] == 0:
        raise ValueError("logits and labels are empty")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if bool(((labels < 0) | (labels >= logits.shape[1])).any()):
        raise ValueError(f"labels must lie in [0, {logits.shape[1]}), got values in [{labels.min()}, {labels.max()}]")
    if bool(torch.isnan(logits).any()):
        raise ValueError("logits contain NaN")


def true_label_confidence(logits: Tensor, labels: Tensor) -> Tensor:
    """Softmax probability of the true label for every sample, the attacker's feature for MIA-Efficacy.

    Computed in at least float32 (half-precision logits are upcast).

    Args:
        logits: ``(N, C)`` unnormalised class scores.
        labels: ``(N,)`` integer class labels in ``[0, C)``.

    Returns:
        A ``(N,)`` tensor of probabilities.

    Raises:
        ValueError: on empty input, mismatched shapes, non-integer or out-of-range labels, or NaN logits.

    Example::

        >>> true_label_confidence(torch.tensor([[0.0, 0.0], [0.0, 100.0]]), torch.tensor([0, 1]))
        tensor([0.5000, 1.0000])
    """
    _check_logits_and_labels(logits, labels)
    dtype = torch.promote_types(logits.dtype, torch.float32)
    probabilities = torch.softmax(logits.to(dtype), dim=1)
    return probabilities.gather(1, labels.long().unsqueeze(1)).squeeze(1)


def accuracy_percent(preds: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy in percent (0..100).

    Args:
        preds: ``(N, C)`` class scores (the arg-max is the prediction) or ``(N,)`` predicted class indices.
        labels: ``(N,)`` integer class labels.

    Raises:
        ValueError: on empty input, mismatched shapes or NaN scores.

    Example::

        >>> accuracy_percent(torch.tensor([[2.0, 1.0], [0.0, 1.0], [3.0, 0.0], [1.0, 0.0]]), torch.tensor([0, 1, 1, 1]))
        50.0
    """
    if preds.ndim == 2:
        _check_logits_and_labels(preds, labels)
        preds = preds.argmax(dim=1)
    elif preds.ndim != 1 or labels.shape != preds.shape:
        raise ValueError(
            f"preds must have shape (N, C) or (N,) matching labels, "
            f"got {tuple(preds.shape)} and labels {tuple(labels.shape)}"
        )
    elif preds.numel() == 0:
        raise ValueError("preds and labels are empty")
    return 100.0 * (preds == labels).double().mean().item()


def _confidence_array(name: str, values: Tensor) -> np.ndarray:
    """Validated, sorted float64 copy (sorting makes the result independent of sample order, e.g. rank order)."""
    if values.ndim != 1:
        raise ValueError(f"{name} must be 1-d, got shape {tuple(values.shape)}")
    if values.numel() == 0:
        raise ValueError(f"{name} is empty")
    array = values.detach().cpu().double().numpy()
    if np.isnan(array).any():
        raise ValueError(f"{name} contains NaN")
    return np.sort(array)


def mia_efficacy(retain_confidence: Tensor, test_confidence: Tensor, forget_confidence: Tensor, seed: int = 0) -> float:
    """MIA-Efficacy in percent (0..100): the share of forget samples a confidence-based attacker calls non-members.

    The attacker, ``SVC(C=3, gamma="auto", kernel="rbf")``, is fit on a balanced shadow set: retain confidences
    as members (label 1) and test confidences as non-members (label 0). The larger group is subsampled without
    replacement to the size of the smaller one; the subsample is drawn from the sorted values with
    ``numpy.random.default_rng(seed)``, so the result depends only on the values and ``seed``, not on the sample
    order (for instance the rank order after a DDP gather). Higher means more forgetting.

    Args:
        retain_confidence: ``(N_r,)`` true-label confidences on retain samples (see ``true_label_confidence``).
        test_confidence: ``(N_t,)`` true-label confidences on test samples.
        forget_confidence: ``(N_f,)`` true-label confidences on forget samples.
        seed: seed of the generator that draws the balanced subsample.

    Raises:
        ValueError: if an input is empty, not 1-d or contains NaN.

    Example::

        >>> retain, test = torch.full((8,), 0.99), torch.full((6,), 0.2)
        >>> mia_efficacy(retain, test, torch.tensor([0.99, 0.98, 0.25, 0.2]))
        50.0
    """
    members = _confidence_array("retain_confidence", retain_confidence)
    non_members = _confidence_array("test_confidence", test_confidence)
    forget = _confidence_array("forget_confidence", forget_confidence)
    size = min(len(members), len(non_members))
    rng = np.random.default_rng(seed)
    if len(members) > size:
        members = members[np.sort(rng.choice(len(members), size, replace=False))]
    elif len(non_members) > size:
        non_members = non_members[np.sort(rng.choice(len(non_members), size, replace=False))]
    features = np.concatenate([members, non_members]).reshape(-1, 1)
    targets = np.concatenate([np.ones(size), np.zeros(size)])
    attacker = SVC(C=3, gamma="auto", kernel="rbf").fit(features, targets)
    predicted_member = attacker.predict(forget.reshape(-1, 1))
    return 100.0 * float(np.mean(predicted_member == 0))


def average_gap(
    method: Mapping[str, float], retrain: Mapping[str, float], keys: Sequence[str] = ("UA", "RA", "TA", "MIA")
) -> float:
    """Avg. Gap: the mean over ``keys`` of ``|method[key] - retrain[key]|`` (0 for the retrain run itself).

    Raises:
        ValueError: if ``keys`` is empty, a key is missing from either mapping, or a value is NaN.

    Example::

        >>> average_gap({"UA": 3, "RA": 99, "TA": 93, "MIA": 14}, {"UA": 5, "RA": 100, "TA": 94, "MIA": 12})
        1.5
    """
    if isinstance(keys, str) or len(keys) == 0:
        raise ValueError(f"keys must be a non-empty sequence of metric names, got {keys!r}")
    gaps = []
    for key in keys:
        for name, values in (("method", method), ("retrain", retrain)):
            if key not in values:
                raise ValueError(f"{name} has no {key!r} (has {sorted(values)})")
            if math.isnan(values[key]):
                raise ValueError(f"{name}[{key!r}] is NaN")
        gaps.append(abs(method[key] - retrain[key]))
    return sum(gaps) / len(gaps)
