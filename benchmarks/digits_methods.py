"""Every classifier method on the digits at its config's settings (untuned), against retrain, over several seeds.

The generalising regime (test accuracy about 98%): scikit-learn's digits, the small ResNet, ``configs/digits/``
unchanged but for the seed. Per seed: the original model (``train.yaml``), then for each scenario its retrain and
every unlearning method from that original, the forget set drawn with the seed (class-wise: every 0). The mask of
the masked methods (``salun``) is computed at the start of each fit. No method is tuned here: the learning rates
and hyper-parameters are the configs' (the paper's where they exist), so the table says what the configs do, not
which method is best; tuning at an equal budget is ``salun tune``'s job.

It prints one ``salun report`` per scenario and the summary, and writes the summary as JSON (``--json``):
``{"seeds", "machine", "scenarios": {scenario: {method: {"UA", "RA", "TA", "MIA", "avg_gap_mean", "avg_gap_std",
"RTE", "RTE_vs_rl"}}}}`` (percentages, RTE in minutes; means over the seeds; ``RTE_vs_rl`` the ratio of the means,
measured in the same run).

    python benchmarks/digits_methods.py [--seeds 0 1 2] [--scenarios random10 class] [--methods all]
        [--out runs/digits_methods] [--json docs/results/digits_methods.json]
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
from salun_lightning.methods import METHODS
from salun_lightning.metrics.functional import average_gap

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "digits"
UNLEARNING = tuple(name for name in METHODS if name not in ("train", "retrain"))
SCENARIOS = ("random10", "class")


def seeded(root: Path, seed: int) -> list[str]:
    return [f"--trainer.default_root_dir={root}", f"--seed_everything={seed}", f"--data.init_args.seed={seed}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--methods", nargs="+", choices=(*UNLEARNING, "all"), default=["all"])
    parser.add_argument("--out", type=Path, default=Path("runs/digits_methods"))
    parser.add_argument("--json", type=Path, default=None, help="write the summary here")
    args = parser.parse_args()
    methods = UNLEARNING if "all" in args.methods else tuple(args.methods)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    torch.set_num_threads(1)  # tiny models: one thread is as fast, and not disturbed by a busy machine
    sys.path.insert(0, str(Path(__file__).parent))
    from memorising import fit

    started = time.perf_counter()
    results: dict[str, dict[str, dict[int, dict]]] = {scenario: {} for scenario in args.scenarios}
    for seed in args.seeds:
        original_dir = args.out / f"seed{seed}" / "original"
        fit("train", "random10", seeded(original_dir, seed), CONFIGS)
        weights = original_dir / "model.safetensors"
        for scenario in args.scenarios:
            base = args.out / f"seed{seed}" / scenario
            for method in ("retrain", *methods):
                extra = [] if method == "retrain" else [f"--model.init_args.original_weights={weights}"]
                metrics = fit(method, scenario, seeded(base / method, seed) + extra, CONFIGS)
                results[scenario].setdefault(method, {})[seed] = {**metrics, "dir": str(base / method)}
                print(f"seed {seed} {scenario} {method}: "
                      f"gap {average_gap(metrics, results[scenario]['retrain'][seed]):.2f}", flush=True)

    summary = {"seeds": args.seeds, "machine": f"{platform.machine()}, 1 thread, torch {torch.__version__}",
               "scenarios": {}}
    for scenario, by_method in results.items():
        table = {}
        for method, by_seed in by_method.items():
            gaps = [average_gap(by_seed[s], by_method["retrain"][s]) for s in args.seeds]
            table[method] = {
                **{key: statistics.fmean(by_seed[s][key] for s in args.seeds) for key in ("UA", "RA", "TA", "MIA")},
                "avg_gap_mean": statistics.fmean(gaps),
                "avg_gap_std": statistics.stdev(gaps) if len(gaps) > 1 else 0.0,
                "RTE": statistics.fmean(by_seed[s]["RTE"] or 0.0 for s in args.seeds),
            }
        if "rl" in table:
            for row in table.values():
                row["RTE_vs_rl"] = row["RTE"] / table["rl"]["RTE"]
        summary["scenarios"][scenario] = table
        print(f"\n## {scenario} (seeds {args.seeds})")
        salun(["report", *[by_method[m][s]["dir"] for s in args.seeds for m in by_method],
               "--out", str(args.out / scenario)])
    print(f"\n{summary['machine']}; {time.perf_counter() - started:.0f} s in all")
    print(json.dumps(summary, indent=2))
    if args.json is not None:
        write_json(args.json, summary)


if __name__ == "__main__":
    main()
