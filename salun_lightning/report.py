"""Markdown report (and bar chart) of unlearning runs, each compared with the retrain run of its seed.

The run directories follow the contract of :mod:`salun_lightning.runs`. A finished run directory holds a
``metrics.json``; classifier runs (written by the classifier module)::

    {"method": "salun", "UA": 2.85, "RA": 99.62, "TA": 93.93, "MIA": 14.39, "RTE": 2.66}

UA, RA, TA and MIA are percentages, RTE is minutes (``null`` when the model was tested without timing
information; the table shows ``n/a``); extra keys are ignored. Diffusion runs (recognised by their ``FID`` key)
hold ``UA``, ``retained_accuracy`` (the judge's accuracy on retained-class generations, percent), ``FID``,
``fid_features`` (the feature extractor, which must be the same for all runs) and ``RTE``; their table has no
Avg. Gap and needs no retrain run.

A run's ``forget_set.json`` (written by the data module) names the forget set it forgot: its ``id``, the scenario
(``description``, e.g. ``random 10%``, and ``dataset``) and the ``seed`` that drew it. A run's seed is the
``seed`` of its ``metrics.json`` if there is one, else that of its ``forget_set.json``. Runs are only compared
about the same forget set: all runs must share one scenario, and the runs of one seed one forget-set id (runs
without a ``forget_set.json``, e.g. older or diffusion runs, show the scenario ``unknown`` and are not checked).

Entries that are not finished run directories are skipped and listed: files (such as a saved mask), folders
without ``metrics.json`` and folders marked ``INCOMPLETE`` (a fit there is running or failed, so an old
``metrics.json`` in it is stale). A glob over a runs folder therefore works. From the command line::

    salun report runs/digits/* --out runs/digits
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Optional, TypeVar, Union

import numpy as np

from salun_lightning.figures import new_figure, save_png
from salun_lightning.files import write_atomically
from salun_lightning.metrics.functional import average_gap
from salun_lightning.runs import (
    FORGET_SET_FILENAME,
    INCOMPLETE_FILENAME,
    METRICS_FILENAME,
    is_incomplete,
    read_forget_set,
)

__all__ = ["Report", "Skipped", "build_report", "make_report"]

PathLike = Union[str, os.PathLike]
GAP_COLUMN = "Avg. Gap"
UNKNOWN_FORGET_SET = "unknown"
OPTIONAL_NUMBERS = ("RTE",)  # may be null in metrics.json: the cell shows "n/a"
MIXED_FORGET_SETS_HINT = (
    "Report only runs of one forget set (one scenario, and for each seed one forget-set id), or pass "
    "--allow-mixed-forget-sets (allow_mixed_forget_sets=True) to compare them on purpose."
)
T = TypeVar("T")
# The attacks' columns (``--attacks``: folders written by ``salun audit`` and ``salun relearn``), in percent: U-LiRA's
# balanced accuracy and ROC-AUC (50: the forgotten samples look never seen), the relearning attack's area between the
# method's forget-accuracy curve and retrain's, and its steps until the original's forget accuracy is back.
ATTACK_COLUMNS = ("U-LiRA acc.", "U-LiRA AUC", "relearn area", "relearn steps")
ULIRA_FILENAME = "ulira.json"
RELEARN_FILENAME = "relearn.json"


@dataclass(frozen=True)
class Attacks:
    """What the attack folders say per method (``values``), each folder's settings in words, their figures, and the
    forget set each relearning attack's run forgot (``attacked``: method -> (forget-set id, folder))."""

    values: dict[str, dict[str, Optional[str]]]
    settings: list[str]
    figures: list[tuple[Path, str]]  # (a PNG the attack wrote, its caption)
    attacked: dict[str, tuple[str, Path]] = field(default_factory=dict)


def read_attacks(paths: Sequence[PathLike]) -> Attacks:
    """Read ``salun audit`` folders (``ulira.json``, ``roc.png``) and ``salun relearn`` folders (``relearn.json``,
    ``relearn.png``). A relearning folder's columns are those of its largest ``k``.

    Raises:
        ValueError: a folder with neither file, or two results of one attack for one method.
    """
    values: dict[str, dict[str, Optional[str]]] = {}
    settings, figures = [], []
    attacked: dict[str, tuple[str, Path]] = {}

    def put(method: str, column: str, value: Optional[str], source: Path) -> None:
        row = values.setdefault(method, {})
        if column in row:
            raise ValueError(f"--attacks: two {column!r} results for method {method!r} (the second in {source}); "
                             "give one audit and one relearning folder per method.")
        row[column] = value

    for path in map(Path, paths):
        if (path / ULIRA_FILENAME).is_file():
            record = json.loads((path / ULIRA_FILENAME).read_text())
            options = record["settings"]
            for method, result in record["models"].items():
                put(method, "U-LiRA acc.", f"{100 * result['balanced_accuracy']:.2f}", path)
                put(method, "U-LiRA AUC", f"{100 * result['auc']:.2f}", path)
            settings.append(f"U-LiRA (`{path}`): {options['runs']} shadow runs, an audit set of "
                            f"{options['audit_size']} samples, seed {options['seed']}")
            figures.append((path / "roc.png", f"U-LiRA ROC, {options['runs']} runs, audit set {options['audit_size']}"))
        elif (path / RELEARN_FILENAME).is_file():
            record = json.loads((path / RELEARN_FILENAME).read_text())
            options, k = record["settings"], max(record["k"], key=int)
            entry = record["k"][k]
            steps = entry["steps_to_recover"]
            put(record["method"], "relearn area", f"{entry['area_vs_retrain']:.2f}", path)
            put(record["method"], "relearn steps", "never" if steps is None else str(steps), path)
            settings.append(f"relearning of {record['method']} (`{path}`): k = {k} forget samples, Adam lr "
                            f"{options['lr']:g}, {options['steps']} steps, batch {options['batch_size']}, seed "
                            f"{options['seed']}")
            figures.append((path / "relearn.png",
                            f"relearning of {record['method']}, k up to {k}, lr {options['lr']:g}"))
            forget_set_id = options.get("forget_set_id")
            attacked_dir = options.get("run")  # a relearn.json from before the id was recorded: the run's own
            if forget_set_id is None and attacked_dir is not None and Path(attacked_dir).is_dir():
                attacked_run = read_forget_set(attacked_dir)
                forget_set_id = attacked_run["id"] if attacked_run is not None else None
            if forget_set_id is not None:
                attacked[record["method"]] = (forget_set_id, path)
        else:
            raise ValueError(f"--attacks {path}: no {ULIRA_FILENAME} (salun audit --out) or {RELEARN_FILENAME} "
                             "(salun relearn --out) there.")
    return Attacks(values, settings, [(png, caption) for png, caption in figures if png.is_file()], attacked)


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
    values: dict[str, Optional[float]]  # None: an optional number (RTE) the run does not have
    kind: _Kind
    fid_features: Optional[str] = None
    scenario: Optional[str] = None  # "<dataset>: <description>" from forget_set.json; None without one
    forget_set_id: Optional[str] = None

    @property
    def forget_set(self) -> str:
        """The scenario as shown in the report."""
        return self.scenario if self.scenario is not None else UNKNOWN_FORGET_SET

    def describe(self) -> str:
        """The directory with its scenario, seed and forget-set id prefix, for error messages."""
        identity = f", {_short_id(self.forget_set_id)}" if self.forget_set_id is not None else ""
        return f"{self.directory} ({self.forget_set}, seed {self.seed}{identity})"


@dataclass(frozen=True)
class Skipped:
    """An entry of ``run_dirs`` that is not a finished run directory, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class _MethodSummary:
    method: str
    runs: list[_Run]
    columns: dict[str, np.ndarray]  # the kind's columns -> one value per run (NaN: the run does not have it)
    gaps: dict[str, np.ndarray]  # the kind's compared keys and GAP_COLUMN -> |run - retrain| per run

    @property
    def forget_sets(self) -> str:
        """The distinct scenarios of the method's runs, joined with "; "."""
        return "; ".join(dict.fromkeys(run.forget_set for run in self.runs))


def _short_id(forget_set_id: str) -> str:
    return forget_set_id[: len("sha256:") + 12]


def _grouped(items: Iterable[T], key: Callable[[T], Hashable]) -> dict[Hashable, list[T]]:
    groups: dict[Hashable, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups


def _skip_reason(path: Path) -> Optional[str]:
    """Why ``path`` is not a finished run directory, or None when it is one."""
    if not path.exists():
        return "does not exist"
    if not path.is_dir():
        return "not a directory"
    if is_incomplete(path):
        stale = f" (its {METRICS_FILENAME} is stale)" if (path / METRICS_FILENAME).exists() else ""
        return f"marked {INCOMPLETE_FILENAME}: a fit there is running or failed{stale}"
    if not (path / METRICS_FILENAME).is_file():
        return f"no {METRICS_FILENAME} (not a run directory, or its model was not tested)"
    return _mixed_runs(path)


def _mixed_runs(path: Path) -> Optional[str]:
    """Why the files of ``path`` do not belong together (their run ids differ), or None."""
    try:
        tested = json.loads((path / METRICS_FILENAME).read_text()).get("run_id")
        forget_set = read_forget_set(path)
    except (AttributeError, OSError, ValueError):
        return None  # reported by _load_run, which names the broken file
    drawn = forget_set.get("run_id") if forget_set is not None else None
    if tested is None or drawn is None or str(tested) == str(drawn):
        return None
    tested, drawn = str(tested), str(drawn)
    return (
        f"its {METRICS_FILENAME} (run {tested[:8]}) and {FORGET_SET_FILENAME} (run {drawn[:8]}) come from different "
        "runs: test the model again with the run's config.yaml, or fit again"
    )


def _load_run(directory: Path) -> _Run:
    path = directory / METRICS_FILENAME
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(record, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(record).__name__}")
    kind = DIFFUSION if "FID" in record else CLASSIFIER
    for key in ("method", *kind.numbers, *(("fid_features",) if kind is DIFFUSION else ())):
        if key not in record:
            raise ValueError(f"{path} is missing key {key!r}")
    method = record["method"]
    if not isinstance(method, str) or not method:
        raise ValueError(f"{path}: 'method' must be a non-empty string, got {method!r}")

    forget_set = read_forget_set(directory)
    scenario = forget_set_id = None
    if forget_set is not None:
        for key in ("description", "dataset"):
            value = forget_set.get(key)
            if not isinstance(value, str) or not value:
                file = directory / FORGET_SET_FILENAME
                raise ValueError(f"{file}: {key!r} must be a non-empty string, got {value!r}")
        scenario, forget_set_id = f"{forget_set['dataset']}: {forget_set['description']}", forget_set["id"]
    if record.get("seed") is not None:
        seed, source = record["seed"], path
    elif forget_set is not None and forget_set.get("seed") is not None:
        seed, source = forget_set["seed"], directory / FORGET_SET_FILENAME
    else:
        raise ValueError(
            f"run directory {directory} has no seed: neither its {METRICS_FILENAME} nor a {FORGET_SET_FILENAME} "
            "gives one"
        )
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"{source}: 'seed' must be an integer, got {seed!r}")

    values: dict[str, Optional[float]] = {}
    for key in kind.numbers:
        value = record[key]
        if key in OPTIONAL_NUMBERS and (value is None or (isinstance(value, float) and math.isnan(value))):
            values[key] = None  # tested without timing information (older runs wrote NaN)
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"{path}: {key!r} must be a finite number, got {value!r}")
        values[key] = float(value)
    return _Run(directory, method, seed, values, kind, record.get("fid_features"), scenario, forget_set_id)


def _read_runs(run_dirs: Sequence[PathLike]) -> tuple[list[_Run], list[Skipped]]:
    """The finished runs among ``run_dirs``, and the entries skipped with the reason."""
    if isinstance(run_dirs, (str, os.PathLike)):
        raise TypeError(f"run_dirs must be a sequence of directories, got the single path {run_dirs!r}")
    if not run_dirs:
        raise ValueError("run_dirs is empty")
    runs: list[_Run] = []
    skipped: list[Skipped] = []
    read: dict[Path, Path] = {}  # resolved -> as given
    for entry in run_dirs:
        path = Path(entry)
        reason = _skip_reason(path)
        if reason is None and path.resolve() in read:
            reason = f"given twice (also as {read[path.resolve()]})"
        if reason is not None:
            skipped.append(Skipped(path, reason))
            continue
        read[path.resolve()] = path
        runs.append(_load_run(path))
    if not runs:
        listed = "; ".join(f"{entry.path}: {entry.reason}" for entry in skipped)
        raise ValueError(f"no finished run directory among the run_dirs given ({listed})")
    return runs, skipped


def _check_forget_sets(runs: list[_Run], allow_mixed: bool) -> list[str]:
    """The ways the runs' forget sets differ (empty when they agree); raises unless ``allow_mixed``."""
    known = [run for run in runs if run.scenario is not None]
    problems = []
    scenarios = _grouped(known, lambda run: run.scenario)
    if len(scenarios) > 1:
        sides = "; ".join(
            f"{scenario!r}: " + ", ".join(run.describe() for run in group) for scenario, group in scenarios.items()
        )
        problems.append(f"the runs are about different forget sets: {sides}")
    for (scenario, seed), group in _grouped(known, lambda run: (run.scenario, run.seed)).items():
        identities = _grouped(group, lambda run: run.forget_set_id)
        if len(identities) > 1:
            sides = "; ".join(
                f"{_short_id(identity)}: " + ", ".join(run.describe() for run in members)
                for identity, members in identities.items()
            )
            problems.append(f"the {scenario!r} runs with seed {seed} drew different forget sets: {sides}")
    if problems and not allow_mixed:
        raise ValueError(". ".join(problems) + ". " + MIXED_FORGET_SETS_HINT)
    return problems


def _check_attacked_forget_sets(runs: list[_Run], attacks: Attacks) -> None:
    """Refuse a relearning attack made on a run of another forget set than the report's runs of its method (runs
    without a ``forget_set.json`` are not checked)."""
    for method, (forget_set_id, folder) in attacks.attacked.items():
        known = {run.forget_set_id for run in runs if run.method == method and run.forget_set_id is not None}
        if known and forget_set_id not in known:
            forgot = ", ".join(sorted(_short_id(i) for i in known))
            raise ValueError(f"--attacks {folder}: its relearning attack was made on a {method} run of forget set "
                             f"{_short_id(forget_set_id)}, but the report's {method} runs forgot {forgot}; attack "
                             f"one of these runs (salun relearn RUN --out DIR) or leave that folder out.")


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
        columns = {
            key: np.array([np.nan if run.values[key] is None else run.values[key] for run in method_runs])
            for key in kind.numbers
        }
        if kind.compared:
            columns[GAP_COLUMN] = np.array(gaps[GAP_COLUMN])
        summaries.append(_MethodSummary(method, method_runs, columns, {k: np.array(v) for k, v in gaps.items()}))
    if not kind.compared:
        return sorted(summaries, key=lambda s: (s.method != retrain, s.method != "train", s.method))
    return sorted(summaries, key=lambda s: (s.method != retrain, s.columns[GAP_COLUMN].mean(), s.method))


def _cell(values: np.ndarray) -> str:
    if np.isnan(values).any():
        return "n/a"  # a run without this (optional) number
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"


def _markdown_table(summaries: list[_MethodSummary], attacks: Optional[Attacks] = None) -> str:
    columns = summaries[0].runs[0].kind.columns
    extra = [c for c in ATTACK_COLUMNS if attacks and any(c in row for row in attacks.values.values())]
    headers = [{"retained_accuracy": "retained acc."}.get(column, column) for column in columns] + extra
    lines = [
        "| method | forget set | " + " | ".join(headers) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in headers) + " |",
    ]
    for summary in summaries:
        forget_sets = summary.forget_sets.replace("|", "\\|")
        attacked = attacks.values.get(summary.method, {}) if attacks else {}
        cells = [_cell(summary.columns[c]) for c in columns] + [attacked.get(c) or "-" for c in extra]
        lines.append(f"| {summary.method} | {forget_sets} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def _attack_section(attacks: Optional[Attacks]) -> str:
    """The attacks' settings and figures (copied beside the report as ``attack_<n>.png``), if any were given."""
    if attacks is None or not attacks.settings:
        return ""
    lines = "".join(f"- {line}\n" for line in attacks.settings)
    images = "".join(f"![{caption}](attack_{n}.png)\n" for n, (_, caption) in enumerate(attacks.figures))
    return (f"## Attacks\n\nU-LiRA acc. and AUC in percent (50: the forgotten samples look never seen); relearn area: "
            "the mean over the evaluated steps of the method's forget accuracy minus retrain's under the same "
            "fine-tuning (points; 0: it relearns as retrain does); relearn steps: steps until the original model's "
            f"forget accuracy is back (never: not within the budget).\n\n{lines}\n{images}\n")


def _markdown_document(
    table: str, summaries: list[_MethodSummary], retrain: str, skipped: list[Skipped], mixed: list[str],
    attacks: Optional[Attacks] = None,
) -> str:
    def forget_set(run: _Run) -> str:
        return f" (forget set {run.scenario}, {_short_id(run.forget_set_id)})" if run.scenario is not None else ""

    runs = "\n".join(
        f"- {summary.method}, seed {run.seed}: `{run.directory}`{forget_set(run)}"
        for summary in summaries
        for run in summary.runs
    )
    sections = f"{_attack_section(attacks)}## Runs\n\n{runs}\n"
    if skipped:
        sections += "\n## Skipped\n\n" + "".join(f"- `{entry.path}`: {entry.reason}\n" for entry in skipped)
    warnings = "".join(
        f"> **Warning: runs of different forget sets are compared** (allowed by --allow-mixed-forget-sets): "
        f"{problem}.\n\n"
        for problem in mixed
    )
    forget_sets = (
        "forget set: the forgetting scenario of the method's runs (dataset: description, from each run's "
        f"{FORGET_SET_FILENAME}; {UNKNOWN_FORGET_SET} for a run without one)"
    )
    first = summaries[0].runs[0]
    if first.kind is DIFFUSION:
        return (
            f"# Unlearning report (diffusion)\n\n{warnings}"
            f"{forget_sets}; UA: percentage of forgotten-class generations the judge classifier does not assign to "
            "the forgotten class; retained acc.: the judge's accuracy on generations of the retained classes "
            f"(percent); FID on retained classes with {first.fid_features} features; RTE in minutes (n/a: tested "
            "without timing information).\n\n"
            f"{table}\n![UA and retained accuracy per method](report.png)\n\n{sections}"
        )
    return (
        f"# Unlearning report\n\n{warnings}"
        f"{forget_sets}; UA, RA, TA and MIA (MIA-Efficacy) in percent; Avg. Gap is the mean of |method - retrain| "
        f"over UA, RA, TA and MIA against the {retrain!r} run with the same seed; RTE in minutes (n/a: a run was "
        "tested without timing information). A method with several runs shows mean ± sample standard deviation "
        "over its seeds.\n\n"
        f"{table}\n"
        "![Absolute gap to retrain per metric](report.png)\n\n"
        f"{sections}"
    )


def _plot_gaps(summaries: list[_MethodSummary], retrain: str, stream: IO[bytes]) -> None:
    save_png(_gap_figure(summaries, retrain), stream, dpi=120)


def _gap_figure(summaries: list[_MethodSummary], retrain: str) -> Any:
    """One panel per metric, one horizontal bar per method, each panel on its own scale (so that a 0.1-point gap
    shows beside a 50-point one: symmetric-log where a panel spans more than two decades), the mean written at the
    bar's end and the std over seeds as an error bar."""
    kind = summaries[0].runs[0].kind
    if kind.compared:
        groups, values, methods = (*kind.compared, GAP_COLUMN), "gaps", [s for s in summaries if s.method != retrain]
    else:
        groups, values, methods = ("UA", "retained_accuracy"), "columns", summaries
    figure = new_figure(2.6 * len(groups) + 1.2, 0.35 * len(methods) + 1.6)
    panels = figure.subplots(1, len(groups), sharey=True, squeeze=False)[0]
    positions = np.arange(len(methods))[::-1]  # the first method on top
    for axes, group in zip(panels, groups):
        means = np.array([getattr(summary, values)[group].mean() for summary in methods])
        errors = np.array([getattr(summary, values)[group].std(ddof=1) if len(summary.runs) > 1 else 0.0
                           for summary in methods])
        axes.barh(positions, means, xerr=errors if errors.any() else None, capsize=2, color="tab:blue")
        for position, mean, error in zip(positions, means, errors):
            axes.annotate(f"{mean:.2f}", (mean + error, position), xytext=(3, 0), textcoords="offset points",
                          va="center", fontsize=7)
        top = float(np.max(means + errors)) if len(means) else 1.0
        positive = means[means > 0]
        if len(positive) and top > 100 * positive.min():  # gaps of 0.1 and of 50 in one panel: both readable
            axes.set_xscale("symlog", linthresh=max(float(positive.min()), 0.01))
            axes.set_xlim(0, top * 3)
        else:
            axes.set_xlim(0, top * 1.35 if top > 0 else 1.0)
        axes.set_title(group if not kind.compared else f"|{group} - {retrain}|" if group != GAP_COLUMN else group,
                       fontsize=9)
        axes.tick_params(labelsize=7)
        axes.grid(alpha=0.3, axis="x")
    panels[0].set_yticks(positions, [summary.method for summary in methods])
    if not methods:
        panels[0].text(0.5, 0.5, f"only {retrain!r} runs", ha="center", va="center", transform=panels[0].transAxes)
    figure.suptitle(f"Absolute gap to {retrain} per metric, each panel on its own scale (lower is better)"
                    if kind.compared else "Forgetting (UA) and retained-class accuracy of the generations",
                    fontsize=10)
    return figure


def build_report(
    run_dirs: Sequence[PathLike],
    out_dir: Optional[PathLike] = None,
    retrain: str = "retrain",
    allow_mixed_forget_sets: bool = False,
    attacks: Sequence[PathLike] = (),
) -> str:
    """Markdown table of the forget set, UA, RA, TA, MIA, Avg. Gap and RTE per method, from the runs' files.

    Entries of ``run_dirs`` that are not finished run directories are skipped: files (e.g. a saved mask), folders
    without ``metrics.json`` and folders marked ``INCOMPLETE`` (their ``metrics.json``, if any, is stale). They are
    listed under "Skipped" in ``report.md`` (and on stderr by :func:`main`). The runs read must be about one forget
    set: one scenario (``forget_set.json``'s ``dataset`` and ``description``) for all, and one forget-set ``id``
    for the runs of each seed; runs without a ``forget_set.json`` show the forget set ``unknown`` and are not
    checked. A run's seed is its ``metrics.json``'s ``seed``, else its ``forget_set.json``'s.

    Rows: ``retrain`` first, then the other methods by mean Avg. Gap, ascending. Each run's Avg. Gap is taken
    against the ``retrain`` run with the same seed. The "forget set" column shows ``<dataset>: <description>``
    (the distinct values joined with "; " if a method's runs differ). A method with one run shows plain numbers;
    with several runs, ``mean ± std`` (sample standard deviation, ddof=1). All numbers have 2 decimals; RTE shows
    ``n/a`` when one of the method's runs has none (``null``).

    Args:
        run_dirs: run directories, each holding a ``metrics.json`` (and usually a ``forget_set.json``); other
            entries are skipped.
        out_dir: if given, ``report.md`` and ``report.png`` (each method's absolute gap to retrain for UA, RA, TA,
            MIA and Avg. Gap, one panel per metric on its own scale) are written there atomically; the folder is
            created.
        retrain: method name of the reference runs.
        allow_mixed_forget_sets: compare runs of different forget sets on purpose: the report is built and
            ``report.md`` carries a warning saying how they differ.
        attacks: ``salun audit`` and ``salun relearn`` output folders: their results become the columns of
            :data:`ATTACK_COLUMNS` (``-`` for a method they did not attack), and ``report.md`` names each attack's
            settings and shows its ROC or relearning curves (copied beside it).

    Raises:
        ValueError: if no entry is a finished run directory (the message lists each entry and why it was
            skipped); on a ``metrics.json`` or ``forget_set.json`` that is invalid JSON or has a missing or
            ill-typed key (the message names the file); a run with no seed; runs of different forget sets
            (unless ``allow_mixed_forget_sets``; the message names the runs on each side with their scenario,
            seed and forget-set id); no run directories, two runs with the same method and seed, no ``retrain``
            run, or a run whose seed has no ``retrain`` run (classifier runs); classifier and diffusion runs
            mixed, or FIDs from different feature extractors; a relearning attack in ``attacks`` made on a run of
            another forget set than the report's runs of its method.

    Example::

        >>> import tempfile
        >>> from salun_lightning.files import write_json
        >>> runs = Path(tempfile.mkdtemp())  # two finished runs, as a fit writes them
        >>> write_json(runs / "retrain" / "metrics.json",
        ...            {"method": "retrain", "UA": 5.24, "RA": 100.0, "TA": 94.26, "MIA": 12.88, "RTE": 43.29})
        >>> write_json(runs / "salun" / "metrics.json",
        ...            {"method": "salun", "UA": 2.85, "RA": 99.62, "TA": 93.93, "MIA": 14.39, "RTE": 2.66})
        >>> for run in ("retrain", "salun"):
        ...     write_json(runs / run / "forget_set.json",
        ...                {"id": "f3a1", "dataset": "digits", "description": "random 10%", "seed": 0})
        >>> print(build_report([runs / "retrain", runs / "salun"], out_dir=runs), end="")
        | method | forget set | UA | RA | TA | MIA | Avg. Gap | RTE |
        | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |
        | retrain | digits: random 10% | 5.24 | 100.00 | 94.26 | 12.88 | 0.00 | 43.29 |
        | salun | digits: random 10% | 2.85 | 99.62 | 93.93 | 14.39 | 1.15 | 2.66 |
        >>> sorted(path.name for path in runs.iterdir())
        ['report.md', 'report.png', 'retrain', 'salun']
    """
    return make_report(run_dirs, out_dir, retrain, allow_mixed_forget_sets, attacks).table


@dataclass(frozen=True)
class Report:
    """What ``salun report`` shows: the table, the entries it skipped (with why) and the forget-set warnings."""

    table: str
    skipped: list[Skipped]
    warnings: list[str]


def make_report(
    run_dirs: Sequence[PathLike],
    out_dir: Optional[PathLike] = None,
    retrain: str = "retrain",
    allow_mixed_forget_sets: bool = False,
    attacks: Sequence[PathLike] = (),
) -> Report:
    """:func:`build_report`, also returning the skipped entries and the warnings about mixed forget sets."""
    attack_results = read_attacks(attacks) if attacks else None
    runs, skipped = _read_runs(run_dirs)
    table, warnings = _build(runs, skipped, out_dir, retrain, allow_mixed_forget_sets, attack_results)
    return Report(table, skipped, warnings)


def _build(
    runs: list[_Run], skipped: list[Skipped], out_dir: Optional[PathLike], retrain: str, allow_mixed: bool,
    attacks: Optional[Attacks] = None,
) -> tuple[str, list[str]]:
    """The table of :func:`build_report` (files written when ``out_dir`` is given), and the forget-set warnings."""
    mixed = _check_forget_sets(runs, allow_mixed)
    if attacks is not None:
        _check_attacked_forget_sets(runs, attacks)
    summaries = _summarise(runs, retrain)
    table = _markdown_table(summaries, attacks)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        document = _markdown_document(table, summaries, retrain, skipped, mixed, attacks).encode()
        write_atomically(out / "report.md", lambda stream: stream.write(document))
        for n, (png, _) in enumerate(attacks.figures if attacks else ()):
            image = png.read_bytes()
            write_atomically(out / f"attack_{n}.png", lambda stream: stream.write(image))
        write_atomically(out / "report.png", lambda stream: _plot_gaps(summaries, retrain, stream))
    return table, mixed
