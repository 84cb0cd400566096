"""``relearn``: the fine-tuning of the concept revival attack (docs/method.md, 'Concept revival'): the plain
denoising loss on the forget stream, from a trained (usually an erased) denoiser."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from salun_lightning.diffusion.methods.base import DiffusionMethod


class Relearn(DiffusionMethod):
    """Denoising with each forget image's own condition (never dropped): what an attacker who fine-tunes an erased
    model on a few images of the concept does. The forget class is the set fine-tuned on (the concept's images, or
    unrelated ones as the control)."""

    name = "relearn"
    stream = "forget"

    def training_loss(self, module: Any, batch: dict[str, Any]) -> Tensor:
        return module.denoising_loss(batch)
