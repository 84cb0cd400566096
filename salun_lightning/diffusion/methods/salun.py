"""``salun``: :mod:`rl <salun_lightning.diffusion.methods.rl>` under the weight saliency mask over the denoiser
(docs/method.md, 'The weight saliency mask')."""

from __future__ import annotations

from salun_lightning.diffusion.methods.rl import RandomLabel


class SalUn(RandomLabel):
    """``rl``'s loss; the model adds the :class:`~salun_lightning.callbacks.WeightSaliencyCallback`."""

    name = "salun"
    takes_mask = True
