"""Markdown report (and bar chart) of unlearning runs, each compared with the retrain run of its seed.

Every run directory holds a ``metrics.json``. Classifier runs (written by the classifier module)::

    {"method": "salun", "seed": 0, "UA": 2.85, "RA": 99.62, "TA": 93.93, "MIA": 14.39, "RTE": 2.66}

UA, RA, TA and MIA are percentages, RTE is minutes; extra keys are ignored. Diffusion runs (recognised by their
``FID`` key) hold ``UA``, ``retained_accuracy`` (the judge's accuracy on retained-class generations, percent),
``FID``, ``fid_features`` (the feature extractor, which must be the same for all runs) and ``RTE``; their table
has no Avg. Gap and needs no retrain run. From the command line::

    python -m salun_lightning.report runs/*/ --out reports/cifar10
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Optional, Union

import numpy as np

from salun_lightning.files import write_atomically
from salun_lightning.metrics.functional import average_gap

__all__ = ["build_report", "main"]

PathLike = Union[str, os.PathLike]
GAP_COLUMN = "Avg. Gap"


@dataclass(frozen=True)
class _Kind:
    """Which numbers a kind of run reports, and which of them are averaged into the gap to retrain."""

    name: str
    numbers: tuple[str, ...]  # required numeric keys of metrics.json
    compared: tuple[str, ...]  # averaged into Avg. Gap against retrain (empty: no gap, no retrain needed)

    @property
    def columns(self) -> tuple[str, ...]:
        if not self.compared:
            return self.numbers
        return (*self.numbers[:-1], GAP_COLUMN, self.numbers[-1])


CLASSIFIER = _Kind("classifier", ("UA", "RA", "TA", "MIA", "RTE"), ("UA", "RA", "TA", "MIA"))
DIFFUSION = _Kind("diffusion", ("UA", "retained_accuracy", "FID", "RTE"), ())


@dataclass(frozen=True)
class _Run:
    directory: Path
    method: str
    seed: int
    values: dict[str, float]
    kind: _Kind
    fid_features: Optional[str] = None


@dataclass(frozen=True)
class _MethodSummary:
    method: str
    runs: list[_Run]
    columns: dict[str, np.ndarray]  # the kind's columns -> one value per run
    gaps: dict[str, np.ndarray]  # the kind's compared keys and GAP_COLUMN -> |run - retrain| per run


def _load_run(directory: Path) -> _Run:
    path = directory / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"run directory {directory} has no metrics.json")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(record, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(record).__name__}")
    kind = DIFFUSION if "FID" in record else CLASSIFIER
    for key in ("method", "seed", *kind.numbers, *(("fid_features",) if kind is DIFFUSION else ())):
        if key not in record:
            raise ValueError(f"{path} is missing key {key!r}")
    method, seed = record["method"], record["seed"]
    if not isinstance(method, str) or not method:
        raise ValueError(f"{path}: 'method' must be a non-empty string, got {method!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"{path}: 'seed' must be an integer, got {seed!r}")
    values = {}
    for key in kind.numbers:
        value = record[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"{path}: {key!r} must be a finite number, got {value!r}")
        values[key] = float(value)
    return _Run(directory, method, seed, values, kind, record.get("fid_features"))


def _summarise(runs: list[_Run], retrain: str) -> list[_MethodSummary]:
    """One summary per method: retrain first, then by mean Avg. Gap (ties by name)."""
    seen: dict[tuple[str, int], Path] = {}
    for run in runs:
        other = seen.setdefault((run.method, run.seed), run.directory)
        if other != run.directory:
            raise ValueError(f"two {run.method!r} runs with seed {run.seed}: {other} and {run.directory}")
    kinds = {run.kind.name for run in runs}
    if len(kinds) > 1:
        raise ValueError(f"cannot mix classifier and diffusion runs in one report ({', '.join(sorted(kinds))})")
    kind = runs[0].kind
    features = {run.fid_features for run in runs}
    if len(features) > 1:
        raise ValueError(f"FIDs from different feature extractors cannot be compared: {sorted(map(str, features))}")
    references = {run.seed: run for run in runs if run.method == retrain}
    if kind.compared and not references:
        read = ", ".join(str(run.directory) for run in runs)
        raise ValueError(f"no {retrain!r} run to compare against among the run directories read: {read}")

    by_method: dict[str, list[_Run]] = {}
    for run in sorted(runs, key=lambda run: run.seed):
        by_method.setdefault(run.method, []).append(run)
    summaries = []
    for method, method_runs in by_method.items():
        gaps: dict[str, list[float]] = {key: [] for key in (*kind.compared, GAP_COLUMN)}
        for run in method_runs if kind.compared else ():
            reference = references.get(run.seed)
            if reference is None:
                raise ValueError(
                    f"no {retrain!r} run with seed {run.seed} for the {method!r} run in {run.directory} "
                    f"({retrain!r} seeds: {sorted(references)})"
                )
            for key in kind.compared:
                gaps[key].append(abs(run.values[key] - reference.values[key]))
            gaps[GAP_COLUMN].append(average_gap(run.values, reference.values, kind.compared))
        columns = {key: np.array([run.values[key] for run in method_runs]) for key in kind.numbers}
        if kind.compared:
            columns[GAP_COLUMN] = np.array(gaps[GAP_COLUMN])
        summaries.append(_MethodSummary(method, method_runs, columns, {k: np.array(v) for k, v in gaps.items()}))
    if not kind.compared:
        return sorted(summaries, key=lambda s: (s.method != retrain, s.method != "train", s.method))
    return sorted(summaries, key=lambda s: (s.method != retrain, s.columns[GAP_COLUMN].mean(), s.method))


def _cell(values: np.ndarray) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"


def _markdown_table(summaries: list[_MethodSummary]) -> str:
    columns = summaries[0].runs[0].kind.columns
    headers = [{"retained_accuracy": "retained acc."}.get(column, column) for column in columns]
    lines = [
        "| method | " + " | ".join(headers) + " |",
        "| --- | " + " | ".join("---:" for _ in columns) + " |",
    ]
    for summary in summaries:
        lines.append(f"| {summary.method} | " + " | ".join(_cell(summary.columns[c]) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _markdown_document(table: str, summaries: list[_MethodSummary], retrain: str) -> str:
    runs = "\n".join(
        f"- {summary.method}, seed {run.seed}: `{run.directory}`" for summary in summaries for run in summary.runs
    )
    first = summaries[0].runs[0]
    if first.kind is DIFFUSION:
        return (
            "# Unlearning report (diffusion)\n\n"
            "UA: percentage of forgotten-class generations the judge classifier does not assign to the forgotten "
            "class; retained acc.: the judge's accuracy on generations of the retained classes (percent); FID on "
            f"retained classes with {first.fid_features} features; RTE in minutes.\n\n"
            f"{table}\n![UA and retained accuracy per method](report.png)\n\n## Runs\n\n{runs}\n"
        )
    return (
        "# Unlearning report\n\n"
        "UA, RA, TA and MIA (MIA-Efficacy) in percent; Avg. Gap is the mean of |method - retrain| over UA, RA, TA "
        f"and MIA against the {retrain!r} run with the same seed; RTE in minutes. A method with several runs "
        "shows mean ± sample standard deviation over its seeds.\n\n"
        f"{table}\n"
        "![Absolute gap to retrain per metric](report.png)\n\n"
        f"## Runs\n\n{runs}\n"
    )


def _plot_gaps(summaries: list[_MethodSummary], retrain: str, stream: IO[bytes]) -> None:
    # Imported here: only the written report needs matplotlib. The Agg canvas avoids pyplot's global state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    kind = summaries[0].runs[0].kind
    if kind.compared:
        groups, values, methods = (*kind.compared, GAP_COLUMN), "gaps", [s for s in summaries if s.method != retrain]
    else:
        groups, values, methods = ("UA", "retained_accuracy"), "columns", summaries
    figure = Figure(figsize=(8, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / max(len(methods), 1)
    positions = np.arange(len(groups))
    for index, summary in enumerate(methods):
        table = getattr(summary, values)
        means = [table[group].mean() for group in groups]
        errors = [table[group].std(ddof=1) for group in groups] if len(summary.runs) > 1 else None
        offset = (index - (len(methods) - 1) / 2) * width
        axes.bar(positions + offset, means, width, yerr=errors, capsize=3, label=summary.method)
    if methods:
        axes.legend(title="method")
    else:
        axes.text(0.5, 0.5, f"only {retrain!r} runs", ha="center", va="center", transform=axes.transAxes)
    axes.set_xticks(positions, groups)
    if kind.compared:
        axes.set_ylabel(f"|method - {retrain}| (percentage points)")
        axes.set_title(f"Absolute gap to {retrain} (lower is better)")
    else:
        axes.set_ylabel("percent")
        axes.set_title("Forgetting (UA) and retained-class accuracy of the generations")
    figure.savefig(stream, format="png", dpi=120)


def build_report(run_dirs: Sequence[PathLike], out_dir: Optional[PathLike] = None, retrain: str = "retrain") -> str:
    """Markdown table of UA, RA, TA, MIA, Avg. Gap and RTE per method, from the runs' ``metrics.json`` files.

    Rows: ``retrain`` first, then the other methods by mean Avg. Gap, ascending. Each run's Avg. Gap is taken
    against the ``retrain`` run with the same seed. A method with one run shows plain numbers; with several
    runs, ``mean ± std`` (sample standard deviation, ddof=1). All numbers have 2 decimals.

    Args:
        run_dirs: run directories, each holding a ``metrics.json``.
        out_dir: if given, ``report.md`` and ``report.png`` (a bar chart of each method's absolute gap to
            retrain for UA, RA, TA, MIA and Avg. Gap) are written there atomically; the folder is created.
        retrain: method name of the reference runs.

    Raises:
        FileNotFoundError: if a run directory has no ``metrics.json``.
        ValueError: on invalid JSON, a missing or ill-typed key, no run directories, two runs with the same
            method and seed, no ``retrain`` run, or a run whose seed has no ``retrain`` run (classifier runs),
            classifier and diffusion runs mixed, or FIDs from different feature extractors.

    Example::

        >>> print(build_report(["runs/retrain_s0", "runs/salun_s0"]), end="")  # doctest: +SKIP
        | method | UA | RA | TA | MIA | Avg. Gap | RTE |
        | --- | ---: | ---: | ---: | ---: | ---: | ---: |
        | retrain | 5.24 | 100.00 | 94.26 | 12.88 | 0.00 | 43.29 |
        | salun | 2.85 | 99.62 | 93.93 | 14.39 | 1.15 | 2.66 |
    """
    if isinstance(run_dirs, (str, os.PathLike)):
        raise TypeError(f"run_dirs must be a sequence of directories, got the single path {run_dirs!r}")
    if not run_dirs:
        raise ValueError("run_dirs is empty")
    summaries = _summarise([_load_run(Path(directory)) for directory in run_dirs], retrain)
    table = _markdown_table(summaries)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        document = _markdown_document(table, summaries, retrain).encode()
        write_atomically(out / "report.md", lambda stream: stream.write(document))
        write_atomically(out / "report.png", lambda stream: _plot_gaps(summaries, retrain, stream))
    return table


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Print the report table for the given run directories, and write the files when ``--out`` is given.

    Example::

        python -m salun_lightning.report runs/retrain_s0 runs/salun_s0 --out reports/
    """
    parser = argparse.ArgumentParser(
        prog="python -m salun_lightning.report", description="Markdown report of classifier unlearning runs."
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories, each with a metrics.json")
    parser.add_argument("--out", type=Path, default=None, help="write report.md and report.png here")
    parser.add_argument("--retrain", default="retrain", help="method name of the reference runs")
    args = parser.parse_args(argv)
    print(build_report(args.run_dirs, args.out, args.retrain), end="")


if __name__ == "__main__":
    main()
