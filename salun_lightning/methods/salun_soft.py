"""``salun_soft``: soft-thresholded random labelling (the official ``RL_proximal``), the paper's SalUn-soft.

Random labels on D_f, shuffled together with D_r (the ``interleaved`` schedule, as the official code concatenates
both sets). After every optimizer step the change ``Δ = θ - θ_a`` since the start of the epoch is soft-thresholded
over all weights together (batch-norm affine parameters included): the ``k`` smallest ``|Δ|`` fall back to ``θ_a``
and the rest shrink towards it by the threshold, ``k = int(m · (T - e·L - 1) / T · n)`` with ``T`` the fit's steps,
``L`` the steps of an epoch, ``e`` the epoch, ``n`` the number of weights and ``m`` the ratio. So the fraction of
weights kept at ``θ_a`` starts near ``m`` and decays linearly over the fit. Momentum buffers are left as they are
(as the official code). It needs the whole weight vector on each process, so it refuses sharded strategies, and it
takes no saliency mask (its threshold is its own soft mask).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from salun_lightning.hyperparameters import Hyperparameters, require, tunable
from salun_lightning.methods.rl import RandomLabelHyperparameters, RandomLabels


def soft_threshold_towards(parameters: list[Tensor], anchors: list[Tensor], count: int) -> None:
    """Move every parameter towards its anchor: the ``count`` coordinates (of all parameters together) that moved
    least return to the anchor, every other one moves back by the ``count``-th smallest ``|θ - θ_a|``.

    Example::

        >>> theta, anchor = [torch.tensor([1.0, -3.0, 0.5, 4.0])], [torch.zeros(4)]
        >>> soft_threshold_towards(theta, anchor, 2); theta[0].tolist()
        [0.0, -2.0, 0.0, 3.0]
    """
    if count <= 0:
        return
    with torch.no_grad():
        deltas = [p - a for p, a in zip(parameters, anchors)]
        threshold = torch.cat([d.abs().flatten() for d in deltas]).kthvalue(count).values
        for parameter, anchor, delta in zip(parameters, anchors, deltas):
            shrunk = delta.sign() * (delta.abs() - threshold).clamp_min(0)
            parameter.copy_(anchor + torch.where(delta.abs() > threshold, shrunk, torch.zeros_like(delta)))


@dataclass(frozen=True)
class SoftThresholdHyperparameters(RandomLabelHyperparameters):
    ratio: float = tunable(0.5, 0.1, 0.9, doc="m: the fraction of weights reset to the epoch's start at first")

    def check(self) -> None:
        require(0 <= self.ratio < 1, f"salun_soft: ratio must be in [0, 1), got {self.ratio}.")


class SalUnSoft(RandomLabels):
    """Random labels on D_f and D_r interleaved, soft-thresholded towards the epoch's start after every step."""

    name = "salun_soft"
    mask_refusal = "it makes its own soft mask (a threshold on each step's change), which a saliency mask would override"
    Hyperparameters = SoftThresholdHyperparameters

    def check_fit(self, trainer: Any) -> None:
        from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

        if isinstance(trainer.strategy, (FSDPStrategy, ModelParallelStrategy)):
            raise ValueError("salun_soft thresholds all weights together and needs them whole on every process: "
                             "train it with a data-parallel strategy (ddp), not a sharded one.")
        schedule = getattr(trainer.datamodule, "schedule", "interleaved")
        if schedule != "interleaved":
            raise ValueError(f"salun_soft shuffles D_f and D_r together, but the data module's schedule is {schedule!r}: "
                             "set data.init_args.schedule: interleaved.")

    def on_train_epoch_start(self, module: Any) -> None:
        self.anchors = [p.detach().clone() for p in module.net.parameters()]
        total = max(1, int(module.trainer.estimated_stepping_batches))
        per_epoch = module.trainer.num_training_batches // module.trainer.accumulate_grad_batches
        weights = sum(a.numel() for a in self.anchors)
        self.count = int(self.hparams.ratio * (total - module.current_epoch * per_epoch - 1) / total * weights)

    def after_optimizer_step(self, module: Any) -> None:
        soft_threshold_towards(list(module.net.parameters()), self.anchors, self.count)
