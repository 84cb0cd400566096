"""U-LiRA in the memorising CIFAR-10 regime, for methods at their tuned random-10% settings, in one audit folder.

The regime of ``benchmarks/tuned_comparison.py``'s memorising comparison (``small_resnet_w32`` without augmentation
on a class-balanced CIFAR-10 subset, the original and retrain ``--epochs`` of SGD at ``--batch-size``): ``salun
audit``'s pipeline with ``--runs`` shadow runs over ``--audit-size`` audit samples. In each run about half of the
audit set is trained on and then forgotten, so with the defaults (1,000 training images, 200 audited) each method
forgets about 100 images, the 10% its settings were tuned for. Each method runs with the options its tuned run was
fitted with (``--tuned``'s ``tuned_comparison.json``, the ``memorising_random10`` regime); retrain is the soundness
check. Every fit drops its short last batches (``drop_last``): a shadow run's training set is not a multiple of the
batch size, and without it half of the originals of a first audit did not memorise (RA 49 to 78%). Prints the table
and merges ``{"ulira": {"memorising_random10": {method: {...}}}}`` into ``--json``.

    python benchmarks/ulira_memorising.py [--methods rl salun salun_soft scrub] [--runs 16] [--audit-size 200]
        [--jobs 2] [--out runs/audit/memorising_random10] [--json docs/results/strong_evaluation.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from salun_lightning.audit import run_audit, summary_table
from salun_lightning.tuning import fit_option

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "cifar10"
REGIME = "memorising_random10"
sys.path.insert(0, str(Path(__file__).parent))


def tuned_options(name: str, tuned: dict, epochs: int) -> list[str]:
    """The config and options ``tuned_comparison.py`` fitted ``name``'s tuned runs with, less the data and seeds."""
    from tuned_comparison import method_args

    method, *options = method_args(name, epochs)
    chosen = [f"{fit_option(k)}={v}" for k, v in tuned["regimes"][REGIME][name]["params"].items()]
    return ["--config", str(CONFIGS / f"{method}.yaml"), *options, *chosen]


def main() -> None:
    from cifar_subset import build_subset
    from memorising import common_args, training_schedule
    from ulira_digits import audited, record_ulira

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["rl", "salun", "salun_soft", "scrub"])
    parser.add_argument("--tuned", type=Path, default=ROOT / "docs" / "results" / "tuned_comparison.json")
    parser.add_argument("--runs", type=int, default=16)
    parser.add_argument("--audit-size", type=int, default=200)
    parser.add_argument("--per-class", type=int, nargs=2, default=[100, 40], metavar=("TRAIN", "TEST"))
    parser.add_argument("--epochs", type=int, default=40, help="the original's and retrain's epochs")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=1, help="shadow runs at once, one torch thread each")
    parser.add_argument("--out", type=Path, default=Path("runs/audit/memorising_random10"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    tuned = json.loads(args.tuned.read_text())
    budget = tuned["regime_budgets"][REGIME]
    if budget["per_class"] != args.per_class or budget["original_epochs"] != args.epochs or \
            budget.get("batch_size", 128) != args.batch_size:
        raise SystemExit(f"{args.tuned} tuned {REGIME} at per-class {budget['per_class']}, {budget['original_epochs']} "
                         f"epochs, batch {budget.get('batch_size', 128)}: give those.")
    subset = build_subset(args.out.parent / f"memorising_data_{args.per_class[0]}_{args.per_class[1]}",
                          *args.per_class)
    data = [a for a in common_args(subset, Path("unused"), 0, "small_resnet_w32")
            if not a.startswith(("--seed_everything=", "--data.init_args.seed=", "--trainer.default_root_dir="))]
    # every fit leaves out its short last batches: the shadow runs' training sets (about 900 images, varying) would
    # otherwise end each epoch in a batch of a few, with which BatchNorm keeps the originals from memorising
    all_fits = [*data, f"--data.init_args.batch_size={args.batch_size}", "--data.init_args.drop_last=true"]
    minutes = {}
    summary: dict = {}
    for name in args.methods:
        summary, minutes[name] = audited(name, lambda: run_audit(
            tuned_options(name, tuned, tuned["budget"]["epochs"]), args.out, args.runs, args.audit_size,
            train_config=CONFIGS / "train.yaml", retrain_config=CONFIGS / "retrain.yaml", all_fits=all_fits, name=name,
            reference_fits=training_schedule(args.epochs), jobs=args.jobs))
    print("\n" + summary_table(summary["models"]))
    if args.json is not None:
        record_ulira(args.json, REGIME, summary, minutes, {
            "runs": args.runs, "audit_size": args.audit_size, "per_class": args.per_class, "epochs": args.epochs,
            "batch_size": args.batch_size, "jobs": args.jobs})


if __name__ == "__main__":
    main()
