"""``scrub``: a student that moves away from its frozen teacher (the original model) on D_f and stays close to it
on D_r (SCRUB, Kurmanji et al., NeurIPS 2023).

``d = T² · KL(softmax(teacher / T) ‖ softmax(student / T))``, averaged over the batch. Every epoch streams D_f, then
D_r (the sequential schedule, in batches of one block each): during the first ``msteps`` epochs every forget batch
is a max step (minimise ``-d``), later forget batches are skipped; every retain batch is a min step (minimise
``gamma · CE + alpha · d``). One optimizer makes both kinds of step, as the official code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor
from torch.nn import functional as F

from salun_lightning.hyperparameters import Hyperparameters, SearchRange, fixed, require, tunable
from salun_lightning.methods.base import ClassifierMethod, frozen_copy, move_frozen


def distillation_divergence(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``T² · KL(softmax(teacher / T) ‖ softmax(student / T))`` summed over classes, averaged over the batch.

    Example::

        >>> logits = torch.tensor([[2.0, 0.0, -1.0]])
        >>> float(distillation_divergence(logits, logits, 4.0))
        0.0
    """
    log_student = F.log_softmax(student.float() / temperature, dim=1)
    teacher_probabilities = F.softmax(teacher.float() / temperature, dim=1)
    return F.kl_div(log_student, teacher_probabilities, reduction="batchmean") * temperature**2


@dataclass(frozen=True)
class ScrubHyperparameters(Hyperparameters):
    alpha: float = tunable(0.001, 1e-4, 1.0, log=True, doc="the divergence's weight in the min steps")
    gamma: float = tunable(0.99, 0.1, 1.0, doc="the retain cross-entropy's weight in the min steps")
    msteps: int = tunable(2, 1, 5, doc="the epochs that make max steps on D_f")
    temperature: float = fixed(4.0, doc="the distillation temperature T")

    def check(self) -> None:
        require(self.alpha >= 0 and self.gamma >= 0, f"scrub: alpha and gamma must be non-negative, got {self.alpha} "
                f"and {self.gamma}.")
        require(self.msteps >= 0, f"scrub: msteps must be non-negative, got {self.msteps}.")
        require(self.temperature > 0, f"scrub: temperature must be positive, got {self.temperature}.")


class Scrub(ClassifierMethod):
    """Max steps on D_f against a frozen teacher for ``msteps`` epochs, min steps on D_r every epoch."""

    name = "scrub"
    stream = "forget_retain"
    Hyperparameters = ScrubHyperparameters

    @classmethod
    def tuning_space(cls, masked: bool, max_epochs: Optional[int] = None) -> dict[str, SearchRange]:
        """As every method's, with ``msteps`` at most the fit's epochs."""
        space = super().tuning_space(masked, max_epochs)
        msteps = space["msteps"]
        if max_epochs is not None and max_epochs >= 0:
            space["msteps"] = SearchRange(min(msteps.low, max_epochs), min(msteps.high, max_epochs), msteps.log)
        return space

    def prepare(self, net: torch.nn.Module) -> torch.nn.Module:
        self.teacher = frozen_copy(net)
        return net

    def check_fit(self, trainer: Any) -> None:
        epochs = trainer.max_epochs
        if epochs is not None and epochs >= 0 and self.hparams.msteps > epochs:
            raise ValueError(f"scrub: msteps ({self.hparams.msteps}) is larger than the fit's max_epochs ({epochs}); "
                             "lower msteps or train for more epochs.")
        schedule = getattr(trainer.datamodule, "schedule", "sequential")
        if schedule != "sequential":
            raise ValueError(f"scrub streams D_f then D_r every epoch, but the data module's schedule is {schedule!r}: "
                             "set data.init_args.schedule: sequential.")

    def on_fit_start(self, module: Any) -> None:
        move_frozen(self.teacher, module)

    def training_loss(self, module: Any, batch: dict[str, Any]) -> Optional[Tensor]:
        forget_batch = bool(batch["is_forget"].all())
        if forget_batch and module.current_epoch >= self.hparams.msteps:
            return None  # the max steps are over: later epochs train on D_r only
        logits = module(batch["image"])
        module.log_accuracy(logits, batch["label"])
        with torch.no_grad():
            teacher = module.forward_with(self.teacher, batch["image"])
        divergence = distillation_divergence(logits, teacher, self.hparams.temperature)
        module.log("train/divergence", divergence)
        if forget_batch:
            return -divergence
        return self.hparams.gamma * F.cross_entropy(logits, batch["label"]) + self.hparams.alpha * divergence
