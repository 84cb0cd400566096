"""``train``: the denoising loss on every image, from fresh weights: the original model."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from salun_lightning.diffusion.methods.base import DiffusionMethod


class Train(DiffusionMethod):
    """Denoising with each image's own condition, dropped to the null one with probability ``condition_dropout``."""

    name = "train"
    stream = "full"
    from_original = False

    def training_loss(self, module: Any, batch: dict[str, Any]) -> Tensor:
        return module.denoising_loss(batch, module.hparams.condition_dropout)
