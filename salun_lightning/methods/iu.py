"""``iu``: influence unlearning as the official SalUn code computes it (its WoodFisher step), one update, no training.

``v = (n_f / n) · (ḡ_f - ḡ_r)`` from the mean per-sample cross-entropy gradients at the original weights (eval-mode
batch norm); ``θ_u = θ_o + alpha · k`` where ``k`` is the official inverse-Hessian recursion applied to ``v``: with
``N`` = ``hessian_samples``, it takes the first retain sample's gradient ``o = g_1`` and then, for each of the next
``N + 1`` retain samples (batch size 1, in data order), ``t = o·g_i``, ``k ← k - (k·g_i / (N + t)) · o`` and
``o ← o - t / (N + t) · o``. Because ``o`` only ever shrinks along ``g_1``, ``k`` only ever moves along ``g_1``: the
recursion is not the WoodFisher estimate of ``H⁻¹ v`` it is named after, and in effect the step is
``alpha · (n_f / n) · (ḡ_f - ḡ_r)`` corrected along one direction (docs/method.md). This is the computation behind the
paper's IU row, kept for reproducing it; a correct Woodbury inverse would be a different method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from salun_lightning.hyperparameters import Hyperparameters, fixed, require, tunable
from salun_lightning.methods.one_shot import OneShotMethod, batches, gradients, trainable_parameters


def flat(tensors: list[Tensor]) -> Tensor:
    """The tensors concatenated into one float64 vector."""
    return torch.cat([t.detach().double().flatten() for t in tensors])


def official_recursion(v: Tensor, sample_gradients: list[Tensor], damping: float) -> Tensor:
    """The official code's inverse-Hessian recursion on ``v`` over per-sample gradients (the first seeds ``o``).

    Example::

        >>> g = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])]  # k moves along g_1 only, even for this g_2
        >>> [round(x, 6) for x in official_recursion(torch.tensor([2.0, 3.0]), g, damping=10.0).tolist()]
        [1.7, 3.0]
    """
    k, o = v.clone(), sample_gradients[0].clone()
    for g in sample_gradients[1:]:
        t = o @ g
        k -= (k @ g) / (damping + t) * o
        o -= t / (damping + t) * o
    return k


@dataclass(frozen=True)
class InfluenceHyperparameters(Hyperparameters):
    # The paper searched 1 to 20 on CIFAR-10; on the digits no prediction changes below about 200 (docs/results.md).
    alpha: float = tunable(0.2, 0.1, 1000.0, log=True, doc="the step along k")
    hessian_samples: int = fixed(1000, doc="N: the recursion's damping; it reads N + 2 retain samples")

    def check(self) -> None:
        require(self.alpha > 0, f"iu: alpha must be positive, got {self.alpha}.")
        require(self.hessian_samples >= 1, f"iu: hessian_samples must be at least 1, got {self.hessian_samples}.")


class InfluenceUnlearning(OneShotMethod):
    """One step ``alpha · k`` from the original weights (the official IU; see the module's docstring)."""

    name = "iu"
    Hyperparameters = InfluenceHyperparameters

    def update(self, module: Any) -> None:
        data = module.trainer.datamodule
        forget_sum, n_forget = self._gradient_sum(module, data.forget_dataloader())
        retain_sum, n_retain = self._gradient_sum(module, data.retain_dataloader())
        n = n_forget + n_retain
        v = forget_sum / n - retain_sum * n_forget / (n * n_retain)
        k = official_recursion(v, self._sample_gradients(module, data.retain_dataloader()),
                               float(self.hparams.hessian_samples))
        step, start = self.hparams.alpha * k, 0
        changes = {}
        for name, parameter in trainable_parameters(module).items():
            size = parameter.numel()
            changes[name] = parameter.detach().double() + step[start:start + size].view_as(parameter)
            start += size
        self.apply(module, changes)

    @staticmethod
    def _gradient_sum(module: Any, loader: Any) -> tuple[Tensor, int]:
        """The sum of per-sample gradients over the loader (batch-mean gradients times batch sizes), and the count."""
        total, count = None, 0
        for batch in batches(module, loader):
            size = len(batch["label"])
            summed = flat(gradients(module, batch["image"], batch["label"])) * size
            total, count = (summed if total is None else total + summed), count + size
        return total, count

    def _sample_gradients(self, module: Any, loader: Any) -> list[Tensor]:
        """Per-sample gradients of the first ``hessian_samples + 2`` retain samples, in data order."""
        wanted, found = self.hparams.hessian_samples + 2, []
        for batch in batches(module, loader):
            for image, label in zip(batch["image"], batch["label"]):
                found.append(flat(gradients(module, image[None], label[None])))
                if len(found) == wanted:
                    return found
        return found
