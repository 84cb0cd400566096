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
from typing import Callable

import torch

from salun_lightning.audit import REPORTED, run_audit, summary_table
from salun_lightning.files import write_json

ROOT = Path(__file__).resolve().parents[1]
TUNED = ROOT / "configs" / "digits" / "tuned" / "random10"
METHODS = ("rl", "salun", "ft", "ga", "l1_sparse", "iu", "bs", "be", "salun_soft", "neggrad_plus", "scrub", "ssd")
UNTUNED = ("rl", "salun")


def audited(name: str, audit: Callable[[], dict]) -> tuple[dict, float]:
    """Run one method's ``audit`` (a ``run_audit`` call); print its line; return the summary and its minutes."""
    started = time.perf_counter()
    summary = audit()
    minutes = (time.perf_counter() - started) / 60
    row = summary["models"][name]
    print(f"{name}: balanced accuracy {row['balanced_accuracy']:.3f}, AUC {row['auc']:.3f} ({minutes:.1f} min)",
          flush=True)
    return summary, minutes


def record_ulira(path: Path, key: str, summary: dict, minutes: dict[str, float], settings: dict) -> None:
    """Merge ``{"ulira": {key: {model: {...}}}, "ulira_settings": {key: settings}}`` into the JSON file ``path``.
    A model's minutes are its first measurement (a rerun that reuses the fits would record seconds)."""
    record = json.loads(path.read_text()) if path.is_file() else {}
    kept = record.setdefault("ulira", {}).get(key, {})
    record["ulira"][key] = {**kept, **{
        name: {k: row[k] for k in REPORTED} | {"minutes": kept.get(name, {}).get("minutes") or minutes.get(name)}
        for name, row in summary["models"].items()}}
    record.setdefault("ulira_settings", {})[key] = settings
    write_json(path, record)


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
        config = (ROOT / "configs" / "digits" if name.endswith("_untuned") else TUNED) / f"{method}.yaml"
        summary, minutes[name] = audited(name, lambda: run_audit(
            ["--config", str(config)], args.out, args.runs, args.audit_size,
            train_config=ROOT / "configs" / "digits" / "train.yaml",
            retrain_config=ROOT / "configs" / "digits" / "retrain.yaml", all_fits=quiet, name=name))
    print("\n" + summary_table(summary["models"]))
    if args.json is not None:
        record_ulira(args.json, "digits", summary, minutes, {"runs": args.runs, "audit_size": args.audit_size})


if __name__ == "__main__":
    main()
