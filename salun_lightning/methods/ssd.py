"""``ssd``: selective synaptic dampening (Foster et al., AAAI 2024): shrink the weights far more important to D_f
than to all training data, one update, no training.

Importances are the mean over batches of the squared batch-mean cross-entropy gradient at the original weights
(eval-mode batch norm): ``I_f`` over D_f, ``I_D`` over D = D_f ∪ D_r. Where ``I_f > alpha · I_D`` a weight is
multiplied by ``min(lam · I_D / I_f, 1)``; everywhere else it stays. The dampening is multiplicative, so a saliency
mask cannot take part (it would only choose where to skip the method's own selection).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from salun_lightning.hyperparameters import Hyperparameters, require, tunable
from salun_lightning.methods.one_shot import OneShotMethod, batches, gradients, trainable_parameters


def dampened(weight: Tensor, forget_importance: Tensor, data_importance: Tensor, alpha: float, lam: float) -> Tensor:
    """``weight`` times ``min(lam · I_D / I_f, 1)`` where ``I_f > alpha · I_D``, unchanged elsewhere.

    Example::

        >>> w, i_f, i_d = torch.ones(3), torch.tensor([5.0, 20.0, 40.0]), torch.tensor([1.0, 1.0, 1.0])
        >>> dampened(w, i_f, i_d, alpha=10.0, lam=1.0).tolist()
        [1.0, 0.05000000074505806, 0.02500000037252903]
    """
    selected = forget_importance > alpha * data_importance
    factor = (lam * data_importance / forget_importance.clamp_min(torch.finfo(forget_importance.dtype).tiny)).clamp(max=1)
    return torch.where(selected, weight * factor.to(weight.dtype), weight)


@dataclass(frozen=True)
class DampeningHyperparameters(Hyperparameters):
    alpha: float = tunable(10.0, 1.0, 100.0, log=True, doc="the selection threshold on I_f / I_D")
    lam: float = tunable(1.0, 0.1, 5.0, log=True, doc="the dampening constant lambda")

    def check(self) -> None:
        require(self.alpha > 0 and self.lam > 0, f"ssd: alpha and lam must be positive, got {self.alpha} and {self.lam}.")


class SelectiveSynapticDampening(OneShotMethod):
    """Dampen the weights whose forget-set importance exceeds ``alpha`` times their importance to all data."""

    name = "ssd"
    mask_refusal = "its dampening is multiplicative and chooses its own weights; a mask would only skip some of them"
    Hyperparameters = DampeningHyperparameters

    def update(self, module: Any) -> None:
        data = module.trainer.datamodule
        forget, forget_batches = self._squared_gradient_sums(module, data.forget_dataloader())
        retain, retain_batches = self._squared_gradient_sums(module, data.retain_dataloader())
        parameters = trainable_parameters(module)
        changes = {}
        for i, (name, parameter) in enumerate(parameters.items()):
            forget_importance = forget[i] / forget_batches
            data_importance = (forget[i] + retain[i]) / (forget_batches + retain_batches)
            changes[name] = dampened(parameter.detach(), forget_importance, data_importance,
                                     self.hparams.alpha, self.hparams.lam)
        self.apply(module, changes)

    @staticmethod
    def _squared_gradient_sums(module: Any, loader: Any) -> tuple[list[Tensor], int]:
        """Per parameter, the sum over the loader's batches of the squared batch-mean gradient; and the batch count."""
        sums, count = None, 0
        for batch in batches(module, loader):
            squared = [g.detach().float().square() for g in gradients(module, batch["image"], batch["label"])]
            sums = squared if sums is None else [s + q for s, q in zip(sums, squared)]
            count += 1
        return sums, count
