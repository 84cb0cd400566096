"""The relearning attack on the tuned digits runs of ``benchmarks/tuned_comparison.py`` (one evaluation seed).

For each method's run in ``<tuned>/<regime>/seed<seed>/`` and that seed's retrain: ``salun relearn`` with the given
settings. Prints one row per method and ``k`` and merges ``{"relearning": {regime: {method: {"k": {k:
{"steps_to_recover", "area_vs_retrain"}}}}}}`` into ``--json``.

    python benchmarks/relearn_digits.py [--regime digits_class] [--seed 1] [--methods rl salun ...] [--k 0 10]
        [--steps 200] [--lr 1e-4] [--tuned runs/tuned] [--out runs/relearn] [--json docs/results/strong_evaluation.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from salun_lightning.files import write_json
from salun_lightning.relearn import relearn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regime", default="digits_class")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=["rl", "salun", "scrub", "ssd", "neggrad_plus", "ga"])
    parser.add_argument("--k", type=int, nargs="+", default=[0, 10])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--tuned", type=Path, default=Path("runs/tuned"))
    parser.add_argument("--out", type=Path, default=Path("runs/relearn"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    base = args.tuned / args.regime / f"seed{args.seed}"
    results = {}
    print("| method | k | area vs retrain | steps to recover | retrain's | minutes |\n| --- | ---: | ---: | ---: | ---: | ---: |")
    for method in args.methods:
        started = time.perf_counter()
        record = relearn(base / method, base / "retrain", args.out / args.regime / method, args.k, args.steps, args.lr,
                         seed=args.seed)
        minutes = (time.perf_counter() - started) / 60
        results[method] = {"k": {k: {"steps_to_recover": e["steps_to_recover"], "area_vs_retrain": e["area_vs_retrain"],
                                     "retrain_steps_to_recover": e["retrain_steps_to_recover"]}
                                 for k, e in record["k"].items()}, "minutes": minutes}
        for k, e in record["k"].items():
            print(f"| {method} | {k} | {e['area_vs_retrain']:+.2f} | {e['steps_to_recover'] or 'never'} | "
                  f"{e['retrain_steps_to_recover'] or 'never'} | {minutes:.1f} |", flush=True)
    if args.json is not None:
        summary = json.loads(args.json.read_text()) if args.json.is_file() else {}
        summary.setdefault("relearning", {})[args.regime] = results
        summary.setdefault("relearning_settings", {})[args.regime] = {
            "seed": args.seed, "ks": args.k, "steps": args.steps, "lr": args.lr, "batch_size": 128, "optimizer": "adam"}
        write_json(args.json, summary)


if __name__ == "__main__":
    main()
