"""A CPU regime where the original model memorises its training set: every method against retrain, several seeds.

SalUn's claim (docs/method.md, 'Reference numbers') is made where the original model fits its training set (train
100%, test 94%), so that random labels overshoot and the saliency mask restrains them. This protocol builds that
regime on 2 CPU cores:

- data: a class-balanced subset of the JPEG copy of CIFAR-10 (default 250 training and 100 test images per class),
  no augmentation (so that the model memorises in few epochs), no validation hold-out;
- model: the small ResNet at width 32 (``small_resnet_w32``, 0.3M parameters), float32;
- original model: ``--train-epochs`` of SGD from the CIFAR-10 ``train`` config, trained once on the whole subset;
  retrain: the same schedule on each seed's retain set;
- unlearning: ``configs/cifar10/<method>.yaml`` (the paper's settings) at each config's own epochs; with
  ``--lr-grid``, each method's learning rate is chosen on the first seed from the config's value times 0.3, 1 and
  3 (the same budget for every method), by the smallest Avg. Gap to that seed's retrain, and the other seeds use it;
- scenarios: random 10%, random 50% and class-wise (class 0), each seed drawing its own random forget set.

Everything goes through the ``salun`` command line. It prints one report per scenario and writes a JSON summary
(``--json``): ``{"seeds", "original": {"train_accuracy", "test_accuracy"}, "scenarios": {scenario: {method:
{"UA", "RA", "TA", "MIA", "avg_gap_mean", "avg_gap_std", "RTE", "lr"}}}}`` (percentages and minutes, means over the
seeds that were not used for choosing learning rates when there are any left, else over all).

    python benchmarks/memorising.py [--seeds 0 1 2] [--scenarios random10 random50 class] [--lr-grid]
        [--out runs/memorising] [--json docs/results/memorising.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from salun_lightning.cli import run as salun
from salun_lightning.files import write_json
from salun_lightning.metrics.functional import average_gap
from salun_lightning.runs import read_forget_set

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "cifar10"
UNLEARNING = ("salun", "rl", "ft", "ga", "l1_sparse")
SCENARIOS = ("random10", "random50", "class")
GRID = (0.3, 1.0, 3.0)
INVOCATION = "invocation.json"  # the salun command that made a run: what resuming compares


def common_args(subset: Path, root: Path, seed: int, model: str) -> list[str]:
    """cifar10_cpu.py's overrides, with the wider model and without augmentation."""
    from cifar10_cpu import common_args as cpu_protocol_args

    return cpu_protocol_args(subset, root, seed, model=model, augment=False)


def training_schedule(epochs: int) -> list[str]:
    """The original model's and retrain's schedule: ``epochs`` of SGD, x0.1 at half and three quarters."""
    return [f"--trainer.max_epochs={epochs}", f"--model.init_args.lr_milestones=[{epochs // 2}, {3 * epochs // 4}]"]


def fit(method: str, scenario: str, args: list[str], configs: Path = CONFIGS) -> dict:
    """Run ``salun fit`` (then its test) with ``<configs>/<method>.yaml`` and ``<configs>/forget/<scenario>.yaml``
    and return the run's metrics.

    Resumable: a finished run is reused only when it was made by exactly this command (``invocation.json``, written
    after the fit); a run of other settings in the same directory is run again.
    """
    root = Path(next(a for a in args if a.startswith("--trainer.default_root_dir=")).split("=", 1)[1])
    command = ["fit", "--config", str(configs / f"{method}.yaml"), "--config",
               str(configs / "forget" / f"{scenario}.yaml"), *args]
    record = root / INVOCATION
    finished = (root / "metrics.json").is_file() and not (root / "INCOMPLETE").exists()
    if finished and record.is_file() and json.loads(record.read_text()) == command:
        return json.loads((root / "metrics.json").read_text())
    record.unlink(missing_ok=True)
    salun(command)
    write_json(record, command)
    return json.loads((root / "metrics.json").read_text())


def config_lr(method: str) -> float:
    line = next(line for line in (CONFIGS / f"{method}.yaml").read_text().splitlines() if line.startswith("model.init_args.lr:"))
    return float(line.split(":", 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--methods", nargs="+", choices=UNLEARNING, default=list(UNLEARNING))
    parser.add_argument("--lr-grid", action="store_true", help="choose each method's lr on the first seed")
    parser.add_argument("--train-epochs", type=int, default=60, help="epochs of the original and retrain models")
    parser.add_argument("--train-per-class", type=int, default=250)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--model", default="small_resnet_w32")
    parser.add_argument("--out", type=Path, default=Path("runs/memorising"))
    parser.add_argument("--json", type=Path, default=None, help="write the summary here")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    sys.path.insert(0, str(Path(__file__).parent))
    from cifar_subset import build_subset

    started = time.perf_counter()
    subset = build_subset(args.out / "data", args.train_per_class, args.test_per_class)
    schedule = training_schedule(args.train_epochs)
    original_dir = args.out / "original"
    original = fit("train", "random10", common_args(subset, original_dir, 0, args.model) + schedule)
    forget_count = read_forget_set(original_dir)["count"]
    total = len(list((subset / "train").rglob("*.jpg")))
    train_accuracy = ((100 - original["UA"]) * forget_count + original["RA"] * (total - forget_count)) / total
    print(f"original: train accuracy {train_accuracy:.2f}%, test accuracy {original['TA']:.2f}%", flush=True)
    weights = original_dir / "model.safetensors"

    summary = {"seeds": args.seeds, "original": {"train_accuracy": train_accuracy, "test_accuracy": original["TA"]},
               "scenarios": {}}
    tuning_seed = args.seeds[0] if args.lr_grid else None
    for scenario in args.scenarios:
        results: dict[str, dict[int, dict]] = {}
        chosen = {method: config_lr(method) for method in args.methods}
        for seed in args.seeds:
            base = args.out / scenario / f"seed{seed}"
            retrain = fit("retrain", scenario, common_args(subset, base / "retrain", seed, args.model) + schedule)
            results.setdefault("retrain", {})[seed] = {**retrain, "dir": str(base / "retrain")}
            for method in args.methods:
                candidates = [chosen[method] * factor for factor in GRID] if seed == tuning_seed else [chosen[method]]
                runs = {}
                for lr in candidates:
                    root = base / (method if len(candidates) == 1 else f"{method}_lr{lr:g}")
                    extra = [f"--model.init_args.original_weights={weights}", f"--model.init_args.lr={lr}"]
                    runs[lr] = {**fit(method, scenario, common_args(subset, root, seed, args.model) + extra),
                                "dir": str(root)}
                best = min(runs, key=lambda lr: average_gap(runs[lr], retrain))
                chosen[method] = best
                results.setdefault(method, {})[seed] = {**runs[best], "lr": best}
                print(f"{scenario} seed {seed} {method} (lr {best:g}): gap {average_gap(runs[best], retrain):.2f}",
                      flush=True)
        evaluated = [s for s in args.seeds if s != tuning_seed] or args.seeds
        table = {}
        for method, by_seed in results.items():
            gaps = [average_gap(by_seed[s], results["retrain"][s]) for s in evaluated]
            table[method] = {
                **{key: statistics.fmean(by_seed[s][key] for s in evaluated) for key in ("UA", "RA", "TA", "MIA")},
                "avg_gap_mean": statistics.fmean(gaps),
                "avg_gap_std": statistics.stdev(gaps) if len(gaps) > 1 else 0.0,
                "RTE": statistics.fmean(by_seed[s]["RTE"] or 0.0 for s in evaluated),
                **({"lr": chosen[method]} if method != "retrain" else {}),
            }
        summary["scenarios"][scenario] = table
        run_dirs = [results[m][s]["dir"] for s in evaluated for m in ("retrain", *args.methods)]
        print(f"\n## {scenario} (seeds {evaluated})")
        salun(["report", *run_dirs, "--out", str(args.out / scenario)])
    print(f"\nmachine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"{args.train_per_class}/{args.test_per_class} train/test images per class, {args.model}, no augmentation, "
          f"{args.train_epochs} epochs for original and retrain; {time.perf_counter() - started:.0f} s in all")
    print(json.dumps(summary, indent=2))
    if args.json is not None:
        write_json(args.json, summary)


if __name__ == "__main__":
    main()
