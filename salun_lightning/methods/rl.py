"""``rl``: random labels on D_f plus the true labels on D_r, in one stream (Golatkar et al., 2020; the paper's RL)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from salun_lightning.hyperparameters import Hyperparameters, fixed
from salun_lightning.labels import random_forget_labels
from salun_lightning.methods.base import ClassifierMethod, cross_entropy


@dataclass(frozen=True)
class RandomLabelHyperparameters(Hyperparameters):
    random_labels: Literal["other", "any"] = fixed(
        "other", doc="a random other class (the paper's equation) or any class, the true one included (the reference code)"
    )


class RandomLabels(ClassifierMethod):
    """Cross-entropy with a random label for every forget sample and the true label for every retain sample."""

    name = "rl"
    stream = "forget_retain"
    Hyperparameters = RandomLabelHyperparameters

    def training_loss(self, module: Any, batch: dict[str, Any]) -> Tensor:
        labels = batch["label"]
        drawn = random_forget_labels(labels, module.num_classes, exclude_true=self.hparams.random_labels == "other")
        return cross_entropy(module, batch, torch.where(batch["is_forget"], drawn, labels))
