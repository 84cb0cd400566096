"""``salun``: ``rl`` trained under the weight saliency mask (Fan et al., ICLR 2024), half the weights by default."""

from __future__ import annotations

from salun_lightning.methods.rl import RandomLabels


class SalUn(RandomLabels):
    """Random labels on D_f plus D_r, only the salient weights trained (``saliency_ratio`` 0.5 unless set)."""

    name = "salun"
    default_saliency_ratio = 0.5
