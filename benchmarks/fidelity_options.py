"""The reference-code options of salun, one at a time, on one seed of the memorising regime (benchmarks/memorising.py).

A line-by-line comparison with the official SalUn code found four choices where this project's defaults differ or
where the reference code changed over time. Each is an option; this script flips one at a time from the defaults and
reports the run's metrics and Avg. Gap to the same seed's retrain:

- ``augment_forget_loader``: the mask's forget pass shuffled and augmented as the training stream (reference) instead
  of plain (default). In the memorising regime the training stream is not augmented, so only the order changes;
- ``random_labels: any`` (reference code: any class, the true one 1 time in C) instead of ``other`` (default, the
  paper's equation);
- ``freeze_non_salient: false`` (the code that produced the paper's tables: gradients masked, but momentum and weight
  decay still move non-salient weights) instead of ``true`` (default: restored exactly);
- ``saliency_precision``: the saliency pass in ``float32`` (default, reference) or in bf16 (``trainer`` under
  ``bf16-mixed``). The bf16 mask comes from ``salun mask --trainer.precision=bf16-mixed
  --model.init_args.saliency_precision=trainer``; the run with it trains in float32 like the others (bf16 training on
  this CPU took over 20 minutes for a 2-minute run), so it isolates the saliency pass. The share of mask elements
  that differ from the float32 mask is printed.

It needs a finished memorising run (its subset, original model and that seed's retrain; it runs them if missing),
and salun's learning rate (the memorising grid's choice)::

    python benchmarks/fidelity_options.py --lr 0.013 [--seed 0] [--scenario random10] [--out runs/memorising]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from salun_lightning.callbacks import load_mask
from salun_lightning.metrics.functional import average_gap

VARIANTS: dict[str, list[str]] = {
    "defaults": [],
    "augment_forget_loader": ["--data.init_args.augment_forget_loader=true"],
    "random_labels any": ["--model.init_args.method_args.random_labels=any"],
    "freeze_non_salient false": ["--model.init_args.freeze_non_salient=false"],
    "saliency pass in bf16": [],  # + the bf16 mask (see main)
}
BF16_MASK = ["--trainer.precision=bf16-mixed", "--model.init_args.saliency_precision=trainer"]


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def mask_difference(first: Path, second: Path) -> float:
    """Percentage of mask elements that differ between two mask files."""
    a, b = load_mask(first)[0], load_mask(second)[0]
    differing = sum(int((a[name] != b[name]).sum()) for name in a)
    return 100 * differing / sum(m.numel() for m in a.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, required=True, help="salun's learning rate (the memorising grid's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenario", default="random10", choices=("random10", "random50", "class"))
    parser.add_argument("--train-epochs", type=int, default=60, help="as memorising.py's run")
    parser.add_argument("--model", default="small_resnet_w32")
    parser.add_argument("--out", type=Path, default=Path("runs/memorising"))
    parser.add_argument("--json", type=Path, default=None, help="write the table here")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    sys.path.insert(0, str(Path(__file__).parent))
    from cifar_subset import build_subset
    from memorising import CONFIGS, common_args, fit, training_schedule

    from salun_lightning.cli import run as salun

    started = time.perf_counter()
    subset = build_subset(args.out / "data", 250, 100)
    schedule = training_schedule(args.train_epochs)
    original_dir = args.out / "original"
    fit("train", "random10", common_args(subset, original_dir, 0, args.model) + schedule)
    base = args.out / args.scenario / f"seed{args.seed}"
    retrain = fit("retrain", args.scenario, common_args(subset, base / "retrain", args.seed, args.model) + schedule)
    weights = [f"--model.init_args.original_weights={original_dir / 'model.safetensors'}", f"--model.init_args.lr={args.lr}"]
    bf16_mask = base / "fidelity" / "bf16_saliency_mask.safetensors"
    if not bf16_mask.is_file():
        salun(["mask", "--config", str(CONFIGS / "salun.yaml"), "--config", str(CONFIGS / "forget" / f"{args.scenario}.yaml"),
               *common_args(subset, base / "fidelity" / "mask", args.seed, args.model), *weights, *BF16_MASK,
               "--out", str(bf16_mask)])
    rows = {}
    for name, overrides in VARIANTS.items():
        root = base / "fidelity" / slug(name)
        if name == "saliency pass in bf16":
            overrides = [f"--model.init_args.mask_path={bf16_mask}"]
        metrics = fit("salun", args.scenario, common_args(subset, root, args.seed, args.model) + weights + overrides)
        rows[name] = {**{k: metrics[k] for k in ("UA", "RA", "TA", "MIA", "RTE")},
                      "avg_gap": average_gap(metrics, retrain), "dir": str(root)}
    changed = mask_difference(Path(rows["defaults"]["dir"]) / "mask.safetensors", bf16_mask)

    print(f"\n{args.scenario}, seed {args.seed}, salun lr {args.lr:g}; retrain: "
          + ", ".join(f"{k} {retrain[k]:.2f}" for k in ("UA", "RA", "TA", "MIA")))
    print("| option | UA | RA | TA | MIA | Avg. Gap | RTE (min) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, row in rows.items():
        print(f"| {name} | {row['UA']:.2f} | {row['RA']:.2f} | {row['TA']:.2f} | {row['MIA']:.2f} | "
              f"{row['avg_gap']:.2f} | {row['RTE']:.2f} |")
    print(f"\nmask elements that differ between the bf16 and the float32 saliency pass: {changed:.3f}%")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {time.perf_counter() - started:.0f} s in all")
    if args.json is not None:
        args.json.write_text(json.dumps({"scenario": args.scenario, "seed": args.seed, "lr": args.lr,
                                         "retrain": retrain, "options": rows, "mask_difference_bf16": changed},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
