"""The run directory: what a run writes, what it may replace, and how a reader tells a finished run from a failed one.

A run directory (``trainer.default_root_dir``) holds:

- ``manifest.json``: the run's identity (``run_id``, start time) and the names of the outputs the project owns there
  (:data:`RUN_OUTPUTS`); a later fit replaces those and nothing else;
- ``config.yaml``: the whole configuration (written by the ``salun`` command line);
- ``forget_set.json``: the forget set the data module drew (:data:`FORGET_SET_FILENAME`; ``id``, ``description``,
  ``dataset``, ``seed``, ``count``, ``run_id``) and ``forget_indices.json``, its indices (a JSON list, reusable as a
  deletion request);
- the model the fit produced: ``model.safetensors`` for classifiers, ``unet/`` (and the rest of a diffusers
  pipeline) for diffusion models;
- ``mask.safetensors``: the saliency mask a ``salun`` fit computed, with its provenance, unless the fit loaded its
  mask from ``mask_path`` or was told to write it elsewhere (``save_mask_path``);
- ``metrics.json``: the test results, written only by a test of that model (with the model's ``run_id``);
- ``logs/version_<N>/``: the curves of each fit started there (Lightning's CSV logger, and TensorBoard's when it is
  installed; ``salun curves`` plots them into ``curves.png``) and ``checkpoints/last.ckpt``: Lightning's own, never
  removed by a refit (a resume needs them).

Every rank of a fit calls :func:`open_run` from ``setup("fit")`` (the data module's and the LightningModule's; the
first call of a fit does the work, before anything is written):

1. the directory: ``trainer.default_root_dir``, or, when that is the current directory (the Trainer's default: no
   run directory was given), a fresh one below it, announced on the log: the first logger's versioned folder
   (Lightning's ``lightning_logs/version_<N>``), or without a logger ``runs/<name>/version_<N>``;
2. refuses an input of the run (``original_weights``, ``mask_path``, ``pretrained``, ``forget_indices_file``, ...:
   the modules' ``run_inputs()``) that is the directory itself or lies in one of the outputs the fit replaces
   (other files of the directory, e.g. a data folder beside the outputs, are inputs like any other);
3. refuses a directory holding a file or folder of an output's name that no run wrote there (not in a manifest):
   nothing deletes or overwrites a file the project did not write;
4. marks the directory ``INCOMPLETE``, removes the previous run's outputs and writes the new manifest.

The mark goes only when the model is written (:func:`close_run`), so a run that fails or is killed leaves the
marker and no ``metrics.json``: nothing that looks finished. Readers (``salun report``) skip marked directories,
and directories whose ``metrics.json`` and ``forget_set.json`` carry different run ids.

Example::

    >>> import tempfile
    >>> from lightning.pytorch import Trainer
    >>> run = Path(tempfile.mkdtemp())
    >>> trainer = Trainer(default_root_dir=run, logger=False, enable_progress_bar=False)
    >>> open_run(trainer) == run, is_incomplete(run), sorted(p.name for p in run.iterdir())
    (True, True, ['INCOMPLETE', 'manifest.json'])
    >>> close_run(trainer); is_incomplete(run)
    False
    >>> (run / "notes.txt").write_text("mine")  # not an output: a refit leaves it alone
    4
    >>> write_output(run, METRICS_FILENAME, {"UA": 1.0}); sorted(p.name for p in run.iterdir())
    ['manifest.json', 'metrics.json', 'notes.txt']
    >>> run_directory_of(run / "checkpoints" / "last.ckpt") == run
    True
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from lightning.pytorch.utilities import rank_zero_info

from salun_lightning.callbacks.weight_saliency.mask_files import writability_error
from salun_lightning.files import write_atomically, write_json

PathLike = Union[str, os.PathLike]

MANIFEST_FILENAME = "manifest.json"
MANIFEST_FORMAT = "salun-lightning/run"
CONFIG_FILENAME = "config.yaml"
METRICS_FILENAME = "metrics.json"
FORGET_SET_FILENAME = "forget_set.json"
FORGET_INDICES_FILENAME = "forget_indices.json"
INCOMPLETE_FILENAME = "INCOMPLETE"
MODEL_FILENAME = "model.safetensors"
MASK_FILENAME = "mask.safetensors"
RUN_FILENAME = "run.json"
CHECKPOINTS_DIRNAME = "checkpoints"
LOGS_DIRNAME = "logs"
SAMPLES_DIRNAME = "samples"
# What the project writes into a run directory (files, and the folders of a diffusers pipeline): a refit replaces
# these where a manifest says the project wrote them, and refuses to start where it does not.
RUN_OUTPUTS = (
    CONFIG_FILENAME, FORGET_SET_FILENAME, FORGET_INDICES_FILENAME, MODEL_FILENAME, MASK_FILENAME, METRICS_FILENAME,
    RUN_FILENAME, "unet", "scheduler", "vae", "text_encoder", "tokenizer", SAMPLES_DIRNAME, "curves.png",
)
FRESH_RUNS_DIRNAME = "runs"


@dataclass(frozen=True)
class OpenRun:
    """The run directory of the fit in progress and the run's identity."""

    directory: Path
    run_id: str
    owners: tuple[int, int]  # ids of the LightningModule and data module it was opened for


def open_run(trainer: Any, name: str = "run") -> Path:
    """Prepare the run directory of ``trainer``'s fit (see the module docstring) and return it; call on every rank.

    The first call of a fit checks, marks and clears; later calls (the other module's ``setup``) return the same
    directory. ``name`` names the fresh folder when no run directory was given (``runs/<name>/version_<N>``).

    Raises:
        ValueError: an input lies inside the directory, or the directory holds outputs no run wrote there (the
            message names them and the fix).
    """
    owners = (id(trainer.lightning_module), id(trainer.datamodule))
    current: Optional[OpenRun] = trainer.__dict__.get("_salun_run")
    if current is not None and current.owners == owners:
        return current.directory
    strategy = trainer.strategy
    given = Path(trainer.default_root_dir).expanduser()
    fresh = given.resolve() == Path.cwd().resolve()
    directory = _fresh_directory(trainer, given, name) if fresh else given
    _check_inputs(directory, _inputs(trainer))
    previous = _check_owned(directory)
    _agree(trainer, (lambda: _check_outputs(trainer)) if trainer.is_global_zero else None, "refused the run's outputs")
    strategy.barrier("salun_open_run")  # every rank has read the directory before rank zero changes it
    run_id = uuid.uuid4().hex if trainer.is_global_zero else ""
    start = (lambda: _start(directory, run_id, previous)) if trainer.is_global_zero else None
    _agree(trainer, start, f"could not prepare the run directory {directory}")
    run_id = strategy.broadcast(run_id)
    trainer.__dict__["_salun_run"] = OpenRun(directory, run_id, owners)
    trainer._default_root_dir = str(directory)  # checkpoints, the saved config and the test follow the run
    if fresh:
        rank_zero_info(f"no run directory was given (trainer.default_root_dir): this run writes into {directory}")
    return directory


def method_name(model: Any) -> str:
    """The ``method`` hyper-parameter of a model (``"run"`` without one): the name of a fresh run directory."""
    method = getattr(getattr(model, "hparams", None), "method", None)
    return method if isinstance(method, str) and method else "run"


def run_id_of(trainer: Any) -> Optional[str]:
    """The ``run_id`` of ``trainer``'s open run (``None`` when no fit opened one)."""
    current: Optional[OpenRun] = trainer.__dict__.get("_salun_run")
    return current.run_id if current is not None else None


def close_run(trainer: Any, finished: bool = True) -> None:
    """End the open run of ``trainer`` (call on every rank; nothing when no run is open): when ``finished`` (its
    model is written), rank zero clears the ``INCOMPLETE`` mark; otherwise the directory stays marked."""
    current: Optional[OpenRun] = trainer.__dict__.pop("_salun_run", None)
    if current is not None and finished and trainer.is_global_zero:
        (current.directory / INCOMPLETE_FILENAME).unlink(missing_ok=True)


def write_output(directory: PathLike, name: str, payload: Any) -> None:
    """Write the JSON output ``name`` (one of :data:`RUN_OUTPUTS`) into ``directory``, recording it in the manifest.

    Raises:
        ValueError: ``directory`` holds a ``name`` that no run wrote there (it is never overwritten).
    """
    directory = Path(directory)
    check_writable(directory, name)
    write_json(directory / name, payload)
    record_outputs(directory, [name])


def check_writable(directory: PathLike, name: str) -> None:
    """Refuse to replace ``directory/name`` unless the project wrote it (its manifest lists it) or it does not exist.

    Raises:
        ValueError: it exists and no manifest lists it (the message says what to do).
    """
    directory = Path(directory)
    if (directory / name).exists() and name not in _owned_names(read_manifest(directory)):
        raise ValueError(_foreign_message(directory, [name]))


def record_outputs(directory: PathLike, names: Iterable[str]) -> None:
    """Add ``names`` to the outputs the manifest of ``directory`` lists (e.g. a test writing beside a model file
    that no fit made there), creating the manifest if need be; nothing is written when it lists them already."""
    directory = Path(directory)
    manifest = read_manifest(directory) or {"format": MANIFEST_FORMAT, "run_id": None, "outputs": []}
    outputs = list(manifest.get("outputs", []))
    added = [name for name in names if name not in outputs]
    if added:
        write_json(directory / MANIFEST_FILENAME, {**manifest, "outputs": outputs + added})


def read_manifest(directory: PathLike) -> Optional[dict[str, Any]]:
    """The ``manifest.json`` of a run directory, or ``None`` when it has none.

    Raises:
        ValueError: the file is not a manifest of this project (the message names the file).
    """
    path = Path(directory) / MANIFEST_FILENAME
    record = _read_json(path)
    if record is None:
        return None
    if not isinstance(record, dict) or record.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not a salun run manifest (format {MANIFEST_FORMAT!r}); it is not replaced.")
    return record


def is_incomplete(directory: PathLike) -> bool:
    """Whether a fit started in ``directory`` and did not finish."""
    return (Path(directory) / INCOMPLETE_FILENAME).exists()


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
    record = _read_json(path)
    if record is None:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("id"), str):
        raise ValueError(f"{path} must hold a JSON object with a string 'id' (the forget set's identity)")
    return record


def check_mask_output(path: Optional[PathLike]) -> None:
    """Refuse a ``save_mask_path`` that cannot be written (its folder cannot be made or written, or it is a folder).

    Raises:
        ValueError: the message names the path and the fix.
    """
    if path is not None:
        error = writability_error(path)
        if error is not None:
            raise error


class FitClock:
    """The minutes of a fit (RTE), across resumes: a checkpoint stores :meth:`checkpoint_minutes`, and a resumed fit
    adds its own minutes to those :meth:`restore` gives back.

        >>> clock = FitClock()
        >>> clock.restore(2.5)  # a checkpoint saved after 2.5 minutes
        >>> clock.minutes, clock.checkpoint_minutes()
        (2.5, 2.5)
        >>> clock.start(); clock.minutes is None  # setup("fit"): before a checkpoint is restored
        True
        >>> clock.restore(2.5); clock.stop() >= 2.5  # the resumed fit's end: both parts
        True
    """

    def __init__(self) -> None:
        self.minutes: Optional[float] = None  # of the last finished fit, or of the checkpoint or model loaded
        self._before: Optional[float] = None
        self._started: Optional[float] = None

    def start(self) -> None:
        """A fit starts (``setup("fit")``): forget earlier minutes until a checkpoint restores them."""
        self.minutes = self._before = None
        self._started = time.perf_counter()

    def restore(self, minutes: Optional[float]) -> None:
        """The minutes a checkpoint or a saved model recorded."""
        self.minutes = self._before = minutes

    def elapsed(self) -> Optional[float]:
        """Minutes of the fit so far, the part before a resume included (``None`` when none ran or was restored)."""
        if self._started is None:
            return self._before
        return (self._before or 0.0) + (time.perf_counter() - self._started) / 60

    def stop(self) -> Optional[float]:
        """The fit ends: its minutes, kept as :attr:`minutes`."""
        self.minutes, self._started = self.elapsed(), None
        return self.minutes

    def checkpoint_minutes(self) -> Optional[float]:
        """What a checkpoint stores: the minutes so far during a fit, else the last fit's."""
        return self.elapsed() if self._started is not None else self.minutes


def open_fit(trainer: Any, name: str, saliency: Any, clock: FitClock) -> Path:
    """What a LightningModule's ``setup("fit")`` does: :func:`open_run`, point its saliency callback (if any) at
    the run's ``mask.safetensors`` unless it loads or writes another, and start the RTE clock."""
    directory = open_run(trainer, name)
    if saliency is not None:
        saliency.save_mask_path = mask_output_path(saliency.save_mask_path, saliency.mask_path, directory)
    clock.start()
    return directory


# ---------------------------------------------------------------------------------------------------- internals
def _read_json(path: Path) -> Any:
    """The JSON value in ``path``, or ``None`` when there is no such file (ValueError, naming it, when unreadable)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read {path}: {error}") from None


def _fresh_directory(trainer: Any, cwd: Path, name: str) -> Path:
    """The run directory of a fit given none: its first logger's versioned folder below ``cwd`` (Lightning's
    ``lightning_logs/version_<N>``), or else a new ``runs/<name>/version_<N>``; chosen by rank zero."""
    log_dir = Path(trainer.log_dir).resolve() if trainer.loggers and trainer.log_dir else None  # broadcast
    if log_dir is not None and cwd.resolve() in log_dir.parents and log_dir.name.startswith("version_"):
        return log_dir
    chosen: list[Path] = []
    claim = (lambda: chosen.append(_claim_fresh_directory(cwd / FRESH_RUNS_DIRNAME / name))) if trainer.is_global_zero \
        else None
    _agree(trainer, claim, f"could not create a run directory under {cwd / FRESH_RUNS_DIRNAME}")
    return Path(trainer.strategy.broadcast(str(chosen[0]) if chosen else ""))


def _agree(trainer: Any, work: Optional[Callable[[], Any]], failure: str) -> None:
    """Run ``work`` (on the ranks that pass one) and raise its error on every rank: a collective every rank reaches,
    so that an error on rank zero stops the others instead of leaving them in the next collective."""
    error: Optional[Exception] = None
    if work is not None:
        try:
            work()
        except (OSError, ValueError) as caught:
            error = caught
    if trainer.strategy.reduce_boolean_decision(error is not None, all=False):
        raise error if error is not None else RuntimeError(f"rank zero {failure}; see its error.")


def _check_outputs(trainer: Any) -> None:
    """The modules' own checks of what they will write (``check_outputs()``, e.g. an unwritable mask path)."""
    for owner in (trainer.lightning_module, trainer.datamodule):
        check = getattr(owner, "check_outputs", None)
        if callable(check):
            check()


def _claim_fresh_directory(base: Path) -> Path:
    """Create and return the first ``base/version_<N>`` that does not exist (as Lightning's loggers number runs)."""
    base.mkdir(parents=True, exist_ok=True)
    version = 0
    while True:
        candidate = base / f"version_{version}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            version += 1


def _inputs(trainer: Any) -> dict[str, str]:
    """The files and folders the fit reads, by argument name (the modules' ``run_inputs()``)."""
    inputs: dict[str, str] = {}
    for owner in (trainer.lightning_module, trainer.datamodule):
        described = getattr(owner, "run_inputs", None)
        if callable(described):
            inputs.update({name: str(path) for name, path in described().items() if path is not None})
    return inputs


def _check_inputs(directory: Path, inputs: Mapping[str, str]) -> None:
    """Refuse inputs that are the run directory itself or lie in one of the outputs a fit there replaces."""
    root = directory.expanduser().resolve()
    cleared = [root / name for name in RUN_OUTPUTS]
    inside = []
    for name, value in inputs.items():
        path = Path(value).expanduser()
        if not path.exists():
            continue
        path = path.resolve()
        if path == root or any(path == output or output in path.parents for output in cleared):
            inside.append(f"{name} ({value})")
    if inside:
        raise ValueError(
            f"{' and '.join(inside)} lie{'s' if len(inside) == 1 else ''} inside the run directory {directory}, which "
            "this fit clears and writes into: copy the input elsewhere, or give the fit another run directory "
            "(trainer.default_root_dir)."
        )


def _owned_names(manifest: Optional[Mapping[str, Any]]) -> set[str]:
    outputs = manifest.get("outputs", []) if manifest is not None else []
    return {name for name in outputs if isinstance(name, str) and name in RUN_OUTPUTS}


def _check_owned(directory: Path) -> set[str]:
    """The outputs an earlier run wrote in ``directory`` (to be replaced); raise when others are there too."""
    owned = _owned_names(read_manifest(directory))
    foreign = [name for name in RUN_OUTPUTS if name not in owned and (directory / name).exists()]
    if foreign:
        raise ValueError(_foreign_message(directory, foreign))
    return owned


def _foreign_message(directory: Path, names: Iterable[str]) -> str:
    listed = ", ".join(names)
    return (
        f"{directory} holds {listed}, which no salun run wrote there (its {MANIFEST_FILENAME} does not list "
        f"{'it' if ',' not in listed else 'them'}); nothing here replaces files it did not write. Give the run "
        "another directory (trainer.default_root_dir), or move those files away."
    )


def _start(directory: Path, run_id: str, previous: Iterable[str]) -> None:
    """Mark ``directory`` incomplete, remove the ``previous`` outputs and write the new manifest (rank zero)."""
    directory.mkdir(parents=True, exist_ok=True)
    note = (
        f"A fit started here at {time.strftime('%Y-%m-%d %H:%M:%S')} (pid {os.getpid()}, run {run_id}) and has not "
        "finished: it is still running, failed or was killed. Its metrics must not be trusted; run it again.\n"
    ).encode()
    write_atomically(directory / INCOMPLETE_FILENAME, lambda stream: stream.write(note))
    for name in previous:
        path = directory / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    manifest = {
        "format": MANIFEST_FORMAT,
        "run_id": run_id,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "outputs": list(RUN_OUTPUTS),
    }
    write_json(directory / MANIFEST_FILENAME, manifest)
