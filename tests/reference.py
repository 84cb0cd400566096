"""Hand-made references shared by the tests."""

import torch


def brute_force_mask(saliency: dict[str, torch.Tensor], ratio: float) -> dict[str, torch.Tensor]:
    """Top ``floor(ratio * N)`` by a stable sort of all values, largest first; ties in (tensor, flat index) order."""
    flat = torch.cat([v.reshape(-1).float() for v in saliency.values()])
    keep = int(len(flat) * ratio + 1e-9)
    order = torch.sort(-flat, stable=True).indices[:keep]
    kept = torch.zeros(len(flat), dtype=torch.bool)
    kept[order] = True
    masks, offset = {}, 0
    for name, value in saliency.items():
        masks[name] = kept[offset : offset + value.numel()].view(value.shape)
        offset += value.numel()
    return masks
