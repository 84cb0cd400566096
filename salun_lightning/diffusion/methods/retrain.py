"""``retrain``: :mod:`train <salun_lightning.diffusion.methods.train>` on the retained classes only (the gold
standard of unlearning)."""

from __future__ import annotations

from salun_lightning.diffusion.methods.train import Train


class Retrain(Train):
    """The denoising loss of ``train``, from fresh weights, on the retain stream."""

    name = "retrain"
    stream = "retain"
