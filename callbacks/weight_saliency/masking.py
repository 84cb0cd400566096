"""Applying a mask exactly: gradients masked, non-salient weights and optimizer state restored, on the integer bits.

Multiplying a tensor's integer view by a 0/1 mask and adding the integer view of the starting values (salient
elements zeroed) is exact for every value, signed zeros and NaNs included, and cheaper than ``torch.where``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

import torch
from torch import Tensor

from .distributed import local_tensor

__all__ = ["Partial", "bits", "mask_gradients", "restore_non_salient", "sort_parameters"]

Partial = tuple[Tensor, Tensor, Optional[Tensor]]
"""``(parameter, this rank's mask, starting values with the salient elements zeroed, or None)``."""

_INTEGER_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits(tensor: Tensor) -> Tensor:
    """The tensor's elements reinterpreted as integers of the same size (a view, no copy)."""
    size = tensor.element_size()
    if tensor.is_complex() or size not in _INTEGER_OF_SIZE:
        raise TypeError(f"WeightSaliencyCallback cannot mask parameters of dtype {tensor.dtype}.")
    return tensor.view(_INTEGER_OF_SIZE[size])


def sort_parameters(
    params: Mapping[str, Tensor], mask: Mapping[str, Tensor], kept: Mapping[str, int], keep_start: bool
) -> tuple[list[Partial], list[Tensor]]:
    """Split the parameters into partly salient ones (:data:`Partial`, with their starting values when
    ``keep_start``) and frozen ones: no mask, or no salient element (``kept``, counted over all shards). Fully
    salient parameters are in neither."""
    partial: list[Partial] = []
    frozen: list[Tensor] = []
    for name, param in params.items():
        part = mask.get(name)
        if part is None or kept[name] == 0:
            frozen.append(param)
        elif not bool(part.all()):
            local = local_tensor(param)
            bits(local)  # fail now on a dtype without an integer view
            start = torch.where(part, 0, local.detach()) if keep_start else None
            partial.append((param, part, start))
    return partial, frozen


def mask_gradients(partial: Iterable[Partial], frozen: Iterable[Tensor], drop_frozen: bool) -> None:
    """Zero the gradients of non-salient elements (exact ``+0.0``); frozen parameters lose their gradient with
    ``drop_frozen`` (optimizers then skip them: no decay, no momentum), else it is zeroed."""
    for param in frozen:
        if drop_frozen:
            param.grad = None
        elif param.grad is not None:
            param.grad.zero_()
    grads, masks = [], []
    for param, mask, _ in partial:
        if param.grad is not None:
            grads.append(bits(local_tensor(param.grad)))
            masks.append(mask)
    if grads:
        torch._foreach_mul_(grads, masks)  # on the bits: exact +0.0 where masked, untouched elsewhere


def restore_non_salient(partial: Sequence[Partial], state: Mapping[Tensor, Mapping[str, Any]]) -> None:
    """Put the non-salient elements back to their starting values and zero their optimizer ``state`` entries (every
    state tensor shaped like its parameter): ``bits(param) * mask + bits(start)`` and ``bits(state) * mask``."""
    params, starts, states, state_masks, masks = [], [], [], [], []
    with torch.no_grad():
        for param, mask, start in partial:
            params.append(bits(local_tensor(param.data)))
            starts.append(bits(start))
            masks.append(mask)
            for value in state.get(param, {}).values():
                if isinstance(value, Tensor) and value.shape == param.shape:
                    states.append(bits(local_tensor(value)))
                    state_masks.append(mask)
        if params:
            torch._foreach_mul_(params, masks)
            torch._foreach_add_(params, starts)
        if states:
            torch._foreach_mul_(states, state_masks)
