"""What the one-shot methods (``iu``, ``ssd``) share: gradients at the starting weights, no training step.

They run as a fit of zero training steps (stream ``none``): the update happens in ``on_fit_start``, after the saliency
callback has made its mask, so that the run keeps every guarantee of a fit (model, metrics, provenance, the
incomplete marker until the end). Every process computes the same update from the whole of D_f and D_r (the
evaluation loaders: unshuffled, unaugmented), so the weights stay identical under data parallelism; sharded
strategies are refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from salun_lightning.methods.base import ClassifierMethod


class OneShotMethod(ClassifierMethod):
    """A method that changes the weights once, in :meth:`update`, instead of training."""

    stream = "none"
    lr_range = None  # no optimizer step: the update's own step size is a hyper-parameter

    def check_fit(self, trainer: Any) -> None:
        from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

        if isinstance(trainer.strategy, (FSDPStrategy, ModelParallelStrategy)):
            raise ValueError(f"{self.name} updates all weights at once from whole gradients: run it with one device "
                             "or a data-parallel strategy (ddp), not a sharded one.")

    def on_fit_start(self, module: Any) -> None:
        was_training = module.net.training
        module.net.eval()  # batch norm with its running statistics, as the official code
        self.update(module)
        module.net.train(was_training)

    def update(self, module: Any) -> None:
        """Change ``module.net``'s weights (under the mask where there is one: :meth:`apply`)."""
        raise NotImplementedError

    @staticmethod
    def apply(module: Any, changes: dict[str, Tensor]) -> None:
        """Set every parameter ``name`` of ``module.net`` to ``changes[name]``, salient elements only when the
        module has a saliency mask (the others stay bitwise as they were)."""
        mask = module.saliency_mask()
        with torch.no_grad():
            for name, parameter in module.net.named_parameters():
                if name in changes:
                    new = changes[name].to(parameter.dtype)
                    parameter.copy_(new if mask is None else torch.where(mask[name], new, parameter))


def trainable_parameters(module: Any) -> dict[str, Tensor]:
    """The parameters of ``module.net`` that need gradients, by name."""
    return {name: p for name, p in module.net.named_parameters() if p.requires_grad}


def gradients(module: Any, images: Tensor, labels: Tensor) -> list[Tensor]:
    """Gradients of the batch-mean cross-entropy with respect to :func:`trainable_parameters`, in their order."""
    parameters = list(trainable_parameters(module).values())
    with torch.enable_grad():
        loss = F.cross_entropy(module(images).float(), labels)
        return list(torch.autograd.grad(loss, parameters))


def batches(module: Any, loader: Any) -> Iterator[dict[str, Any]]:
    """The loader's batches on the module's device, normalised as training batches are."""
    data = module.trainer.datamodule
    for batch in loader:
        batch = module.trainer.strategy.batch_to_device(batch, module.device)
        yield data.on_after_batch_transfer(batch, 0) if hasattr(data, "on_after_batch_transfer") else batch
