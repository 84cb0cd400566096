"""Every classifier method tuned at the same budget through ``salun tune``, then evaluated on other seeds.

Per regime: on the tuning seed, the original model, its retrain reference and one study per method (``--trials``
trials, every iterative method at ``--epochs`` epochs, the one-shot methods at their single update); the best
trial's values are then refit on each evaluation seed (its own original, split and retrain) and scored by Avg. Gap.
``<method>+mask`` is the method under the saliency mask (``saliency_ratio`` tuned too), for the plug-in claim: ``iu``
against ``iu+mask``, ``ga`` against ``ga+mask``, ``rl`` against ``salun``. Everything resumes: studies through their
SQLite files, fits through ``memorising.fit``'s invocation record.

Regimes: ``digits_random10`` and ``digits_class`` (scikit-learn's digits, the small ResNet: the generalising regime),
and ``memorising_random10``, ``memorising_random50``, ``memorising_class`` (``benchmarks/memorising.py``'s CIFAR-10
subset, minutes per fit: give them fewer trials).

It prints a table per regime and writes ``--json`` in the form ``{"budget": {"trials", "epochs"}, "seeds",
"regimes": {regime: {method: {"avg_gap_mean", "avg_gap_std", "UA", "RA", "TA", "MIA", "RTE", "params",
"trial_gaps"}}}}`` (percentages; means over the evaluation seeds; ``trial_gaps`` every trial's Avg. Gap on the tuning
seed), and the box plots of each regime's trial spread (``--plots``).

    python benchmarks/tuned_comparison.py [--regimes digits_random10 digits_class] [--methods all] [--trials 20]
        [--epochs 5] [--tune-seed 0] [--eval-seeds 1 2] [--out runs/tuned] [--json docs/results/tuned_comparison.json]
        [--plots docs/images]
    python benchmarks/tuned_comparison.py --json docs/results/tuned_comparison.json --write-configs configs/digits/tuned
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch
import yaml

from salun_lightning.files import write_json
from salun_lightning.methods import METHODS
from salun_lightning.metrics.functional import average_gap
from salun_lightning.tuning import Objective, fit_option, tune
from salun_lightning.tuning_plots import plot_spread

ROOT = Path(__file__).resolve().parents[1]
UNLEARNING = tuple(name for name in METHODS if name not in ("train", "retrain"))
PLUG_INS = ("iu+mask", "ga+mask")
DIGITS = ("digits_random10", "digits_class")
MEMORISING = ("memorising_random10", "memorising_random50", "memorising_class")
KEYS = ("UA", "RA", "TA", "MIA")


def method_args(name: str, epochs: int) -> list[str]:
    """The config and options of ``name`` (``<method>+mask``: under a mask of ratio 0.5 to start from)."""
    method = name.removesuffix("+mask")
    options = ["--model.init_args.saliency_ratio=0.5"] if name.endswith("+mask") else []
    if METHODS[method].stream != "none":
        options.append(f"--trainer.max_epochs={epochs}")
    return [method, *options]


def with_overall_budget(summary: dict) -> dict:
    """``summary`` whose ``budget`` is what every regime had at least: the fewest trials of any regime (each regime's
    own in ``regime_budgets``) and the epochs per trial, which are the same everywhere."""
    budgets = summary["regime_budgets"].values()
    return {**summary, "budget": {"trials": min(b["trials"] for b in budgets), "epochs": summary["budget"]["epochs"]}}


def write_configs(summary: dict, folder: Path, date: str) -> list[Path]:
    """``<folder>/<scenario>/<method>.yaml`` for every digits regime's tuned method (``<method>+mask`` as
    ``<method>_masked.yaml``): the method's config, the scenario's forget set and the chosen values, with a header
    saying where they came from."""
    written = []
    for regime in DIGITS:
        budget = summary.get("regime_budgets", {}).get(regime, summary["budget"])
        scenario = regime.split("_", 1)[1]
        forget = yaml.safe_load((ROOT / "configs" / "digits" / "forget" / f"{scenario}.yaml").read_text())
        for name, row in summary["regimes"].get(regime, {}).items():
            method, *options = method_args(name, budget["epochs"])
            lines = [
                f"# {name} on the digits, {scenario}: tuned at an equal budget by benchmarks/tuned_comparison.py "
                f"({budget.get('date') or date}):",
                f"# {budget['trials']} Optuna TPE trials on seed {summary['tune_seed']} against that seed's retrain, "
                f"{budget['epochs']} epochs per trial (one-shot methods: their one update);",
                f"# Avg. Gap on seeds {', '.join(map(str, summary['seeds']))}: {row['avg_gap_mean']:.2f} ± "
                f"{row['avg_gap_std']:.2f} (docs/results.md, 'Every method tuned at an equal budget').",
                f"# Run: salun fit --config configs/digits/tuned/{scenario}/{name.replace('+mask', '_masked')}.yaml",
                f"config: ../../{method}.yaml",
                *[option.removeprefix("--").replace("=", ": ", 1) for option in options
                  if option.split("=", 1)[0] not in {fit_option(k) for k in row["params"]}],
                *[f"{fit_option(k).removeprefix('--')}: {v!r}" for k, v in row["params"].items()],
                *[f"data.init_args.{k}: {'null' if v is None else v}" for k, v in forget["data"]["init_args"].items()],
            ]
            path = folder / scenario / f"{name.replace('+mask', '_masked')}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(lines) + "\n")
            written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regimes", nargs="+", choices=(*DIGITS, *MEMORISING), default=list(DIGITS))
    parser.add_argument("--methods", nargs="+", choices=(*UNLEARNING, *PLUG_INS, "all"), default=["all"])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=5, help="epochs of every iterative method's trial")
    parser.add_argument("--tune-seed", type=int, default=0)
    parser.add_argument("--eval-seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/tuned"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plots", type=Path, default=None, help="write <regime>_spread.png here")
    parser.add_argument("--memorising-epochs", type=int, default=60,
                        help="the memorising regime's original and retrain epochs (memorising.py's 60)")
    parser.add_argument("--memorising-per-class", type=int, nargs=2, default=[250, 100], metavar=("TRAIN", "TEST"),
                        help="the memorising regime's CIFAR-10 images per class (memorising.py's 250 100)")
    parser.add_argument("--memorising-batch-size", type=int, default=128,
                        help="the memorising regime's batch size (memorising.py's 128); choose one that leaves no "
                        "tiny last batch of the retain set (900 images at 128 end in a batch of 4)")
    parser.add_argument("--sampler", default="tpe", choices=("tpe", "random"),
                        help="random: uniform trials over each space, to measure the spread (Figure 2(b))")
    parser.add_argument("--write-configs", type=Path, default=None,
                        help="write the digits regimes' tuned configs here (configs/digits/tuned) and stop")
    args = parser.parse_args()
    names = (*UNLEARNING, *PLUG_INS) if "all" in args.methods else tuple(args.methods)
    if args.write_configs is not None:
        summary = json.loads(args.json.read_text())
        for path in write_configs(summary, args.write_configs, summary.get("date", "")):
            print(f"wrote {path}")
        return
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).parent))
    from digits_methods import seeded
    from memorising import fit

    def regime_of(name: str) -> tuple[Path, str, Callable[[Path, int], list[str]], list[str]]:
        """(configs folder, scenario, the fit options of a run directory and seed, the original's and retrain's
        schedule) of a regime."""
        family, scenario = name.split("_", 1)
        if family == "digits":
            return ROOT / "configs" / "digits", scenario, seeded, []
        from cifar_subset import build_subset
        from memorising import common_args, training_schedule

        train, test = args.memorising_per_class
        subset = build_subset(args.out / f"memorising_data_{train}_{test}", train, test)
        batch = [f"--data.init_args.batch_size={args.memorising_batch_size}"] if args.memorising_batch_size != 128 else []
        return (ROOT / "configs" / "cifar10", scenario,
                lambda root, seed: common_args(subset, root, seed, "small_resnet_w32") + batch,
                training_schedule(args.memorising_epochs))

    budget = {"trials": args.trials, "epochs": args.epochs}
    summary: dict = {"date": datetime.date.today().isoformat(), "sampler": args.sampler, "budget": budget,
                     "seeds": args.eval_seeds, "tune_seed": args.tune_seed,
                     "machine": f"{platform.machine()}, 1 thread, torch {torch.__version__}", "regimes": {},
                     "regime_budgets": {}}
    if args.json is not None and args.json.is_file():  # keep the other regimes, and this one's at the same budget
        previous = json.loads(args.json.read_text())
        kept = previous.get("regime_budgets") or {
            r: {**previous["budget"], "date": previous.get("date")} for r in previous.get("regimes", {})}
        summary.update({k: v for k, v in previous.items() if k not in summary})  # e.g. a uniform sweep's record
        summary["regimes"] = {r: rows for r, rows in previous.get("regimes", {}).items() if r in kept}
        summary["regime_budgets"] = {r: kept[r] for r in summary["regimes"]}
    for regime in args.regimes:
        regime_budget = dict(budget)
        if regime in MEMORISING:
            regime_budget.update(per_class=args.memorising_per_class, original_epochs=args.memorising_epochs)
            if args.memorising_batch_size != 128:  # recorded only when not memorising.py's
                regime_budget["batch_size"] = args.memorising_batch_size
        recorded = dict(summary["regime_budgets"].get(regime, {}))
        if recorded.pop("date", None) is None or recorded != regime_budget:  # a new budget: this regime starts over
            summary["regimes"].pop(regime, None)
            summary["regime_budgets"][regime] = {**regime_budget, "date": summary["date"]}
        base = args.out / regime
        references = {}
        originals = {}
        configs, scenario, run_args, schedule = regime_of(regime)
        for seed in (args.tune_seed, *args.eval_seeds):
            original = args.out / regime.split("_")[0] / f"seed{seed}" / "original"
            fit("train", "random10", run_args(original, seed) + schedule, configs)
            originals[seed] = original / "model.safetensors"
            references[seed] = base / f"seed{seed}" / "retrain"
            fit("retrain", scenario, run_args(references[seed], seed) + schedule, configs)
        table = summary["regimes"].setdefault(regime, {})
        for name in names:
            method, *options = method_args(name, args.epochs)
            studies = base / "studies"
            tuning_args = [*run_args(studies / "unused", args.tune_seed),  # each trial has its own run directory
                           f"--model.init_args.original_weights={originals[args.tune_seed]}",
                           "--trainer.enable_progress_bar=false", *options]
            study = tune(["--config", str(configs / f"{method}.yaml"), "--config",
                          str(configs / "forget" / f"{scenario}.yaml"), *tuning_args],
                         studies / name, args.trials, references[args.tune_seed], Objective("avg_gap"),
                         sampler=args.sampler)
            best = study.best_trial
            overrides = [f"{fit_option(k)}={v}" for k, v in best.params.items()]
            runs = {}
            for seed in args.eval_seeds:
                run_dir = base / f"seed{seed}" / name
                runs[seed] = fit(method, scenario, run_args(run_dir, seed) + [
                    f"--model.init_args.original_weights={originals[seed]}", *options, *overrides], configs)
            references_metrics = {s: json.loads((references[s] / "metrics.json").read_text()) for s in args.eval_seeds}
            gaps = [average_gap(runs[s], references_metrics[s]) for s in args.eval_seeds]
            table[name] = {
                "avg_gap_mean": statistics.fmean(gaps), "avg_gap_std": statistics.stdev(gaps) if len(gaps) > 1 else 0.0,
                **{k: statistics.fmean(runs[s][k] for s in args.eval_seeds) for k in KEYS},
                "RTE": statistics.fmean(runs[s]["RTE"] or 0.0 for s in args.eval_seeds),
                "params": best.params, "tuning_gap": best.value,
                "trial_gaps": [t.user_attrs.get("avg_gap") for t in study.trials if t.value is not None],
                "trial_UA": [t.user_attrs["metrics"]["UA"] for t in study.trials if t.value is not None],
            }
            print(f"{regime} {name}: tuned gap {best.value:.2f} -> seeds {args.eval_seeds} "
                  f"{table[name]['avg_gap_mean']:.2f} ± {table[name]['avg_gap_std']:.2f} ({best.params})", flush=True)
            if args.json is not None:
                write_json(args.json, with_overall_budget(summary))
        retrain = {k: statistics.fmean(json.loads((references[s] / "metrics.json").read_text())[k]
                                       for s in args.eval_seeds) for k in KEYS}
        print(f"\n## {regime}: {args.trials} trials per method on seed {args.tune_seed}, evaluated on seeds "
              f"{args.eval_seeds}\n\n| method | UA | RA | TA | MIA | Avg. Gap | RTE (min) | chosen |\n"
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        print("| retrain | " + " | ".join(f"{retrain[k]:.2f}" for k in KEYS) + " | 0 | | |")
        for name, row in sorted(table.items(), key=lambda item: item[1]["avg_gap_mean"]):
            chosen = ", ".join(f"{k}={v:.3g}" for k, v in row["params"].items())
            print(f"| {name} | " + " | ".join(f"{row[k]:.2f}" for k in KEYS) +
                  f" | {row['avg_gap_mean']:.2f} ± {row['avg_gap_std']:.2f} | {row['RTE']:.3f} | {chosen} |")
        if args.plots is not None:
            rows = {name: [{"state": "COMPLETE", "avg_gap": g, "metrics": {"UA": u}}
                           for g, u in zip(row["trial_gaps"], row["trial_UA"])] for name, row in table.items()}
            plot_spread(rows, args.plots / f"{regime}_spread.png")
    if args.json is not None:
        write_json(args.json, with_overall_budget(summary))


if __name__ == "__main__":
    main()
