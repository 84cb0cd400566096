"""A reduced CIFAR-10 protocol for 2 CPU cores: every method against retrain, random 10% forgetting, several seeds.

Reduction (stated in every report): a class-balanced subset of the JPEG copy of CIFAR-10 (default 500 training
and 100 test images per class), the small ResNet of ``salun_lightning.models`` instead of ResNet-18, float32, no
validation hold-out. The original model is trained once on the whole subset; each seed draws its own forget set
(10%), retrains from scratch on the rest and runs every unlearning method from the original model. Everything
goes through the ``salun`` command line with the CIFAR-10 configs (the paper's unlearning hyper-parameters),
overriding only the data source, the model, the original/retrain epochs and, with --unlearn-epochs, the
unlearning epochs.

    python benchmarks/cifar10_cpu.py [--seeds 0 1] [--train-epochs 15] [--unlearn-epochs 5] [--out runs/cifar10_cpu]

It prints the report table (mean ± std over seeds) and writes report.md / report.png into --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import torch

from salun_lightning.cli import run as salun

ROOT = Path(__file__).resolve().parents[1]
UNLEARNING = ("salun", "ft", "ga", "rl", "l1_sparse")


def common_args(subset: Path, root: Path, seed: int, model: str = "small_resnet", augment: bool = True) -> list[str]:
    """The overrides of the CPU protocols: an image-folder subset, no hold-out, float32 on the CPU, one run directory."""
    return [
        "--data.init_args.dataset=image_folder",
        f"--data.init_args.data_path={subset}",
        "--data.init_args.val_size=0",
        f"--data.init_args.augment={str(augment).lower()}",
        f"--data.init_args.seed={seed}",
        "--data.init_args.batch_size=128",
        "--data.init_args.eval_batch_size=500",
        f"--model.init_args.model={model}",
        "--trainer.precision=32-true",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.enable_progress_bar=false",
        f"--seed_everything={seed}",
        f"--trainer.default_root_dir={root}",
    ]


def fit(method: str, root: Path, args: list[str]) -> float:
    started = time.perf_counter()
    config = ROOT / "configs" / "cifar10"
    salun(["fit", "--config", str(config / f"{method}.yaml"), "--config", str(config / "forget" / "random10.yaml"), *args])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--train-epochs", type=int, default=15, help="epochs of the original and retrain models")
    parser.add_argument("--unlearn-epochs", type=int, default=None,
                        help="epochs of every unlearning method (default: each CIFAR-10 config's own)")
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("runs/cifar10_cpu"))
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from cifar_subset import build_subset

    subset = build_subset(args.out / "data", args.train_per_class, args.test_per_class)
    schedule = [f"--trainer.max_epochs={args.train_epochs}", f"--model.init_args.lr_milestones=[{args.train_epochs // 2}, {3 * args.train_epochs // 4}]"]
    original_dir = args.out / "original"
    seconds = {"train": fit("train", original_dir, common_args(subset, original_dir, 0) + schedule)}
    weights = original_dir / "model.safetensors"
    run_dirs = []
    for seed in args.seeds:
        for method in ("retrain", *UNLEARNING):
            root = args.out / f"seed{seed}" / method
            extra = schedule if method == "retrain" else [f"--model.init_args.original_weights={weights}"]
            if method != "retrain" and args.unlearn_epochs is not None:
                extra.append(f"--trainer.max_epochs={args.unlearn_epochs}")
            seconds[f"{method}/seed{seed}"] = fit(method, root, common_args(subset, root, seed) + extra)
            run_dirs.append(str(root))
            print(f"{method} seed {seed}: {json.loads((root / 'metrics.json').read_text())}", flush=True)
    original = json.loads((original_dir / "metrics.json").read_text())
    print(f"\nmachine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"data: CIFAR-10 JPEG subset, {args.train_per_class}/{args.test_per_class} train/test images per class; "
          f"model: small_resnet; original and retrain: {args.train_epochs} epochs; "
          f"unlearning epochs: {args.unlearn_epochs or 'as in configs/cifar10'}; "
          f"original model test accuracy {original['TA']:.2f}%")
    print("wall-clock seconds per run (fit + test):", json.dumps({k: round(v, 1) for k, v in seconds.items()}))
    salun(["report", *run_dirs, "--out", str(args.out)])


if __name__ == "__main__":
    main()
