"""Random-label targets of the ``rl`` and ``salun`` forget losses (docs/method.md, 'Classifier unlearning', and the
random pseudo class of 'Diffusion unlearning').

Example::

    >>> import torch
    >>> labels = torch.tensor([0, 1, 2, 3])
    >>> bool((random_other_labels(labels, num_classes=4) != labels).all())
    True
"""

from __future__ import annotations

import torch
from torch import Tensor


def random_other_labels(labels: Tensor, num_classes: int) -> Tensor:
    """Uniformly random labels that always differ from the true ones (drawn from the global generator)."""
    offsets = torch.randint(1, num_classes, labels.shape, device=labels.device)
    return (labels + offsets) % num_classes


def random_forget_labels(labels: Tensor, num_classes: int, exclude_true: bool = True) -> Tensor:
    """Random labels for forget samples: a uniformly random other class (``exclude_true``, the paper's equation), or
    a uniformly random class among all ``num_classes``, the true one included one time in ``num_classes`` (the
    reference code).

    Example::

        >>> labels = torch.zeros(1000, dtype=torch.long)
        >>> drawn = random_forget_labels(labels, 10), random_forget_labels(labels, 10, exclude_true=False)
        >>> [bool((d == 0).any()) for d in drawn]
        [False, True]
    """
    if exclude_true:
        return random_other_labels(labels, num_classes)
    return torch.randint(0, num_classes, labels.shape, device=labels.device)
