"""The whole classifier pipeline on scikit-learn's digits, through the ``salun`` command line (``make demo``).

Trains the original model, computes the saliency mask, unlearns digit 0 (``--scenario class``, the default) with
salun, ft, ga, rl and l1_sparse (``--methods all``: every unlearning method), retrains from scratch without it, and
writes the comparison to ``<out>/report.md`` and ``<out>/report.png``.

    python -m salun_lightning.demo [--out runs/demo] [--configs configs/digits] [--methods salun,rl | all]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from salun_lightning.cli import run as salun
from salun_lightning.methods import METHODS

DEFAULT_METHODS = ("salun", "ft", "ga", "rl", "l1_sparse")
ALL_METHODS = tuple(name for name in METHODS if name not in ("train", "retrain"))


def chosen_methods(value: str) -> tuple[str, ...]:
    """The unlearning methods a ``--methods`` value names (``all``: every registered one).

    Example::

        >>> chosen_methods("salun,iu")
        ('salun', 'iu')
        >>> chosen_methods("salun,retrian")
        Traceback (most recent call last):
        argparse.ArgumentTypeError: unknown unlearning method 'retrian'; choose among ...
    """
    if value == "all":
        return ALL_METHODS
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    for name in names:
        if name not in ALL_METHODS:
            raise argparse.ArgumentTypeError(
                f"unknown unlearning method {name!r}; choose among {', '.join(ALL_METHODS)} (or all).")
    return names


def run(configs: Path, out: Path, scenario: Path, methods: tuple[str, ...] = DEFAULT_METHODS) -> str:
    """Run every step for one forgetting scenario (a config stacked on every method's) and return the table."""
    weights = out / "train" / "model.safetensors"
    mask = out / "mask.safetensors"
    steps = [
        ("train the original model", ["fit", "--config", str(configs / "train.yaml")], "train"),
        ("compute the saliency mask", ["mask", "--config", str(configs / "salun.yaml"), "--out", str(mask)], None),
        *[
            (f"unlearn with {method}", ["fit", "--config", str(configs / f"{method}.yaml")], method)
            for method in methods
        ],
        ("retrain from scratch without the forget set", ["fit", "--config", str(configs / "retrain.yaml")], "retrain"),
    ]
    for number, (title, args, method) in enumerate(steps, start=1):
        started = time.perf_counter()
        print(f"\n[{number}/{len(steps) + 1}] {title}", flush=True)
        args += ["--config", str(scenario)]
        if method not in ("train", "retrain"):
            args += [f"--model.init_args.original_weights={weights}"]
        if method == "salun":
            args += [f"--model.init_args.mask_path={mask}"]
        if method is not None:  # a fit's run directory; `salun mask` works in a scratch directory
            args += [f"--trainer.default_root_dir={out / method}"]
        salun(args)
        print(f"    done in {time.perf_counter() - started:.1f} s", flush=True)
    print(f"\n[{len(steps) + 1}/{len(steps) + 1}] report", flush=True)
    run_dirs = [str(out / m) for m in ("retrain", "train", *methods)]
    salun(["report", *run_dirs, "--out", str(out)])
    return (out / "report.md").read_text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--configs", type=Path, default=Path("configs/digits"))
    parser.add_argument("--scenario", default="class", help="a config in <configs>/forget/ (class, random10, ...)")
    parser.add_argument("--methods", type=chosen_methods, default=DEFAULT_METHODS,
                        help=f"comma-separated unlearning methods, or all (default {','.join(DEFAULT_METHODS)})")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)  # keep the output short
    # These models are tiny: one thread is as fast on a quiet machine and many times faster on a busy one,
    # where several threads spin against each other.
    torch.set_num_threads(1)
    started = time.perf_counter()
    run(args.configs, args.out, args.configs / "forget" / f"{args.scenario}.yaml", args.methods)
    print(f"\nwrote {args.out / 'report.md'} and {args.out / 'report.png'} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
