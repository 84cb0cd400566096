"""The run directory: what a run writes, and how a reader tells a finished run from a failed or running one.

A run directory (``trainer.default_root_dir``) holds:

- ``config.yaml``: the whole configuration (written by the ``salun`` command line);
- ``forget_set.json``: the forget set the data module drew (:data:`FORGET_SET_FILENAME`; ``id``, ``description``,
  ``dataset``, ``seed``, ``count``) and ``forget_indices.json``, its indices (a JSON list, reusable as a deletion
  request);
- the model the fit produced: ``model.safetensors`` for classifiers, ``unet/`` (and the rest of a diffusers
  pipeline) for diffusion models;
- ``mask.safetensors``: the saliency mask a ``salun`` fit computed, with its provenance (forget set, ratio, loss,
  starting weights; see :class:`~salun_lightning.callbacks.WeightSaliencyCallback`), unless the fit loaded its mask
  from ``mask_path`` or was told to write it elsewhere (``save_mask_path``);
- ``metrics.json``: the test results, written only by a test of that model.

A fit marks its directory incomplete first (:func:`begin_run`: the marker file ``INCOMPLETE`` is written and the
outputs of an earlier run there are removed), and clears the mark only when it has written its model
(:func:`finish_run`). A run that fails or is killed therefore leaves the marker and no ``metrics.json``: nothing that
looks finished. Readers (``salun report``) skip marked directories.

Example::

    >>> import tempfile
    >>> run = Path(tempfile.mkdtemp())
    >>> begin_run(run); is_incomplete(run)
    True
    >>> finish_run(run); is_incomplete(run)
    False
    >>> run_directory_of(run / "checkpoints" / "last.ckpt") == run
    True
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Optional, Union

from salun_lightning.files import write_atomically, write_json

PathLike = Union[str, os.PathLike]

METRICS_FILENAME = "metrics.json"
FORGET_SET_FILENAME = "forget_set.json"
FORGET_INDICES_FILENAME = "forget_indices.json"
INCOMPLETE_FILENAME = "INCOMPLETE"
MODEL_FILENAME = "model.safetensors"
MASK_FILENAME = "mask.safetensors"
CHECKPOINTS_DIRNAME = "checkpoints"
# What a fit produces: removed when a new fit starts in the directory, so that nothing stale survives it.
RUN_OUTPUTS = (METRICS_FILENAME, MODEL_FILENAME, MASK_FILENAME, "run.json", "unet", "scheduler")


def begin_run(directory: PathLike) -> None:
    """Mark ``directory`` incomplete and remove the outputs of an earlier run there (call on rank zero)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    note = (
        f"A fit started here at {time.strftime('%Y-%m-%d %H:%M:%S')} (pid {os.getpid()}) and has not finished: "
        "it is still running, failed or was killed. Its metrics must not be trusted; run it again.\n"
    ).encode()
    write_atomically(directory / INCOMPLETE_FILENAME, lambda stream: stream.write(note))
    for name in RUN_OUTPUTS:
        path = directory / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def mask_output_path(save_mask_path: Optional[str], mask_path: Optional[str], run: Optional[PathLike]) -> Optional[str]:
    """Where a ``salun`` fit writes the mask it computes: ``save_mask_path`` when given, else the run directory's
    ``mask.safetensors``; nowhere when the mask is loaded from ``mask_path`` (the run's config names that file) or
    there is no run directory (no Trainer).

        >>> mask_output_path(None, None, "runs/x"), mask_output_path(None, "m.safetensors", "runs/x")
        ('runs/x/mask.safetensors', None)
    """
    if save_mask_path is not None or mask_path is not None or run is None:
        return save_mask_path
    return str(Path(run) / MASK_FILENAME)


def finish_run(directory: PathLike) -> None:
    """Clear the incomplete mark of ``directory`` (call on rank zero once the model is written)."""
    (Path(directory) / INCOMPLETE_FILENAME).unlink(missing_ok=True)


def is_incomplete(directory: PathLike) -> bool:
    """Whether a fit started in ``directory`` and did not finish."""
    return (Path(directory) / INCOMPLETE_FILENAME).exists()


def run_directory_of(model_path: PathLike) -> Path:
    """The run directory of a saved model: its folder, or for a Lightning checkpoint in ``checkpoints/`` the folder
    above."""
    folder = Path(model_path).expanduser().resolve().parent
    return folder.parent if folder.name == CHECKPOINTS_DIRNAME else folder


def write_forget_set(directory: PathLike, record: dict[str, Any], indices: list[int]) -> None:
    """Write ``forget_set.json`` (``record``) and ``forget_indices.json`` (``indices``) into ``directory``."""
    directory = Path(directory)
    write_json(directory / FORGET_SET_FILENAME, record)
    payload = json.dumps(indices).encode()
    write_atomically(directory / FORGET_INDICES_FILENAME, lambda stream: stream.write(payload))


def read_forget_set(directory: PathLike) -> Optional[dict[str, Any]]:
    """The ``forget_set.json`` record of a run directory, or ``None`` when it has none.

    Raises:
        ValueError: the file is not a JSON object with a string ``id`` (the message names the file).
    """
    path = Path(directory) / FORGET_SET_FILENAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read {path}: {error}") from None
    if not isinstance(record, dict) or not isinstance(record.get("id"), str):
        raise ValueError(f"{path} must hold a JSON object with a string 'id' (the forget set's identity)")
    return record
