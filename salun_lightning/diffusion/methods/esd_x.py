"""``esd_x``: ESD training only the denoiser's cross-attention layers (the ``attn2`` modules of its transformer
blocks; :mod:`~salun_lightning.diffusion.methods.esd`)."""

from __future__ import annotations

from salun_lightning.diffusion.methods.esd import Esd


class EsdX(Esd):
    """ESD-x: the cross-attention weights train, every other weight is frozen."""

    name = "esd_x"
    trained = "cross_attention"
