"""Mask files and their provenance: writing and reading them, identifying a run, checking a file against it.

A mask file (safetensors, one bool tensor per parameter) records where its mask came from: the forget set's
identity, the ratio and a hash of the starting weights. A loaded file is checked against the run before anything is
trained, and a file written by the upstream SalUn code (a ``torch.save``d dict keyed by the bare network's names)
loads through a single prefix mapping of its names.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any, Optional

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from .distributed import full_tensor

__all__ = [
    "PROVENANCE_KEYS",
    "batches_hash",
    "check_matches",
    "check_provenance",
    "load_mask",
    "match_names",
    "parameter_hash",
    "parameter_signature",
    "run_provenance",
    "save_mask",
]

PROVENANCE_KEYS = ("forget_set", "forget_set_description", "ratio", "parameter_hash")
_CHECKED_KEYS = {"forget_set": "forget set", "ratio": "ratio", "parameter_hash": "starting weights (parameter_hash)"}
_MASK_PREFIXES = ("", "module.", "net.", "model.", "unet.")  # name prefixes a mask file may differ by


# ------------------------------------------------------------------------------------------------ identities
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
    """Every tensor of a batch, recursively through mappings, lists and tuples, in order."""
    if isinstance(batch, Tensor):
        yield batch
    elif isinstance(batch, (Mapping, list, tuple)):
        for value in batch.values() if isinstance(batch, Mapping) else batch:
            yield from _tensors(value)


def _hash_tensor(digest: Any, tensor: Tensor) -> None:
    """Feed ``digest`` the tensor's dtype and shape as text, then the bytes of the whole (gathered) CPU tensor."""
    flat = full_tensor(tensor.detach()).to("cpu").contiguous().reshape(-1)
    digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    digest.update(flat.view(torch.uint8).numpy())


# ------------------------------------------------------------------------------------------------ files
def writability_error(path: str | os.PathLike) -> Optional[ValueError]:
    """Why a mask cannot be written to ``path`` (its folder cannot be made or written), or ``None``; creates the
    folder, writes nothing else.

        >>> writability_error("/proc/no/such/folder/mask.safetensors") is not None
        True
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".mask-", suffix=".probe", dir=directory)
        os.close(handle)
        os.remove(probe)
    except OSError as error:
        return ValueError(
            f"save_mask_path {os.fspath(path)!r} cannot be written ({error.strerror or error}): give a path in a "
            "folder you can write to."
        )
    if os.path.isdir(path):
        return ValueError(f"save_mask_path {os.fspath(path)!r} is a folder: give a file path, e.g. "
                          "<folder>/mask.safetensors.")
    return None


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


# ------------------------------------------------------------------------------------------------ provenance
def _forget_set(
    datamodule: Any, loader: Optional[Callable[[], Iterable[Any]]]
) -> Optional[tuple[str, Optional[str]]]:
    """``(id, description)`` of a run's forget data, or None when it has none (no ``forget_set_id`` and no ``loader``).

    The id is the data module's ``forget_set_id`` when it has one, else :func:`batches_hash` of the batches of
    ``loader()``; the description is the data module's ``forget_set_description`` when it has one.
    """
    identity = getattr(datamodule, "forget_set_id", None)
    description = getattr(datamodule, "forget_set_description", None)
    description = description if isinstance(description, str) else None
    if isinstance(identity, str):
        return identity, description
    if loader is None:
        return None
    return batches_hash(loader()), description


def run_provenance(
    ratio: float,
    selected: Mapping[str, Tensor],
    keys: Collection[str],
    datamodule: Any,
    loader: Optional[Callable[[], Iterable[Any]]],
) -> dict[str, str]:
    """A run's ratio, and when ``keys`` ask for them its forget set (the data module's ``forget_set_id``, else
    :func:`batches_hash` of ``loader()``; None: no forget data) and its starting weights' :func:`parameter_hash`."""
    provenance = {"ratio": str(ratio)}
    forget = _forget_set(datamodule, loader) if "forget_set" in keys else None
    if forget is not None:
        provenance["forget_set"] = forget[0]
        if forget[1] is not None:
            provenance["forget_set_description"] = forget[1]
    if "parameter_hash" in keys:
        provenance["parameter_hash"] = parameter_hash(selected)
    return provenance


def check_provenance(
    path: str, metadata: Mapping[str, str], run: Mapping[str, str], allow_mismatch: bool
) -> None:
    """Raise (or, with ``allow_mismatch``, warn) when the file at ``path``, whose metadata is ``metadata``, was made
    for another run than the one whose provenance is ``run``."""
    differences = _provenance_differences(path, metadata, run)
    header = f"mask_path {path!r} was made for another run"
    if differences and allow_mismatch:
        rank_zero_warn("\n".join([f"{header}; using it anyway (allow_mask_mismatch=True):", *differences]))
    elif differences:
        fix = (
            "Recompute the mask for this run (`salun mask --out FILE`, or save_mask_path=...), or pass "
            "allow_mask_mismatch=True to use this mask on purpose."
        )
        raise ValueError("\n".join([f"{header}:", *differences, fix]))


def _provenance_differences(path: str, metadata: Mapping[str, str], run: Mapping[str, str]) -> list[str]:
    """Lines naming what differs between the file's recorded provenance and the run's (both values)."""
    unknown = [key for key in _CHECKED_KEYS if key not in metadata]
    if unknown:
        rank_zero_warn(
            f"mask_path {path!r} records no {', '.join(unknown)} (an upstream SalUn mask or an older "
            "file): its provenance is unknown, so it cannot be checked against this run on these points."
        )
    if "forget_set" in metadata and "forget_set" not in run:
        rank_zero_info(
            f"WeightSaliency: this run has no forget data, so the forget set of mask_path {path!r} "
            f"({metadata['forget_set']}) is not checked."
        )
    return [
        f"  {label}: file {_described(metadata, key)}, this run {_described(run, key)}"
        for key, label in _CHECKED_KEYS.items()
        if key in metadata and key in run and not _same_value(key, metadata[key], run[key])
    ]


def _described(provenance: Mapping[str, str], key: str) -> str:
    """A provenance value, with the forget set's description when known."""
    description = provenance.get("forget_set_description") if key == "forget_set" else None
    return provenance[key] + (f" ({description})" if description else "")


def _same_value(key: str, recorded: str, current: str) -> bool:
    """Whether a recorded and a current provenance value agree (ratios as numbers: ``"0.5"`` is ``"0.50"``)."""
    if key == "ratio":
        with contextlib.suppress(ValueError):
            return float(recorded) == float(current)
    return recorded == current


# ------------------------------------------------------------------------------------------------ names and shapes
def check_matches(mask: Mapping[str, Tensor], selected: Mapping[str, Tensor], source: str) -> None:
    """Raise unless ``mask`` has exactly the selected parameters' names and shapes."""
    if _mismatches(mask, selected):
        raise _mismatch_error(mask, selected, source)


def match_names(mask: Mapping[str, Tensor], selected: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    """The mask as is when its names are the selected ones, else through the one prefix mapping that fits (removing,
    then adding, one of ``""``, ``"module."``, ``"net."``, ``"model."``, ``"unet."`` on every name)."""
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
    """The error for a mask that does not fit the selected parameters, with the fix."""
    header = f"the mask from {source} does not match the model's selected parameters:"
    fix = "Compute the mask for this model (or check the `parameters` filter)."
    return ValueError("\n".join([header, *_mismatches(mask, selected), *notes, fix]))
