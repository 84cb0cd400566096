"""``rl``: ``L_f + alpha * L_r``, the forgotten condition's prediction pulled towards a pseudo condition's (which
carries no gradient), plus the denoising loss on retained images (docs/method.md, 'Diffusion unlearning')."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from salun_lightning.diffusion.methods.base import DiffusionMethod, RetainWeight, log_forget_retain


class RandomLabel(DiffusionMethod):
    """The forget loss ``L_f`` against the pseudo condition ``c_p`` (``pseudo``) plus ``alpha`` times ``L_r``."""

    name = "rl"
    stream = "forget_retain"
    uses_pseudo = True
    Hyperparameters = RetainWeight

    def training_loss(self, module: Any, batch: dict[str, Any]) -> Tensor:
        forget = module.forget_loss(batch["forget"])
        retain = module.denoising_loss(batch["retain"], module.hparams.condition_dropout)
        log_forget_retain(module, batch, forget, retain)
        return forget + self.hparams.alpha * retain
