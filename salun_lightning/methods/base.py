"""What a classifier unlearning method is: the base class every method of :mod:`salun_lightning.methods` extends.

A method says what it trains on (``stream``, served by :class:`~salun_lightning.data.UnlearningDataModule`), whether
it starts from the original model, whether it takes the saliency mask (and why not), its hyper-parameters (a
:class:`~salun_lightning.hyperparameters.Hyperparameters` dataclass), and its loss or update through the hooks below.
:class:`~salun_lightning.ClassifierUnlearningModule` calls the hooks and does everything else (optimizer, data
stream check, saliency callback, saving, metrics, run directory); it never asks which method it runs.

Frozen models a method needs (a teacher, an attacker) are made by :func:`frozen_copy` and kept on the method object,
so that they are no submodule of the LightningModule: they are not saved, not optimised and never put in train mode.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, ClassVar, Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from salun_lightning.hyperparameters import SALIENCY_RATIO_RANGE, Hyperparameters, SearchRange

if TYPE_CHECKING:  # the module imports the methods, not the other way round
    from lightning.pytorch import Trainer

    from salun_lightning.classifier import ClassifierUnlearningModule


def frozen_copy(net: nn.Module) -> nn.Module:
    """A copy of ``net`` that shares no storage with it, needs no gradients and stays in eval mode."""
    frozen = copy.deepcopy(net).requires_grad_(False).eval()
    frozen.train = lambda mode=True: frozen  # a parent's .train() never reaches it (it is no submodule anyway)
    return frozen


def last_linear(net: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """The network's last ``nn.Linear`` (its classification head) as ``(parent, attribute, layer)``.

    Raises:
        ValueError: the network has no ``nn.Linear``.
    """
    found = None
    for parent in net.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                found = (parent, name, child)
    if found is None:
        raise ValueError(f"{type(net).__name__} has no nn.Linear head: this method needs a classifier ending in one.")
    return found


class ClassifierMethod:
    """Base of every classifier unlearning method (subclass it, then add it to the registry).

    Class attributes:
        name: the method's name in configs and saved models.
        stream: the training stream: ``full``, ``retain``, ``forget``, ``forget_retain`` (D_f and D_r in one stream,
            ``batch["is_forget"]`` marks forget samples), ``paired`` (batches ``{"retain": ..., "forget": ...}``, the
            forget loader cycled) or ``none`` (no training step: a one-shot update in :meth:`on_fit_start`).
        from_original: starts from the original model's weights (else from fresh ones).
        mask_refusal: why the method cannot take a saliency mask (``None``: it can).
        default_saliency_ratio: the mask ratio used when the config gives none (``None``: no mask by default).
        Hyperparameters: the method's hyper-parameters.
        lr_range: where a tuner searches the learning rate (``None``: the method takes no optimizer step).
    """

    name: ClassVar[str]
    stream: ClassVar[str]
    from_original: ClassVar[bool] = True
    mask_refusal: ClassVar[Optional[str]] = None
    default_saliency_ratio: ClassVar[Optional[float]] = None
    Hyperparameters: ClassVar[type[Hyperparameters]] = Hyperparameters
    lr_range: ClassVar[Optional[SearchRange]] = SearchRange(1e-5, 1e-1, log=True)

    def __init__(self, hparams: Optional[Hyperparameters] = None) -> None:
        self.hparams = hparams if hparams is not None else self.Hyperparameters()

    @classmethod
    def from_mapping(cls, values: Optional[dict[str, Any]]) -> ClassifierMethod:
        """The method with its hyper-parameters from a config's ``method_args`` (checked: see
        :meth:`~salun_lightning.hyperparameters.Hyperparameters.from_mapping`)."""
        return cls(cls.Hyperparameters.from_mapping(values, cls.name))

    @classmethod
    def tuning_space(cls, masked: bool, max_epochs: Optional[int] = None) -> dict[str, SearchRange]:
        """What a tuner searches for this method: ``lr`` (when it trains), ``saliency_ratio`` (when it runs under a
        mask) and its own tunable hyper-parameters, for a fit of ``max_epochs`` epochs.

        Example::

            >>> from salun_lightning.methods import METHODS
            >>> sorted(METHODS["salun"].tuning_space(masked=True))
            ['lr', 'saliency_ratio']
            >>> sorted(METHODS["iu"].tuning_space(masked=False))
            ['alpha']
        """
        space = {"lr": cls.lr_range} if cls.lr_range is not None else {}
        if masked:
            space["saliency_ratio"] = SALIENCY_RATIO_RANGE
        return {**space, **cls.Hyperparameters.search_space()}

    # ----------------------------------------------------------------------------------------- construction
    def prepare(self, net: nn.Module) -> nn.Module:
        """Called once the network holds its starting weights; returns the network to train (``be`` widens it) and
        makes the frozen copies the method needs."""
        return net

    def output_classes(self, num_classes: int) -> int:
        """The number of outputs the tested network has (``be`` keeps an extra one)."""
        return num_classes

    def tested_network(self, net: nn.Module) -> nn.Module:
        """The network to save and test, from the trained one (``be`` may prune its extra output); also applied
        before a saved model is loaded into the module."""
        return net

    def check_fit(self, trainer: Trainer) -> None:
        """Refuse, before any work, a fit this method cannot do right (e.g. fewer epochs than it needs)."""

    # ----------------------------------------------------------------------------------------- the fit
    def on_fit_start(self, module: ClassifierUnlearningModule) -> None:
        """After the saliency mask exists: move frozen copies to the device; a one-shot method updates here."""

    def on_train_epoch_start(self, module: ClassifierUnlearningModule) -> None:
        """At the start of every training epoch."""

    def training_loss(self, module: ClassifierUnlearningModule, batch: dict[str, Any]) -> Optional[Tensor]:
        """The loss of one training batch (``None`` skips the optimizer step)."""
        raise NotImplementedError(f"method {self.name!r} has no training step (stream 'none').")

    def after_optimizer_step(self, module: ClassifierUnlearningModule) -> None:
        """After every optimizer step (``salun_soft`` soft-thresholds here)."""


def cross_entropy(module: ClassifierUnlearningModule, batch: dict[str, Any], targets: Optional[Tensor] = None
                  ) -> Tensor:
    """Cross-entropy of the module's predictions on ``batch`` against ``targets`` (default: the true labels); logs
    the batch's accuracy against the true labels as ``train/accuracy``."""
    logits = module(batch["image"])
    module.log_accuracy(logits, batch["label"])
    return F.cross_entropy(logits, batch["label"] if targets is None else targets)


def move_frozen(frozen: nn.Module, module: ClassifierUnlearningModule) -> nn.Module:
    """``frozen`` on the module's device, in its memory format."""
    frozen.to(module.device)
    if module.uses_channels_last:
        frozen.to(memory_format=torch.channels_last)
    return frozen
