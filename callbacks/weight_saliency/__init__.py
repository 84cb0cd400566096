"""Weight saliency for machine unlearning (SalUn): compute a mask on the forget set, train only salient weights.

Self-contained: this package imports only torch, lightning and (lazily, for mask files) safetensors, and only
relative imports inside itself, so it can be copied into any Lightning project.

The mask keeps the ``ratio`` fraction of weights with the largest gradient magnitude of a loss on the forget set.
During training, gradients are multiplied by the mask after every backward pass and, with ``freeze_non_salient``,
the non-salient elements are restored to their starting values after every real optimizer step and their
optimizer-state entries zeroed, so that they stay bitwise equal to their starting values under momentum, weight
decay, AdamW, gradient accumulation, clipping and mixed precision (docs/method.md, 'The weight saliency mask').

Modules, one job each:

- :mod:`.selection`: which ``floor(ratio * N)`` elements to keep (:func:`saliency_mask`, :func:`kept_count`).
- :mod:`.masking`: applying a mask exactly, on the integer bits of gradients, weights and optimizer state.
- :mod:`.mask_files`: mask files (:func:`save_mask`, :func:`load_mask`), their provenance and its checks.
- :mod:`.distributed`: the forget set partitioned over DDP ranks, FSDP2's parameter shards, the lockstep.
- :mod:`.callback`: :class:`WeightSaliencyCallback`, which orchestrates them in Lightning's hooks.
"""

from .callback import WeightSaliencyCallback
from .mask_files import batches_hash, load_mask, parameter_hash, parameter_signature, save_mask
from .selection import kept_count, saliency_mask

__all__ = [
    "WeightSaliencyCallback",
    "batches_hash",
    "kept_count",
    "load_mask",
    "parameter_hash",
    "parameter_signature",
    "saliency_mask",
    "save_mask",
]
