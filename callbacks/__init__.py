"""Self-contained Lightning callbacks: only torch, lightning and safetensors, and relative imports inside this folder,
so the folder can be copied into another project (under any package name)."""

from .weight_saliency import (
    WeightSaliencyCallback,
    kept_count,
    load_mask,
    saliency_mask,
    save_mask,
)

__all__ = ["WeightSaliencyCallback", "kept_count", "load_mask", "saliency_mask", "save_mask"]
