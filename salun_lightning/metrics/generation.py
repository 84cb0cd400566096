"""Metrics of generated images (SPEC section 5): UA and retained accuracy from a judge's predictions, and FID.

UA is the percentage of forgotten-class generations a judge classifier does not assign to the forgotten class;
retained accuracy is its accuracy on the other classes' generations. FID uses torchmetrics'
``FrechetInceptionDistance`` with 2048-d Inception-v3 features when torch-fidelity and its Inception weights are
on disk (nothing is ever downloaded), and otherwise fallback features (a judge's penultimate layer); every result
names the features it used. The judge itself lives in :mod:`salun_lightning.diffusion.evaluation`.

Example::

    >>> unlearning_accuracy(torch.tensor([0, 0, 3, 1]), forgotten_class=0)
    50.0
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Literal, Optional, Union

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

from salun_lightning.metrics.functional import accuracy_percent

__all__ = [
    "INCEPTION_FEATURES",
    "fid_score",
    "find_inception_weights",
    "retained_accuracy",
    "to_unit_range",
    "unlearning_accuracy",
]

log = logging.getLogger(__name__)

INCEPTION_FEATURES = "inception-v3-2048"
INCEPTION_WEIGHTS_FILENAME = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's file in the hub cache
PathLike = Union[str, os.PathLike]


# ---------------------------------------------------------------------------------------------------- UA / accuracy
def _predictions(preds: Tensor, name: str) -> tuple[Tensor, Optional[int]]:
    """Class indices from ``(N, C)`` scores or ``(N,)`` indices, and C when known."""
    if preds.ndim == 2:
        if bool(torch.isnan(preds).any()):
            raise ValueError(f"{name} contain NaN")
        return preds.argmax(dim=1), preds.shape[1]
    if preds.ndim != 1:
        raise ValueError(f"{name} must have shape (N, C) or (N,), got {tuple(preds.shape)}")
    if preds.dtype.is_floating_point or preds.dtype.is_complex or preds.dtype == torch.bool:
        raise ValueError(f"{name} of shape (N,) must be integer class indices, got {preds.dtype}")
    return preds, None


def check_class_range(values: Tensor, num_classes: Optional[int], name: str) -> None:
    if values.numel() and (int(values.min()) < 0 or (num_classes is not None and int(values.max()) >= num_classes)):
        bound = f"[0, {num_classes})" if num_classes is not None else "[0, inf)"
        raise ValueError(f"{name} must lie in {bound}, got values in [{int(values.min())}, {int(values.max())}]")


def unlearning_accuracy(judge_logits_or_preds: Tensor, forgotten_class: int) -> float:
    """UA: the percentage of forgotten-class generations that the judge does not assign to the forgotten class.

    Args:
        judge_logits_or_preds: the judge's ``(N, C)`` scores or ``(N,)`` predicted classes for the generations
            of the forgotten class.
        forgotten_class: the forgotten class, in ``[0, C)``.

    Raises:
        ValueError: on empty input, a bad shape or dtype, NaN scores, or a class out of range.

    Example::

        >>> unlearning_accuracy(torch.tensor([0, 0, 3, 1]), forgotten_class=0)
        50.0
    """
    preds, num_classes = _predictions(judge_logits_or_preds, "judge_logits_or_preds")
    if preds.numel() == 0:
        raise ValueError("judge_logits_or_preds is empty: generate images of the forgotten class first")
    check_class_range(torch.tensor([forgotten_class]), num_classes, "forgotten_class")
    check_class_range(preds, num_classes, "judge_logits_or_preds")
    return 100.0 * (preds != forgotten_class).double().mean().item()


def retained_accuracy(preds: Tensor, intended_classes: Tensor) -> float:
    """The judge's accuracy (percent) on retained-class generations, each labelled with the class it was made for.

    Args:
        preds: the judge's ``(N, C)`` scores or ``(N,)`` predicted classes.
        intended_classes: ``(N,)`` the class each image was generated for.

    Raises:
        ValueError: on empty input, mismatched shapes, a bad dtype, NaN scores, or classes out of range.

    Example::

        >>> retained_accuracy(torch.tensor([1, 2, 2, 1]), torch.tensor([1, 2, 1, 1]))
        75.0
    """
    predicted, num_classes = _predictions(preds, "preds")
    if intended_classes.ndim != 1 or intended_classes.shape[0] != predicted.shape[0]:
        raise ValueError(
            f"intended_classes must have shape ({predicted.shape[0]},) to match preds, "
            f"got {tuple(intended_classes.shape)}"
        )
    if intended_classes.dtype.is_floating_point or intended_classes.dtype.is_complex:
        raise ValueError(f"intended_classes must be integer class indices, got {intended_classes.dtype}")
    if predicted.numel() == 0:
        raise ValueError("preds and intended_classes are empty")
    check_class_range(intended_classes, num_classes, "intended_classes")
    check_class_range(predicted, num_classes, "preds")
    return accuracy_percent(predicted, intended_classes.to(predicted.device))


def to_unit_range(images: Tensor) -> Tensor:
    """uint8 ``[0, 255]`` or float ``[-1, 1]`` images -> float32 in ``[0, 1]`` (floats are clamped first)."""
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not images.dtype.is_floating_point:
        raise ValueError(f"images must be float in [-1, 1] or uint8, got {images.dtype}")
    return (images.float().clamp(-1, 1) + 1) / 2


# ---------------------------------------------------------------------------------------------------- FID
def find_inception_weights(path: Optional[PathLike] = None) -> Optional[Path]:
    """The Inception-v3 FID weights file when it and torch-fidelity are at hand, else ``None``; never downloads.

    Args:
        path: the weights file; default: torch-fidelity's file in the torch hub cache
            (``torch.hub.get_dir()/checkpoints/weights-inception-2015-12-05-6726825d.pth``).

    Raises:
        FileNotFoundError: an explicit ``path`` that does not exist.
        ModuleNotFoundError: an explicit ``path`` without torch-fidelity installed.

    Example::

        >>> weights = find_inception_weights()  # None without torch-fidelity or its cached weights
        >>> weights is None or weights.name == "weights-inception-2015-12-05-6726825d.pth"
        True
        >>> find_inception_weights("no/such/inception.pth")
        Traceback (most recent call last):
            ...
        FileNotFoundError: Inception weights 'no/such/inception.pth' do not exist
    """
    if path is not None and not os.path.isfile(path):
        raise FileNotFoundError(f"Inception weights {os.fspath(path)!r} do not exist")
    if importlib.util.find_spec("torch_fidelity") is None:
        if path is not None:
            raise ModuleNotFoundError(
                f"Inception weights {os.fspath(path)!r} need torch-fidelity, which is not installed "
                "(pip install torch-fidelity)"
            )
        return None
    candidate = Path(path) if path is not None else _cached_inception_weights()
    return candidate if candidate.is_file() else None


def _cached_inception_weights() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILENAME


def _inception_input(images: Tensor) -> Tensor:
    """uint8 RGB in ``[0, 255]``, what torchmetrics' Inception takes (it resizes to 299 itself)."""
    images = images if images.dtype == torch.uint8 else (to_unit_range(images) * 255).round().to(torch.uint8)
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def _check_image_set(images: Tensor, name: str) -> None:
    if images.ndim != 4 or images.shape[0] < 2:
        raise ValueError(f"{name} must be a (N, C, H, W) batch with N >= 2 for FID, got shape {tuple(images.shape)}")


def fid_score(
    real_images: Tensor,
    fake_images: Tensor,
    fallback_features: Optional[nn.Module] = None,
    *,
    features: Literal["auto", "inception", "judge"] = "auto",
    inception_weights: Optional[PathLike] = None,
    batch_size: int = 256,
) -> tuple[float, str]:
    """FID between real and generated images, and the name of the features it used.

    ``features="auto"`` uses torchmetrics' 2048-d Inception-v3 features (:data:`INCEPTION_FEATURES`) when
    :func:`find_inception_weights` finds them, else ``fallback_features`` (for instance a judge classifier's
    penultimate features, :class:`~salun_lightning.diffusion.evaluation.JudgeFeatures`). FIDs computed with
    different features are not comparable: report the name.

    Args:
        real_images: ``(N, C, H, W)`` real images, float in ``[-1, 1]`` or uint8, N >= 2.
        fake_images: ``(M, C, H, W)`` generated images, likewise.
        fallback_features: a feature extractor with ``num_features`` and ``name`` attributes, taking the images as
            given; the computation runs on its device (else the real images').
        features: ``auto``, or force ``inception`` or the fallback (``judge``) features.
        inception_weights: the Inception weights file (default: torch-fidelity's file in the torch hub cache).
        batch_size: images per feature-extraction batch.

    Raises:
        ValueError: fewer than two images in a set, a bad ``features`` or ``batch_size``, or no features
            available (no Inception weights and no fallback).
        FileNotFoundError, ModuleNotFoundError: ``inception_weights`` given but missing, or torch-fidelity missing.

    Example::

        >>> from salun_lightning.diffusion.evaluation import Judge, JudgeFeatures
        >>> from salun_lightning.models import build_classifier
        >>> judge = Judge(build_classifier("small_resnet", 10, in_channels=1), [0.3052], [0.3760], (8, 8))
        >>> real_images, generated_images = torch.rand(16, 1, 8, 8) * 2 - 1, torch.rand(16, 1, 8, 8) * 2 - 1
        >>> fid, name = fid_score(real_images, generated_images, JudgeFeatures(judge), features="judge")
        >>> name, fid > 0
        ('judge-penultimate-64', True)
    """
    _check_image_set(real_images, "real_images")
    _check_image_set(fake_images, "fake_images")
    if features not in ("auto", "inception", "judge"):
        raise ValueError(f"features must be 'auto', 'inception' or 'judge', got {features!r}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    weights = find_inception_weights(inception_weights) if features != "judge" else None
    if features == "inception" and weights is None:
        raise ValueError(
            f"Inception features need torch-fidelity and its weights file {_cached_inception_weights()} "
            "(or inception_weights=<file>); nothing is downloaded here"
        )
    if weights is None and fallback_features is None:
        raise ValueError(
            "FID needs Inception weights (none at hand) or fallback features: pass JudgeFeatures(judge) to use a "
            "judge's features"
        )
    tensors = [*fallback_features.parameters(), *fallback_features.buffers()] if fallback_features is not None else []
    device = tensors[0].device if tensors else real_images.device
    if weights is not None:
        metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=os.fspath(weights))
        name, prepare = INCEPTION_FEATURES, _inception_input
    else:
        metric = FrechetInceptionDistance(feature=fallback_features)
        name, prepare = fallback_features.name, (lambda images: images)
    log.info("FID with %s features", name)
    metric = metric.to(device)
    for images, real in ((real_images, True), (fake_images, False)):
        for chunk in images.split(batch_size):
            metric.update(prepare(chunk.to(device)), real=real)
    return float(metric.compute()), name
