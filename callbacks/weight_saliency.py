"""Weight saliency for machine unlearning (SalUn): compute a mask on the forget set, train only salient weights.

Self-contained: this file imports only torch, lightning and (lazily, for mask files) safetensors, so it can be
copied into any Lightning project.

The mask keeps the ``ratio`` fraction of weights with the largest gradient magnitude of a loss on the forget set
(SPEC section 1). During training, gradients are multiplied by the mask after every backward pass and, with
``freeze_non_salient``, the non-salient elements are restored to their starting values after every real optimizer
step and their optimizer-state entries zeroed, so that they stay bitwise equal to their starting values under
momentum, weight decay, AdamW, gradient accumulation, clipping and mixed precision (SPEC section 2).

Mask files record their provenance: the forget set's identity, the ratio and a hash of the starting weights. A
loaded mask is checked against the run before anything is trained, and a mask file written by the upstream SalUn
code (a ``torch.save``d dict keyed by the bare network's names) loads through a single prefix mapping of its names.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, ModelParallelStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.data import extract_batch_size
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, Sampler

try:  # FSDP2 shards parameters as DTensors (torch >= 2.5)
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor
except ImportError:  # pragma: no cover - a torch without distributed support
    DTensor = Shard = distribute_tensor = None

log = logging.getLogger(__name__)

__all__ = ["WeightSaliencyCallback", "kept_count", "load_mask", "saliency_mask", "save_mask"]

LossFn = Callable[[LightningModule, Any], Tensor]

_BINS = 1 << 16
_HALF = _BINS // 2
_CHUNK = 1 << 18  # elements per piece on the CPU: cache-sized scratch
_ACCELERATOR_CHUNK = 1 << 24  # elements per piece elsewhere: few kernel launches, scratch of a few 64 MiB buffers
_SIGN_MASK = 0x7FFFFFFF
_INT32_MIN = -(1 << 31)
_POSITIVE_NAN_BINS = 0x7F80 + _HALF  # top-16-bit bins of +inf and of positive NaNs and above
_NO_FORGET_DATA = (
    "WeightSaliencyCallback needs forget data: pass WeightSaliencyCallback(forget_dataloader=...) or give the "
    "Trainer a LightningDataModule with a forget_dataloader() method (or load a mask with mask_path=...)."
)
SALIENCY_PRECISIONS = ("float32", "trainer")
_MASK_PREFIXES = ("", "module.", "net.", "model.", "unet.")  # name prefixes a mask file may differ by
_PROVENANCE_KEYS = ("forget_set", "forget_set_description", "ratio", "parameter_hash")
_CHECKED_KEYS = {"forget_set": "forget set", "ratio": "ratio", "parameter_hash": "starting weights (parameter_hash)"}


# ----------------------------------------------------------------------------------------------------------------
# The threshold: a pure function
# ----------------------------------------------------------------------------------------------------------------
def kept_count(ratio: float, total: int) -> int:
    """Return ``floor(ratio * total)`` computed on the decimal value of ``ratio`` (so 0.29 * 100 is 29, not 28)."""
    return int(Decimal(repr(float(ratio))) * total)


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


def _collective_device(group: Any = None) -> torch.device:
    """Where the group's collectives take tensors: the current CUDA device for NCCL, else the CPU (gloo), whatever
    device the data are on (FSDP2 can keep shards on the CPU under NCCL: CPU offload)."""
    if torch.distributed.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _counts_device(flats: Sequence[Tensor], group: Any) -> torch.device:
    if group is not None:
        return _collective_device(group)
    return flats[0].device if flats else torch.device("cpu")


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
    if signed or bool(counts[_POSITIVE_NAN_BINS:].any()):
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


# ----------------------------------------------------------------------------------------------------------------
# Mask files
# ----------------------------------------------------------------------------------------------------------------
def parameter_signature(shapes: Mapping[str, Sequence[int]]) -> str:
    """A sha256 over parameter names and shapes, stored in mask files to identify the model they belong to."""
    digest = hashlib.sha256()
    for name, shape in shapes.items():
        digest.update(f"{name}:{tuple(int(s) for s in shape)};".encode())
    return digest.hexdigest()


def parameter_hash(parameters: Mapping[str, Tensor]) -> str:
    """A sha256 over parameter names and values, in mapping order: identifies the weights a mask was computed from.

    Each entry contributes its UTF-8 name, then its tensor as :func:`batches_hash` does (dtype and shape as text,
    then the bytes of the CPU contiguous tensor).
    """
    digest = hashlib.sha256()
    for name, value in parameters.items():
        digest.update(name.encode())
        _hash_tensor(digest, value)
    return digest.hexdigest()


def batches_hash(batches: Iterable[Any]) -> str:
    """``"batches-sha256:"`` and a sha256 over every tensor of every batch: identifies a forget set by its data.

    Tensors are taken in loader order, recursively through dicts (in key order), lists and tuples; other values are
    skipped. Each contributes its dtype and shape as text (``"torch.float32(8, 12)"``), then the bytes of the CPU
    contiguous tensor. An unshuffled loader gives a stable identity.
    """
    digest = hashlib.sha256()
    for batch in batches:
        for tensor in _tensors(batch):
            _hash_tensor(digest, tensor)
    return "batches-sha256:" + digest.hexdigest()


def _tensors(batch: Any) -> Iterator[Tensor]:
    if isinstance(batch, Tensor):
        yield batch
    elif isinstance(batch, (Mapping, list, tuple)):
        for value in batch.values() if isinstance(batch, Mapping) else batch:
            yield from _tensors(value)


def _hash_tensor(digest: Any, tensor: Tensor) -> None:
    flat = _full(tensor.detach()).to("cpu").contiguous().reshape(-1)
    digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    digest.update(flat.view(torch.uint8).numpy())


def save_mask(path: str | os.PathLike, mask: Mapping[str, Tensor], metadata: Mapping[str, Any]) -> None:
    """Write ``mask`` to ``path`` as safetensors (one bool tensor per parameter), atomically.

    ``metadata`` values are stored as strings next to the total ``N``, kept ``k`` and the parameter signature.
    The callback's metadata records the mask's provenance: ``forget_set`` (the forget set's id),
    ``forget_set_description`` (when known), ``ratio`` and ``parameter_hash`` (of the starting weights).
    """
    from safetensors.torch import save_file

    tensors = {name: value.detach().to("cpu", torch.bool).contiguous() for name, value in mask.items()}
    total = sum(t.numel() for t in tensors.values())
    meta = {key: str(value) for key, value in metadata.items()}
    meta.update(
        format="salun-lightning/weight-saliency-mask",
        N=str(total),
        k=str(sum(int(t.sum()) for t in tensors.values())),
        parameter_signature=parameter_signature({n: t.shape for n, t in tensors.items()}),
    )
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, tmp_path = tempfile.mkstemp(prefix=".mask-", suffix=".tmp", dir=directory)
    os.close(handle)
    try:
        save_file(tensors, tmp_path, metadata=meta)
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_path)
        raise


def load_mask(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a mask file: this project's safetensors format, or the upstream SalUn format.

    The upstream format is a ``torch.save``d dict from parameter name to a 0/1 integer tensor; it is read with
    ``weights_only=True``, so a pickle that would run code is refused, never executed.

    Returns:
        ``(mask, metadata)``: parameter name to bool tensor (on the CPU), and the file's metadata (empty for the
        upstream format).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a mask in either format, or is a damaged (e.g. truncated) safetensors file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mask file {path!r} does not exist; compute one with save_mask_path=... first.")
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    tensors: dict[str, Tensor]
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as safetensors_error:
        metadata = {}
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # weights_only refuses code-running pickles with several exception types
            if _has_safetensors_header(path):
                raise ValueError(
                    f"{path!r} is not a mask file: it is a damaged safetensors file ({safetensors_error}); it may "
                    "be truncated or still being written: write it again."
                ) from None
            raise ValueError(
                f"{path!r} is not a mask file: it is neither safetensors nor a torch-saved dict of tensors "
                f"loadable with weights_only=True ({type(error).__name__}: {str(error).splitlines()[0]})."
            ) from None
        if not isinstance(loaded, Mapping) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in loaded.items()
        ):
            raise ValueError(f"{path!r} is not a mask file: expected a dict from parameter name to tensor.")
        tensors = dict(loaded)
    if not tensors:
        raise ValueError(f"{path!r} is not a mask file: it holds no tensors.")
    mask = {}
    for name, value in tensors.items():
        if value.dtype != torch.bool:
            if value.is_floating_point() or value.is_complex() or bool(((value != 0) & (value != 1)).any()):
                raise ValueError(f"{path!r} is not a mask file: tensor {name!r} holds values other than 0 and 1.")
            value = value.to(torch.bool)
        mask[name] = value
    return mask, metadata


def _has_safetensors_header(path: str) -> bool:
    """Whether the file starts like safetensors: an 8-byte little-endian header size, then a JSON object."""
    try:
        with open(path, "rb") as handle:
            start = handle.read(9)
    except OSError:
        return False
    return len(start) == 9 and start[8:] == b"{" and int.from_bytes(start[:8], "little") > 0


# ----------------------------------------------------------------------------------------------------------------
# The callback
# ----------------------------------------------------------------------------------------------------------------
class _ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` of a map-style dataset: disjoint, complete, no padding duplicates."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = range(rank, length, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@contextlib.contextmanager
def _logging_disabled(module: LightningModule) -> Iterator[None]:
    """Let ``training_step`` run outside the loop: ``self.log`` calls become no-ops for the duration."""
    module.log = module.log_dict = lambda *args, **kwargs: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        del module.log, module.log_dict


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Eval mode for every submodule, then each submodule's own train/eval flag restored."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for submodule, training in modes:
            submodule.training = training


class WeightSaliencyCallback(Callback):
    """Train only the most salient weights: SalUn's weight saliency mask as a drop-in Lightning callback.

    At the start of fit the callback accumulates the gradient of a loss over the forget set (eval mode, summed
    over samples and across DDP ranks), keeps the top ``ratio`` fraction of weights by gradient magnitude, and from
    then on multiplies gradients by the mask after every backward pass. With ``freeze_non_salient`` (default), the
    non-salient elements are also restored to their starting values after every real optimizer step and their
    optimizer-state entries (momentum buffers, Adam moments) zeroed, so they never move.

    Sharded training (FSDP2): with ``ModelParallelStrategy(data_parallel_size=N, tensor_parallel_size=1)`` and
    ``fully_shard`` applied in the module's ``configure_model``, every rank accumulates saliency on its own shards,
    the selection all-reduces histograms (:func:`saliency_mask` with a process group: the same mask as one process),
    and :attr:`mask`, the starting values and the masking stay per shard. :meth:`full_mask` gathers the whole mask
    (every rank must call it); mask files and checkpoints hold the whole mask, which loads back into the shards.
    ``FSDPStrategy`` (FSDP1's flat parameters) and DeepSpeed are refused.

    After the start of fit, :attr:`mask` holds the mask (parameter name to bool tensor) and :attr:`saliency_stats`
    where it came from (``source``: ``"forget set"``, ``"checkpoint"`` or ``"mask_path '<file>'"``), the kept count
    and fraction, overall and per parameter, and, when the mask was computed rather than loaded, the
    seconds of the saliency pass and of the selection (``saliency_seconds``, ``selection_seconds``).

    Args:
        ratio: fraction of the selected weights to train, in ``(0, 1]`` (paper: 0.5).
        forget_dataloader: the forget data. Default: ``trainer.datamodule.forget_dataloader()``.
        loss_fn: ``loss_fn(pl_module, batch) -> scalar``, a batch-mean loss. Default: ``pl_module.saliency_loss(batch)``
            if the module has it, else the loss returned by ``pl_module.training_step(batch, batch_idx)``.
            With manual optimization, give ``loss_fn`` or ``saliency_loss``: ``training_step`` would step the optimizer.
        mask_path: load the mask from this file (safetensors written by ``save_mask_path``, or the upstream
            format) instead of computing it. Its recorded provenance must match the run: the forget set (when the
            run has forget data), ``ratio`` and the starting weights' hash; a file without provenance (upstream)
            is used with a warning. Names that differ from the selected parameters' by one prefix change (removing
            and adding one of ``""``, ``"module."``, ``"net."``, ``"model."``, ``"unet."``) are mapped.
        save_mask_path: write the mask here (safetensors) once it is known, with its provenance: ``forget_set``
            (``trainer.datamodule.forget_set_id`` when the forget data comes from a data module that has one, else
            :func:`batches_hash` of the unsharded forget loader), ``forget_set_description`` (from the data module,
            when it has one), ``ratio``, ``parameter_hash`` (:func:`parameter_hash` of the selected starting weights).
        freeze_non_salient: restore non-salient weights and zero their optimizer state after each step.
        parameters: regular expressions (``re.search``) selecting the parameters to rank; a parameter is selected
            when any of its names matches (tied parameters have several), and its mask is keyed by its first name.
            Every other trainable parameter is treated as non-salient. Default: all trainable parameters.
        batch_size_fn: ``batch_size_fn(batch) -> int``, the number of samples in a forget batch (each batch's mean
            loss is weighted by it). Default: Lightning's ``extract_batch_size`` (the first tensor's length).
        allow_mask_mismatch: use a ``mask_path`` file whose provenance differs from the run, with a warning naming
            the differences, instead of raising.
        saliency_precision: ``float32`` (default, as the reference code) runs the saliency pass with autocast off,
            whatever the Trainer's mixed precision (parameters stored in a lower precision, as under ``bf16-true``,
            are used as they are); ``trainer`` runs it under the Trainer's precision context, as training runs.

    Raises:
        ValueError: ``ratio`` outside ``(0, 1]``, an invalid regular expression or ``saliency_precision``; at the
            start of fit, a ``mask_path`` file that is not a readable mask, does not fit the selected parameters,
            or was made for another forget set, ratio or starting weights (without ``allow_mask_mismatch``).
        FileNotFoundError: at the start of fit, no file at ``mask_path``.
        MisconfigurationException: in ``setup``, an unsupported strategy or manual optimization without
            ``loss_fn`` or ``saliency_loss`` (and no ``mask_path``); at the mask's start (``on_fit_start``, under
            ``ModelParallelStrategy`` ``on_train_start``), before any step, no forget data when neither a checkpoint
            nor ``mask_path`` gives the mask (only then does Lightning say whether the fit resumes).

    Example::

        >>> import lightning.pytorch as pl
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from salun_lightning.callbacks import WeightSaliencyCallback
        >>> class Model(pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.layer = torch.nn.Linear(4, 3)
        ...     def training_step(self, batch, batch_idx):
        ...         inputs, labels = batch
        ...         return torch.nn.functional.cross_entropy(self.layer(inputs), labels)
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.1)
        >>> forget_loader = DataLoader(TensorDataset(torch.randn(8, 4), torch.zeros(8, dtype=torch.long)), batch_size=4)
        >>> retain_loader = DataLoader(TensorDataset(torch.randn(16, 4), torch.randint(1, 3, (16,))), batch_size=4)
        >>> model = Model()
        >>> start = model.layer.weight.detach().clone()
        >>> saliency = WeightSaliencyCallback(ratio=0.5, forget_dataloader=forget_loader)
        >>> trainer = pl.Trainer(max_epochs=10, callbacks=[saliency], logger=False, enable_checkpointing=False,
        ...                      enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(model, retain_loader)  # only the salient half of the weights moves
        >>> mask = saliency.mask["layer.weight"]  # bool tensor, True where the weight was trained
        >>> mask.dtype, sum(int(m.sum()) for m in saliency.mask.values())  # half of the 12 weights and 3 biases
        (torch.bool, 7)
        >>> bool((model.layer.weight.detach() != start)[~mask].any())  # the others never moved
        False
    """

    def __init__(
        self,
        ratio: float = 0.5,
        forget_dataloader: Optional[DataLoader] = None,
        loss_fn: Optional[LossFn] = None,
        mask_path: Optional[str] = None,
        save_mask_path: Optional[str] = None,
        freeze_non_salient: bool = True,
        parameters: Optional[Sequence[str]] = None,
        batch_size_fn: Optional[Callable[[Any], int]] = None,
        allow_mask_mismatch: bool = False,
        saliency_precision: str = "float32",
    ) -> None:
        super().__init__()
        if saliency_precision not in SALIENCY_PRECISIONS:
            raise ValueError(
                f"saliency_precision must be one of {', '.join(SALIENCY_PRECISIONS)}, got {saliency_precision!r}: "
                "'float32' (the reference code) or 'trainer' (the Trainer's precision, e.g. bf16 autocast)."
            )
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio <= 1.0:
            raise ValueError(f"ratio must be a number in (0, 1], got {ratio!r}; the paper keeps 0.5.")
        if isinstance(parameters, str):
            parameters = [parameters]
        patterns = []
        for pattern in parameters or []:
            try:
                patterns.append(re.compile(pattern))
            except re.error as error:
                raise ValueError(f"parameters: {pattern!r} is not a valid regular expression ({error}).") from None
        self.ratio = float(ratio)
        self.forget_dataloader = forget_dataloader
        self.loss_fn = loss_fn
        self.mask_path = mask_path
        self.save_mask_path = save_mask_path
        self.freeze_non_salient = freeze_non_salient
        self.parameters = list(parameters) if parameters is not None else None
        self.batch_size_fn = batch_size_fn
        self.allow_mask_mismatch = allow_mask_mismatch
        self.saliency_precision = saliency_precision
        self._patterns = patterns
        self.mask: dict[str, Tensor] = {}
        self.saliency_stats: dict[str, Any] = {}
        self._restored_mask: Optional[dict[str, Tensor]] = None
        self._waiting_for_restore = False  # under a strategy that restores checkpoints after on_fit_start
        self._provenance: dict[str, str] = {}  # the mask's provenance entries, written to mask files
        # (parameter, mask, starting values with the salient elements zeroed): parameters with some salient elements
        self._partial: list[tuple[Tensor, Tensor, Optional[Tensor]]] = []
        self._frozen: list[Tensor] = []  # parameters with no salient element
        self._hook_handles: list[Any] = []
        self._sharded = False  # FSDP2: the selected parameters are DTensors, and mask holds this rank's shards
        self._sharded_params: dict[str, Tensor] = {}
        self._kept: dict[str, int] = {}  # salient elements per masked parameter, over all its shards
        self._seconds: dict[str, float] = {}  # the saliency pass's and the selection's, when the mask was computed

    @property
    def state_key(self) -> str:
        return self._generate_state_key(ratio=self.ratio, parameters=self.parameters)

    # ------------------------------------------------------------------------------------------------ lifecycle
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        supported = isinstance(trainer.strategy, (SingleDeviceStrategy, DDPStrategy, ModelParallelStrategy))
        if not supported or isinstance(trainer.strategy, DeepSpeedStrategy):  # DeepSpeed's class derives from DDP's
            raise MisconfigurationException(
                f"WeightSaliencyCallback supports single-device, DDP and ModelParallelStrategy (FSDP2) strategies, not "
                f"{type(trainer.strategy).__name__}: for sharded training apply FSDP2's fully_shard in the module's "
                "configure_model and use strategy=ModelParallelStrategy(data_parallel_size=N, tensor_parallel_size=1)"
                "; FSDPStrategy (FSDP1's flat parameters) and DeepSpeed are not supported."
            )
        has_loss = self.loss_fn is not None or callable(getattr(pl_module, "saliency_loss", None))
        if not (pl_module.automatic_optimization or has_loss or self.mask_path is not None):
            raise MisconfigurationException(
                f"{type(pl_module).__name__} uses manual optimization, so WeightSaliencyCallback cannot use its "
                "training_step as the saliency loss (it would step the optimizer on forget data): pass "
                "WeightSaliencyCallback(loss_fn=...) or define saliency_loss(batch) on the module."
            )

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Whether the fit resumes is known only once a checkpoint is restored (a checkpoint restores the mask, and
        # the missing forget data is an error only when it does not), which happens before this hook except under
        # strategies that restore after setting up the optimizers (ModelParallelStrategy): there, wait until training
        # starts (or, when no step runs, the end of fit).
        self._waiting_for_restore = trainer.strategy.restore_checkpoint_after_setup
        if not self._waiting_for_restore:
            self._start_masking(trainer, pl_module)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._waiting_for_restore:  # the checkpoint's weights, optimizer state and mask are in place now
            self._start_masking(trainer, pl_module)

    def _start_masking(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Compute, load or restore the mask, keep the starting values and hook the optimizers."""
        self._waiting_for_restore = False
        selected = self._selected_parameters(pl_module)
        self._seconds = {}
        self._sharded = _check_sharding(selected, trainer.world_size)
        if self._restored_mask is not None:
            mask, source = self._restored_mask, "checkpoint"
            self._check_mask_matches(mask, selected, source)
            mask = {name: _local_part(mask[name], param) for name, param in selected.items()}
        elif self.mask_path is not None:
            mask, source = self._load_checked_mask(trainer, selected), f"mask_path {self.mask_path!r}"
            mask = {name: _local_part(mask[name], param) for name, param in selected.items()}
        else:
            group = torch.distributed.group.WORLD if self._sharded else None
            started = time.perf_counter()
            saliency = self.compute_saliency(trainer, pl_module, selected)  # ends with a host wait for the device
            self._seconds = {"saliency_seconds": time.perf_counter() - started}
            started = time.perf_counter()
            mask, source = saliency_mask(saliency, self.ratio, group=group), "forget set"
            self._seconds["selection_seconds"] = time.perf_counter() - started  # the selection waits twice too
            # hashes only for a mask file; of sharded weights on every rank (gathering them takes all ranks)
            writing = self._saving(trainer) or (self._sharded and self.save_mask_path is not None)
            self._provenance = self._run_provenance(trainer, selected, _PROVENANCE_KEYS if writing else ())
        # this rank's part of every mask (all of it unless the parameters are sharded)
        self.mask = {name: mask[name].to(_local(param).device, torch.bool) for name, param in selected.items()}
        self._restored_mask = None
        self._prepare_masking(pl_module)
        self._record_stats(trainer, pl_module, source)
        if self.save_mask_path is not None:
            full = self.full_mask()  # every rank takes part in gathering a sharded mask
            if self._saving(trainer):
                save_mask(self.save_mask_path, full, self._file_metadata(pl_module))
        trainer.strategy.barrier("weight_saliency_mask")
        if self.freeze_non_salient:
            for optimizer in trainer.optimizers:
                self._hook_handles.append(optimizer.register_step_post_hook(self._after_optimizer_step))

    def on_after_backward(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for param in self._frozen:
            if self.freeze_non_salient:
                param.grad = None  # optimizers skip the parameter: no decay, no momentum
            elif param.grad is not None:
                param.grad.zero_()
        grads, masks = [], []
        for param, mask, _ in self._partial:
            if param.grad is not None:
                grads.append(_bits(_local(param.grad)))
                masks.append(mask)
        if grads:
            torch._foreach_mul_(grads, masks)  # on the bits: exact +0.0 where masked, untouched elsewhere

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._waiting_for_restore:  # no training step ran (max_steps already reached, or `salun mask`)
            self._start_masking(trainer, pl_module)
        self._remove_hooks()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._remove_hooks()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._remove_hooks()

    def state_dict(self) -> dict[str, Any]:
        mask = {name: m.detach().cpu() for name, m in self.full_mask().items()}
        return {"mask": mask, "ratio": self.ratio, "provenance": dict(self._provenance)}

    def full_mask(self) -> dict[str, Tensor]:
        """The whole mask of every selected parameter: :attr:`mask` itself, or under FSDP2 (where :attr:`mask`
        holds this rank's shard of each) gathered from all ranks; every rank must call it then."""
        if not self._sharded:
            return dict(self.mask)
        return {name: _gathered(self.mask[name], self._sharded_params[name]) for name in self.mask}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("mask"):
            self._restored_mask = dict(state_dict["mask"])
            self._provenance = dict(state_dict.get("provenance", {"ratio": str(state_dict["ratio"])}))

    # ------------------------------------------------------------------------------------------------ saliency
    def compute_saliency(
        self, trainer: Trainer, pl_module: LightningModule, selected: Mapping[str, torch.nn.Parameter]
    ) -> dict[str, Tensor]:
        """Return ``|sum over forget samples of grad loss|`` per selected parameter, summed across ranks.

        Under FSDP2 (parameters sharded as DTensors) each rank returns its shards' part, from the gradients that the
        backward pass reduce-scatters (averaged over ranks: the same ranking as the sum). Every forward and backward
        is then a collective, so the ranks go in lockstep: as many batches each as the rank with the most (the others
        repeat a batch with weight zero), and a bad batch or loss on any rank stops all of them together.
        """
        loader = self._shard(self._resolve_forget_dataloader(trainer), trainer)
        loss_fn, _ = self._resolve_loss(pl_module)
        params = list(selected.values())
        sharded = _check_sharding(selected, trainer.world_size)
        sizes = [_local(p).numel() for p in params]
        flat = torch.zeros(sum(sizes), dtype=torch.float32, device=_local(params[0]).device)
        views = list(torch.split(flat, sizes))
        if sharded:
            pl_module.zero_grad(set_to_none=True)
        lockstep = sharded and trainer.world_size > 1
        collective = _collective_device() if lockstep else flat.device
        batches = _lockstep(loader, lambda: self._resolve_forget_dataloader(trainer), collective) if lockstep else (
            (batch, 1) for batch in loader)
        samples, bad_batch, bad_kind, bad_value = 0, -1, "", None
        with torch.enable_grad(), _eval_mode(pl_module), _logging_disabled(pl_module):
            for batch_idx, (batch, weight) in enumerate(batches):
                batch = trainer.strategy.batch_to_device(batch)
                batch_size = self.batch_size_fn(batch) if self.batch_size_fn else extract_batch_size(batch)
                invalid = isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
                if invalid or (lockstep and _any_rank(invalid, collective)):
                    bad_batch, bad_kind, bad_value = (batch_idx, "size", batch_size) if invalid else (-1, "", None)
                    break
                with self._precision_context(trainer, pl_module):
                    loss = loss_fn(batch, batch_idx)
                bad = not isinstance(loss, Tensor) or loss.numel() != 1 or not bool(torch.isfinite(loss.detach()))
                if bad or (lockstep and _any_rank(bad, collective)):
                    bad_batch, bad_kind, bad_value = (batch_idx, "loss", loss) if bad else (-1, "", None)
                    break
                if sharded:  # FSDP2 reduce-scatters the gradients into the shards' .grad
                    (loss.reshape(()) * (batch_size * weight)).backward()
                    grads = [None if p.grad is None else _local(p.grad) for p in params]
                    pl_module.zero_grad(set_to_none=True)
                else:
                    grads = torch.autograd.grad(loss.reshape(()) * batch_size, params, allow_unused=True)
                for view, grad in zip(views, grads):
                    if grad is not None:
                        view.add_(grad.reshape(-1))
                samples += batch_size * weight
        status = torch.tensor([samples, int(bad_batch >= 0)], dtype=torch.float64, device=collective)
        if trainer.world_size > 1:
            status = trainer.strategy.reduce(status, reduce_op="sum")
        if bad_kind == "size":  # raised after the reduce, which every rank must reach
            raise ValueError(f"batch_size_fn must return a positive int, got {bad_value!r} on forget batch "
                             f"{bad_batch}.")
        if bad_kind == "loss":
            raise ValueError(
                f"the saliency loss must be a finite scalar, got {_describe(bad_value)} on forget batch {bad_batch} "
                f"(rank {trainer.global_rank}); check the forget data and loss_fn."
            )
        if status[1] > 0:
            raise ValueError("the saliency loss or batch size was bad on another rank; see that rank's error.")
        if status[0] == 0:
            raise ValueError("the forget dataloader is empty: the saliency mask needs at least one forget sample.")
        if trainer.world_size > 1 and not sharded:
            torch.distributed.all_reduce(flat)
        pl_module.zero_grad(set_to_none=True)
        return {name: view.view_as(_local(p)).abs_() for (name, p), view in zip(selected.items(), views)}

    def _precision_context(self, trainer: Trainer, pl_module: LightningModule) -> contextlib.AbstractContextManager:
        """The Trainer's precision context, or for ``float32`` one with autocast off (mixed precision disabled)."""
        if self.saliency_precision == "trainer":
            return trainer.precision_plugin.forward_context()
        return torch.autocast(device_type=pl_module.device.type, enabled=False)

    def _has_forget_data(self, trainer: Trainer) -> bool:
        return self.forget_dataloader is not None or callable(getattr(trainer.datamodule, "forget_dataloader", None))

    def _resolve_forget_dataloader(self, trainer: Trainer) -> DataLoader:
        if self.forget_dataloader is not None:
            return self.forget_dataloader
        if self._has_forget_data(trainer):
            return trainer.datamodule.forget_dataloader()
        raise MisconfigurationException(_NO_FORGET_DATA)

    def _shard(self, loader: DataLoader, trainer: Trainer) -> DataLoader:
        """Under DDP, rebuild the loader over this rank's disjoint shard of the dataset (no padding)."""
        if trainer.world_size == 1:
            return loader
        if isinstance(loader.dataset, IterableDataset) or loader.batch_size is None:
            raise MisconfigurationException(
                "under several processes the forget dataloader must be a DataLoader over a map-style dataset with "
                "batch_size set, so that each rank can take a disjoint shard of it."
            )
        sampler = _ShardSampler(len(loader.dataset), trainer.global_rank, trainer.world_size)
        return DataLoader(
            loader.dataset,
            batch_size=loader.batch_size,
            sampler=sampler,
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory,
            worker_init_fn=loader.worker_init_fn,
        )

    def _resolve_loss(self, pl_module: LightningModule) -> tuple[Callable[[Any, int], Tensor], str]:
        if self.loss_fn is not None:
            loss_fn = self.loss_fn
            return (lambda batch, idx: loss_fn(pl_module, batch)), getattr(loss_fn, "__qualname__", repr(loss_fn))
        if callable(getattr(pl_module, "saliency_loss", None)):
            return (lambda batch, idx: pl_module.saliency_loss(batch)), "saliency_loss"

        def training_step_loss(batch: Any, batch_idx: int) -> Tensor:
            output = pl_module.training_step(batch, batch_idx)
            return output["loss"] if isinstance(output, Mapping) else output

        return training_step_loss, "training_step"

    # ------------------------------------------------------------------------------------------------ masking
    def _selected_parameters(self, pl_module: LightningModule) -> dict[str, torch.nn.Parameter]:
        """Trainable parameters by first name; selected when any of their names (tied ones have several) matches."""
        aliases: dict[int, list[str]] = {}
        trainable: dict[str, torch.nn.Parameter] = {}
        for name, param in pl_module.named_parameters(remove_duplicate=False):
            if param.requires_grad:
                aliases.setdefault(id(param), []).append(name)
                trainable.setdefault(aliases[id(param)][0], param)
        if not trainable:
            raise MisconfigurationException("the module has no trainable parameters to rank.")
        if not self._patterns:
            return trainable
        selected = {
            n: p for n, p in trainable.items() if any(pt.search(a) for a in aliases[id(p)] for pt in self._patterns)
        }
        if not selected:
            examples = ", ".join(list(trainable)[:5])
            raise MisconfigurationException(
                f"parameters={self.parameters} selects none of the {len(trainable)} trainable parameters "
                f"(for example: {examples}); patterns are matched with re.search against these names."
            )
        return selected

    def _check_mask_matches(
        self, mask: Mapping[str, Tensor], selected: Mapping[str, torch.nn.Parameter], source: str
    ) -> None:
        if _mismatches(mask, selected):
            raise _mismatch_error(mask, selected, source)

    def _load_checked_mask(self, trainer: Trainer, selected: Mapping[str, torch.nn.Parameter]) -> dict[str, Tensor]:
        """The ``mask_path`` file's mask keyed by the selected names, after checking its provenance."""
        try:
            mask, metadata = load_mask(self.mask_path)
        except (FileNotFoundError, ValueError) as error:
            raise type(error)(f"mask_path: {error}") from None
        mask = self._match_file_names(mask, selected)
        self._check_provenance(trainer, selected, metadata)
        self._provenance = {key: metadata[key] for key in _PROVENANCE_KEYS if key in metadata}
        return mask

    def _match_file_names(
        self, mask: Mapping[str, Tensor], selected: Mapping[str, torch.nn.Parameter]
    ) -> dict[str, Tensor]:
        """The mask as is when its names are the selected ones, else through the one prefix mapping that fits."""
        source = f"mask_path {self.mask_path!r}"
        if not _mismatches(mask, selected):
            return dict(mask)
        fits: dict[tuple[str, ...], tuple[str, str, dict[str, Tensor]]] = {}
        for strip, add in itertools.product(_MASK_PREFIXES, repeat=2):
            if all(name.startswith(strip) for name in mask):
                renamed = {add + name[len(strip) :]: value for name, value in mask.items()}
                if not _mismatches(renamed, selected):
                    fits.setdefault(tuple(renamed), (strip, add, renamed))  # one entry per distinct assignment
        if len(fits) != 1:
            prefixes = ", ".join(repr(prefix) for prefix in _MASK_PREFIXES)
            note = f"No single prefix mapping fits either (removing, then adding, one of {prefixes} on every name)."
            raise _mismatch_error(mask, selected, source, note)
        ((strip, add, renamed),) = fits.values()
        rank_zero_info(f"WeightSaliency: {source}: mask names mapped: removed {strip!r}, added {add!r}.")
        return renamed

    def _prepare_masking(self, pl_module: LightningModule) -> None:
        """Sort the parameters into frozen (no salient element on any rank) and partial ones (this rank's part)."""
        params = {name: p for name, p in pl_module.named_parameters() if p.requires_grad}
        self._partial, self._frozen = [], []
        self._sharded_params = {name: params[name] for name in self.mask} if self._sharded else {}
        self._kept = self._kept_counts()
        for name, param in params.items():
            mask = self.mask.get(name)
            if mask is None or self._kept[name] == 0:
                self._frozen.append(param)
            elif not bool(mask.all()):
                local = _local(param)
                _bits(local)  # fail now on a dtype without an integer view
                start = torch.where(mask, 0, local.detach()) if self.freeze_non_salient else None
                self._partial.append((param, mask, start))

    def _kept_counts(self) -> dict[str, int]:
        """The salient elements of every masked parameter, over all its shards when it is sharded."""
        device = _collective_device() if self._sharded else torch.device("cpu")
        counts = torch.tensor([int(mask.sum()) for mask in self.mask.values()], dtype=torch.int64, device=device)
        if self._sharded:
            torch.distributed.all_reduce(counts)
        return dict(zip(self.mask, counts.tolist()))

    def _after_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """Restore non-salient elements and zero their optimizer state; runs once per real optimizer step.

        Works on the integer bits, so it is exact and as cheap as two multiplications:
        ``bits(param) * mask + bits(start with salient elements zeroed)`` and ``bits(state) * mask``.
        """
        params, starts, states, state_masks, masks = [], [], [], [], []
        with torch.no_grad():
            for param, mask, start in self._partial:
                params.append(_bits(_local(param.data)))
                starts.append(_bits(start))
                masks.append(mask)
                for value in optimizer.state.get(param, {}).values():
                    if isinstance(value, Tensor) and value.shape == param.shape:
                        states.append(_bits(_local(value)))
                        state_masks.append(mask)
            if params:
                torch._foreach_mul_(params, masks)
                torch._foreach_add_(params, starts)
            if states:
                torch._foreach_mul_(states, state_masks)

    def _remove_hooks(self) -> None:
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles = []

    # ------------------------------------------------------------------------------------------------ reporting
    def _record_stats(self, trainer: Trainer, pl_module: LightningModule, source: str) -> None:
        kept = self._kept  # counted over all shards by _prepare_masking
        sizes = {name: (self._sharded_params[name] if self._sharded else m).numel() for name, m in self.mask.items()}
        total = sum(sizes.values())
        overall = sum(kept.values()) / total
        self.saliency_stats = {
            "source": source,
            "kept_fraction": overall,
            "kept": sum(kept.values()),
            "total": total,
            "per_parameter": {name: kept[name] / sizes[name] for name in self.mask},
            **self._seconds,
        }
        for logger in trainer.loggers:
            logger.log_metrics({"saliency/kept_fraction": overall}, step=trainer.global_step)
        frozen = sum(p.numel() for p in self._frozen)
        rank_zero_info(
            f"WeightSaliency: mask from {source}: training {sum(kept.values()):,} of {total:,} selected weights "
            f"({overall:.2%}) in {len(self.mask)} tensors; {len(self._frozen)} tensors fully frozen "
            f"({frozen:,} weights)."
        )

    def _file_metadata(self, pl_module: LightningModule) -> dict[str, Any]:
        _, loss_name = self._resolve_loss(pl_module)
        return {
            **self._provenance,
            "loss": loss_name if self.mask_path is None else f"loaded from {self.mask_path}",
            "model_class": f"{type(pl_module).__module__}.{type(pl_module).__qualname__}",
            "parameters": ",".join(self.parameters or []),
        }

    # ------------------------------------------------------------------------------------------------ provenance
    def _saving(self, trainer: Trainer) -> bool:
        return self.save_mask_path is not None and trainer.is_global_zero

    def _forget_set(self, trainer: Trainer) -> Optional[tuple[str, Optional[str]]]:
        """``(id, description)`` of the run's forget data, or None when it has none.

        The id is the data module's ``forget_set_id`` when the forget data comes from a data module that has one,
        else :func:`batches_hash` of the unsharded forget loader, the same on any number of processes.
        """
        datamodule = trainer.datamodule if self.forget_dataloader is None else None
        identity = getattr(datamodule, "forget_set_id", None)
        description = getattr(datamodule, "forget_set_description", None)
        description = description if isinstance(description, str) else None
        if isinstance(identity, str):
            return identity, description
        if not self._has_forget_data(trainer):
            return None
        return batches_hash(self._resolve_forget_dataloader(trainer)), description

    def _run_provenance(
        self, trainer: Trainer, selected: Mapping[str, torch.nn.Parameter], keys: Collection[str]
    ) -> dict[str, str]:
        """This run's ratio, and its forget set and starting weights' hash when ``keys`` ask for them."""
        provenance = {"ratio": str(self.ratio)}
        forget = self._forget_set(trainer) if "forget_set" in keys else None
        if forget is not None:
            provenance["forget_set"] = forget[0]
            if forget[1] is not None:
                provenance["forget_set_description"] = forget[1]
        if "parameter_hash" in keys:
            provenance["parameter_hash"] = parameter_hash(selected)
        return provenance

    def _check_provenance(
        self, trainer: Trainer, selected: Mapping[str, torch.nn.Parameter], metadata: Mapping[str, str]
    ) -> None:
        """Raise (or, with ``allow_mask_mismatch``, warn) when the ``mask_path`` file was made for another run."""
        differences = self._provenance_differences(trainer, selected, metadata)
        header = f"mask_path {self.mask_path!r} was made for another run"
        if differences and self.allow_mask_mismatch:
            rank_zero_warn("\n".join([f"{header}; using it anyway (allow_mask_mismatch=True):", *differences]))
        elif differences:
            fix = (
                "Recompute the mask for this run (`salun mask --out FILE`, or save_mask_path=...), or pass "
                "allow_mask_mismatch=True to use this mask on purpose."
            )
            raise ValueError("\n".join([f"{header}:", *differences, fix]))

    def _provenance_differences(
        self, trainer: Trainer, selected: Mapping[str, torch.nn.Parameter], metadata: Mapping[str, str]
    ) -> list[str]:
        """Lines naming what differs between the file's recorded provenance and this run's (both values)."""
        unknown = [key for key in _CHECKED_KEYS if key not in metadata]
        if unknown:
            rank_zero_warn(
                f"mask_path {self.mask_path!r} records no {', '.join(unknown)} (an upstream SalUn mask or an older "
                "file): its provenance is unknown, so it cannot be checked against this run on these points."
            )
        run = self._run_provenance(trainer, selected, metadata)
        if "forget_set" in metadata and "forget_set" not in run:
            rank_zero_info(
                f"WeightSaliency: this run has no forget data, so the forget set of mask_path {self.mask_path!r} "
                f"({metadata['forget_set']}) is not checked."
            )
        return [
            f"  {label}: file {_described(metadata, key)}, this run {_described(run, key)}"
            for key, label in _CHECKED_KEYS.items()
            if key in metadata and key in run and not _same_value(key, metadata[key], run[key])
        ]


def _mismatches(mask: Mapping[str, Tensor], selected: Mapping[str, Tensor]) -> list[str]:
    """Lines naming the selected parameters missing from the mask, the mask's unexpected names, and wrong shapes."""
    missing = [n for n in selected if n not in mask]
    unexpected = [n for n in mask if n not in selected]
    wrong_shape = [
        f"{n} (mask {tuple(mask[n].shape)}, parameter {tuple(p.shape)})"
        for n, p in selected.items()
        if n in mask and mask[n].shape != p.shape
    ]
    return [
        f"  {len(names)} {label}: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}"
        for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape))
        if names
    ]


def _mismatch_error(mask: Mapping[str, Tensor], selected: Mapping[str, Tensor], source: str, *notes: str) -> ValueError:
    header = f"the mask from {source} does not match the model's selected parameters:"
    fix = "Compute the mask for this model (or check the `parameters` filter)."
    return ValueError("\n".join([header, *_mismatches(mask, selected), *notes, fix]))


def _described(provenance: Mapping[str, str], key: str) -> str:
    """A provenance value, with the forget set's description when known."""
    description = provenance.get("forget_set_description") if key == "forget_set" else None
    return provenance[key] + (f" ({description})" if description else "")


def _same_value(key: str, recorded: str, current: str) -> bool:
    if key == "ratio":
        with contextlib.suppress(ValueError):
            return float(recorded) == float(current)
    return recorded == current


_INTEGER_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(tensor: Tensor) -> Tensor:
    """The tensor's elements reinterpreted as integers of the same size (a view, no copy)."""
    size = tensor.element_size()
    if tensor.is_complex() or size not in _INTEGER_OF_SIZE:
        raise TypeError(f"WeightSaliencyCallback cannot mask parameters of dtype {tensor.dtype}.")
    return tensor.view(_INTEGER_OF_SIZE[size])


def _describe(loss: Any) -> str:
    if isinstance(loss, Tensor):
        return f"a tensor of shape {tuple(loss.shape)}" if loss.numel() != 1 else f"{loss.item()}"
    return f"{type(loss).__name__}"


def _any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` holds on any rank (every rank must call it)."""
    value = torch.tensor([int(flag)], device=device)
    torch.distributed.all_reduce(value)
    return bool(value.item())


def _lockstep(
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


def _local(tensor: Tensor) -> Tensor:
    """This rank's part of a DTensor (FSDP2's sharded parameters, gradients and optimizer states): the local tensor,
    which shares its storage; any other tensor as it is."""
    return tensor.to_local() if DTensor is not None and isinstance(tensor, DTensor) else tensor


def _full(tensor: Tensor) -> Tensor:
    """The whole of a DTensor, gathered from its ranks (every rank must call it); any other tensor as it is."""
    return tensor.full_tensor() if DTensor is not None and isinstance(tensor, DTensor) else tensor


def _check_sharding(selected: Mapping[str, Tensor], world_size: int) -> bool:
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


def _local_part(full: Tensor, param: Tensor) -> Tensor:
    """This rank's part of a whole mask, laid out as the parameter is (no communication)."""
    if DTensor is None or not isinstance(param, DTensor):
        return full
    part = distribute_tensor(full.to(device=_local(param).device, dtype=torch.uint8), param.device_mesh,
                             param.placements, src_data_rank=None)
    return part.to_local().to(torch.bool)


def _gathered(local_mask: Tensor, param: Tensor) -> Tensor:
    """The whole mask of a sharded parameter from every rank's part (gloo has no bool collectives: uint8)."""
    part = DTensor.from_local(local_mask.to(torch.uint8), param.device_mesh, param.placements, run_check=False,
                              shape=param.shape, stride=param.stride())
    return part.full_tensor().to(torch.bool)
