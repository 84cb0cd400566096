"""Batched image augmentation and normalisation on whatever device the batch is on.

Both functions take a whole batch ``[B, C, H, W]`` and never loop over samples in Python, so they run on the GPU
after the batch has been transferred (see ``UnlearningDataModule.on_after_batch_transfer``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Union

import torch
from torch import Tensor


def random_crop_flip(
    images: Tensor, padding: int = 4, flip: bool = True, generator: Optional[torch.Generator] = None
) -> Tensor:
    """Randomly crop every image from its zero-padded copy, then flip it horizontally with probability 1/2.

    The same transform as torchvision's ``RandomCrop(size, padding=padding)`` followed by
    ``RandomHorizontalFlip()``, drawn independently for every sample. For sample ``b`` with offsets
    ``(dy[b], dx[b])`` drawn uniformly from ``0..2*padding``, the output is
    ``padded[b, :, dy[b] : dy[b] + H, dx[b] : dx[b] + W]`` (columns reversed when the flip is drawn).

    Args:
        images: ``[B, C, H, W]`` tensor of any dtype (uint8 or float); it is not modified.
        padding: zero padding on every side before cropping; 0 disables the crop.
        flip: whether to draw horizontal flips.
        generator: the random source. The random numbers are drawn on ``generator.device`` in this order:
            ``dy`` ``[B]``, ``dx`` ``[B]`` (both with ``torch.randint(0, 2 * padding + 1, ...)``), then the flips
            ``[B]`` (``torch.randint(0, 2, ...)``, flipped where 1). Default: the global generator of the
            images' device.

    Returns:
        A new ``[B, C, H, W]`` tensor with the dtype and device of ``images``.

    Raises:
        ValueError: for a tensor that is not 4-D or a negative padding.

    Example::

        >>> images = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).view(2, 1, 4, 4)
        >>> random_crop_flip(images, padding=1, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([2, 1, 4, 4])
    """
    if images.dim() != 4:
        raise ValueError(f"random_crop_flip expects a batch [B, C, H, W], got shape {tuple(images.shape)}.")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}.")
    batch, channels, height, width = images.shape
    device = generator.device if generator is not None else images.device
    offset_y = torch.randint(0, 2 * padding + 1, (batch,), generator=generator, device=device).to(images.device)
    offset_x = torch.randint(0, 2 * padding + 1, (batch,), generator=generator, device=device).to(images.device)
    rows = offset_y[:, None] + torch.arange(height, device=images.device)  # [B, H] rows of the padded image
    cols = torch.arange(width, device=images.device).expand(batch, width)
    if flip:
        flipped = torch.randint(0, 2, (batch,), generator=generator, device=device).to(images.device).bool()
        cols = torch.where(flipped[:, None], width - 1 - cols, cols)
    cols = offset_x[:, None] + cols  # [B, W] columns of the padded image
    padded = images.new_zeros(batch, channels, height + 2 * padding, width + 2 * padding)
    padded[:, :, padding : padding + height, padding : padding + width] = images
    batch_index = torch.arange(batch, device=images.device)[:, None, None, None]
    channel_index = torch.arange(channels, device=images.device)[None, :, None, None]
    return padded[batch_index, channel_index, rows[:, None, :, None], cols[:, None, None, :]]


def normalize(images: Tensor, mean: Union[Sequence[float], Tensor], std: Union[Sequence[float], Tensor]) -> Tensor:
    """Return ``(x - mean) / std`` per channel as float32, where ``x`` is the image scaled to ``[0, 1]``.

    Args:
        images: ``[B, C, H, W]``; uint8 images are divided by 255, float images are taken as already in ``[0, 1]``.
        mean: one value per channel, on the ``[0, 1]`` scale (a tensor already on the images' device avoids a copy).
        std: one positive value per channel, on the ``[0, 1]`` scale.

    Raises:
        ValueError: when the number of channels differs from ``len(mean)`` or ``len(std)``.

    Example::

        >>> normalize(torch.full((1, 1, 2, 2), 255, dtype=torch.uint8), mean=[0.5], std=[0.25])[0, 0, 0, 0].item()
        2.0
    """
    if images.dim() != 4 or images.shape[1] != len(mean) or len(mean) != len(std):
        raise ValueError(
            f"normalize expects [B, C, H, W] with C == len(mean) == len(std), got shape {tuple(images.shape)}, "
            f"{len(mean)} means and {len(std)} stds."
        )
    scaled = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return (scaled - mean_t) / std_t
