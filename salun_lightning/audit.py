"""``salun audit``: U-LiRA (:mod:`salun_lightning.metrics.ulira`) for a classifier unlearning method, with retrain
through the same pipeline as its soundness check.

An audit is a folder. It draws a fixed audit set ``A`` of training samples, then makes ``--runs`` shadow runs; in run
``k`` each audit sample is included with probability 1/2 (``included.json``) and the others are held out of every
split (``excluded.json``, the data module's ``exclude_indices_file``). Per run, three ordinary ``salun fit`` runs:

- ``original``: the ``--train-config`` on everything but the excluded samples;
- ``<method>`` (or ``--name``): the method's config from that original, forgetting exactly the included samples;
- ``retrain``: the ``--retrain-config`` without the forget set (so on neither the included nor the excluded
  samples): the exact unlearning every method is measured against.

Each unlearned model gives every audit sample its logit-scaled confidence (``audit_confidence.json`` in its run
directory); the attack then asks, sample by sample and run by run, whether a confidence looks like one of a sample
that was forgotten or of one never seen. For retrain the two cases are the same distribution, so its balanced
accuracy must come out near 0.5: how near is its spread over the target runs, reported beside the method's.
``--jobs`` makes several shadow runs at once, each in its own process with its share of the threads: the same audit
as one at a time when the fits get as many threads either way, else up to float rounding.
Everything resumes: a finished fit or confidence file made by the same command is kept. Several methods audited in
one folder share its original and retrain runs, and ``ulira.json`` covers all of them.

Outputs in the audit folder: ``ulira.json`` (settings, and per model: balanced accuracy, ROC-AUC, TPR at 1% and 0.1%
FPR, the per-run balanced accuracies), ``ulira_scores.json`` (every run's per-sample scores) and ``roc.png``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from salun_lightning.figures import new_figure, save_png
from salun_lightning.files import write_json
from salun_lightning.metrics.ulira import attack_metrics, likelihood_ratio_scores, logit_confidence
from salun_lightning.runs import MODEL_FILENAME, is_incomplete

SETTINGS_FILENAME = "audit.json"
COMMAND_FILENAME = "audit_command.json"  # the salun command that made a run of the audit: what resuming compares
CONFIDENCE_FILENAME = "audit_confidence.json"
MIN_RUNS = 8
FORGET_BY_INDEX = ["--data.init_args.forget_set=indices", "--data.init_args.forget_fraction=null",
                   "--data.init_args.forget_count=null", "--data.init_args.forget_class=null"]


def audit_plan(train_size: int, audit_size: int, runs: int, seed: int) -> tuple[list[int], np.ndarray]:
    """The audit set (sorted training indices) and each run's inclusion, ``(runs, audit_size)`` booleans.

    Example::

        >>> audit, included = audit_plan(1000, 4, 8, seed=0)
        >>> len(audit), included.shape, included.dtype
        (4, (8, 4), dtype('bool'))
        >>> audit == audit_plan(1000, 4, 8, seed=0)[0]  # the same seed, the same plan
        True
    """
    if not 0 < audit_size < train_size:
        raise ValueError(f"--audit-size {audit_size}: give between 1 and {train_size - 1} (the training set's size "
                         "minus one).")
    if runs < MIN_RUNS:
        raise ValueError(f"--runs {runs}: U-LiRA scores each run from the others, which need at least two runs "
                         f"of each case per sample; give at least {MIN_RUNS} (16 to 32 usual).")
    rng = np.random.default_rng(seed)
    audit = sorted(rng.choice(train_size, audit_size, replace=False).tolist())
    return audit, rng.random((runs, audit_size)) < 0.5


def parsed_config(args: Sequence[str]) -> dict[str, Any]:
    """The config ``salun fit`` would run (links applied), as plain dicts, without building the model or data."""
    from salun_lightning.lightning_cli import SalunCLI

    class ParseOnly(SalunCLI):
        def instantiate_classes(self) -> None:
            """Nothing is built: the model may need weights an audit has not made yet."""

    return ParseOnly(args=list(args), run=False).config.as_dict()


def fit_once(args: list[str], root: Path) -> None:
    """``salun fit`` into ``root`` unless a finished run made by exactly this command is there."""
    from salun_lightning.cli import run as salun

    record = root / COMMAND_FILENAME
    command = ["fit", *args, f"--trainer.default_root_dir={root}"]
    finished = (root / MODEL_FILENAME).is_file() and not is_incomplete(root)
    if finished and record.is_file() and json.loads(record.read_text()) == command:
        return
    record.unlink(missing_ok=True)
    (root / CONFIDENCE_FILENAME).unlink(missing_ok=True)
    salun(command)
    write_json(record, command)


def audit_confidences(run_dir: Path, audit_file: Path) -> list[float]:
    """The logit-scaled confidence of every audit sample (sorted index order) under the model of ``run_dir``
    (cached in its ``audit_confidence.json``)."""
    cached = run_dir / CONFIDENCE_FILENAME
    if cached.is_file():
        return json.loads(cached.read_text())
    from salun_lightning.data import UnlearningDataModule
    from salun_lightning.lightning_cli import load_run

    module, run_data = load_run(run_dir)
    module.eval()
    options = {k: v for k, v in run_data.hparams.items() if not k.startswith("_")}
    options.update(forget_set="indices", forget_fraction=None, forget_count=None, forget_class=None,
                   forget_indices_file=str(audit_file), exclude_indices_file=None, stream=None, val_size=0)
    data = UnlearningDataModule(**options)
    data.setup("test")
    values = []
    with torch.no_grad():
        for batch in data.forget_dataloader():
            batch = data.on_after_batch_transfer(batch, 0)
            values += logit_confidence(module(batch["image"]), batch["label"]).tolist()
    write_json(cached, values)
    return values


def shadow_run(here: Path, chosen: list[int], held_out: list[int], fits: dict[str, list[str]], audit_file: Path,
               label: str) -> dict[str, list[float]]:
    """One shadow run: its inclusion files, the ``fits`` (run name to ``salun fit`` arguments, in order: the original
    first) made or reused in ``here``, and the audit confidences of every model but the original."""
    here.mkdir(exist_ok=True)
    write_json(here / "included.json", chosen)
    write_json(here / "excluded.json", held_out)
    for run_name, args in fits.items():
        fit_once(args, here / run_name)
    print(f"audit run {label} done", flush=True)
    return {run_name: audit_confidences(here / run_name, audit_file) for run_name in fits if run_name != "original"}


def run_audit(method_args: Sequence[str], out: Path, runs: int = 16, audit_size: int = 200, seed: int = 0,
              train_config: Optional[Path] = None, retrain_config: Optional[Path] = None,
              all_fits: Sequence[str] = (), name: Optional[str] = None, reference_fits: Sequence[str] = (),
              jobs: int = 1) -> dict[str, Any]:
    """Make (or resume) the audit of one method in ``out`` and return ``ulira.json``'s content, which covers every
    method audited in that folder so far (they share the original and retrain runs).

    ``all_fits`` go to every fit, ``reference_fits`` after them to the original's and retrain's only (their schedule,
    say, when the method's config sets its own); ``jobs`` shadow runs are made at once, each in its own process.

    Raises:
        ValueError: bad sizes, a config that is not a classifier method's, or an audit folder made with other
            settings, or another method under the same name (the message names them).
    """
    from salun_lightning.data import UnlearningDataModule

    configs = [Path(method_args[i + 1]) for i, a in enumerate(method_args[:-1]) if a == "--config"]
    if not configs:
        raise ValueError("give the method's config: salun audit --config configs/digits/salun.yaml ...")
    train_config = train_config or configs[0].parent / "train.yaml"
    retrain_config = retrain_config or configs[0].parent / "retrain.yaml"
    for path in (train_config, retrain_config):
        if not path.is_file():
            raise ValueError(f"{path} does not exist: pass --train-config and --retrain-config.")
    config = parsed_config([*method_args, *all_fits])
    method = config["model"]["init_args"]["method"]
    if method in ("train", "retrain"):
        raise ValueError(f"audit an unlearning method, not {method!r} (retrain is always audited beside it).")
    name = name or method
    if name in ("original", "retrain"):
        raise ValueError(f"--name {name}: that name is the audit's own run; choose another.")
    if jobs < 1:
        raise ValueError(f"--jobs {jobs}: give 1 or more shadow runs to make at once.")
    settings = {"all_fits": list(all_fits), "reference_fits": list(reference_fits), "runs": runs,
                "audit_size": audit_size, "seed": seed,
                "train_config": str(train_config), "retrain_config": str(retrain_config)}
    data = UnlearningDataModule(**{**config["data"]["init_args"], "stream": None})
    train_size = len(data._load().train_labels)
    audit, included = audit_plan(train_size, audit_size, runs, seed)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / SETTINGS_FILENAME
    if saved.is_file():  # an audit made before reference_fits existed had none
        before = {"reference_fits": [], **json.loads(saved.read_text())}
    else:
        before = {**settings, "methods": {}}
    differs = sorted(k for k in settings if before.get(k) != settings[k])
    if differs:
        raise ValueError(f"the audit in {out} was made with other {', '.join(differs)}; resume it with the same "
                         "arguments, or give another --out.")
    if before["methods"].get(name, list(method_args)) != list(method_args):
        raise ValueError(f"the audit in {out} has another method named {name!r}; give this one another --name.")
    settings["methods"] = {**before["methods"], name: list(method_args)}
    write_json(saved, settings)
    audit_file = out / "audit_indices.json"
    write_json(audit_file, audit)
    shadow_runs = []
    for k in range(runs):
        here = out / f"run_{k:03d}"
        chosen = [a for a, keep in zip(audit, included[k]) if keep]
        held_out = [a for a, keep in zip(audit, included[k]) if not keep]
        seeds = [f"--seed_everything={seed * 1000 + k}", f"--data.init_args.seed={seed * 1000 + k}"]
        split = [*FORGET_BY_INDEX, f"--data.init_args.forget_indices_file={here / 'included.json'}",
                 f"--data.init_args.exclude_indices_file={here / 'excluded.json'}"]
        held_out_only = f"--data.init_args.exclude_indices_file={here / 'excluded.json'}"
        fits = {
            "original": ["--config", str(train_config), held_out_only, *seeds, *all_fits, *reference_fits],
            name: [*method_args, *split, *seeds, *all_fits,
                   f"--model.init_args.original_weights={here / 'original' / MODEL_FILENAME}"],
            "retrain": ["--config", str(retrain_config), *split, *seeds, *all_fits, *reference_fits],
        }
        shadow_runs.append((here, chosen, held_out, fits, audit_file, f"{k + 1}/{runs}"))
    if jobs == 1:
        confidences = [shadow_run(*task) for task in shadow_runs]
    else:  # each worker a fresh process with its share of the threads, so the fits neither share state nor contend
        threads = max(1, torch.get_num_threads() // jobs)
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=torch.set_num_threads, initargs=(threads,)) as pool:
            confidences = list(pool.map(shadow_run, *zip(*shadow_runs)))
    statistics_by_model: dict[str, list[list[float]]] = {name: [c[name] for c in confidences],
                                                         "retrain": [c["retrain"] for c in confidences]}
    for other in settings["methods"]:  # the methods audited here before, whose runs are complete
        files = [out / f"run_{k:03d}" / other / CONFIDENCE_FILENAME for k in range(runs)]
        if other != name and all(path.is_file() for path in files):
            statistics_by_model[other] = [json.loads(path.read_text()) for path in files]
    return summarise(out, settings, statistics_by_model, included)


def summarise(out: Path, settings: dict[str, Any], statistics_by_model: dict[str, list[list[float]]],
              included: np.ndarray) -> dict[str, Any]:
    """Score every model's runs, write ``ulira.json``, ``ulira_scores.json`` and ``roc.png``; return the summary."""
    summary: dict[str, Any] = {"settings": settings, "models": {}}
    scores_by_model = {}
    for name, values in statistics_by_model.items():
        scores = likelihood_ratio_scores(np.array(values), included)
        scores_by_model[name] = scores
        scored = np.isfinite(scores)
        per_run = [attack_metrics(scores[k], included[k])["balanced_accuracy"] for k in range(len(values))
                   if included[k][scored[k]].any() and (~included[k][scored[k]]).any()]
        summary["models"][name] = {**attack_metrics(scores, included), "runs": len(values),
                                   "balanced_accuracy_per_run_mean": statistics.fmean(per_run),
                                   "balanced_accuracy_per_run_std": statistics.stdev(per_run)}
    write_json(out / "ulira.json", summary)
    write_json(out / "ulira_scores.json", {name: np.where(np.isfinite(s), s, None).tolist()
                                          for name, s in scores_by_model.items()})
    plot_roc(scores_by_model, included, settings, out / "roc.png")
    return summary


REPORTED = ("balanced_accuracy", "auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "runs", "balanced_accuracy_per_run_std")


def summary_table(models: dict[str, dict[str, Any]]) -> str:
    """``ulira.json``'s models as a markdown table, the least distinguishable from never seen first.

    Example::

        >>> row = {"balanced_accuracy": 0.5, "balanced_accuracy_per_run_std": 0.04, "auc": 0.5,
        ...        "tpr_at_1pct_fpr": 0.01, "tpr_at_0.1pct_fpr": 0.0}
        >>> print(summary_table({"retrain": row}).splitlines()[-1])
        | retrain (soundness check) | 0.500 | ± 0.040 | 0.500 | 0.010 | 0.000 |
    """
    lines = ["| model | balanced accuracy | per-run spread | AUC | TPR at 1% FPR | TPR at 0.1% FPR |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, row in sorted(models.items(), key=lambda item: item[1]["balanced_accuracy"]):
        label = f"{name} (soundness check)" if name == "retrain" else name
        lines.append(f"| {label} | {row['balanced_accuracy']:.3f} | ± {row['balanced_accuracy_per_run_std']:.3f} | "
                     f"{row['auc']:.3f} | {row['tpr_at_1pct_fpr']:.3f} | {row['tpr_at_0.1pct_fpr']:.3f} |")
    return "\n".join(lines)


def plot_roc(scores_by_model: dict[str, np.ndarray], included: np.ndarray, settings: dict[str, Any],
             path: Path) -> Path:
    """The ROC of each model's attack on log axes (low false-positive rates matter), retrain dashed, the diagonal
    for chance."""
    from matplotlib import colormaps
    from sklearn.metrics import roc_curve

    figure = new_figure(5, 4.5)
    axes = figure.add_subplot()
    colors = itertools.cycle(colormaps["tab20"].colors)  # many methods in one audit: twenty distinct colours
    for name, scores in scores_by_model.items():
        kept = np.isfinite(scores)
        false_positive, true_positive, _ = roc_curve(included[kept], scores[kept])
        style = {"color": "k", "linestyle": "--"} if name == "retrain" else {"color": next(colors)}
        axes.plot(np.maximum(false_positive, 1e-4), np.maximum(true_positive, 1e-4), label=name, **style)
    axes.plot([1e-4, 1], [1e-4, 1], "k:", label="chance")
    axes.set(xscale="log", yscale="log", xlabel="false positive rate (never seen called forgotten)",
             ylabel="true positive rate")
    axes.set_title(f"U-LiRA: {settings['runs']} runs, {settings['audit_size']} audit samples, seed {settings['seed']}",
                   fontsize=9)
    axes.legend(fontsize=8)
    return save_png(figure, path)


def main(argv: Sequence[str]) -> None:
    """``salun audit --config C [--config ...] --out DIR [--runs K] [--audit-size N] [method fit options]``."""
    parser = argparse.ArgumentParser(
        prog="salun audit",
        description="U-LiRA for an unlearning method, with retrain beside it as the soundness check: --runs shadow "
        "runs (original, method, retrain each) over a fixed audit set, then a per-sample likelihood-ratio attack "
        "that tells forgotten from never-seen samples (balanced accuracy 0.5: indistinguishable). Options that are "
        "not listed here go to the method's fits. Resumable.",
    )
    parser.add_argument("--config", action="append", required=True, help="the method's config (repeat to stack)")
    parser.add_argument("--out", type=Path, required=True, help="the audit folder")
    parser.add_argument("--runs", type=int, default=16, help="shadow runs K (default 16; 32 or more on a GPU)")
    parser.add_argument("--audit-size", type=int, default=200, help="audit samples (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="the audit set's and the inclusions' seed (default 0)")
    parser.add_argument("--train-config", type=Path, default=None,
                        help="the original model's config (default: train.yaml beside the first --config)")
    parser.add_argument("--retrain-config", type=Path, default=None,
                        help="retrain's config (default: retrain.yaml beside the first --config)")
    parser.add_argument("--name", default=None,
                        help="the method's name in the audit (default: its method; e.g. iu_masked beside iu)")
    parser.add_argument("--all-fits", action="append", default=[], metavar="OPTION",
                        help="an option for every fit, original and retrain included (e.g. "
                        "--all-fits=--trainer.max_epochs=10); repeat")
    parser.add_argument("--reference-fits", action="append", default=[], metavar="OPTION",
                        help="an option for the original's and retrain's fits only, after --all-fits (e.g. their "
                        "schedule: --reference-fits=--trainer.max_epochs=40); repeat")
    parser.add_argument("--jobs", type=int, default=1,
                        help="shadow runs made at once, each in its own process with its share of the threads "
                        "(default 1)")
    args, method_options = parser.parse_known_args(argv)
    configs = [part for config in args.config for part in ("--config", config)]
    summary = run_audit([*configs, *method_options], args.out, args.runs, args.audit_size, args.seed,
                        args.train_config, args.retrain_config, args.all_fits, args.name, args.reference_fits,
                        args.jobs)
    print(f"\nU-LiRA, {args.runs} runs, {args.audit_size} audit samples (seed {args.seed}); 0.5 is indistinguishable "
          f"from never seen\n\n{summary_table(summary['models'])}")
    print(f"\nwrote {args.out / 'ulira.json'}, {args.out / 'ulira_scores.json'} and {args.out / 'roc.png'}")
