"""``bs``: boundary shrink (Chen et al., CVPR 2023): relabel every forget sample as the class its nearest
adversarial neighbour falls into, and train on that label, forget data only.

The neighbour is one FGSM step of size ``epsilon`` in ``[0, 1]`` pixel space against a frozen copy of the original
model with the true label, clamped to ``[0, 1]`` and rounded to the 8-bit grid (as the official code's attack); the
new label is the frozen model's prediction on it. The network trains on the clean image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from salun_lightning.hyperparameters import Hyperparameters, require, tunable
from salun_lightning.methods.base import ClassifierMethod, cross_entropy, frozen_copy, move_frozen


def fgsm_neighbour(attacker: Callable[[Tensor], Tensor], pixels: Tensor, labels: Tensor, epsilon: float,
                   normalise: Callable[[Tensor], Tensor]) -> Tensor:
    """One signed-gradient step of ``epsilon`` on ``[0, 1]`` images that raises the attacker's loss on ``labels``,
    clamped to ``[0, 1]`` and rounded to multiples of 1/255; ``normalise`` maps pixels to the attacker's input."""
    pixels = pixels.detach().float().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(attacker(normalise(pixels)), labels)
        (gradient,) = torch.autograd.grad(loss, pixels)
    adversarial = (pixels + epsilon * gradient.sign()).clamp(0, 1)
    return (adversarial * 255).round() / 255


@dataclass(frozen=True)
class BoundaryShrinkHyperparameters(Hyperparameters):
    epsilon: float = tunable(0.1, 0.01, 0.5, log=True, doc="the FGSM step in [0, 1] pixel units")

    def check(self) -> None:
        require(self.epsilon > 0, f"bs: epsilon must be positive, got {self.epsilon}.")


class BoundaryShrink(ClassifierMethod):
    """Cross-entropy of each forget image against the frozen model's label for its FGSM neighbour."""

    name = "bs"
    stream = "forget"
    Hyperparameters = BoundaryShrinkHyperparameters

    def prepare(self, net: nn.Module) -> nn.Module:
        self.attacker = frozen_copy(net)
        return net

    def check_fit(self, trainer: Any) -> None:
        data = trainer.datamodule
        if not (hasattr(data, "mean") and hasattr(data, "std")):
            raise ValueError("bs attacks in pixel space and needs the data's normalisation: train it with an "
                             "UnlearningDataModule (or a data module with mean and std attributes).")

    def on_fit_start(self, module: Any) -> None:
        data = module.trainer.datamodule
        move_frozen(self.attacker, module)
        shape = (1, -1, 1, 1)
        self.mean = torch.tensor(data.mean, device=module.device).view(shape)
        self.std = torch.tensor(data.std, device=module.device).view(shape)

    def training_loss(self, module: Any, batch: dict[str, Any]) -> Tensor:
        pixels = batch["image"].float() * self.std + self.mean
        neighbours = fgsm_neighbour(lambda x: module.forward_with(self.attacker, x), pixels, batch["label"],
                                    self.hparams.epsilon, lambda x: (x - self.mean) / self.std)
        with torch.no_grad():
            labels = module.forward_with(self.attacker, (neighbours - self.mean) / self.std).argmax(1)
        return cross_entropy(module, batch, labels)
