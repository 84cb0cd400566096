"""The relearning attack on the tuned runs of ``benchmarks/tuned_comparison.py`` (digits or memorising regimes).

For each evaluation seed and each method's run in ``<tuned>/<regime>/seed<seed>/``, with that seed's retrain:
``salun relearn`` with the given settings (one batch order per seed for every model). Prints one row per method,
``k`` and seed, and merges ``{"relearning": {key: {method: {"k": {k: {...}}}}}}`` into ``--json`` (``key`` is the
regime unless ``--key`` names it; the methods of a call replace their own entries, the others stay, and the settings
must be those of the attacks already there). Each ``k`` entry holds ``area_vs_retrain`` (the mean over the seeds, with
``area_std``), ``steps_to_recover`` (the fastest recovery over the seeds, the attacker's view: ``null`` only when
no seed's model recovered within the budget) and ``seeds`` (each seed's own two numbers). A finished attack
(``relearn.json`` made with the same settings) is read, not rerun.

    python benchmarks/relearn_tuned.py [--regime digits_class] [--seeds 1 2] [--methods rl salun ...] [--k 0 10]
        [--steps 200] [--lr 1e-4] [--tuned runs/tuned] [--out runs/relearn] [--json docs/results/strong_evaluation.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path
from typing import Any

import torch

from salun_lightning.files import write_json
from salun_lightning.relearn import relearn


def attacked(run: Path, reference: Path, out: Path, ks: list[int], steps: int, lr: float, seed: int) -> dict[str, Any]:
    """``salun relearn``'s record, reusing ``out/relearn.json`` when it was made on these runs with these settings."""
    wanted = {"run": str(run), "reference": str(reference), "ks": ks, "steps": steps, "lr": lr, "batch_size": 128,
              "seed": seed}
    if (out / "relearn.json").is_file():
        record = json.loads((out / "relearn.json").read_text())
        if {key: record["settings"].get(key) for key in wanted} == wanted:
            return record
        raise SystemExit(f"{out} holds a relearning attack with other settings or runs; give another --out.")
    return relearn(run, reference, out, ks, steps, lr, seed=seed)


def combined(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The seeds' entries of one ``k``: mean area (and its spread), the fastest recovery, each seed's numbers."""
    areas = [entry["area_vs_retrain"] for entry in per_seed.values()]
    recoveries = [entry["steps_to_recover"] for entry in per_seed.values() if entry["steps_to_recover"] is not None]
    return {"area_vs_retrain": statistics.fmean(areas),
            "area_std": statistics.stdev(areas) if len(areas) > 1 else 0.0,
            "steps_to_recover": min(recoveries) if recoveries else None,
            "seeds": {str(seed): {"area_vs_retrain": entry["area_vs_retrain"],
                                  "steps_to_recover": entry["steps_to_recover"],
                                  "retrain_steps_to_recover": entry["retrain_steps_to_recover"]}
                      for seed, entry in per_seed.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regime", default="digits_class")
    parser.add_argument("--key", default=None, help="the JSON key of these results (default: the regime)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
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
    results = {}
    print("| method | seed | k | area vs retrain | steps to recover | retrain's | minutes |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for method in args.methods:
        per_seed: dict[str, dict[int, dict[str, Any]]] = {}
        minutes: list[float] = []
        for seed in args.seeds:
            base = args.tuned / args.regime / f"seed{seed}"
            record = attacked(base / method, base / "retrain", args.out / args.regime / f"seed{seed}" / method, args.k,
                              args.steps, args.lr, seed)
            minutes.append(record.get("minutes"))  # the attack's own time, also when it was made earlier
            for k, entry in record["k"].items():
                per_seed.setdefault(k, {})[seed] = entry
                print(f"| {method} | {seed} | {k} | {entry['area_vs_retrain']:+.2f} | "
                      f"{entry['steps_to_recover'] or 'never'} | {entry['retrain_steps_to_recover'] or 'never'} | "
                      f"{'-' if minutes[-1] is None else f'{minutes[-1]:.1f}'} |", flush=True)
        results[method] = {"k": {k: combined(entries) for k, entries in per_seed.items()},
                           "minutes": None if None in minutes else sum(minutes)}  # None: made before it was recorded
    if args.json is not None:
        key = args.key or args.regime
        summary = json.loads(args.json.read_text()) if args.json.is_file() else {}
        settings = {"ks": args.k, "steps": args.steps, "lr": args.lr, "batch_size": 128, "optimizer": "adam",
                    "tuned": str(args.tuned / args.regime)}
        before = summary.get("relearning_settings", {}).get(key)
        if before is not None and {k: before.get(k) for k in settings} != settings:
            raise SystemExit(f"{args.json} holds {key} attacks made with other settings; give another --key.")
        summary.setdefault("relearning", {}).setdefault(key, {}).update(results)  # other methods' entries stay
        seeds = sorted({*(before or {}).get("seeds", []), *args.seeds})  # each method's own: under its "seeds"
        summary.setdefault("relearning_settings", {})[key] = {"seeds": seeds, **settings}
        write_json(args.json, summary)


if __name__ == "__main__":
    main()
