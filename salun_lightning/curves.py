"""A run's curves: the CSV log its fit kept (Lightning's ``CSVLogger``), plotted one panel per metric.

A fit of the ``salun`` command line logs into ``<run>/logs/version_<N>/metrics.csv`` (one version per fit started
there; a resumed fit goes on in a new one), or into the run directory itself when the run directory is a fresh
``runs/<method>/version_<N>``. :func:`find_log` picks the newest, :func:`plot_curves` draws it.

Example::

    >>> import tempfile
    >>> run = Path(tempfile.mkdtemp())
    >>> (run / "logs" / "version_0").mkdir(parents=True)
    >>> _ = (run / "logs" / "version_0" / "metrics.csv").write_text(
    ...     "epoch,step,train/loss,val/accuracy\\n0,4,2.1,\\n0,9,1.7,\\n0,9,,61.5\\n1,14,1.2,\\n1,19,0.9,\\n1,19,,88.0\\n")
    >>> read_curves(find_log(run))["val/accuracy"]
    ([9, 19], [61.5, 88.0])
    >>> plot_curves(run).name
    'curves.png'
"""

from __future__ import annotations

import csv
import math
import os
import re
from pathlib import Path
from typing import Optional, Union

from salun_lightning.figures import save_png
from salun_lightning.runs import LOGS_DIRNAME, check_writable, record_outputs

PathLike = Union[str, os.PathLike]
LOG_FILENAME = "metrics.csv"
CURVES_FILENAME = "curves.png"
BOOKKEEPING = ("epoch", "step")


def find_log(run: PathLike, version: Optional[int] = None) -> Path:
    """The CSV log of ``run``: ``logs/version_<version>/metrics.csv``, by default the newest version, or the run
    directory's own ``metrics.csv``.

    Raises:
        FileNotFoundError: no log there (the message says how a fit keeps one).
    """
    run = Path(run)
    versions = {int(m.group(1)): p for p in (run / LOGS_DIRNAME).glob("version_*/" + LOG_FILENAME)
                if (m := re.fullmatch(r"version_(\d+)", p.parent.name))}
    if version is not None:
        if version not in versions:
            raise FileNotFoundError(f"{run} has no {LOGS_DIRNAME}/version_{version}/{LOG_FILENAME}; it has versions "
                                    f"{sorted(versions) or 'none'}.")
        return versions[version]
    if versions:
        return versions[max(versions)]
    if (run / LOG_FILENAME).is_file():
        return run / LOG_FILENAME
    raise FileNotFoundError(
        f"{run} holds no CSV log ({LOGS_DIRNAME}/version_<N>/{LOG_FILENAME}): its fit ran without a logger. Fits of "
        "the salun command line keep one unless the config sets trainer.logger: false."
    )


def read_curves(log: PathLike) -> dict[str, tuple[list[int], list[float]]]:
    """Every metric of a CSV log as ``(steps, values)``, rows without a value left out, in file order."""
    curves: dict[str, tuple[list[int], list[float]]] = {}
    with open(log, newline="") as stream:
        for row in csv.DictReader(stream):
            for name, text in row.items():
                if name in BOOKKEEPING or text in (None, ""):
                    continue
                value = float(text)
                if math.isfinite(value):
                    steps, values = curves.setdefault(name, ([], []))
                    steps.append(int(float(row.get("step") or 0)))
                    values.append(value)
    return curves


def plot_curves(run: PathLike, out: Optional[PathLike] = None, version: Optional[int] = None) -> Path:
    """Plot the curves of ``run`` (one panel per metric, against the step) into ``out`` (default
    ``<run>/curves.png``) and return its path.

    Raises:
        FileNotFoundError: no log (see :func:`find_log`).
        ValueError: the log holds no metric, or ``out`` is a file the project did not write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = find_log(run, version)
    curves = read_curves(log)
    if not curves:
        raise ValueError(f"{log} holds no metric values yet; plot it once the fit has logged a few steps.")
    target = Path(out) if out is not None else Path(run) / CURVES_FILENAME
    if out is None:
        check_writable(run, CURVES_FILENAME)
    columns = min(3, len(curves))
    rows = math.ceil(len(curves) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    for axis, (name, (steps, values)) in zip(axes.flat, sorted(curves.items())):
        axis.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3)
        axis.set_title(name, fontsize=10)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(curves):]:
        axis.set_visible(False)
    figure.suptitle(f"{Path(run).name}: {log.relative_to(Path(run))}", fontsize=10)
    figure.tight_layout()
    save_png(figure, target)
    plt.close(figure)
    if out is None:
        record_outputs(run, [CURVES_FILENAME])
    return target
