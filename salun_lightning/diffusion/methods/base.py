"""What a diffusion unlearning method is: the base class every method of :mod:`salun_lightning.diffusion.methods`
extends.

A method says what it trains on (:attr:`~DiffusionMethod.stream`, served by
:class:`~salun_lightning.diffusion.DiffusionDataModule`), whether it starts from the original denoiser, whether it
takes the saliency mask, which of the model's arguments it reads (its hyper-parameters: a
:class:`~salun_lightning.hyperparameters.Hyperparameters` dataclass), and its loss through the hooks below.
:class:`~salun_lightning.diffusion.DiffusionUnlearningModule` calls the hooks and does everything else (optimizer,
saliency callback, saving, run directory); it never asks which method it runs.

Frozen models a method needs (ESD's copy of the original denoiser, Forget-Me-Not's attention recorder) live on the
method object, so that they are no submodule of the LightningModule: not saved, not optimised, never put in train
mode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from lightning.pytorch import Callback
from torch import Tensor

from salun_lightning.hyperparameters import SALIENCY_RATIO_RANGE, Hyperparameters, SearchRange, tunable

if TYPE_CHECKING:  # the module imports the methods, not the other way round
    from salun_lightning.diffusion.module import DiffusionUnlearningModule


class DiffusionMethod:
    """Base of every diffusion unlearning method (subclass it, then add it to the registry).

    Class attributes:
        name: the method's name in configs (``method``) and in ``run.json``.
        stream: the training stream: ``full``, ``retain``, ``forget`` or ``forget_retain`` (batches
            ``{"forget": ..., "retain": ...}``, an epoch one pass over the forget set).
        from_original: starts from the trained denoiser's weights (else from fresh ones, the directory giving only
            its config).
        takes_mask: trains under the weight saliency mask (and takes ``mask_path`` and ``save_mask_path``).
        erases_concept: erases the concept of a prompt (``concept_prompt``): text-to-image models only.
        uses_concept: reads ``concept``, the words of the concept prompt it acts on.
        uses_pseudo: conditions its forget target on the pseudo condition ``c_p`` (``pseudo``).
        shardable: works with a denoiser sharded by FSDP2 (a method that copies the denoiser or replaces its
            attention processors does not).
        Hyperparameters: the method's hyper-parameters; each field is the model's constructor argument of the same
            name (and default), which the model checks.
        lr_range, steps_range: where a tuner searches the learning rate and the number of training steps (the same
            for every method, so that an equal budget of trials is an equal search: ESD's own 1,000 steps inside).
    """

    name: ClassVar[str]
    stream: ClassVar[str]
    from_original: ClassVar[bool] = True
    takes_mask: ClassVar[bool] = False
    erases_concept: ClassVar[bool] = False
    uses_concept: ClassVar[bool] = False
    uses_pseudo: ClassVar[bool] = False
    shardable: ClassVar[bool] = True
    Hyperparameters: ClassVar[type[Hyperparameters]] = Hyperparameters
    lr_range: ClassVar[SearchRange] = SearchRange(1e-6, 1e-3, log=True)
    steps_range: ClassVar[SearchRange] = SearchRange(10, 1000, log=True)

    def __init__(self, hparams: Optional[Hyperparameters] = None) -> None:
        self.hparams = hparams if hparams is not None else self.Hyperparameters()

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any]) -> DiffusionMethod:
        """The method with its hyper-parameters taken from the model's (already checked) constructor arguments."""
        fields = dataclasses.fields(cls.Hyperparameters)
        return cls(cls.Hyperparameters(**{field.name: arguments[field.name] for field in fields}))

    @classmethod
    def tuning_space(cls, masked: bool) -> dict[str, SearchRange]:
        """What a tuner searches for this method: ``lr``, ``max_steps`` (integers), ``saliency_ratio`` when it runs
        under a mask, and its own tunable hyper-parameters (the model's constructor arguments of the same names).

        Example::

            >>> from salun_lightning.diffusion.methods import METHODS
            >>> sorted(METHODS["salun"].tuning_space(masked=True))
            ['alpha', 'lr', 'max_steps', 'saliency_ratio']
            >>> sorted(METHODS["fmn"].tuning_space(masked=False))
            ['lr', 'max_steps']
        """
        space = {"lr": cls.lr_range, "max_steps": cls.steps_range}
        if masked and cls.takes_mask:
            space["saliency_ratio"] = SALIENCY_RATIO_RANGE
        return {**space, **cls.Hyperparameters.search_space()}

    # ----------------------------------------------------------------------------------------- construction
    def prepare(self, module: DiffusionUnlearningModule) -> None:
        """At the end of the model's ``__init__``: resolve what the method needs and choose the trained weights."""

    # ----------------------------------------------------------------------------------------- the fit
    def setup_fit(self, module: DiffusionUnlearningModule) -> None:
        """In ``setup("fit")``, before Lightning restores a checkpoint: make frozen copies of the original weights."""

    def on_fit_start(self, module: DiffusionUnlearningModule) -> None:
        """At fit start (the model in train mode): move frozen parts to the device, install recorders."""

    def on_fit_end(self, module: DiffusionUnlearningModule) -> None:
        """At fit end, before the model is saved: undo what :meth:`on_fit_start` installed."""

    def callbacks(self, module: DiffusionUnlearningModule) -> list[Callback]:
        """Callbacks the method needs besides the saliency callback."""
        return []

    def training_loss(self, module: DiffusionUnlearningModule, batch: dict[str, Any]) -> Tensor:
        """The loss of one training batch of :attr:`stream` (the model logs it as ``train/loss``)."""
        raise NotImplementedError(f"method {self.name!r} defines no training_loss.")

    def run_record(self, module: DiffusionUnlearningModule) -> dict[str, Any]:
        """What ``run.json`` records of the method besides its name (e.g. the erased concept's prompt)."""
        return {}


@dataclass(frozen=True)
class RetainWeight(Hyperparameters):
    """The hyper-parameter of the forget/retain methods (``ga``, ``rl``, ``salun``)."""

    alpha: float = tunable(1e-3, 1e-4, 1.0, log=True, doc="the retain loss's weight (paper: 1e-3 DDPM, 0.5 SD)")


def log_forget_retain(module: DiffusionUnlearningModule, batch: dict[str, Any], forget: Tensor, retain: Tensor
                      ) -> None:
    """Log a forget/retain step's two losses (``train/forget_loss``, ``train/retain_loss``)."""
    size = len(batch["forget"]["image"])
    module.log_dict({"train/forget_loss": forget, "train/retain_loss": retain}, batch_size=size)
