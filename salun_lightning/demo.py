"""The whole classifier pipeline on scikit-learn's digits, through the ``salun`` command line (``make demo``).

Trains the original model once, then for each forgetting scenario (random 10% and class 0 by default) computes the
saliency mask, unlearns with every method (``--methods``), retrains from scratch without the forget set, and writes
the comparison to ``<out>/<scenario>/report.md`` and ``report.png``. Each method runs with its tuned config where
one exists (``<configs>/tuned/<scenario>/<method>.yaml``: the settings ``benchmarks/tuned_comparison.py`` chose at an
equal budget), else with ``<configs>/<method>.yaml``; ``--untuned`` uses the plain configs. The scenarios run side by
side in ``--jobs`` processes (forked after the original model is trained; one process where fork is unavailable),
each writing its commands' output to ``<out>/<scenario>/demo.log``.

    python -m salun_lightning.demo [--out runs/demo] [--configs configs/digits] [--scenarios random10 class]
        [--methods salun,rl | all] [--untuned] [--jobs 2]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from salun_lightning.cli import run as salun
from salun_lightning.methods import METHODS

ALL_METHODS = tuple(name for name in METHODS if name not in ("train", "retrain"))
DEFAULT_SCENARIOS = ("random10", "class")


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


def method_config(configs: Path, scenario: str, method: str, tuned: bool = True) -> list[str]:
    """The ``--config`` options of ``method`` in ``scenario``: its tuned config when there is one (it carries its
    forget set), else its plain config with the scenario's stacked on.

    Example::

        >>> import tempfile
        >>> configs = Path(tempfile.mkdtemp())
        >>> (configs / "tuned" / "class").mkdir(parents=True)
        >>> (configs / "tuned" / "class" / "rl.yaml").touch()
        >>> [Path(p).relative_to(configs).as_posix() for p in method_config(configs, "class", "rl")[1::2]]
        ['tuned/class/rl.yaml']
        >>> [Path(p).relative_to(configs).as_posix() for p in method_config(configs, "class", "ga")[1::2]]
        ['ga.yaml', 'forget/class.yaml']
    """
    tuned_config = configs / "tuned" / scenario / f"{method}.yaml"
    if tuned and tuned_config.is_file():
        return ["--config", str(tuned_config)]
    return ["--config", str(configs / f"{method}.yaml"), "--config", str(configs / "forget" / f"{scenario}.yaml")]


def step(title: str, args: list[str], log: Optional[Path] = None) -> None:
    """Run one ``salun`` command and print its title and time (its own output goes to ``log`` when given)."""
    started = time.perf_counter()
    if log is None:
        print(f"\n{title}", flush=True)
        salun(args)
    else:
        with open(log, "a") as stream, contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
            saved = os.dup(1), os.dup(2)  # and the file descriptors, for output that bypasses sys.stdout
            os.dup2(stream.fileno(), 1), os.dup2(stream.fileno(), 2)
            try:
                salun(args)
            finally:
                stream.flush()
                os.dup2(saved[0], 1), os.dup2(saved[1], 2)
                os.close(saved[0]), os.close(saved[1])
    print(f"{title}: done in {time.perf_counter() - started:.1f} s", flush=True)


def run_scenario(configs: Path, out: Path, scenario: str, methods: Sequence[str], tuned: bool = True,
                 quiet: bool = False) -> str:
    """Mask, unlearn with every method, retrain and report one scenario into ``<out>/<scenario>``; returns the
    table. The original model must be in ``<out>/train``."""
    weights = out / "train" / "model.safetensors"
    here = out / scenario
    here.mkdir(parents=True, exist_ok=True)
    log = here / "demo.log" if quiet else None
    mask = here / "mask.safetensors"
    step(f"[{scenario}] compute the saliency mask",
         ["mask", *method_config(configs, scenario, "salun", tuned), "--out", str(mask),
          f"--model.init_args.original_weights={weights}"], log)
    for method in methods:
        extra = [f"--model.init_args.mask_path={mask}"] if method == "salun" else []
        step(f"[{scenario}] unlearn with {method}",
             ["fit", *method_config(configs, scenario, method, tuned), f"--model.init_args.original_weights={weights}",
              *extra, f"--trainer.default_root_dir={here / method}"], log)
    step(f"[{scenario}] retrain from scratch without the forget set",
         ["fit", "--config", str(configs / "retrain.yaml"), "--config", str(configs / "forget" / f"{scenario}.yaml"),
          f"--trainer.default_root_dir={here / 'retrain'}"], log)
    step(f"[{scenario}] report", ["report", *[str(here / m) for m in ("retrain", *methods)], "--out", str(here)], log)
    return (here / "report.md").read_text()


def run(configs: Path, out: Path, scenarios: Sequence[str] = DEFAULT_SCENARIOS,
        methods: Sequence[str] = ALL_METHODS, tuned: bool = True, jobs: int = 2) -> dict[str, str]:
    """Train the original model, then run every scenario (side by side in ``jobs`` forked processes); returns each
    scenario's ``report.md``."""
    step("train the original model", ["fit", "--config", str(configs / "train.yaml"),
                                      f"--trainer.default_root_dir={out / 'train'}"])
    parallel = jobs > 1 and len(scenarios) > 1 and "fork" in multiprocessing.get_all_start_methods()
    if not parallel:
        return {scenario: run_scenario(configs, out, scenario, methods, tuned) for scenario in scenarios}
    print(f"\n{len(scenarios)} scenarios side by side (each one's output in {out}/<scenario>/demo.log)", flush=True)
    context = multiprocessing.get_context("fork")
    with context.Pool(min(jobs, len(scenarios))) as pool:
        pending = {scenario: pool.apply_async(run_scenario, (configs, out, scenario, methods, tuned, True))
                   for scenario in scenarios}
        return {scenario: result.get() for scenario, result in pending.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--configs", type=Path, default=Path("configs/digits"))
    parser.add_argument("--scenarios", nargs="+", default=list(DEFAULT_SCENARIOS),
                        help="configs in <configs>/forget/ (default: random10 class)")
    parser.add_argument("--methods", type=chosen_methods, default=ALL_METHODS,
                        help="comma-separated unlearning methods, or all (the default)")
    parser.add_argument("--untuned", action="store_true", help="the plain method configs, not the tuned ones")
    parser.add_argument("--jobs", type=int, default=2, help="scenarios run side by side (default 2)")
    args = parser.parse_args()
    for scenario in args.scenarios:
        if not (args.configs / "forget" / f"{scenario}.yaml").is_file():
            parser.error(f"no scenario {scenario!r}: {args.configs / 'forget'} has no {scenario}.yaml")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)  # keep the output short
    # These models are tiny: one thread is as fast on a quiet machine and many times faster on a busy one,
    # where several threads spin against each other; it also makes forking the scenarios safe.
    torch.set_num_threads(1)
    started = time.perf_counter()
    reports = run(args.configs, args.out, args.scenarios, args.methods, not args.untuned, args.jobs)
    for scenario, document in reports.items():
        table = "\n".join(line for line in document.splitlines() if line.startswith("|"))
        print(f"\n{scenario}:\n{table}")
    written = ", ".join(str(args.out / s / "report.md") for s in args.scenarios)
    print(f"wrote {written} (and report.png beside each) in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
