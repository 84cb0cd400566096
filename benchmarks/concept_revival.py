"""Concept revival on the tiny text-to-image experiments: fine-tune each erased model a few steps on images of the
erased concept, and as a control on unrelated images, then judge its generations as the erasure was judged.

The erased models are the best trials of ``benchmarks/tuned_concept_erasure.py`` (``--tuned``, its JSON summary) or,
without it, the runs of a ``benchmarks/concept_erasure.py`` run (``--base``, ``<base>/<experiment>_<method>``); the
original model is attacked too (its concept was never erased: the ceiling), and so is the never-learned reference,
the analogue of retrain: the original's own fit (same config, seed and steps) without the concept, on the normal
style only (``retrain``) or on the training digits without digit 0, from ``<out>/<experiment>/never_learned_fit``.
How fast a concept comes back to a model that never saw it is what an erasure's revival is to be compared with.
Every revival is ``salun relearn
<erased run> --out ...`` (:mod:`salun_lightning.diffusion.revival`) pointed at the experiment's data (every model
alike): the plain denoising loss, Adam at ``--lr`` (one rate for every model), batch 128, on

- style: the real training images in the inverted style (the concept; an attacker with a few artworks), control: the
  normal ones;
- object: the generated images of "an image of the digit 0" that the erasure forgot, control: the generated images of
  the nine other digits.

After each of ``--steps`` (separate fits from the erased model) the judge measures the erasure that is left (style
erasure %, or UA for the object: 100 means still erased). Prints a table per experiment and writes ``--json`` as
``{"settings", "concept_revival": {experiment: {model: {"before", "after", "steps", "curve": {steps: erasure},
"control": erasure, "retained_digit_accuracy_after"}}}}`` (``after`` at the largest step count); ``--merge-into``
adds ``concept_revival`` to ``docs/results/strong_evaluation.json``.

    python benchmarks/concept_revival.py --base runs/concept_erasure_dr1000
        [--tuned docs/results/tuned_concept_erasure.json]
        [--steps 10 50 200] [--lr 1e-4] [--out runs/concept_revival] [--json docs/results/concept_revival.json]
"""

from __future__ import annotations

import argparse
import csv
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

from concept_erasure import FORGOTTEN_DIGIT, EXPERIMENT_DATA, Inline, data_args, evaluate, judged  # noqa: E402
from ddpm_digits import quiet  # noqa: E402

from salun_lightning.diffusion.revival import revive  # noqa: E402
from salun_lightning.files import write_json  # noqa: E402
from salun_lightning.runs import CONFIG_FILENAME, is_incomplete  # noqa: E402

EXPERIMENTS = ("style", "object")
METHODS = ("salun", "esd_x", "esd_u", "fmn")
CONTROL = {"style": "normal", "object": "retain"}  # the unrelated class of each experiment's data
ERASED = {"style": "style_erasure", "object": "UA"}
NEVER_LEARNED = "never_learned"


def erased_runs(args: argparse.Namespace) -> dict[str, dict[str, Path]]:
    """``{experiment: {model: run directory}}``: the original and every erased model found."""
    runs: dict[str, dict[str, Path]] = {e: {"original": args.base / "train",
                                            NEVER_LEARNED: args.out / e / "never_learned_fit"}
                                        for e in args.experiments}
    tuned = json.loads(args.tuned.read_text())["experiments"] if args.tuned is not None else {}
    for experiment in args.experiments:
        for method in args.methods:
            row = tuned.get(experiment, {}).get(method)
            run = Path(row["best"]["run_dir"]) if row else args.base / f"{experiment}_{method}"
            if (run / "unet").is_dir():
                runs[experiment][method] = run
    return runs


def experiment_data(experiment: str, images: str, args: argparse.Namespace) -> list[str]:
    """The fit options that fine-tune on the class ``images`` of the experiment's data. Given to every model: the
    original's own config holds the style data only, so in the object experiment it would otherwise be fine-tuned on
    the inverted style instead of digit 0."""
    return data_args(args.base / EXPERIMENT_DATA[experiment][0], images, args.base / "cache")


def without_digit(folder: Path, out: Path, digit: int) -> Path:
    """A copy of the image folder ``folder`` (``<split>/<style>/<NNNNN>_<digit>.png`` and the prompts' CSV files)
    without the training images of ``digit``; made once into ``out``."""
    if (out / ".complete").is_file():
        return out
    for split, name in (("train", "prompts.csv"), ("test", "test_prompts.csv")):
        with open(folder / name, newline="") as stream:
            header, *rows = list(csv.reader(stream))
        kept = [row for row in rows if split == "test" or not row[0].endswith(f"_{digit}.png")]
        for row in kept:
            (out / split / row[0]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / split / row[0], out / split / row[0])
        with open(out / name, "w", newline="") as stream:
            csv.writer(stream).writerows([header, *kept])
    (out / ".complete").touch()
    return out


def fit_never_learned(experiment: str, root: Path, args: argparse.Namespace) -> None:
    """The original's fit (its own saved config) without the experiment's concept into ``root``, unless finished."""
    from salun_lightning.cli import run as salun

    if (root / "unet" / "config.json").is_file() and not is_incomplete(root):
        return
    if experiment == "style":  # retrain: the original's data without its forget class, the inverted style
        without = ["--model.init_args.method=retrain"]
    else:
        folder = without_digit(args.base / "data", root.parent / "never_learned_data", FORGOTTEN_DIGIT)
        without = [f"--data.init_args.data_path={folder}", f"--data.init_args.prompts_csv={folder / 'prompts.csv'}"]
    salun(["fit", "--config", str(args.base / "train" / CONFIG_FILENAME), f"--trainer.default_root_dir={root}",
           *without])


def attack(experiment: str, model: str, run: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Judge ``run``, then revive it at every step count and once on the control class; resumable per fit."""
    quiet(1)
    if model == NEVER_LEARNED:
        fit_never_learned(experiment, run, args)
    key = ERASED[experiment]
    out = args.out / experiment / model
    evaluation = judged(args.base, args.per_prompt, args.sample_steps)

    def judge(name: str, directory: Optional[Path]) -> dict[str, Any]:
        path = out / f"{name}.json"
        if path.is_file():
            return json.loads(path.read_text())
        record = evaluate(experiment, f"{model}_{name}", directory, evaluation, None, into=out / name)
        write_json(path, record)
        return record

    before = judge("before", None if model == "original" else run)
    curve, retained = {}, None
    for steps in args.steps:
        target = out / f"revived_{steps}"
        if not (target / "unet" / "config.json").is_file():
            revive(run, target, steps, args.lr, extra=experiment_data(experiment, EXPERIMENT_DATA[experiment][1], args))
        record = judge(f"revived_{steps}", target)
        curve[str(steps)], retained = record[key], record["retained_digit_accuracy"]
    control_dir = out / f"control_{max(args.steps)}"
    if not (control_dir / "unet" / "config.json").is_file():
        revive(run, control_dir, max(args.steps), args.lr, extra=experiment_data(experiment, CONTROL[experiment], args))
    control = judge(f"control_{max(args.steps)}", control_dir)
    return {"before": before[key], "after": curve[str(max(args.steps))], "steps": max(args.steps), "curve": curve,
            "control": control[key], "retained_digit_accuracy_before": before["retained_digit_accuracy"],
            "retained_digit_accuracy_after": retained, "run": str(run)}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="a finished concept_erasure.py run (read only)")
    parser.add_argument("--tuned", type=Path, default=None, help="tuned_concept_erasure.py's JSON: attack its best")
    parser.add_argument("--experiments", nargs="+", choices=EXPERIMENTS, default=list(EXPERIMENTS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="the erased models attacked (the original always is)")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 50, 200], help="fine-tuning steps (10 50 200)")
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam's rate for every model (the configs' 1e-4)")
    parser.add_argument("--per-prompt", type=int, default=20)
    parser.add_argument("--sample-steps", type=int, default=25)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/concept_revival"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--merge-into", type=Path, default=None,
                        help="also write concept_revival into this JSON (docs/results/strong_evaluation.json)")
    args = parser.parse_args(argv)
    if min(args.steps) < 1 or args.lr <= 0:
        parser.error("--steps must be at least 1 and --lr positive")
    for part in ("train", "judge", "data", "object_data"):
        if not (args.base / part).is_dir():
            parser.error(f"--base {args.base}: no {part}/ there; run benchmarks/concept_erasure.py --out {args.base} "
                         "first")
    if args.tuned is not None and not args.tuned.is_file():
        parser.error(f"--tuned {args.tuned}: no such file; run benchmarks/tuned_concept_erasure.py --json it first")
    return args


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    runs = erased_runs(args)
    jobs = [(e, m, run) for e in args.experiments for m, run in runs[e].items()]
    pool = ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) if args.jobs > 1 else Inline()
    try:
        futures = {(e, m): pool.submit(attack, e, m, run, args) for e, m, run in jobs}
        results = {job: future.result() for job, future in futures.items()}
    finally:
        pool.shutdown()
    revival = {e: {m: results[(e, m)] for m in runs[e]} for e in args.experiments}
    for experiment, rows in revival.items():
        name = "style erasure %" if experiment == "style" else "UA (digit 0)"
        print(f"\n## {experiment}: {name} before and after fine-tuning on the concept (Adam {args.lr:g}, batch 128)\n\n"
              f"| model | before | " + " | ".join(f"{s} steps" for s in args.steps) +
              f" | control ({max(args.steps)} steps, unrelated images) | retained digit acc. after |\n"
              "| --- | ---: | " + " | ".join("---:" for _ in args.steps) + " | ---: | ---: |")
        for model, row in rows.items():
            print(f"| {model} | {row['before']:.2f} | " + " | ".join(f"{row['curve'][str(s)]:.2f}" for s in args.steps)
                  + f" | {row['control']:.2f} | {row['retained_digit_accuracy_after']:.2f} |")
    settings = {"steps": args.steps, "lr": args.lr, "batch_size": 128, "per_prompt": args.per_prompt,
                "sample_steps": args.sample_steps, "base": str(args.base), "tuned": str(args.tuned),
                "machine": (f"{platform.machine()}, {args.jobs} process{'es' if args.jobs > 1 else ''} of 1 torch "
                            f"thread, torch {torch.__version__}"),
                "minutes": (time.perf_counter() - started) / 60}
    print(f"\n{settings['minutes']:.1f} min on {settings['machine']}")
    summary = {"settings": settings, "concept_revival": revival}
    if args.json is not None:
        write_json(args.json, summary)
    if args.merge_into is not None:
        merged = json.loads(args.merge_into.read_text()) if args.merge_into.is_file() else {}
        write_json(args.merge_into, {**merged, "concept_revival": {
            e: {m: {k: row[k] for k in ("before", "after", "steps", "control")} for m, row in rows.items()}
            for e, rows in revival.items()}})
    return summary


if __name__ == "__main__":
    main()
