"""``train``: the original model, trained from fresh weights on all training data (D_f and D_r)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from salun_lightning.methods.base import ClassifierMethod, cross_entropy


class Train(ClassifierMethod):
    """Cross-entropy on every non-held-out training sample, from fresh weights."""

    name = "train"
    stream = "full"
    from_original = False
    mask_refusal = "it trains from fresh weights, and the saliency mask ranks the original model's weights"

    def training_loss(self, module: Any, batch: dict[str, Any]) -> Tensor:
        return cross_entropy(module, batch)
