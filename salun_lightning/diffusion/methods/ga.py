"""``ga``: ``-L_d(D_f) + alpha * L_r``, gradient ascent on the forgotten class's denoising loss while keeping
``alpha`` times the retain denoising loss (as the reference DDPM code)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from salun_lightning.diffusion.methods.base import DiffusionMethod, RetainWeight, log_forget_retain


class GradientAscent(DiffusionMethod):
    """The forget images' denoising loss (no condition dropout), ascended, plus the weighted retain loss."""

    name = "ga"
    stream = "forget_retain"
    Hyperparameters = RetainWeight

    def training_loss(self, module: Any, batch: dict[str, Any]) -> Tensor:
        forget = module.denoising_loss(batch["forget"])
        retain = module.denoising_loss(batch["retain"], module.hparams.condition_dropout)
        log_forget_retain(module, batch, forget, retain)
        return -forget + self.hparams.alpha * retain
