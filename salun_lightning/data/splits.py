"""Seeded training-set splits: validation hold-out, forget set D_f and retain set D_r.

Every index refers to the full training set of the source. The three parts are disjoint and together cover it, but
for the indices a split excludes (``exclude_indices``: samples no part holds, never trained on, forgotten or
validated; the "never seen" examples of an audit).

A float ``val_size`` is a fraction of the full training set, an int a count.

- random forgetting: the hold-out is drawn first from all training samples, then the forget set from the rest
  (``forget_fraction`` is a fraction of the samples left after the hold-out: CIFAR-10 with ``val_size=5000`` and
  ``forget_fraction=0.1`` forgets 4,500 images);
- class-wise forgetting: the hold-out is drawn from all training samples, and the forget set is every remaining
  sample of the class;
- a deletion request (explicit indices): every requested index is forgotten, and the hold-out is drawn from the
  samples not in the request.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor


@dataclass(frozen=True)
class Split:
    """Sorted int64 index tensors into the full training set (``excluded``: in no part)."""

    forget: Tensor
    retain: Tensor
    val: Tensor
    excluded: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))


def resolve_class(forget_class: Union[int, str], class_names: Sequence[str]) -> int:
    """Return the class index of ``forget_class``: a class name, or an index (an int or a string of digits).

    A string that equals a class name is a name (so ``"3"`` is the class named ``"3"`` where one exists).

    Raises:
        ValueError: for an unknown name or an index out of range; the message lists the valid names.
    """
    names = list(class_names)
    if isinstance(forget_class, str) and forget_class in names:
        return names.index(forget_class)
    index: Optional[int] = None
    if isinstance(forget_class, int) and not isinstance(forget_class, bool):
        index = forget_class
    elif isinstance(forget_class, str) and forget_class.strip().lstrip("-").isdigit():
        index = int(forget_class)
    if index is None or not 0 <= index < len(names):
        raise ValueError(
            f"unknown forget_class {forget_class!r}: give a class name or an index 0..{len(names) - 1}; the classes "
            f"are {', '.join(f'{i}={name}' for i, name in enumerate(names))}."
        )
    return index


def read_indices_file(path: Union[str, Path], option: str = "forget_indices_file") -> list[int]:
    """Read a deletion request: a JSON list of ints, or one int per line (blank lines are skipped).

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when an entry is not an integer (the message gives the line or position).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        what = "to forget" if option == "forget_indices_file" else "to hold out of every split"
        raise FileNotFoundError(
            f"{option} {path} does not exist; it should hold the training-set indices {what}, one per line or as a "
            "JSON list."
        )
    text = path.read_text()
    if text.lstrip().startswith("["):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} starts with '[' but is not valid JSON: {err}") from err
        bad = [f"position {i}: {v!r}" for i, v in enumerate(values) if not isinstance(v, int) or isinstance(v, bool)]
        if bad:
            raise ValueError(f"{path} must be a JSON list of integers; not integers at {', '.join(bad[:5])}.")
        return values
    values = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                values.append(int(line))
            except ValueError:
                raise ValueError(f"{path} line {number}: {line.strip()!r} is not an integer index.") from None
    return values


def hold_out_count(val_size: Union[int, float], total: int, available: int) -> int:
    """Return the number of samples to hold out: ``val_size`` itself, or ``round(val_size * total)``.

    ``total`` is the size of the training set, ``available`` the number of samples the hold-out may come from.
    """
    count = val_size if isinstance(val_size, int) else round(val_size * total)
    if count >= available:
        raise ValueError(
            f"val_size={val_size} holds out {count} of the {available} available training samples, leaving none "
            f"to train on; lower val_size."
        )
    return count


def make_split(
    labels: Tensor,
    seed: int,
    val_size: Union[int, float] = 0,
    forget_fraction: Optional[float] = None,
    forget_count: Optional[int] = None,
    forget_class: Optional[int] = None,
    forget_indices: Optional[Sequence[int]] = None,
    exclude_indices: Optional[Sequence[int]] = None,
) -> Split:
    """Split a training set with labels ``labels`` into forget, retain and validation parts.

    Exactly one scenario is given: ``forget_fraction`` or ``forget_count`` (random), ``forget_class`` (a class
    index), or ``forget_indices`` (a deletion request). ``exclude_indices`` are left out of every part first (the
    random draws then come from the other samples). The same arguments always give the same split.

    Raises:
        ValueError: for indices out of range or repeated, a forget index that is also excluded, or an empty forget
            or retain set.

    Example::

        >>> split = make_split(torch.arange(10) % 2, seed=0, val_size=2, forget_class=1)
        >>> len(split.forget) + len(split.retain) + len(split.val)
        10
    """
    total = len(labels)
    generator = torch.Generator().manual_seed(seed)
    in_exclusion = torch.zeros(total, dtype=torch.bool)
    if exclude_indices is not None and len(exclude_indices) > 0:
        _check_indices(exclude_indices, total, "exclude_indices_file")
        in_exclusion[torch.as_tensor(list(exclude_indices), dtype=torch.int64)] = True
    everything = torch.arange(total)[~in_exclusion]
    if forget_indices is not None:
        _check_indices(forget_indices, total)
        requested = torch.as_tensor(list(forget_indices), dtype=torch.int64)
        both = sorted(set(requested.tolist()) & set(torch.nonzero(in_exclusion).flatten().tolist()))
        if both:
            raise ValueError(f"{len(both)} indices are both to forget and excluded (e.g. {both[:5]}): a sample is "
                             "either trained on (and forgotten) or never seen; remove them from one of the files.")
        in_request = torch.zeros(total, dtype=torch.bool)
        in_request[requested] = True
        candidates = everything[~in_request[everything]]
        val = _draw(candidates, hold_out_count(val_size, total, len(candidates)), generator)
        forget = requested
    else:
        val = _draw(everything, hold_out_count(val_size, total, len(everything)), generator)
        in_val = torch.zeros(total, dtype=torch.bool)
        in_val[val] = True
        remaining = everything[~in_val[everything]]
        if forget_class is not None:
            forget = remaining[labels[remaining] == forget_class]
            what = f"forget_class={forget_class}"
        else:
            count = forget_count if forget_count is not None else round(forget_fraction * len(remaining))
            if count > len(remaining):
                raise ValueError(
                    f"forget_count={forget_count} exceeds the {len(remaining)} training samples left after the "
                    f"validation hold-out; lower forget_count or val_size."
                )
            forget = _draw(remaining, count, generator)
            what = f"forget_fraction={forget_fraction}" if forget_count is None else f"forget_count={forget_count}"
        if len(forget) == 0:
            raise ValueError(
                f"the forget set is empty ({what} selects none of the {len(remaining)} training samples left after "
                f"the validation hold-out); choose a larger fraction/count or a class with training samples."
            )
    in_forget_or_val = torch.zeros(total, dtype=torch.bool)
    in_forget_or_val[forget] = True
    in_forget_or_val[val] = True
    retain = everything[~in_forget_or_val[everything]]
    if len(retain) == 0:
        raise ValueError(
            f"the retain set is empty: the forget set ({len(forget)}) and the validation hold-out ({len(val)}) take "
            f"all {total} training samples; forget fewer samples or lower val_size."
        )
    return Split(forget.sort().values, retain, val.sort().values, torch.nonzero(in_exclusion).flatten())


def _draw(pool: Tensor, count: int, generator: torch.Generator) -> Tensor:
    return pool[torch.randperm(len(pool), generator=generator)[:count]]


def _check_indices(indices: Sequence[int], total: int, option: str = "forget_indices_file") -> None:
    kind = "forget" if option == "forget_indices_file" else "excluded"
    if len(indices) == 0:
        raise ValueError("the forget set is empty: the deletion request (forget_indices_file) lists no index.")
    out_of_range = [i for i in indices if not 0 <= i < total]
    if out_of_range:
        shown = ", ".join(str(i) for i in out_of_range[:10]) + (", ..." if len(out_of_range) > 10 else "")
        raise ValueError(
            f"{kind} indices ({option}) out of range for a training set of {total} samples (valid: 0..{total - 1}): "
            f"{shown}."
        )
    repeated = sorted(i for i, n in Counter(indices).items() if n > 1)
    if repeated:
        shown = ", ".join(str(i) for i in repeated[:10]) + (", ..." if len(repeated) > 10 else "")
        raise ValueError(f"{kind} indices ({option}) repeated ({len(repeated)} indices appear more than once): {shown}.")


def forget_set_id(dataset: str, train_size: int, forget: Tensor, excluded: Optional[Tensor] = None) -> str:
    """The identity of a forget set: a sha256 over the data set's name and size and the sorted forget indices (and
    the excluded indices, when a split has any: the same forget set beside another exclusion is another experiment).

    Two runs forget the same samples exactly when their ids are equal; mask files and reports compare ids.

    Example::

        >>> forget_set_id("digits", 1442, torch.tensor([3, 1]))[:15]
        'sha256:167b9060'
    """
    digest = hashlib.sha256(f"{dataset}:{train_size}:".encode())
    digest.update(forget.to(torch.int64).sort().values.numpy().tobytes())
    if excluded is not None and len(excluded) > 0:
        digest.update(b":excluded:" + excluded.to(torch.int64).sort().values.numpy().tobytes())
    return "sha256:" + digest.hexdigest()
