"""Several processes: the forget set partitioned over DDP ranks, FSDP2's parameter shards (DTensors), collectives.

Words: a rank's *portion* is its part of the forget set (DDP); a *shard* is always its part of an FSDP2 parameter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Optional

import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, Sampler

try:  # FSDP2 shards parameters as DTensors (torch >= 2.5)
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor
except ImportError:  # pragma: no cover - a torch without distributed support
    DTensor = Shard = distribute_tensor = None

__all__ = [
    "PartitionSampler",
    "check_sharding",
    "collective_device",
    "first_message",
    "full_tensor",
    "gather_shards",
    "local_tensor",
    "lockstep_batches",
    "partition",
    "shard_like",
]


# ------------------------------------------------------------------------------------------------ the forget set
class PartitionSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` of a map-style dataset: a rank's portion, disjoint from the other ranks'
    and complete over all of them, with no padding duplicates."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = range(rank, length, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def partition(loader: DataLoader, rank: int, world_size: int) -> DataLoader:
    """The loader rebuilt over this rank's portion of its dataset (:class:`PartitionSampler`)."""
    if isinstance(loader.dataset, IterableDataset) or loader.batch_size is None:
        raise MisconfigurationException(
            "under several processes the forget dataloader must be a DataLoader over a map-style dataset with "
            "batch_size set, so that each rank can take a disjoint portion of it."
        )
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=PartitionSampler(len(loader.dataset), rank, world_size),
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        worker_init_fn=loader.worker_init_fn,
    )


def lockstep_batches(
    loader: DataLoader, whole: Callable[[], DataLoader], device: torch.device
) -> Iterator[tuple[Any, int]]:
    """This rank's forget batches with weight 1, then, until the rank with the most batches is done, its first batch
    again (or, when this rank has none, the first of the whole forget set's loader, made by ``whole`` only then) with
    weight 0: every rank takes as many forward and backward passes, which FSDP2 makes collectives."""
    count = torch.tensor([len(loader)], device=device)
    torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MAX)
    spare = None
    batches = iter(loader)
    for _ in range(int(count.item())):
        batch = next(batches, None)
        if batch is not None:
            spare = batch if spare is None else spare
            yield batch, 1
        else:
            spare = next(iter(whole())) if spare is None else spare
            yield spare, 0


# ------------------------------------------------------------------------------------------------ FSDP2's shards
def local_tensor(tensor: Tensor) -> Tensor:
    """This rank's shard of a DTensor (FSDP2's sharded parameters, gradients and optimizer states): the local tensor,
    which shares its storage; any other tensor as it is."""
    return tensor.to_local() if DTensor is not None and isinstance(tensor, DTensor) else tensor


def full_tensor(tensor: Tensor) -> Tensor:
    """The whole of a DTensor, gathered from its ranks (every rank must call it); any other tensor as it is."""
    return tensor.full_tensor() if DTensor is not None and isinstance(tensor, DTensor) else tensor


def check_sharding(selected: Mapping[str, Tensor], world_size: int) -> bool:
    """Whether the selected parameters are sharded (FSDP2's DTensors); raise when only some are, or when their
    shards are not disjoint parts over all ranks (replicated dimensions, as in HSDP)."""
    sharded = [name for name, param in selected.items() if DTensor is not None and isinstance(param, DTensor)]
    if not sharded:
        return False
    plain = [name for name in selected if name not in sharded]
    if plain:
        raise MisconfigurationException(
            f"WeightSaliencyCallback: {len(plain)} selected parameters are not sharded (for example {plain[0]!r}) "
            f"while {len(sharded)} are: apply fully_shard to the whole model in configure_model (or select only "
            "sharded parameters with parameters=...)."
        )
    for name in sharded:
        param = selected[name]
        if param.device_mesh.size() != world_size or not all(isinstance(p, Shard) for p in param.placements):
            raise MisconfigurationException(
                f"WeightSaliencyCallback: parameter {name!r} is placed {param.placements} over a mesh of "
                f"{param.device_mesh.size()} of {world_size} ranks; the mask needs every parameter sharded over all "
                "ranks (fully_shard over one data-parallel mesh dimension), not replicated (HSDP)."
            )
    return True


def shard_like(full: Tensor, param: Tensor) -> Tensor:
    """This rank's shard of a whole mask, laid out as the parameter's (no communication); for a plain parameter the
    whole mask."""
    if DTensor is None or not isinstance(param, DTensor):
        return full
    part = distribute_tensor(full.to(device=local_tensor(param).device, dtype=torch.uint8), param.device_mesh,
                             param.placements, src_data_rank=None)
    return part.to_local().to(torch.bool)


def gather_shards(local_mask: Tensor, param: Tensor) -> Tensor:
    """The whole mask of a sharded parameter from every rank's shard (every rank must call it; gloo has no bool
    collectives: uint8)."""
    part = DTensor.from_local(local_mask.to(torch.uint8), param.device_mesh, param.placements, run_check=False,
                              shape=param.shape, stride=param.stride())
    return part.full_tensor().to(torch.bool)


# ------------------------------------------------------------------------------------------------ collectives
def collective_device(group: Any = None) -> torch.device:
    """Where the group's collectives take tensors: the current CUDA device for NCCL, else the CPU (gloo), whatever
    device the data are on (FSDP2 can keep shards on the CPU under NCCL: CPU offload)."""
    if torch.distributed.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def first_message(message: Optional[str]) -> Optional[str]:
    """The ``message`` of the lowest rank that has one, on every rank (every rank must call it)."""
    messages: list[Optional[str]] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(messages, message)
    return next((m for m in messages if m is not None), None)
