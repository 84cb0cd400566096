"""``neggrad_plus``: descend on D_r while ascending on D_f, one retain batch paired with one forget batch
(NegGrad+, Kurmanji et al., NeurIPS 2023)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor
from torch.nn import functional as F

from salun_lightning.hyperparameters import Hyperparameters, require, tunable
from salun_lightning.methods.base import ClassifierMethod, cross_entropy


@dataclass(frozen=True)
class NegGradPlusHyperparameters(Hyperparameters):
    beta: float = tunable(0.95, 0.5, 0.9999, doc="the retain loss's weight; the forget loss gets 1 - beta")

    def check(self) -> None:
        require(0 <= self.beta <= 1, f"neggrad_plus: beta must be in [0, 1], got {self.beta}.")


class NegGradPlus(ClassifierMethod):
    """``beta · CE(retain batch) - (1 - beta) · CE(forget batch)``, the forget loader cycled over an epoch of D_r.

    Example::

        >>> NegGradPlus.from_mapping({"beta": 0.9}).hparams.beta
        0.9
    """

    name = "neggrad_plus"
    stream = "paired"
    Hyperparameters = NegGradPlusHyperparameters

    def training_loss(self, module: Any, batch: dict[str, Any]) -> Tensor:
        beta = self.hparams.beta
        retain = cross_entropy(module, batch["retain"])
        forget = F.cross_entropy(module(batch["forget"]["image"]), batch["forget"]["label"])
        return beta * retain - (1 - beta) * forget
