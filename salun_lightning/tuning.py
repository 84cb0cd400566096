"""``salun tune``: tune one method's hyper-parameters with Optuna against a reference run, at a stated budget.

A study is a folder. Every trial is an ordinary ``salun fit`` into ``<study>/trial_<NNNN>`` (model, metrics, mask
with its provenance, curves), with the config given to ``salun tune`` and the trial's values as command-line
overrides. The search space is the method's own (:meth:`~salun_lightning.methods.base.ClassifierMethod.tuning_space`:
``lr`` for every method that trains, ``saliency_ratio`` under a mask, and its tunable hyper-parameters), narrowed by
``--space``. The objective is the Avg. Gap to the reference run (retrain on the same forget set, checked) or one
reported metric with a direction. Optuna keeps the study in ``<study>/study.db`` (SQLite) or in any storage URL, so
an interrupted study resumes: a finished trial is never run again, a trial cut off is run again with its values.

The budget is the number of trials (``--trials``, counting every trial that finished or failed on its own) and the
config's epochs per trial; Optuna's TPE sampler (seeded: the n-th draw of a study with ``--sampler-seed`` s from a
sampler seeded s + n, so an interrupted study draws what an uninterrupted one would) and no pruner, the same rule for
every method.

Example::

    >>> space = parse_space(["lr=1e-3:1e-2"], {"lr": SearchRange(1e-5, 1e-1, log=True)})
    >>> space["lr"]
    SearchRange(low=0.001, high=0.01, log=True)
    >>> parse_space(["lr=1e-6:1e-2"], {"lr": SearchRange(1e-5, 1e-1, log=True)})
    Traceback (most recent call last):
    ...
    ValueError: --space lr=1e-6:1e-2: the method searches lr in [1e-05, 0.1]; a narrowed range must lie inside it.
    >>> Objective("avg_gap").value({"UA": 5, "RA": 99, "TA": 94, "MIA": 12}, {"UA": 6, "RA": 100, "TA": 94, "MIA": 10})
    1.0
    >>> Objective("MIA").direction, Objective("RTE").direction
    ('maximize', 'minimize')
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from salun_lightning.files import write_json
from salun_lightning.hyperparameters import SearchRange
from salun_lightning.metrics.functional import average_gap
from salun_lightning.runs import CONFIG_FILENAME, METRICS_FILENAME, is_incomplete, read_forget_set

# The reported metrics and the direction that is better by default: forgetting (UA, MIA-Efficacy) and utility (RA,
# TA) up, time down; the Avg. Gap to the reference down.
DIRECTIONS = {"avg_gap": "minimize", "UA": "maximize", "RA": "maximize", "TA": "maximize", "MIA": "maximize",
              "RTE": "minimize"}
STORAGE_FILENAME = "study.db"
# How trials are proposed: Optuna's TPE (the default: it concentrates trials near the best values found) or uniform
# random draws over the space (to measure how a method's results spread over its whole space).
SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler"}  # names in optuna.samplers
TRIAL_PREFIX = "trial_"
# What a study's trial function does with the drawn values and the trial's run directory: fit, judge, and return the
# objective's value with the attributes to keep (metrics, ...).
TrialScore = Callable[[dict[str, Any], Path], tuple[float, dict[str, Any]]]


@dataclass(frozen=True)
class Objective:
    """What a trial scores: ``avg_gap`` (to the reference run) or one metric of ``metrics.json``, and whether lower or
    higher is better (default: :data:`DIRECTIONS`)."""

    name: str = "avg_gap"
    direction: Optional[str] = None

    def __post_init__(self) -> None:
        if self.name not in DIRECTIONS:
            raise ValueError(f"--objective {self.name}: choose one of {', '.join(DIRECTIONS)}.")
        if self.direction is None:
            object.__setattr__(self, "direction", DIRECTIONS[self.name])
        elif self.direction not in ("minimize", "maximize"):
            raise ValueError(f"--direction {self.direction}: choose minimize or maximize.")

    def value(self, metrics: dict[str, Any], reference: Optional[dict[str, Any]]) -> float:
        """The trial's score from its metrics (and the reference's, for ``avg_gap``)."""
        if self.name == "avg_gap":
            assert reference is not None
            return average_gap(metrics, reference)
        return float(metrics[self.name])


def parse_space(narrowings: Sequence[str], declared: dict[str, SearchRange]) -> dict[str, SearchRange]:
    """The method's declared space with ``NAME=LOW:HIGH`` narrowings applied (each inside the declared range).

    Raises:
        ValueError: a malformed narrowing, an unknown name (the message lists the space) or a range outside the
            declared one.
    """
    space = dict(declared)
    for text in narrowings:
        name, _, bounds = text.partition("=")
        low_text, _, high_text = bounds.partition(":")
        if name not in declared:
            known = ", ".join(declared) or "nothing"
            raise ValueError(f"--space {text}: the method does not tune {name!r}; it tunes {known}.")
        try:
            low, high = float(low_text), float(high_text)
        except ValueError:
            raise ValueError(f"--space {text}: write NAME=LOW:HIGH, e.g. lr=1e-3:1e-1.") from None
        limit = declared[name]
        if not limit.low <= low <= high <= limit.high:
            raise ValueError(f"--space {text}: the method searches {name} in [{limit.low:g}, {limit.high:g}]; a "
                             "narrowed range must lie inside it.")
        space[name] = SearchRange(low, high, limit.log)
    return space


def fit_option(name: str) -> str:
    """The ``salun fit`` option that sets the tuned value ``name``."""
    if name in ("lr", "saliency_ratio"):
        return f"--model.init_args.{name}"
    return f"--model.init_args.method_args.{name}"


@dataclass(frozen=True)
class Plan:
    """What a study tunes, checked before any trial: the method, its space, the budget and the fit's arguments."""

    method: str
    space: dict[str, SearchRange]
    integer: frozenset[str]
    epochs: Optional[int]
    forget_set_id: str
    fit_args: tuple[str, ...]

    def settings(self, objective: Objective, trials: int) -> dict[str, Any]:
        """What a study folder is bound to (a resumed study must have the same)."""
        return {"method": self.method, "fit_args": list(self.fit_args), "objective": objective.name,
                "direction": objective.direction, "trials": trials, "epochs": self.epochs,
                "space": {name: [r.low, r.high, r.log] for name, r in self.space.items()},
                "forget_set": self.forget_set_id}


def make_plan(fit_args: Sequence[str], narrowings: Sequence[str]) -> Plan:
    """Build the config's model and data without training (as ``salun fit`` would) and derive the plan.

    Raises:
        ValueError: the config's model is no classifier unlearning module, or ``--space`` is wrong.
    """
    from salun_lightning.classifier import ClassifierUnlearningModule
    from salun_lightning.lightning_cli import SalunCLI

    with tempfile.TemporaryDirectory(prefix="salun-tune-") as scratch:  # parsing writes nothing, but never here
        cli = SalunCLI(args=[*fit_args, f"--trainer.default_root_dir={scratch}"], run=False)
    model = cli.model
    if not isinstance(model, ClassifierUnlearningModule):
        raise ValueError(f"salun tune tunes classifier unlearning methods; the config's model is "
                         f"{type(model).__name__}.")
    unit = model.method
    epochs = cli.trainer.max_epochs
    masked = model.saliency_ratio is not None and model.hparams.mask_path is None  # a given mask has its own ratio
    space = parse_space(narrowings, unit.tuning_space(masked, epochs))
    if not space:
        raise ValueError(f"method {unit.name!r} has nothing to tune.")
    integer = frozenset(name for name, value in unit.hparams.as_dict().items()
                        if name in space and isinstance(value, int) and not isinstance(value, bool))
    return Plan(unit.name, space, integer, epochs, cli.datamodule.forget_set_id, tuple(fit_args))


def read_reference(path: Path, forget_set_id: str) -> dict[str, Any]:
    """The reference run's metrics, checked: finished, and on the forget set the study unlearns.

    Raises:
        ValueError: the folder is no finished run, or its forget set is another.
    """
    metrics_path = path / METRICS_FILENAME
    if not metrics_path.is_file() or is_incomplete(path):
        raise ValueError(f"--reference {path}: no finished run there (it needs {METRICS_FILENAME} and no INCOMPLETE "
                         "marker); fit the retrain config first.")
    record = read_forget_set(path)
    if record is None or record.get("id") != forget_set_id:
        raise ValueError(f"--reference {path}: its forget set is not the one this config unlearns (same data set, "
                         "forget set and seed needed); retrain with the same forget settings.")
    return json.loads(metrics_path.read_text())


def trial_dir(study_dir: Path, number: int) -> Path:
    return study_dir / f"{TRIAL_PREFIX}{number:04d}"


def rerun_command(study_dir: Path, number: int) -> str:
    """The command that refits a trial from its saved config, into a new run directory."""
    config = trial_dir(study_dir, number) / CONFIG_FILENAME
    target = study_dir / f"best_{TRIAL_PREFIX}{number:04d}_rerun"
    return shlex.join(["salun", "fit", "--config", str(config), f"--trainer.default_root_dir={target}"])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_interrupted(study: Any) -> list[int]:
    """Queue again the values of every trial cut off (a trial of this machine whose process is gone, or a trial that
    failed without an error of its own, e.g. Ctrl-C); returns their numbers. Each is queued once."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    queued = {t.user_attrs.get("retry_of") for t in trials}
    host = socket.gethostname()
    recovered = []
    for trial in trials:
        stale = (trial.state == TrialState.RUNNING and trial.user_attrs.get("host") == host
                 and not _pid_alive(int(trial.user_attrs.get("pid", -1))))
        if stale:
            study.tell(trial.number, state=TrialState.FAIL)
        cut_off = stale or (trial.state == TrialState.FAIL and "error" not in trial.user_attrs)
        if cut_off and trial.number not in queued and trial.params:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
            recovered.append(trial.number)
    return recovered


def drawn(trials: Sequence[Any]) -> int:
    """Trials whose values the sampler drew (not the re-runs of a cut-off trial's values)."""
    return sum("retry_of" not in t.user_attrs for t in trials)


def counted(trials: Sequence[Any]) -> int:
    """Trials that use up the budget: finished ones, and ones that failed on their own (not cut off)."""
    from optuna.trial import TrialState

    return sum(t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and "error" in t.user_attrs)
               for t in trials)


def suggest(trial: Any, space: dict[str, SearchRange], integer: frozenset[str]) -> dict[str, Any]:
    values = {}
    for name, bounds in space.items():
        if name in integer:
            values[name] = trial.suggest_int(name, int(bounds.low), int(bounds.high), log=bounds.log)
        else:
            values[name] = trial.suggest_float(name, bounds.low, bounds.high, log=bounds.log)
    return values


def check_budget(trials: int, sampler: str) -> None:
    """Refuse a budget under one trial or an unknown sampler (before any work)."""
    if trials < 1:
        raise ValueError(f"--trials {trials}: give at least 1.")
    if sampler not in SAMPLERS:
        raise ValueError(f"--sampler {sampler}: choose one of {', '.join(SAMPLERS)}.")


def scored_trial(trial: Any, space: dict[str, SearchRange], integer: frozenset[str], study_dir: Path,
                 score: TrialScore) -> float:
    """One trial of any study: draw its values, let ``score`` fit and judge them in ``<study>/trial_<N>`` and keep
    what it reports (``score`` returns the objective's value and the trial's attributes: metrics, ...)."""
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    values = suggest(trial, space, integer)
    directory = trial_dir(study_dir, trial.number)
    try:
        value, attributes = score(values, directory)
        if not math.isfinite(value):
            raise ValueError(f"trial {trial.number} scored {value}.")
    except Exception as error:
        trial.set_user_attr("error", f"{type(error).__name__}: {error}")
        raise
    for name, attribute in attributes.items():
        trial.set_user_attr(name, attribute)
    trial.set_user_attr("run_dir", str(directory))
    return value


def run_study(study_dir: Path, trials: int, settings: dict[str, Any], space: dict[str, SearchRange],
              integer: frozenset[str], score: TrialScore, objective: str, direction: str,
              storage: Optional[str] = None, study_name: Optional[str] = None, sampler: str = "tpe",
              sampler_seed: int = 0, title: Optional[str] = None) -> Any:
    """Open (or resume) the study in ``study_dir`` bound to ``settings``, run trials until ``trials`` are counted,
    write ``summary.json`` and the plots; returns the Optuna study. :func:`tune` runs a classifier's study through
    it; a benchmark with its own fit and judge (``benchmarks/tuned_concept_erasure.py``) runs its studies the same way.

    Raises:
        ValueError: ``trials`` under 1, an unknown sampler, or a study of other settings at ``storage``.
    """
    import optuna

    check_budget(trials, sampler)
    study_dir.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(study_dir / STORAGE_FILENAME).resolve()}"
    settings = {**settings, "sampler": sampler}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    make_sampler = getattr(optuna.samplers, SAMPLERS[sampler])
    study = optuna.create_study(storage=storage, study_name=study_name or study_dir.name, load_if_exists=True,
                                direction=direction, sampler=make_sampler(seed=sampler_seed))
    bound = study.user_attrs.get("settings")
    if bound is None:
        study.set_user_attr("settings", settings)
    else:
        bound = {"sampler": "tpe", **bound}  # studies made before the choice existed used TPE
        differs = sorted(key for key in settings if key != "trials" and bound.get(key) != settings[key])
        if differs:
            raise ValueError(f"the study {study.study_name!r} at {storage} was made with other {', '.join(differs)}; "
                             "resume it with the same arguments, or start another --study.")
    for number in recover_interrupted(study):
        print(f"trial {number} was cut off: its values run again")
    title = title or f"tuning for {direction} {objective}: budget {trials} trials"
    print(f"{title}, {counted(study.trials)} done, study {study_dir}")

    while counted(study.get_trials(deepcopy=False)) < trials:
        # The n-th draw comes from a sampler seeded with sampler_seed + n, so a resumed study draws what an
        # uninterrupted one would have (one stream per process would repeat the first draws after a restart).
        study.sampler = make_sampler(seed=sampler_seed + drawn(study.get_trials(deepcopy=False)))
        study.optimize(lambda trial: scored_trial(trial, space, integer, study_dir, score), n_trials=1,
                       catch=(Exception,))
    write_summary(study, study_dir, objective)
    return study


def tune(fit_args: Sequence[str], study_dir: Path, trials: int, reference_dir: Optional[Path] = None,
         objective: Objective = Objective(), narrowings: Sequence[str] = (), storage: Optional[str] = None,
         study_name: Optional[str] = None, sampler_seed: int = 0, sampler: str = "tpe") -> Any:
    """Run (or resume) a classifier method's study until ``trials`` trials are counted; returns the Optuna study.

    Raises:
        ValueError: bad arguments (see :func:`make_plan`, :func:`read_reference`, :func:`run_study`), or a study of
            other settings at ``storage``.
    """
    check_budget(trials, sampler)
    if objective.name == "avg_gap" and reference_dir is None:
        raise ValueError("the Avg. Gap needs a reference run: pass --reference <retrain run directory>, or choose "
                         "another --objective.")
    plan = make_plan(fit_args, narrowings)
    reference = read_reference(reference_dir, plan.forget_set_id) if reference_dir is not None else None

    def score(values: dict[str, Any], directory: Path) -> tuple[float, dict[str, Any]]:
        from salun_lightning.cli import run as salun

        overrides = [f"{fit_option(name)}={value}" for name, value in values.items()]
        salun(["fit", *plan.fit_args, *overrides, f"--trainer.default_root_dir={directory}"])
        metrics = json.loads((directory / METRICS_FILENAME).read_text())
        record = read_forget_set(directory)
        if record is None or record.get("id") != plan.forget_set_id:
            raise ValueError(f"{directory.name} unlearned another forget set than the study's.")
        attributes: dict[str, Any] = {"metrics": {k: metrics.get(k) for k in ("UA", "RA", "TA", "MIA", "RTE")}}
        if reference is not None:
            attributes["avg_gap"] = Objective("avg_gap").value(metrics, reference)
        return objective.value(metrics, reference), attributes

    epochs = "the config's" if plan.epochs is None else plan.epochs
    title = (f"tuning {plan.method} ({', '.join(plan.space)}) for {objective.direction} {objective.name}: "
             f"budget {trials} trials x {epochs} epochs")
    return run_study(study_dir, trials, plan.settings(objective, trials), plan.space, plan.integer, score,
                     objective.name, objective.direction, storage, study_name, sampler, sampler_seed, title)


def write_summary(study: Any, study_dir: Path, objective: str) -> dict[str, Any]:
    """Write ``<study>/summary.json`` (every trial, the best) and the plots; print the best trial and its rerun."""
    from optuna.trial import TrialState

    from salun_lightning.tuning_plots import plot_study

    rows = [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
             **{k: t.user_attrs[k] for k in ("metrics", "avg_gap", "error", "run_dir", "retry_of")
                if k in t.user_attrs}}
            for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.FAIL)]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    summary: dict[str, Any] = {"settings": study.user_attrs.get("settings"), "trials": rows, "best": None}
    for row in rows:
        if "error" in row:
            print(f"trial {row['number']} failed: {row['error']}")
    if complete:
        best = study.best_trial
        summary["best"] = {"number": best.number, "value": best.value, "params": best.params,
                           "config": str(trial_dir(study_dir, best.number) / CONFIG_FILENAME),
                           "rerun": rerun_command(study_dir, best.number), **best.user_attrs}
        values = ", ".join(f"{k}={v:.4g}" for k, v in best.params.items())
        print(f"best: trial {best.number}, {objective} {best.value:.4f} ({values})\n"
              f"  config: {summary['best']['config']}\n  rerun: {summary['best']['rerun']}")
        plot_study(rows, objective, study.direction.name.lower(), study_dir / "plots")
    write_json(study_dir / "summary.json", summary)
    return summary


def main(argv: Sequence[str]) -> None:
    """``salun tune --config C [--config ...] --reference RUN --trials N --study DIR [fit options]``."""
    parser = argparse.ArgumentParser(
        prog="salun tune",
        description="Tune a method's hyper-parameters with Optuna: every trial is a 'salun fit' of the config with the "
        "trial's values into <study>/trial_<N>, scored against a reference run. Options that are not listed here go "
        "to every fit (e.g. --seed_everything=1). Interrupted studies resume.",
    )
    parser.add_argument("--config", action="append", required=True, help="a fit config (repeat to stack them)")
    parser.add_argument("--study", type=Path, required=True, help="the study folder: trials, study.db, plots")
    parser.add_argument("--trials", type=int, default=20, help="the budget: trials in all (default 20)")
    parser.add_argument("--reference", type=Path, default=None,
                        help="the retrain run on the same forget set (needed for the Avg. Gap)")
    parser.add_argument("--objective", default="avg_gap", choices=tuple(DIRECTIONS),
                        help="avg_gap (default) or one reported metric")
    parser.add_argument("--direction", default=None, choices=("minimize", "maximize"),
                        help="override the objective's direction (default: lower gap and RTE, higher UA, RA, TA, MIA)")
    parser.add_argument("--space", action="append", default=[], metavar="NAME=LOW:HIGH",
                        help="narrow one tuned value's range (repeat); the method declares the full space")
    parser.add_argument("--storage", default=None,
                        help="an Optuna storage URL (default sqlite:///<study>/study.db); a database server lets "
                        "several machines run trials of one study")
    parser.add_argument("--study-name", default=None, help="the study's name in the storage (default: the folder's)")
    parser.add_argument("--sampler", default="tpe", choices=tuple(SAMPLERS),
                        help="tpe (default: searches near the best values found) or random (uniform over the space, "
                        "to measure a method's spread)")
    parser.add_argument("--sampler-seed", type=int, default=0, help="the sampler's seed (default 0)")
    args, fit_args = parser.parse_known_args(argv)
    configs = [part for config in args.config for part in ("--config", config)]
    tune([*configs, *fit_args], args.study, args.trials, args.reference, Objective(args.objective, args.direction),
         args.space, args.storage, args.study_name, args.sampler_seed, args.sampler)
