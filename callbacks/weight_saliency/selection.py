"""The selection: which ``floor(ratio * N)`` elements of a saliency map to keep, by an exact radix select."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

import torch
from torch import Tensor

from .distributed import collective_device

__all__ = ["kept_count", "saliency_mask"]

_BINS = 1 << 16
_HALF = _BINS // 2
_CHUNK = 1 << 18  # elements per piece on the CPU: cache-sized scratch
_ACCELERATOR_CHUNK = 1 << 24  # elements per piece elsewhere: few kernel launches, scratch of a few 64 MiB buffers
_SIGN_MASK = 0x7FFFFFFF
_INT32_MIN = -(1 << 31)
_POSITIVE_NAN_BINS = 0x7F80 + _HALF  # top-16-bit bins of +inf and of positive NaNs and above


def kept_count(ratio: float, total: int) -> int:
    """Return ``floor(ratio * total)`` computed on the decimal value of ``ratio`` (so 0.29 * 100 is 29, not 28).

    Example::

        >>> kept_count(0.29, 100)
        29
    """
    return int(Decimal(repr(float(ratio))) * total)


def saliency_mask(saliency: Mapping[str, Tensor], ratio: float, group: Any = None) -> dict[str, Tensor]:
    """Keep exactly ``floor(ratio * N)`` elements with the largest values, globally across all tensors.

    A radix selection on the float bits: one histogram pass (``bincount``) over the top 16 bits, one over the low
    16 bits of the elements in the threshold bin, one comparison pass. O(N) time, no sort, no concatenation of
    everything: tensors are visited in pieces of at most 256K elements on the CPU (16M elsewhere), small tensors
    sharing a piece, and the host waits for the device only twice, once per histogram. Ties at the threshold are
    broken deterministically: earlier tensors (in mapping order) first, then lower flat index. Ranking happens in
    float32.

    With a process ``group`` (``torch.distributed``), ``saliency`` holds this rank's disjoint part of the elements
    (for example its shards of every parameter) and the masks keep exactly ``floor(ratio * N)`` elements over all
    ranks, ``N`` the global count: the histograms are all-reduced (values never leave their rank), and ties are
    broken by rank first. Without ties this is the mask that one process computes on the union. Every rank of the
    group must call it; the tensors must be on the group backend's device (CPU for gloo, CUDA for NCCL).

    Args:
        saliency: parameter name to saliency tensor (any float dtype, any device).
        ratio: fraction of elements to keep, in ``(0, 1]``.
        group: a ``torch.distributed`` process group whose ranks share the selection, or None (this process only).

    Returns:
        Parameter name to a bool tensor of the same shape and device, True on kept elements.

    Raises:
        ValueError: ``ratio`` outside ``(0, 1]``, a non-float tensor, or a NaN value (on any rank of ``group``).

    Example::

        >>> import torch
        >>> masks = saliency_mask({"w": torch.tensor([3.0, 1.0, 2.0, 0.5])}, ratio=0.5)
        >>> masks["w"].tolist()
        [True, False, True, False]
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}; 0.5 keeps the most salient half (the paper).")
    names, flats = [], []
    for name, values in saliency.items():
        if not torch.is_floating_point(values):
            raise ValueError(f"saliency for {name!r} has dtype {values.dtype}; give a floating-point tensor.")
        names.append(name)
        flats.append(values.detach().reshape(-1))
    device = _counts_device(flats, group)
    total = int(_all_reduce(torch.tensor([sum(flat.numel() for flat in flats)], device=device), group))
    keep = kept_count(ratio, total)
    masks = {name: torch.zeros_like(values, dtype=torch.bool, memory_format=torch.contiguous_format)
             for name, values in saliency.items()}
    if keep == 0:
        return masks
    if keep == total:
        for mask in masks.values():
            mask.fill_(True)
        return masks
    pieces = list(_pieces(flats))

    # Pass 1: histogram of the top 16 bits. Saliency is usually non-negative, where the raw float bits already
    # sort like the values; a sign bit anywhere (bins below the middle) switches to the general key mapping.
    def high_histogram(signed: bool) -> Tensor:
        counts = torch.zeros(_BINS, dtype=torch.int64, device=device)
        for piece in pieces:
            keys = _order_keys(_piece_values(flats, piece), signed)
            counts += torch.bincount(((keys >> 16) + _HALF).to(device), minlength=_BINS)
        return _all_reduce(counts, group).cpu()

    counts = high_histogram(signed=False)
    signed = bool(counts[:_HALF].any())
    if signed or bool(counts[_POSITIVE_NAN_BINS:].any()):  # the counts are global: every rank takes this branch
        local = [name for name, flat in zip(names, flats) if bool(torch.isnan(flat).any())]
        anywhere = int(_all_reduce(torch.tensor([len(local)], device=device), group))
        if anywhere:
            where = f"saliency for {local[0]!r}" if local else "saliency on another rank"
            raise ValueError(f"{where} contains NaN; check the loss on the forget set.")
        if signed:
            counts = high_histogram(signed=True)
    high_bin, above = _split_bin(counts, keep)

    # Pass 2: histogram of the low 16 bits of the keys inside the threshold bin (the others count in an extra bin).
    high_key = high_bin - _HALF
    local_counts = torch.zeros(_BINS + 1, dtype=torch.int64, device=device)
    for piece in pieces:
        keys = _order_keys(_piece_values(flats, piece), signed)
        low = torch.where((keys >> 16) == high_key, keys & 0xFFFF, _BINS)
        local_counts += torch.bincount(low.to(device), minlength=_BINS + 1)
    counts = _all_reduce(local_counts.clone(), group).cpu()[:_BINS]
    low_bin, above_low = _split_bin(counts, keep - above)
    threshold = (high_key << 16) | low_bin
    ties_to_keep = keep - above - above_low
    if group is not None:  # ties go to lower ranks first: skip the ties that ranks before this one hold
        ranks = torch.distributed.get_world_size(group)
        ties = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(ranks)]
        torch.distributed.all_gather(ties, local_counts[low_bin : low_bin + 1], group=group)
        before = sum(int(count) for count in ties[: torch.distributed.get_rank(group)])
        ties_to_keep = min(max(ties_to_keep - before, 0), int(local_counts[low_bin]))

    # Pass 3: everything above the threshold, plus the first ties in (tensor, flat index) order.
    ties_seen = torch.zeros((), dtype=torch.int64, device=flats[0].device if flats else device)
    mask_flats = [masks[name].view(-1) for name in names]
    for piece in pieces:
        keys = _order_keys(_piece_values(flats, piece), signed)
        kept = keys > threshold
        if ties_to_keep > 0:
            tied = keys == threshold
            rank_of_tie = tied.cumsum(0) + ties_seen.to(keys.device)
            kept |= tied & (rank_of_tie <= ties_to_keep)
            ties_seen = rank_of_tie[-1]
        offset = 0
        for position, start, length in piece:
            mask_flats[position][start : start + length].copy_(kept[offset : offset + length])
            offset += length
    return masks


def _pieces(flats: Sequence[Tensor]) -> Iterator[list[tuple[int, int, int]]]:
    """Consecutive runs of ``(tensor, start, length)`` holding at most one chunk of elements each, in tensor order:
    small tensors share a piece (one kernel per piece and step instead of one per tensor), large ones are cut."""
    piece: list[tuple[int, int, int]] = []
    room = 0
    for position, flat in enumerate(flats):
        chunk = _CHUNK if flat.device.type == "cpu" else _ACCELERATOR_CHUNK
        start = 0
        while start < flat.numel():
            if room == 0:
                if piece:
                    yield piece
                piece, room = [], chunk
            length = min(room, flat.numel() - start)
            piece.append((position, start, length))
            start, room = start + length, room - length
    if piece:
        yield piece


def _piece_values(flats: Sequence[Tensor], piece: Sequence[tuple[int, int, int]]) -> Tensor:
    """The piece's elements as one flat tensor: a view when it lies in one tensor, else a float32 concatenation."""
    parts = [flats[position][start : start + length] for position, start, length in piece]
    if len(parts) == 1:
        return parts[0]
    device = parts[0].device
    return torch.cat([part.to(device=device, dtype=torch.float32) for part in parts])


def _order_keys(values: Tensor, signed: bool) -> Tensor:
    """Int32 keys whose order is the float order. Without ``signed`` the float bits themselves (valid for
    non-negative values, possibly a view of ``values``: never write into the result)."""
    bits = values.to(torch.float32).view(torch.int32)
    if signed:
        bits = torch.where(bits == _INT32_MIN, 0, bits)  # -0.0 ties with 0.0
        bits = bits ^ ((bits >> 31) & _SIGN_MASK)
    return bits


def _all_reduce(tensor: Tensor, group: Any) -> Tensor:
    """``tensor`` summed over the ranks of ``group`` in place; as it is without a group."""
    if group is not None:
        torch.distributed.all_reduce(tensor, group=group)
    return tensor


def _split_bin(counts: Tensor, needed: int) -> tuple[int, int]:
    """Return ``(bin, above)``: the highest bin at which the count of larger values reaches ``needed``."""
    from_top = counts.flip(0).cumsum(0)
    position = int(torch.searchsorted(from_top, torch.tensor(needed)))
    threshold_bin = _BINS - 1 - position
    above = int(from_top[position]) - int(counts[threshold_bin])
    return threshold_bin, above


def _counts_device(flats: Sequence[Tensor], group: Any) -> torch.device:
    """Where the histograms live: the group's collective device, else the data's."""
    if group is not None:
        return collective_device(group)
    return flats[0].device if flats else torch.device("cpu")
