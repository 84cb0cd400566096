"""Judging a diffusion model's generations with a trained classifier (docs/method.md, 'Generation metrics').

A classifier trained by :class:`~salun_lightning.classifier.ClassifierUnlearningModule` judges the generations
(:class:`Judge`); :func:`evaluate_generations` gives UA, retained-class accuracy and FID
(:mod:`salun_lightning.metrics.generation`), and :func:`write_metrics` writes them into the run directory.

Example::

    >>> import tempfile
    >>> from pathlib import Path
    >>> import torch
    >>> from salun_lightning.diffusion.evaluation import Judge, evaluate_generations, write_metrics
    >>> from salun_lightning.models import build_classifier, save_weights
    >>> run = Path(tempfile.mkdtemp())
    >>> save_weights(build_classifier("small_resnet", 10, in_channels=1), run / "judge.safetensors")  # a trained one
    >>> judge = Judge.load(run / "judge.safetensors", "small_resnet", dataset="digits")
    >>> generations = {c: torch.rand(8, 1, 8, 8) * 2 - 1 for c in range(3)}  # images in [-1, 1] per class
    >>> real_retained = torch.rand(16, 1, 8, 8) * 2 - 1  # real images of classes 1 and 2
    >>> metrics = evaluate_generations(judge, generations, forgotten_class=0, real_retained=real_retained,
    ...                                features="judge")
    >>> metrics["UA"] == 100 - metrics["per_class_accuracy"]["0"], metrics["generations_per_class"]
    (True, {'0': 8, '1': 8, '2': 8})
    >>> write_metrics(run, {"method": "salun", "seed": 0, **metrics}).name
    'metrics.json'
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from salun_lightning.data import normalize
from salun_lightning.data.sources import KNOWN_DATASETS
from salun_lightning.metrics.generation import (
    check_class_range,
    fid_score,
    retained_accuracy,
    to_unit_range,
    unlearning_accuracy,
)
from salun_lightning.models import build_classifier, load_weights
from salun_lightning.runs import METRICS_FILENAME, RUN_FILENAME, write_output

__all__ = ["Judge", "JudgeFeatures", "evaluate_generations", "write_metrics"]

PathLike = Union[str, os.PathLike]


# ---------------------------------------------------------------------------------------------------- judge
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

            >>> import tempfile
            >>> from salun_lightning.models import save_weights
            >>> run = Path(tempfile.mkdtemp())
            >>> save_weights(build_classifier("small_resnet", 10, in_channels=1), run / "model.safetensors")
            >>> judge = Judge.load(run / "model.safetensors", "small_resnet", dataset="digits")
            >>> judge.num_classes, judge.image_size, judge.mean.tolist()
            (10, (8, 8), [0.3052000105381012])
            >>> save_weights(build_classifier("small_resnet", 5, in_channels=3), run / "faces.safetensors")
            >>> judge = Judge.load(run / "faces.safetensors", "small_resnet", num_classes=5,
            ...                    mean=[0.5, 0.4, 0.4], std=[0.2, 0.2, 0.2], image_size=(64, 64))
            >>> judge.num_classes, judge.image_size
            (5, (64, 64))
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
        images = to_unit_range(images.to(self.mean.device))
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

            >>> judge = Judge(build_classifier("small_resnet", 10, in_channels=1), [0.3052], [0.3760], (8, 8))
            >>> preds = judge.predict(torch.rand(5, 1, 8, 8) * 2 - 1)  # generated images in [-1, 1]
            >>> preds.shape, preds.dtype, bool(((preds >= 0) & (preds < 10)).all())
            (torch.Size([5]), torch.int64, True)
        """
        self._check_nonempty(images)
        preds = [self._logits(chunk).argmax(dim=1) for chunk in images.split(self.batch_size)]
        return torch.cat(preds).to(images.device)

    def features(self, images: Tensor) -> Tensor:
        """Penultimate-layer features ``(B, feature_dim)`` (the head's input), float32 on the images' device.

        Example::

            >>> judge = Judge(build_classifier("small_resnet", 10, in_channels=1), [0.3052], [0.3760], (8, 8))
            >>> judge.features(torch.rand(5, 1, 8, 8) * 2 - 1).shape  # (B, judge.feature_dim)
            torch.Size([5, 64])
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

        >>> from torchmetrics.image.fid import FrechetInceptionDistance
        >>> judge = Judge(build_classifier("small_resnet", 10, in_channels=1), [0.3052], [0.3760], (8, 8))
        >>> features = JudgeFeatures(judge)
        >>> features.name, features.num_features
        ('judge-penultimate-64', 64)
        >>> metric = FrechetInceptionDistance(feature=features)
        >>> images = torch.rand(16, 1, 8, 8) * 2 - 1
        >>> metric.update(images, real=True)
        >>> metric.update(images, real=False)
        >>> abs(float(metric.compute())) < 1e-3  # a set against itself
        True
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

        >>> judge = Judge(build_classifier("small_resnet", 10, in_channels=1), [0.3052], [0.3760], (8, 8))
        >>> forgotten, ones, twos = (torch.rand(6, 1, 8, 8) * 2 - 1 for _ in range(3))
        >>> real_ones_and_twos = torch.rand(12, 1, 8, 8) * 2 - 1
        >>> metrics = evaluate_generations(judge, {0: forgotten, 1: ones, 2: twos}, forgotten_class=0,
        ...                                real_retained=real_ones_and_twos, features="judge")
        >>> sorted(metrics)  # doctest: +NORMALIZE_WHITESPACE
        ['FID', 'UA', 'fid_features', 'forgotten_class', 'generations_per_class', 'per_class_accuracy',
         'retained_accuracy']
        >>> metrics["fid_features"], metrics["per_class_accuracy"].keys()
        ('judge-penultimate-64', dict_keys(['0', '1', '2']))
    """
    classes = sorted(generations)
    check_class_range(torch.tensor([forgotten_class]), judge.num_classes, "forgotten_class")
    check_class_range(torch.tensor(classes, dtype=torch.long), judge.num_classes, "the classes of generations")
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
        real_retained, torch.cat([generations[c] for c in retained]), JudgeFeatures(judge), **fid_options
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
    """Write ``metrics`` to ``<run_dir>/metrics.json`` atomically and return the path; with the ``run_id`` of the
    run's ``run.json`` when it has one (``salun report`` checks it against the forget set's), and never over a
    ``metrics.json`` that no run wrote.

    Example::

        >>> import json, tempfile
        >>> path = write_metrics(tempfile.mkdtemp(), {"method": "salun", "seed": 0, "UA": 97.5})
        >>> path.name, json.loads(path.read_text())
        ('metrics.json', {'method': 'salun', 'seed': 0, 'UA': 97.5})
    """
    run_dir = Path(run_dir)
    run_record = run_dir / RUN_FILENAME
    run_id = json.loads(run_record.read_text()).get("run_id") if run_record.is_file() else None
    write_output(run_dir, METRICS_FILENAME, {**metrics, "run_id": run_id} if run_id else metrics)
    return run_dir / METRICS_FILENAME
