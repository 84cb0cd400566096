"""Random-label targets of the ``rl`` and ``salun`` forget losses (SPEC sections 3 and 5).

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
