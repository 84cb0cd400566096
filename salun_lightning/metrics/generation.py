"""Metrics of generated images (docs/method.md, 'Generation metrics'): UA and retained accuracy from a judge's
predictions, FID and CLIP score.

UA is the percentage of forgotten-class generations a judge classifier does not assign to the forgotten class;
retained accuracy is its accuracy on the other classes' generations. FID uses torchmetrics'
``FrechetInceptionDistance`` with 2048-d Inception-v3 features when torch-fidelity and its Inception weights are
on disk (nothing is ever downloaded), and otherwise fallback features (a judge's penultimate layer); every result
names the features it used. CLIP score (:func:`clip_score`) uses torchmetrics' ``CLIPScore`` with a CLIP model from
a local directory, and only from one: there is no fallback, and nothing is downloaded. The judge itself lives in
:mod:`salun_lightning.diffusion.evaluation`; nudity counts in :mod:`salun_lightning.metrics.nudity`.

Example::

    >>> unlearning_accuracy(torch.tensor([0, 0, 3, 1]), forgotten_class=0)
    50.0
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
from torchmetrics.image.fid import FrechetInceptionDistance

from salun_lightning.metrics.functional import accuracy_percent

__all__ = [
    "CLIP_FILES",
    "INCEPTION_FEATURES",
    "clip_score",
    "fid_score",
    "find_inception_weights",
    "load_clip",
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


def _uint8_rgb(images: Tensor) -> Tensor:
    """uint8 RGB in ``[0, 255]``: what torchmetrics' Inception takes (it resizes to 299 itself), and what CLIP's
    image processor takes (it rescales by 1/255 itself)."""
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
        name, prepare = INCEPTION_FEATURES, _uint8_rgb
    else:
        metric = FrechetInceptionDistance(feature=fallback_features)
        name, prepare = fallback_features.name, (lambda images: images)
    log.info("FID with %s features", name)
    metric = metric.to(device)
    for images, real in ((real_images, True), (fake_images, False)):
        for chunk in images.split(batch_size):
            metric.update(prepare(chunk.to(device)), real=real)
    return float(metric.compute()), name


# ---------------------------------------------------------------------------------------------------- CLIP score
CLIP_FILES = ("config.json", "model.safetensors or pytorch_model.bin", "the processor's and tokenizer's files")


class _ClipFeatures(nn.Module):
    """A transformers ``CLIPModel`` as torchmetrics' ``CLIPScore`` uses it, with features always tensors.

    transformers 5 returns a ``BaseModelOutputWithPooling`` from ``get_image_features`` and ``get_text_features``
    (the projected embeddings are its ``pooler_output``); torchmetrics 1.9 takes the return value as the embeddings
    and fails (Lightning-AI/torchmetrics#3407; the fix, #3408, is not in 1.9.0). transformers 4 returns the tensor.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    @staticmethod
    def _tensor(output: Any) -> Tensor:
        return output if isinstance(output, Tensor) else output.pooler_output

    def get_image_features(self, *args: Any, **kwargs: Any) -> Tensor:
        return self._tensor(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args: Any, **kwargs: Any) -> Tensor:
        return self._tensor(self.model.get_text_features(*args, **kwargs))


class _TruncatingProcessor:
    """A CLIP processor whose prompts the tokenizer truncates to the text model's length.

    torchmetrics tokenises without truncation and then cuts the token ids of longer prompts, which drops the
    end-of-text token whose embedding CLIP pools; the tokenizer's truncation keeps it (as CLIP's own tokenisation
    does). I2P prompts can be longer than CLIP's 77 tokens.
    """

    def __init__(self, processor: Any, max_length: int) -> None:
        self.processor = processor
        self.max_length = max_length

    def __call__(self, *args: Any, text: Any = None, **kwargs: Any) -> Any:
        if text is not None:
            kwargs.update(truncation=True, max_length=self.max_length)
        return self.processor(*args, text=text, **kwargs)


def load_clip(model_path: PathLike) -> tuple[nn.Module, Any]:
    """A CLIP model (in evaluation mode) and its processor from a local directory; never downloads.

    The directory is what ``CLIPModel.save_pretrained`` and ``CLIPProcessor.save_pretrained`` write (for instance a
    copy of ``openai/clip-vit-large-patch14``, the model torchmetrics uses by default): ``config.json``, the
    weights and the processor's and tokenizer's files.

    Raises:
        FileNotFoundError: no such directory, or no ``config.json`` in it.
        ValueError: the directory does not hold a loadable CLIP model and processor.

    Example::

        >>> load_clip("no/such/clip")
        Traceback (most recent call last):
            ...
        FileNotFoundError: CLIP model directory 'no/such/clip' does not exist; ...
    """
    from transformers import CLIPModel, CLIPProcessor

    path = Path(model_path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"CLIP model directory {os.fspath(model_path)!r} does not exist; give a local directory holding "
            f"{', '.join(CLIP_FILES)} (what CLIPModel and CLIPProcessor save_pretrained write)"
        )
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path} holds no config.json: it is not a saved CLIP model (save_pretrained writes one)"
        )
    try:
        model = CLIPModel.from_pretrained(path, local_files_only=True)
        processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{path} does not hold a loadable CLIP model and processor ({error}); it needs {', '.join(CLIP_FILES)}"
        ) from None  # the message carries the cause
    return model.eval(), processor


def clip_score(
    images: Tensor,
    prompts: Sequence[str],
    model_path: Optional[PathLike],
    *,
    batch_size: int = 64,
) -> float:
    """CLIP score of images against their prompts: torchmetrics' ``CLIPScore`` with a CLIP model from a local
    directory (:func:`load_clip`); nothing is ever downloaded.

    The value is torchmetrics': ``max(100 * mean_i cos(E_I_i, E_C_i), 0)``, with ``E_I`` and ``E_C`` the CLIP
    image and text embeddings. The clamp at 0 applies to the mean, not to each pair as in Hessel et al. (2021);
    the two agree whenever no cosine is negative, as for a trained CLIP on its prompts. Prompts longer than the
    text model takes are truncated by the tokenizer (the end-of-text token kept). Report the CLIP model with the
    figure: scores of different CLIP models are not comparable.

    Args:
        images: ``(N, C, H, W)`` images, uint8 in ``[0, 255]`` or float in ``[-1, 1]``, RGB or grey (C = 1 or 3);
            the processor resizes and crops them. The computation runs on their device.
        prompts: the N prompts, one per image.
        model_path: the local CLIP directory; ``None`` is refused.
        batch_size: images per forward pass.

    Raises:
        ValueError: no ``model_path``, a bad image shape or dtype, a prompt count that differs from the image
            count, a non-positive ``batch_size``, or a directory without a loadable CLIP.
        FileNotFoundError: ``model_path`` missing.

    Example::

        >>> clip_score(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), ["a photo"], model_path=None)
        Traceback (most recent call last):
            ...
        ValueError: CLIP score needs a local CLIP model directory (model_path=<dir> with config.json, ...
    """
    from torchmetrics.multimodal.clip_score import CLIPScore

    if model_path is None:
        raise ValueError(
            f"CLIP score needs a local CLIP model directory (model_path=<dir> with {', '.join(CLIP_FILES)}, e.g. a "
            "saved openai/clip-vit-large-patch14); nothing is downloaded here"
        )
    if images.ndim != 4 or images.shape[0] == 0 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be a non-empty (N, C, H, W) batch with C = 1 or 3, got {tuple(images.shape)}")
    if images.dtype != torch.uint8 and not images.dtype.is_floating_point:
        raise ValueError(f"images must be uint8 in [0, 255] or float in [-1, 1], got {images.dtype}")
    if isinstance(prompts, str) or len(prompts) != images.shape[0] or not all(isinstance(p, str) for p in prompts):
        count = "a string" if isinstance(prompts, str) else f"{len(prompts)} entries"
        raise ValueError(f"prompts must be a list of {images.shape[0]} strings, one per image, got {count}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    model, processor = load_clip(model_path)
    max_length = min(model.config.text_config.max_position_embeddings, processor.tokenizer.model_max_length)
    wrapped = (_ClipFeatures(model), _TruncatingProcessor(processor, max_length))
    metric = CLIPScore(model_name_or_path=lambda: wrapped).to(images.device)
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            chunk = _uint8_rgb(images[start : start + batch_size])
            metric.update(list(chunk), list(prompts[start : start + batch_size]))
    return float(metric.compute())
