"""Concept erasure with every diffusion method tuned at an equal budget: salun, ESD-x, ESD-u and Forget-Me-Not on
the tiny text-to-image style and object experiments of ``benchmarks/concept_erasure.py``.

The components, the original model, the judge and the object experiment's generated sets are those of a finished
``concept_erasure.py`` run (``--base``, read only). Per experiment and method, one Optuna study through
:func:`salun_lightning.tuning.run_study` (the machinery of ``salun tune``: SQLite file, resume, cut-off trials run
again, summary and plots), ``--trials`` trials each. The space is the method's declared one
(:meth:`~salun_lightning.diffusion.methods.base.DiffusionMethod.tuning_space`) restricted to :data:`TUNED`: the
learning rate and the number of steps for every method (the same ranges, ESD's own 1,000 steps inside them) and each
method's strength (salun's retain weight ``alpha``, ESD's negative guidance ``esd_eta``; Forget-Me-Not has none);
the rest stays at the configs' values (salun's mask ratio 0.5, ESD's 50-step sampler).

Every trial is a ``salun fit`` into ``<out>/<experiment>/<method>/trial_<N>``, then judged as ``concept_erasure.py``
judges (``--per-prompt`` generations of every prompt, DDIM, guidance 6.5, seed 0): ``metrics.json`` and
``grid.png`` beside the model. The objective, minimised, is :func:`erasure_objective`: the points of the concept
left (100 - style erasure %, or 100 - UA for the object) plus the points of retained digit accuracy lost against the
original model (0 if none). Prints a table per experiment and writes ``--json``::

    {"trials": .., "objective": "..", "space": {method: {name: [low, high, log]}}, "experiments": {experiment:
     {"original": {...}, method: {"best": {"number", "value", "params", "metrics"}, "trial_values": [...]}}}}

    python benchmarks/tuned_concept_erasure.py --base runs/concept_erasure_dr1000 [--trials 5] [--jobs 2]
        [--out runs/tuned_concept_erasure] [--json docs/results/tuned_concept_erasure.json] [--images DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from concept_erasure import EXPERIMENT_DATA, OBJECT_RUNS, STYLE_RUNS, Inline, data_args, evaluate, judged  # noqa: E402
from ddpm_digits import fit, quiet  # noqa: E402

from salun_lightning.diffusion.methods import METHODS  # noqa: E402
from salun_lightning.files import write_json  # noqa: E402
from salun_lightning.tuning import parse_space, run_study  # noqa: E402

EXPERIMENTS = ("style", "object")
TUNED = {"salun": ("lr", "max_steps", "alpha"), "esd_x": ("lr", "max_steps", "esd_eta"),
         "esd_u": ("lr", "max_steps", "esd_eta"), "fmn": ("lr", "max_steps")}
OBJECTIVE = "erasure_objective"
ORIGINALS = "originals.json"


def erasure_objective(erasure: float, retained_accuracy: float, original_retained_accuracy: float) -> float:
    """Points of the concept left plus points of retained digit accuracy lost (lower is better; 0 is a full erasure
    that draws the other prompts as well as the original).

    >>> erasure_objective(100.0, 96.0, 100.0), erasure_objective(70.0, 100.0, 99.5)
    (4.0, 30.0)
    """
    return (100.0 - erasure) + max(0.0, original_retained_accuracy - retained_accuracy)


def fit_option(name: str) -> str:
    """The ``salun fit`` option of a tuned value of a diffusion method (its own values are the model's arguments)."""
    return "--trainer.max_steps" if name == "max_steps" else f"--model.init_args.{name}"


def space_of(method: str, narrowings: tuple[str, ...] = ()) -> dict[str, Any]:
    """The method's declared space restricted to :data:`TUNED`, with the ``--space`` narrowings of its names."""
    declared = METHODS[method].tuning_space(masked=False)
    space = {name: declared[name] for name in TUNED[method]}
    return parse_space([n for n in narrowings if n.split("=", 1)[0] in space], space)


def originals(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The original model judged in each experiment (once; ``<out>/originals.json``)."""
    path = args.out / ORIGINALS
    settings = {"base": str(args.base.resolve()), "per_prompt": args.per_prompt, "sample_steps": args.sample_steps}
    if path.is_file() and json.loads(path.read_text())["settings"] == settings:
        return json.loads(path.read_text())["experiments"]
    evaluation = judged(args.base, args.per_prompt, args.sample_steps)
    records = {e: evaluate(e, "original", None, evaluation, None, into=args.out / f"original_{e}") for e in EXPERIMENTS}
    write_json(path, {"settings": settings, "experiments": records})
    return records


def study(experiment: str, method: str, args: argparse.Namespace, original: dict[str, Any]) -> dict[str, Any]:
    """Run (or resume) one method's study in one experiment; its best trial and every trial's value."""
    quiet(1)
    config, extra = (STYLE_RUNS if experiment == "style" else OBJECT_RUNS)[method]
    folder, forget = EXPERIMENT_DATA[experiment]
    erased = "style_erasure" if experiment == "style" else "UA"
    space = space_of(method, tuple(args.space))
    evaluation = judged(args.base, args.per_prompt, args.sample_steps)

    def score(values: dict[str, Any], directory: Path) -> tuple[float, dict[str, Any]]:
        overrides = [f"{fit_option(name)}={value}" for name, value in values.items()]
        minutes = fit(config, directory, f"--model.init_args.pretrained={args.base / 'train'}", *extra,
                      *data_args(args.base / folder, forget, args.base / "cache"), *overrides)
        record = evaluate(experiment, directory.name, directory, evaluation,
                          {"method": method, "steps": values["max_steps"], "minutes": minutes}, into=directory)
        value = erasure_objective(record[erased], record["retained_digit_accuracy"],
                                  original["retained_digit_accuracy"])
        shown = (erased, "erased_digit_accuracy", "retained_digit_accuracy", "FID")
        return value, {"metrics": {**{k: record[k] for k in shown if k in record}, "RTE": minutes}}

    settings = {"experiment": experiment, "method": method, "base": str(args.base.resolve()),
                "per_prompt": args.per_prompt, "sample_steps": args.sample_steps, "objective": OBJECTIVE,
                "space": {name: [r.low, r.high, r.log] for name, r in space.items()}}
    title = f"tuning {method} ({', '.join(space)}), {experiment} erasure: budget {args.trials} trials"
    result = run_study(args.out / experiment / method, args.trials, settings, space, frozenset({"max_steps"}), score,
                       OBJECTIVE, "minimize", title=title)
    complete = [t for t in result.trials if t.value is not None]
    best = result.best_trial
    return {"best": {"number": best.number, "value": best.value, "params": best.params,
                     "metrics": best.user_attrs["metrics"], "run_dir": best.user_attrs["run_dir"]},
            "trial_values": [t.value for t in complete],
            "trial_metrics": [t.user_attrs["metrics"] for t in complete]}


def table(experiment: str, original: dict[str, Any], rows: dict[str, dict[str, Any]]) -> str:
    erased = "style erasure %" if experiment == "style" else "UA (digit 0)"
    key = "style_erasure" if experiment == "style" else "UA"
    retained = original["retained_digit_accuracy"]
    lines = [f"| method | objective | {erased} | retained digit acc. | FID | steps | lr | strength | RTE (min) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
             f"| original | {erasure_objective(original[key], retained, retained):.2f} | {original[key]:.2f} "
             f"| {retained:.2f} | {original['FID']:.2f} | - | - | - | - |"]
    for method, row in sorted(rows.items(), key=lambda item: item[1]["best"]["value"]):
        best, metrics = row["best"], row["best"]["metrics"]
        strength = ", ".join(f"{k}={v:.3g}" for k, v in best["params"].items() if k not in ("lr", "max_steps"))
        lines.append(f"| {method} | {best['value']:.2f} | {metrics[key]:.2f} "
                     f"| {metrics['retained_digit_accuracy']:.2f} | {metrics['FID']:.2f} "
                     f"| {best['params']['max_steps']} | {best['params']['lr']:.2e} | {strength or '-'} "
                     f"| {metrics['RTE']:.2f} |")
    return "\n".join(lines)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="a finished concept_erasure.py run (read only)")
    parser.add_argument("--trials", type=int, default=5, help="trials per method and experiment (default 5)")
    parser.add_argument("--methods", nargs="+", choices=list(TUNED), default=list(TUNED))
    parser.add_argument("--experiments", nargs="+", choices=EXPERIMENTS, default=list(EXPERIMENTS))
    parser.add_argument("--per-prompt", type=int, default=20, help="generations per prompt to judge (default 20)")
    parser.add_argument("--sample-steps", type=int, default=25, help="DDIM steps of the judged generations")
    parser.add_argument("--space", action="append", default=[], metavar="NAME=LOW:HIGH",
                        help="narrow a tuned value's range for every method that tunes it (repeat)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="studies at once, one process of one torch thread each (1: all in this process)")
    parser.add_argument("--out", type=Path, default=Path("runs/tuned_concept_erasure"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--images", type=Path, default=None, help="copy each best trial's grid here")
    args = parser.parse_args(argv)
    for method in args.methods:
        try:
            space_of(method, tuple(args.space))
        except ValueError as error:
            parser.error(str(error))
    for part in ("train", "judge", "data", "object_data"):
        if not (args.base / part).is_dir():
            parser.error(f"--base {args.base}: no {part}/ there; run benchmarks/concept_erasure.py --out "
                         f"{args.base} first (it makes the original model, the judge and the object data)")
    return args


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    quiet(1)
    started = time.perf_counter()
    original = originals(args)
    jobs = [(e, m) for m in args.methods for e in args.experiments]
    pool = ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) if args.jobs > 1 else Inline()
    try:
        futures = {job: pool.submit(study, *job, args, original[job[0]]) for job in jobs}
        results = {job: future.result() for job, future in futures.items()}
    finally:
        pool.shutdown()
    summary: dict[str, Any] = {
        "trials": args.trials, "objective": " ".join(erasure_objective.__doc__.split("\n\n")[0].split()),
        "space": {m: {k: [r.low, r.high, r.log] for k, r in space_of(m, tuple(args.space)).items()}
                  for m in args.methods},
        "settings": {"base": str(args.base), "per_prompt": args.per_prompt, "sample_steps": args.sample_steps},
        "machine": (f"{platform.machine()}, {args.jobs} process{'es' if args.jobs > 1 else ''} of 1 torch thread, "
                    f"torch {torch.__version__}"),
        "experiments": {e: {"original": original[e], **{m: results[(e, m)] for m in args.methods}}
                        for e in args.experiments}}
    for experiment in args.experiments:
        rows = {m: results[(experiment, m)] for m in args.methods}
        print(f"\n## {experiment} erasure: {args.trials} trials per method\n")
        print(table(experiment, original[experiment], rows))
        if args.images is not None:
            for method, row in rows.items():
                args.images.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(Path(row["best"]["run_dir"]) / "grid.png", args.images / f"{experiment}_{method}.png")
    print(f"\n{time.perf_counter() - started:.0f} s on {summary['machine']}")
    if args.json is not None:
        write_json(args.json, summary)
    return summary


if __name__ == "__main__":
    main()
