"""U-LiRA for every classifier method on the digits (random forgetting of the audit set), in one audit folder.

Every method at its tuned random-10% settings (``configs/digits/tuned/random10/``), and ``rl`` and ``salun`` also at
their untuned configs (where random labels overshoot), audited with ``salun audit``'s pipeline: ``--runs`` shadow
runs over ``--audit-size`` audit samples, sharing the original and retrain runs; retrain is the soundness check.
Prints the table and writes the ``ulira`` part of ``--json`` (``{"ulira": {"digits": {method: {...}}}}``, merged into
an existing file).

    python benchmarks/ulira_digits.py [--runs 16] [--audit-size 200] [--out runs/audit/digits]
        [--json docs/results/strong_evaluation.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from salun_lightning.audit import run_audit
from salun_lightning.files import write_json

ROOT = Path(__file__).resolve().parents[1]
TUNED = ROOT / "configs" / "digits" / "tuned" / "random10"
METHODS = ("rl", "salun", "ft", "ga", "l1_sparse", "iu", "bs", "be", "salun_soft", "neggrad_plus", "scrub", "ssd")
UNTUNED = ("rl", "salun")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=16)
    parser.add_argument("--audit-size", type=int, default=200)
    parser.add_argument("--methods", nargs="+", default=[*METHODS, *(f"{m}_untuned" for m in UNTUNED)])
    parser.add_argument("--out", type=Path, default=Path("runs/audit/digits"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    quiet = ["--trainer.enable_progress_bar=false"]
    minutes = {}
    summary: dict = {}
    for name in args.methods:
        method = name.removesuffix("_untuned")
        config = ROOT / "configs" / "digits" / f"{method}.yaml" if name.endswith("_untuned") else TUNED / f"{method}.yaml"
        started = time.perf_counter()
        summary = run_audit(["--config", str(config)], args.out, args.runs, args.audit_size,
                            train_config=ROOT / "configs" / "digits" / "train.yaml",
                            retrain_config=ROOT / "configs" / "digits" / "retrain.yaml", all_fits=quiet, name=name)
        minutes[name] = (time.perf_counter() - started) / 60
        row = summary["models"][name]
        print(f"{name}: balanced accuracy {row['balanced_accuracy']:.3f}, AUC {row['auc']:.3f} "
              f"({minutes[name]:.1f} min)", flush=True)
    print("\n| model | balanced accuracy | per-run spread | AUC | TPR at 1% FPR | TPR at 0.1% FPR |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, row in sorted(summary["models"].items(), key=lambda item: item[1]["balanced_accuracy"]):
        print(f"| {name} | {row['balanced_accuracy']:.3f} | ± {row['balanced_accuracy_per_run_std']:.3f} | "
              f"{row['auc']:.3f} | {row['tpr_at_1pct_fpr']:.3f} | {row['tpr_at_0.1pct_fpr']:.3f} |")
    if args.json is not None:
        record = json.loads(args.json.read_text()) if args.json.is_file() else {}
        record.setdefault("ulira", {})["digits"] = {
            name: {k: row[k] for k in ("balanced_accuracy", "auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "runs",
                                       "balanced_accuracy_per_run_std")} | {"minutes": minutes.get(name)}
            for name, row in summary["models"].items()}
        record["ulira_settings"] = {"digits": {"runs": args.runs, "audit_size": args.audit_size}}
        write_json(args.json, record)


if __name__ == "__main__":
    main()
