"""Self-contained Lightning callbacks (each file imports only torch and lightning)."""

from .weight_saliency import (
    WeightSaliencyCallback,
    kept_count,
    load_mask,
    saliency_mask,
    save_mask,
)

__all__ = ["WeightSaliencyCallback", "kept_count", "load_mask", "saliency_mask", "save_mask"]
