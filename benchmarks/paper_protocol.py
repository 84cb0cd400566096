"""The paper's CIFAR-10 protocol (SPEC section 6) in one command, at full scale or scaled down, with its table.

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
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import time
from pathlib import Path

import torch

from salun_lightning.cli import run as salun
from salun_lightning.metrics.functional import average_gap

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "cifar10"
ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
UNLEARNING = ("salun", "rl", "ft", "ga", "l1_sparse")
UNLEARNING_EPOCHS = {"salun": 10, "rl": 10, "ft": 10, "ga": 5, "l1_sparse": 10}  # configs/cifar10/<method>.yaml
# SPEC section 6: CIFAR-10, ResNet-18, mean of 10 trials (UA, RA, TA, MIA, Avg. Gap); None where not given.
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


def fit(method: str, args: argparse.Namespace, seed: int, extra: list[str]) -> dict:
    root = args.out / args.scenario / f"seed{seed}" / method
    started = time.perf_counter()
    salun(["fit", "--config", str(CONFIGS / f"{method}.yaml"),
           "--config", str(CONFIGS / "forget" / f"{args.scenario}.yaml"), *data_args(args, seed, root), *extra])
    metrics = json.loads((root / "metrics.json").read_text())
    print(f"{method} seed {seed}: {time.perf_counter() - started:.0f} s, " +
          ", ".join(f"{k} {metrics[k]:.2f}" for k in KEYS), flush=True)
    return {**metrics, "dir": str(root)}


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
    parser.add_argument("--out", type=Path, default=Path("runs/paper_protocol"))
    args = parser.parse_args()
    if args.epochs_scale <= 0:
        parser.error("--epochs-scale must be positive")
    if not args.tiny and not args.archive.is_file():
        parser.error(f"no CIFAR-10 archive at {args.archive}; give --archive")
    scale = args.epochs_scale if not args.tiny else 1 / 182
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    started = time.perf_counter()
    long_schedule = [f"--trainer.max_epochs={scaled(182, scale)}",
                     f"--model.init_args.lr_milestones=[{scaled(91, scale)}, {scaled(136, scale)}]"]
    results: dict[str, list[dict]] = {"retrain": []}
    for seed in args.seeds:
        original = fit("train", args, seed, long_schedule)
        weights = Path(original["dir"]) / "model.safetensors"
        results["retrain"].append(fit("retrain", args, seed, long_schedule))
        for method in args.methods:
            extra = [f"--model.init_args.original_weights={weights}",
                     f"--trainer.max_epochs={scaled(UNLEARNING_EPOCHS[method], scale)}"]
            results.setdefault(method, []).append(fit(method, args, seed, extra))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.tiny else platform.machine()
    print(f"\n{args.scenario}, seeds {args.seeds}, epochs scale {scale:.4g}{' (tiny)' if args.tiny else ''}, "
          f"on {device}, torch {torch.__version__}: {time.perf_counter() - started:.0f} s in all\n")
    salun(["report", *(run["dir"] for runs in results.values() for run in runs), "--out",
           str(args.out / args.scenario)])
    print("\nOurs beside the paper's (SPEC section 6):\n")
    print(comparison(results, args.scenario))


if __name__ == "__main__":
    main()
