"""``esd_u``: ESD training every denoiser weight outside the cross-attention layers
(:mod:`~salun_lightning.diffusion.methods.esd`).

These are the paper's "non-cross-attention" weights; the reference code's two versions differ: its CompVis version
also keeps the time embedding and output layers, its diffusers version trains only linear and convolution layers,
not the norms.
"""

from __future__ import annotations

from salun_lightning.diffusion.methods.esd import Esd


class EsdU(Esd):
    """ESD-u: every weight but the cross-attention ones trains."""

    name = "esd_u"
    trained = "not_cross_attention"
