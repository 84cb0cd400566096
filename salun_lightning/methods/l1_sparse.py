"""``l1_sparse``: ``ft`` plus an L1 penalty on every weight whose factor decays linearly to 0 (Jia et al., 2023)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from salun_lightning.hyperparameters import Hyperparameters, require, tunable
from salun_lightning.methods.base import ClassifierMethod, cross_entropy


@dataclass(frozen=True)
class L1SparseHyperparameters(Hyperparameters):
    l1_alpha: float = tunable(5e-4, 1e-6, 1e-2, log=True, doc="the L1 factor at the first step (decays to 0)")

    def check(self) -> None:
        require(self.l1_alpha >= 0, f"l1_sparse: l1_alpha must be non-negative, got {self.l1_alpha}.")


class L1Sparse(ClassifierMethod):
    """Cross-entropy on D_r plus ``l1_alpha · (1 - t / T) · ‖θ‖₁`` (``t`` the step, ``T`` the fit's steps)."""

    name = "l1_sparse"
    stream = "retain"
    Hyperparameters = L1SparseHyperparameters

    def training_loss(self, module: Any, batch: dict[str, Any]) -> Tensor:
        loss = cross_entropy(module, batch)
        weight = self.hparams.l1_alpha * (1 - module.global_step / max(1, module.trainer.estimated_stepping_batches))
        module.log("train/l1_weight", weight)
        return loss + weight * sum(p.abs().sum() for p in module.net.parameters())
