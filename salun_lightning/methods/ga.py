"""``ga``: gradient ascent on D_f (the forget set's cross-entropy, maximised)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from salun_lightning.methods.base import ClassifierMethod, cross_entropy


class GradientAscent(ClassifierMethod):
    """Minus the cross-entropy of the forget set's true labels."""

    name = "ga"
    stream = "forget"

    def training_loss(self, module: Any, batch: dict[str, Any]) -> Tensor:
        return -cross_entropy(module, batch)
