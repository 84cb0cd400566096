"""``MIAEfficacy``: a torchmetrics wrapper around ``mia_efficacy`` that accumulates across batches and ranks."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from salun_lightning.metrics.functional import mia_efficacy, true_label_confidence

__all__ = ["MIAEfficacy"]

Split = Literal["retain", "test", "forget"]
SPLITS: tuple[str, ...] = ("retain", "test", "forget")


class MIAEfficacy(Metric):
    """MIA-Efficacy in percent: share of forget samples that a confidence-based SVC attacker calls non-members.

    ``update`` stores the true-label confidence of each sample under its split; ``compute`` fits the attacker on
    retain (members) and test (non-members) confidences, balanced by a seeded subsample, and predicts on the
    forget confidences (see ``mia_efficacy``). States are concatenated across ranks under DDP; padding
    duplicates that a ``DistributedSampler`` adds are counted like any other sample.

    Call ``update`` per batch and ``compute`` (or ``self.log(name, metric)``) once at the end: the value needs all
    three splits, so calling the metric itself (``forward``) on a single-split batch fails.

    Args:
        seed: seed of the balanced subsample (see ``mia_efficacy``).
        kwargs: passed to ``torchmetrics.Metric`` (``compute_on_cpu``, ``sync_on_compute``, ...).

    Example::

        >>> metric = MIAEfficacy(seed=0)
        >>> metric.update(torch.tensor([[9.0, 0.0], [0.0, 9.0]]), torch.tensor([0, 1]), split="retain")
        >>> metric.update(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 1]), split="test")
        >>> metric.update(torch.tensor([[9.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]), split="forget")
        >>> metric.compute()
        tensor(50.)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    retain_confidence: list[Tensor]
    test_confidence: list[Tensor]
    forget_confidence: list[Tensor]

    def __init__(self, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.seed = seed
        for split in SPLITS:
            self.add_state(f"{split}_confidence", default=[], dist_reduce_fx="cat")

    def update(self, logits: Tensor, labels: Tensor, split: Split) -> None:
        """Store the true-label confidences of one batch of ``split`` ("retain", "test" or "forget") samples."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        # Stored in the metric's dtype (float32 unless ``set_dtype``): every rank must gather the same dtype.
        confidence = true_label_confidence(logits.detach(), labels).to(self.dtype)
        getattr(self, f"{split}_confidence").append(confidence)

    def compute(self) -> Tensor:
        """MIA-Efficacy over everything seen since the last ``reset``, as a 0-d float tensor."""
        confidences = {}
        for split in SPLITS:
            state = getattr(self, f"{split}_confidence")
            if len(state) == 0:
                raise ValueError(f"MIAEfficacy has no {split!r} samples; call update(logits, labels, split={split!r})")
            confidences[split] = dim_zero_cat(state)
        value = mia_efficacy(confidences["retain"], confidences["test"], confidences["forget"], seed=self.seed)
        return torch.tensor(value)
