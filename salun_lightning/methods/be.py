"""``be``: boundary expanding (Chen et al., CVPR 2023): add a shadow output class, train every forget sample into
it, forget data only.

The official SalUn code evaluates the widened network, so a forget sample predicted as the shadow class counts as
forgotten (the default); with ``prune`` the shadow row is removed before the network is saved and tested, as Chen
et al. do. The mask cannot take part: the shadow row has no saliency (it did not exist in the original model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from salun_lightning.hyperparameters import Hyperparameters, fixed
from salun_lightning.methods.base import ClassifierMethod, cross_entropy, last_linear


def widened(layer: nn.Linear) -> nn.Linear:
    """``layer`` with one more output: the old rows copied, the new one freshly initialised."""
    wide = nn.Linear(layer.in_features, layer.out_features + 1, bias=layer.bias is not None)
    wide.to(layer.weight.device, layer.weight.dtype)
    with torch.no_grad():
        wide.weight[: layer.out_features] = layer.weight
        if layer.bias is not None:
            wide.bias[: layer.out_features] = layer.bias
    return wide


def pruned(layer: nn.Linear, outputs: int) -> nn.Linear:
    """``layer`` keeping its first ``outputs`` rows."""
    narrow = nn.Linear(layer.in_features, outputs, bias=layer.bias is not None)
    narrow.to(layer.weight.device, layer.weight.dtype)
    with torch.no_grad():
        narrow.weight.copy_(layer.weight[:outputs])
        if layer.bias is not None:
            narrow.bias.copy_(layer.bias[:outputs])
    return narrow


@dataclass(frozen=True)
class BoundaryExpandingHyperparameters(Hyperparameters):
    prune: bool = fixed(False, doc="remove the shadow output before saving and testing (Chen et al.)")


class BoundaryExpanding(ClassifierMethod):
    """Cross-entropy of every forget sample against the shadow class ``C`` of a ``C + 1``-way head.

    Example::

        >>> from salun_lightning.models import build_classifier
        >>> BoundaryExpanding().prepare(build_classifier("small_resnet", 10, 1)).fc.out_features
        11
    """

    name = "be"
    stream = "forget"
    mask_refusal = "it trains a new output row that the original model, and so the mask, does not have"
    Hyperparameters = BoundaryExpandingHyperparameters

    def prepare(self, net: nn.Module) -> nn.Module:
        parent, attribute, head = last_linear(net)
        self.classes = head.out_features
        setattr(parent, attribute, widened(head))
        return net

    def output_classes(self, num_classes: int) -> int:
        return num_classes if self.hparams.prune else num_classes + 1

    def tested_network(self, net: nn.Module) -> nn.Module:
        parent, attribute, head = last_linear(net)
        if self.hparams.prune and head.out_features == self.classes + 1:
            setattr(parent, attribute, pruned(head, self.classes))
        return net

    def training_loss(self, module: Any, batch: dict[str, Any]) -> Tensor:
        return cross_entropy(module, batch, torch.full_like(batch["label"], self.classes))
