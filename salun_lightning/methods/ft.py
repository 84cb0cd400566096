"""``ft``: fine-tune the original model on D_r (catastrophic forgetting of D_f)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from salun_lightning.methods.base import ClassifierMethod, cross_entropy


class FineTune(ClassifierMethod):
    """Cross-entropy on the retain set, from the original weights."""

    name = "ft"
    stream = "retain"

    def training_loss(self, module: Any, batch: dict[str, Any]) -> Tensor:
        return cross_entropy(module, batch)
