"""The paper's CIFAR-10 protocol (docs/method.md, 'Reference numbers') in one command, at full scale or scaled
down, with its table.

For one scenario and one or more seeds: the original model (ResNet-18, 182 epochs, SGD lr 0.1, x0.1 at epochs 91
and 136), retrain with the same schedule on the retain set, then salun, rl, ft, ga and l1_sparse from the original
model with the settings of ``configs/cifar10/<method>.yaml``; then the report, and our table beside the paper's with
the gap per metric. Everything goes through the ``salun`` command line with the CIFAR-10 configs.

``--epochs-scale`` multiplies every epoch count (the original's and retrain's 182, their milestones, and each
unlearning method's epochs; at least one epoch each). On CUDA the data live on the GPU (``data_on_device``), the
network is channels-last, and ``--compile`` compiles it. ``--tiny`` runs the same steps on the CPU at toy size
(scikit-learn's digits, the small ResNet, float32, one epoch each): a check of the script, not a result.

    python benchmarks/paper_protocol.py [--scenario random10] [--seeds 0] [--epochs-scale 1.0]
        [--archive ../shared/data/cifar10-jpg.tar.gz] [--compile] [--out runs/paper_protocol] [--tiny]
        [--parallel] [--budget SECONDS]

``--parallel`` runs the independent fits of each phase (the original and retrain; then the five methods) as
concurrent processes on the same device: on a GPU that these small 32x32 batches leave partly idle, the phases take
less time than in sequence. ``--budget`` chooses the epochs scale itself: a 2-epoch calibration of the original and
retrain, run as the protocol runs them, gives the seconds per epoch and per fit, and the scale is the largest (at
most ``--epochs-scale``) that fits what is left. The original's and retrain's validation accuracy per epoch are
printed at the end (their CSV logs: ``<run>/curves/version_0/metrics.csv``).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from salun_lightning.cli import run as salun
from salun_lightning.data.sources import default_cache_dir, load_image_folder_data
from salun_lightning.metrics.functional import average_gap

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "cifar10"
ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
UNLEARNING = ("salun", "rl", "ft", "ga", "l1_sparse")
UNLEARNING_EPOCHS = {"salun": 10, "rl": 10, "ft": 10, "ga": 5, "l1_sparse": 10}  # configs/cifar10/<method>.yaml
# The paper's numbers (docs/method.md, 'Reference numbers'): CIFAR-10, ResNet-18, mean of 10 trials (UA, RA, TA, MIA,
# Avg. Gap); None where not given.
PAPER = {
    "random10": {
        "retrain": (5.24, 100.00, 94.26, 12.88, 0.0),
        "salun": (2.85, 99.62, 93.93, 14.39, 1.15),
        "l1_sparse": (4.19, 97.74, 91.59, 9.84, 2.26),
        "ft": (None, None, None, None, 3.78),
        "ga": (None, None, None, None, 4.12),
        "rl": (None, None, None, None, 7.15),
    },
    "random50": {
        "retrain": (7.91, 100.00, 91.72, 19.29, 0.0),
        "salun": (7.75, 94.28, 89.29, 16.99, 2.65),
    },
}
KEYS = ("UA", "RA", "TA", "MIA")


def scaled(epochs: int, scale: float) -> int:
    return max(1, math.ceil(epochs * scale))


def data_args(args: argparse.Namespace, seed: int, root: Path) -> list[str]:
    common = [f"--data.init_args.seed={seed}", f"--seed_everything={seed}", f"--trainer.default_root_dir={root}",
              "--trainer.enable_progress_bar=false"]
    if args.tiny:
        return [*common, "--data.init_args.dataset=digits", "--data.init_args.val_size=0",
                "--data.init_args.batch_size=64", "--data.init_args.eval_batch_size=500",
                "--model.init_args.model=small_resnet", "--trainer.accelerator=cpu", "--trainer.devices=1",
                "--trainer.precision=32-true"]
    on_cuda = torch.cuda.is_available()
    return [*common, "--data.init_args.dataset=image_folder", f"--data.init_args.data_path={args.archive}",
            "--data.init_args.eval_batch_size=2048", "--trainer.devices=1",
            f"--data.init_args.data_on_device={str(on_cuda).lower()}",
            *(["--model.init_args.compile_backend=inductor"] if args.compile else [])]


def fit_args(method: str, args: argparse.Namespace, seed: int, extra: list[str]) -> tuple[Path, list[str]]:
    """The run directory and the ``salun`` arguments of one fit; the original and retrain log per-epoch curves
    (``<run>/curves/version_0/metrics.csv``: ``val/accuracy`` each epoch, ``train/loss`` every 50 steps)."""
    root = args.out / args.scenario / f"seed{seed}" / method
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(root), "name": "curves"}}
    curves = [f"--trainer.logger={json.dumps(logger)}"] if method in ("train", "retrain") else []
    return root, ["fit", "--config", str(CONFIGS / f"{method}.yaml"),
                  "--config", str(CONFIGS / "forget" / f"{args.scenario}.yaml"), *data_args(args, seed, root),
                  *curves, *extra]


def run_fits(fits: dict[str, tuple[Path, list[str]]], parallel: bool, logs: Path) -> dict[str, dict]:
    """Run independent fits, each ``(run directory, salun arguments)`` as :func:`fit_args` gives them (in this
    process one after another, or ``parallel``: as concurrent processes on the same device), and return each one's
    ``metrics.json`` with its directory and wall time."""
    results, started = {}, time.perf_counter()
    if parallel:
        logs.mkdir(parents=True, exist_ok=True)
        running = {}
        for name, (root, argv) in fits.items():
            log = logs / f"{root.parent.parent.name}_{root.parent.name}_{name}.log"
            with log.open("w") as out:
                running[name] = (subprocess.Popen([sys.executable, "-P", "-m", "salun_lightning.cli", *argv],
                                                  stdout=out, stderr=subprocess.STDOUT), log)
        for name, (process, log) in running.items():
            if process.wait() != 0:
                for other, _ in running.values():
                    other.kill()
                raise SystemExit(f"{name} failed (exit status {process.returncode}); its log {log} ends:\n"
                                 + log.read_text()[-3000:])
    for name, (root, argv) in fits.items():
        if not parallel:
            salun(argv)
        metrics = json.loads((root / "metrics.json").read_text())
        results[name] = {**metrics, "dir": str(root), "wall_s": time.perf_counter() - started}
        print(f"{name} seed {root.parent.name[4:]}: {results[name]['wall_s']:.0f} s, "
              + ", ".join(f"{k} {metrics[k]:.2f}" for k in KEYS), flush=True)
    return results


def unlearning_epoch_units(scenario: str) -> float:
    """The unlearning phase's images in units of one epoch over D_f + D_r (the methods' epochs by their streams)."""
    forget = {"random10": 0.1, "random50": 0.5, "class": 0.1}[scenario]
    stream = {"salun": 1.0, "rl": 1.0, "ft": 1 - forget, "l1_sparse": 1 - forget, "ga": forget}
    return sum(UNLEARNING_EPOCHS[m] * stream[m] for m in UNLEARNING)


def budget_scale(budget_s: float, epoch_s: float, overhead_s: float, units: float, seeds: int) -> float:
    """The largest epochs scale (at most 1) whose protocol fits ``budget_s``, from a calibration's seconds per epoch
    with the original and retrain side by side (``epoch_s``) and a fit's fixed seconds (``overhead_s``): per seed,
    two phases of fixed cost, 182 epochs of the first, and ``units`` epochs of the second at the first's aggregate
    rate (two epochs per ``epoch_s``); 10% is kept in reserve.

    >>> budget_scale(200, epoch_s=1.0, overhead_s=20, units=40, seeds=1)  # (0.9 * 200 - 2 * 20) / (182 + 40 / 2)
    0.693
    >>> budget_scale(10_000, epoch_s=1.0, overhead_s=20, units=40, seeds=1)
    1.0
    """
    per_seed = 0.9 * budget_s / seeds - 2 * overhead_s
    return max(0.0, min(1.0, round(per_seed / (epoch_s * (182 + units / 2)), 3)))


def comparison(results: dict[str, list[dict]], scenario: str) -> str:
    """Our means beside the paper's, with the gap per metric (ours - paper's)."""
    paper = PAPER.get(scenario, {})
    lines = ["| method | " + " | ".join(f"{k} (ours / paper / gap)" for k in (*KEYS, "Avg. Gap")) + " |",
             "| --- |" + " ---: |" * (len(KEYS) + 1)]
    for method, runs in results.items():
        ours = [sum(r[k] for r in runs) / len(runs) for k in KEYS]
        gaps = [average_gap(r, ref) for r, ref in zip(runs, results["retrain"])]
        ours.append(sum(gaps) / len(gaps))
        theirs = paper.get(method, (None,) * 5)
        cells = [f"{o:.2f} / " + ("-" if p is None else f"{p:.2f} / {o - p:+.2f}") for o, p in zip(ours, theirs)]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=("random10", "random50", "class"), default="random10")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs-scale", type=float, default=1.0)
    parser.add_argument("--methods", nargs="+", choices=UNLEARNING, default=list(UNLEARNING))
    parser.add_argument("--archive", type=Path, default=ARCHIVE, help="the CIFAR-10 JPEG archive")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network (inductor)")
    parser.add_argument("--tiny", action="store_true", help="toy size on the CPU: a check of the script")
    parser.add_argument("--parallel", action="store_true",
                        help="run independent fits (the original and retrain; then the unlearning methods) as "
                             "concurrent processes on the same device")
    parser.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                        help="choose the epochs scale (at most --epochs-scale) so that the protocol fits SECONDS, "
                             "from a 2-epoch calibration of the original and retrain run as the protocol runs them")
    parser.add_argument("--out", type=Path, default=Path("runs/paper_protocol"))
    args = parser.parse_args()
    if args.epochs_scale <= 0:
        parser.error("--epochs-scale must be positive")
    if not args.tiny and not args.archive.is_file():
        parser.error(f"no CIFAR-10 archive at {args.archive}; give --archive")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    started = time.perf_counter()
    scale = args.epochs_scale if not args.tiny else 1 / 182
    if args.budget is not None:
        scale = min(scale, calibrated_scale(args, started))
    long_schedule = [f"--trainer.max_epochs={scaled(182, scale)}",
                     f"--model.init_args.lr_milestones=[{scaled(91, scale)}, {scaled(136, scale)}]"]
    results: dict[str, list[dict]] = {}
    for seed in args.seeds:
        first = {name: fit_args(name, args, seed, long_schedule) for name in ("train", "retrain")}
        done = run_fits(first, args.parallel, args.out / "logs")
        weights = Path(done["train"]["dir"]) / "model.safetensors"
        second = {method: fit_args(method, args, seed, [f"--model.init_args.original_weights={weights}",
                                                        f"--trainer.max_epochs={scaled(UNLEARNING_EPOCHS[method], scale)}"])
                  for method in args.methods}
        done.update(run_fits(second, args.parallel, args.out / "logs"))
        for method, metrics in done.items():
            if method != "train":
                results.setdefault(method, []).append(metrics)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.tiny else platform.machine()
    print(f"\n{args.scenario}, seeds {args.seeds}, epochs scale {scale:.4g} (original and retrain "
          f"{scaled(182, scale)} epochs){' (tiny)' if args.tiny else ''}, on {device}, torch {torch.__version__}"
          f"{', fits in parallel' if args.parallel else ''}: {time.perf_counter() - started:.0f} s in all\n")
    salun(["report", *(run["dir"] for runs in results.values() for run in runs), "--out",
           str(args.out / args.scenario)])
    print("\nOurs beside the paper's (docs/method.md, 'Reference numbers'):\n")
    print(comparison(results, args.scenario))
    print_curves(args)


def calibrated_scale(args: argparse.Namespace, started: float) -> float:
    """Time the original and retrain for 2 epochs (as the protocol runs them) and choose the epochs scale; the image
    folder is decoded and cached first, so that the fits' fixed time is what every later fit pays."""
    if not args.tiny:
        load_image_folder_data(args.archive, default_cache_dir())
    calibration = argparse.Namespace(**{**vars(args), "out": args.out / "calibration"})
    two = ["--trainer.max_epochs=2", "--model.init_args.lr_milestones=[1, 2]"]
    first = {name: fit_args(name, calibration, args.seeds[0], two) for name in ("train", "retrain")}
    done = run_fits(first, args.parallel, calibration.out / "logs")
    epoch_s = max(run["RTE"] for run in done.values()) * 60 / 2
    overhead_s = max(run["wall_s"] for run in done.values()) - epoch_s * 2
    left = args.budget - (time.perf_counter() - started)
    scale = budget_scale(left, epoch_s, overhead_s, unlearning_epoch_units(args.scenario), len(args.seeds))
    print(f"calibration: {epoch_s:.2f} s per epoch, {overhead_s:.0f} s per fit besides; {left:.0f} s left of "
          f"{args.budget:.0f}: epochs scale {scale}", flush=True)
    if scale <= 0:
        raise SystemExit(f"the budget of {args.budget:.0f} s leaves no time for the protocol after the calibration")
    return scale


def print_curves(args: argparse.Namespace) -> None:
    """Validation accuracy per epoch of the original and retrain (every seed), from their CSV logs."""
    for seed in args.seeds:
        for name in ("train", "retrain"):
            log = args.out / args.scenario / f"seed{seed}" / name / "curves" / "version_0" / "metrics.csv"
            if not log.is_file():
                continue
            with log.open() as rows:
                accuracy = [float(row["val/accuracy"]) for row in csv.DictReader(rows) if row.get("val/accuracy")]
            if not accuracy:  # no validation set (--tiny)
                continue
            print(f"{name} seed {seed}, validation accuracy per epoch: " + " ".join(f"{a:.3g}" for a in accuracy))


if __name__ == "__main__":
    main()
