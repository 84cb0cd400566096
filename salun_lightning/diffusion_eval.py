"""Evaluation of diffusion unlearning (SPEC section 5): UA, retained-class accuracy and FID of generated images.

A classifier trained by :class:`~salun_lightning.classifier.ClassifierUnlearningModule` judges the generations:
UA is the percentage of forgotten-class generations it does not assign to the forgotten class; retained accuracy
is its accuracy on the other classes' generations. FID on the retained classes uses torchmetrics'
``FrechetInceptionDistance`` with 2048-d Inception-v3 features when torch-fidelity and its Inception weights are
on disk (nothing is ever downloaded), and otherwise the judge's penultimate-layer features; every result names
the features it used.

Example::

    from salun_lightning.diffusion_eval import Judge, evaluate_generations, write_metrics

    judge = Judge.load("runs/train/model.safetensors", "resnet18", dataset="cifar10")
    generations = {c: sample(c, n=500) for c in range(10)}  # images in [-1, 1], (N, 3, 32, 32) per class
    metrics = evaluate_generations(judge, generations, forgotten_class=0, real_retained=real_images)
    write_metrics("runs/diffusion_salun", {"method": "salun", "seed": 0, **metrics})
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Optional, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics.image.fid import FrechetInceptionDistance

from salun_lightning.classifier import METRICS_FILENAME, load_weights
from salun_lightning.files import write_json
from salun_lightning.data import normalize
from salun_lightning.data.sources import KNOWN_DATASETS
from salun_lightning.metrics import accuracy_percent
from salun_lightning.models import build_classifier

__all__ = [
    "INCEPTION_FEATURES",
    "Judge",
    "JudgeFeatures",
    "evaluate_generations",
    "fid_score",
    "find_inception_weights",
    "retained_accuracy",
    "unlearning_accuracy",
    "write_metrics",
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


def _check_classes(values: Tensor, num_classes: Optional[int], name: str) -> None:
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
    _check_classes(torch.tensor([forgotten_class]), num_classes, "forgotten_class")
    _check_classes(preds, num_classes, "judge_logits_or_preds")
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
    _check_classes(intended_classes, num_classes, "intended_classes")
    _check_classes(predicted, num_classes, "preds")
    return accuracy_percent(predicted, intended_classes.to(predicted.device))


# ---------------------------------------------------------------------------------------------------- judge
def _to_unit_range(images: Tensor) -> Tensor:
    """uint8 ``[0, 255]`` or float ``[-1, 1]`` images -> float32 in ``[0, 1]`` (floats are clamped first)."""
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not images.dtype.is_floating_point:
        raise ValueError(f"images must be float in [-1, 1] or uint8, got {images.dtype}")
    return (images.float().clamp(-1, 1) + 1) / 2


class Judge(nn.Module):
    """A trained classifier that judges generated images: predicted classes and penultimate-layer features.

    Images go in as float in ``[-1, 1]`` (a diffusion model's output range; values outside are clamped) or uint8
    in ``[0, 255]``, ``(B, C, H, W)`` on any device. They are resized to ``image_size`` (antialiased bilinear)
    when their size differs and normalised with the ``mean`` and ``std`` the classifier was trained with. The
    network always stays in evaluation mode. The features are the input of the last ``nn.Linear`` layer that the
    forward pass calls (the classification head), found once with a dummy forward pass.

    Args:
        net: the classifier, mapping normalised images to ``(B, num_classes)`` scores.
        mean: per-channel normalisation mean on the ``[0, 1]`` scale (one value per input channel).
        std: per-channel normalisation std on the ``[0, 1]`` scale.
        image_size: ``(H, W)`` the classifier takes.
        batch_size: images per forward pass in :meth:`predict` and :meth:`features`.

    Raises:
        ValueError: mismatched ``mean``/``std``, a non-positive std, image size or batch size, or a network
            without an ``nn.Linear`` head taking ``(B, d)`` features.

    Example::

        >>> net = build_classifier("small_resnet", num_classes=10, in_channels=1)
        >>> judge = Judge(net, mean=[0.3052], std=[0.3760], image_size=(8, 8))
        >>> judge.predict(torch.rand(4, 1, 16, 16) * 2 - 1).shape, judge.feature_dim
        (torch.Size([4]), 64)
    """

    def __init__(
        self,
        net: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        image_size: tuple[int, int],
        batch_size: int = 256,
    ) -> None:
        super().__init__()
        if len(mean) != len(std) or len(mean) == 0:
            raise ValueError(f"mean and std need one value per channel each, got {len(mean)} and {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std values must be positive, got {list(std)}")
        if len(image_size) != 2 or any(int(side) <= 0 for side in image_size):
            raise ValueError(f"image_size must be (H, W) with positive sides, got {image_size}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.net = net.eval()
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.batch_size = batch_size
        device = next(net.parameters(), torch.empty(0)).device
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32, device=device), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32, device=device), persistent=False)
        self.head_name, self.num_classes, self.feature_dim = self._find_head()

    @classmethod
    def load(
        cls,
        weights: PathLike,
        model: str,
        *,
        dataset: Optional[str] = None,
        num_classes: Optional[int] = None,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        image_size: Optional[tuple[int, int]] = None,
        batch_size: int = 256,
    ) -> Judge:
        """Build ``model`` and load a classifier module's weights (safetensors, state dict or Lightning checkpoint).

        ``dataset`` (a name in :data:`~salun_lightning.data.sources.KNOWN_DATASETS`) supplies the number of
        classes, the normalisation and the image size the classifier module trained with by default; explicit
        arguments override it. Without ``dataset`` all four are required (an image-folder dataset's mean and std
        are those its datamodule reported).

        Raises:
            FileNotFoundError: no file at ``weights``.
            ValueError: an unknown dataset, a missing setting, or weights that do not fit the model.

        Example::

            judge = Judge.load("runs/train/model.safetensors", "resnet18", dataset="cifar10")
            judge = Judge.load("runs/faces/model.safetensors", "small_resnet", num_classes=5,
                               mean=[0.5, 0.4, 0.4], std=[0.2, 0.2, 0.2], image_size=(64, 64))
        """
        if dataset is not None:
            if dataset not in KNOWN_DATASETS:
                raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(KNOWN_DATASETS)}")
            info = KNOWN_DATASETS[dataset]
            num_classes = num_classes if num_classes is not None else len(info.class_names)
            mean = mean if mean is not None else info.mean
            std = std if std is not None else info.std
            image_size = image_size if image_size is not None else info.image_shape[1:]
        settings = {"num_classes": num_classes, "mean": mean, "std": std, "image_size": image_size}
        missing = [name for name, value in settings.items() if value is None]
        if missing:
            raise ValueError(f"Judge.load needs {', '.join(missing)}: pass them, or dataset=<a known dataset>")
        net = build_classifier(model, num_classes, in_channels=len(mean))
        load_weights(net, os.fspath(weights))
        return cls(net, mean, std, image_size, batch_size)

    def train(self, mode: bool = True) -> Judge:
        """Keep the judge in evaluation mode whatever is asked (its batch norms must use running statistics)."""
        return super().train(False)

    def _find_head(self) -> tuple[str, int, int]:
        """The name of the last ``nn.Linear`` the forward pass calls, the number of classes and the feature size."""
        calls: list[tuple[str, Tensor]] = []

        def record(name: str) -> Any:
            return lambda module, args, output: calls.append((name, args[0]))

        hooks = [
            module.register_forward_hook(record(name))
            for name, module in self.net.named_modules()
            if isinstance(module, nn.Linear)
        ]
        try:
            logits = self._logits(torch.zeros(1, len(self.mean), *self.image_size, device=self.mean.device))
        finally:
            for hook in hooks:
                hook.remove()
        if not calls:
            raise ValueError(f"the judge's {type(self.net).__name__} calls no nn.Linear layer to take features from")
        head_name, features = calls[-1]
        if features.ndim != 2 or logits.ndim != 2:
            raise ValueError(
                f"the judge's last nn.Linear must map (B, d) features to (B, classes) scores, got input "
                f"{tuple(features.shape)} and output {tuple(logits.shape)}"
            )
        return head_name, logits.shape[1], features.shape[1]

    def _preprocess(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != len(self.mean):
            raise ValueError(f"images must have shape (B, {len(self.mean)}, H, W), got {tuple(images.shape)}")
        images = _to_unit_range(images.to(self.mean.device))
        if tuple(images.shape[-2:]) != self.image_size:
            images = F.interpolate(images, size=self.image_size, mode="bilinear", align_corners=False, antialias=True)
        return normalize(images, self.mean, self.std)

    @torch.no_grad()
    def _logits(self, images: Tensor) -> Tensor:
        return self.net(self._preprocess(images))

    def forward(self, images: Tensor) -> Tensor:
        """The judge's class scores ``(B, num_classes)`` for images in ``[-1, 1]`` (or uint8), in one pass."""
        return self._logits(images)

    def predict(self, images: Tensor) -> Tensor:
        """Predicted classes ``(B,)``, on the images' device, computed in batches of ``batch_size``.

        Example::

            preds = judge.predict(generated_images)  # (B,) int64
        """
        self._check_nonempty(images)
        preds = [self._logits(chunk).argmax(dim=1) for chunk in images.split(self.batch_size)]
        return torch.cat(preds).to(images.device)

    def features(self, images: Tensor) -> Tensor:
        """Penultimate-layer features ``(B, feature_dim)`` (the head's input), float32 on the images' device.

        Example::

            features = judge.features(generated_images)  # (B, judge.feature_dim)
        """
        self._check_nonempty(images)
        captured: list[Tensor] = []
        head = self.net.get_submodule(self.head_name)
        hook = head.register_forward_hook(lambda module, args, output: captured.append(args[0].float()))
        try:
            for chunk in images.split(self.batch_size):
                self._logits(chunk)
        finally:
            hook.remove()
        return torch.cat(captured).to(images.device)

    @staticmethod
    def _check_nonempty(images: Tensor) -> None:
        if images.ndim != 4 or images.shape[0] == 0:
            raise ValueError(f"images must be a non-empty (B, C, H, W) batch, got shape {tuple(images.shape)}")


class JudgeFeatures(nn.Module):
    """The judge's penultimate features as a torchmetrics FID feature extractor (``num_features`` is set).

    torchmetrics hands a custom extractor the images unchanged; this one takes what :class:`Judge` takes (float
    in ``[-1, 1]`` or uint8) and returns ``(B, d)`` features.

    Example::

        metric = FrechetInceptionDistance(feature=JudgeFeatures(judge))
    """

    def __init__(self, judge: Judge) -> None:
        super().__init__()
        self.judge = judge
        self.num_features = judge.feature_dim

    @property
    def name(self) -> str:
        """The feature extractor's name in reports, e.g. ``judge-penultimate-512``."""
        return f"judge-penultimate-{self.num_features}"

    def forward(self, images: Tensor) -> Tensor:
        return self.judge.features(images)


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

        weights = find_inception_weights()  # None without torch-fidelity or its cached weights
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
    images = images if images.dtype == torch.uint8 else (_to_unit_range(images) * 255).round().to(torch.uint8)
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def _check_image_set(images: Tensor, name: str) -> None:
    if images.ndim != 4 or images.shape[0] < 2:
        raise ValueError(f"{name} must be a (N, C, H, W) batch with N >= 2 for FID, got shape {tuple(images.shape)}")


def fid_score(
    real_images: Tensor,
    fake_images: Tensor,
    judge: Optional[Judge] = None,
    *,
    features: Literal["auto", "inception", "judge"] = "auto",
    inception_weights: Optional[PathLike] = None,
    batch_size: int = 256,
) -> tuple[float, str]:
    """FID between real and generated images, and the name of the features it used.

    ``features="auto"`` uses torchmetrics' 2048-d Inception-v3 features (:data:`INCEPTION_FEATURES`) when
    :func:`find_inception_weights` finds them, else the judge's penultimate features (``judge-penultimate-<d>``,
    see :class:`JudgeFeatures`). FIDs computed with different features are not comparable: report the name.

    Args:
        real_images: ``(N, C, H, W)`` real images, float in ``[-1, 1]`` or uint8, N >= 2.
        fake_images: ``(M, C, H, W)`` generated images, likewise.
        judge: supplies the fallback features; the computation runs on its device (else the real images').
        features: ``auto``, or force ``inception`` or ``judge`` features.
        inception_weights: the Inception weights file (default: torch-fidelity's file in the torch hub cache).
        batch_size: images per feature-extraction batch.

    Raises:
        ValueError: fewer than two images in a set, a bad ``features`` or ``batch_size``, or no features
            available (no Inception weights and no judge).
        FileNotFoundError, ModuleNotFoundError: ``inception_weights`` given but missing, or torch-fidelity missing.

    Example::

        fid, name = fid_score(real_images, generated_images, judge)  # name: "judge-penultimate-64"
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
    if weights is None and judge is None:
        raise ValueError("FID needs Inception weights (none at hand) or a judge: pass a judge to use its features")
    device = judge.mean.device if judge is not None else real_images.device
    if weights is not None:
        metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=os.fspath(weights))
        name, prepare = INCEPTION_FEATURES, _inception_input
    else:
        extractor = JudgeFeatures(judge)
        metric = FrechetInceptionDistance(feature=extractor)
        name, prepare = extractor.name, (lambda images: images)
    log.info("FID with %s features", name)
    metric = metric.to(device)
    for images, real in ((real_images, True), (fake_images, False)):
        for chunk in images.split(batch_size):
            metric.update(prepare(chunk.to(device)), real=real)
    return float(metric.compute()), name


# ---------------------------------------------------------------------------------------------------- all metrics
def evaluate_generations(
    judge: Judge,
    generations: dict[int, Tensor],
    forgotten_class: int,
    real_retained: Tensor,
    **fid_options: Any,
) -> dict[str, Any]:
    """UA, retained accuracy, per-class accuracy and retained-class FID of class-conditional generations.

    Args:
        judge: the classifier that judges the generations.
        generations: class -> ``(N_c, C, H, W)`` images generated for that class (float in ``[-1, 1]`` or uint8);
            the forgotten class and at least one retained class.
        forgotten_class: the class the diffusion model unlearned.
        real_retained: real images of the retained classes, FID's reference set.
        **fid_options: passed to :func:`fid_score` (``features``, ``inception_weights``, ``batch_size``).

    Returns:
        ``UA``, ``retained_accuracy`` and ``FID`` (floats, percentages for the first two), ``fid_features`` (the
        features' name), ``per_class_accuracy`` (class as a string -> the judge's accuracy on its generations) and
        ``generations_per_class``; ready for :func:`write_metrics`.

    Raises:
        ValueError: the forgotten class or every retained class missing, a class outside the judge's classes, or
            an empty set of generations (and :func:`fid_score`'s errors).

    Example::

        metrics = evaluate_generations(judge, {0: forgotten, 1: ones, 2: twos}, forgotten_class=0,
                                       real_retained=real_ones_and_twos)
        metrics["UA"], metrics["FID"], metrics["fid_features"]
    """
    classes = sorted(generations)
    _check_classes(torch.tensor([forgotten_class]), judge.num_classes, "forgotten_class")
    _check_classes(torch.tensor(classes, dtype=torch.long), judge.num_classes, "the classes of generations")
    if forgotten_class not in generations:
        raise ValueError(f"generations has no images of the forgotten class {forgotten_class}")
    retained = [c for c in classes if c != forgotten_class]
    if not retained:
        raise ValueError("generations has no retained class: FID and retained accuracy need one")
    empty = [c for c in classes if generations[c].ndim != 4 or generations[c].shape[0] == 0]
    if empty:
        raise ValueError(f"generations of classes {empty} are not non-empty (N, C, H, W) batches")
    preds = {c: judge.predict(generations[c]) for c in classes}
    retained_preds = torch.cat([preds[c] for c in retained])
    intended = torch.cat([torch.full_like(preds[c], c) for c in retained])
    fid, fid_features = fid_score(
        real_retained, torch.cat([generations[c] for c in retained]), judge, **fid_options
    )
    return {
        "forgotten_class": forgotten_class,
        "UA": unlearning_accuracy(preds[forgotten_class], forgotten_class),
        "retained_accuracy": retained_accuracy(retained_preds, intended),
        "FID": fid,
        "fid_features": fid_features,
        "per_class_accuracy": {str(c): 100.0 * (preds[c] == c).double().mean().item() for c in classes},
        "generations_per_class": {str(c): int(generations[c].shape[0]) for c in classes},
    }


def write_metrics(run_dir: PathLike, metrics: dict[str, Any]) -> Path:
    """Write ``metrics`` to ``<run_dir>/metrics.json`` atomically and return the path.

    Example::

        write_metrics("runs/diffusion_salun", {"method": "salun", "seed": 0, **metrics})
    """
    path = Path(run_dir) / METRICS_FILENAME
    write_json(path, metrics)
    return path
