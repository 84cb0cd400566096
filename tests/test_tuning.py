"""``salun tune``: a study of tiny digits fits resumes without repeating a trial, its best trial's config reproduces
its metrics, the method's space (narrowed) is honoured, bad input is refused before any work, and each objective
ranks runs the right way round."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest
import yaml

import salun_lightning.cli
from salun_lightning.cli import run
from salun_lightning.hyperparameters import SearchRange
from salun_lightning.methods import METHODS
from salun_lightning.tuning import DIRECTIONS, Objective, tune

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "digits"
QUIET = "--trainer.enable_progress_bar=false"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tune")
    run(["fit", "--config", str(CONFIGS / "train.yaml"), f"--trainer.default_root_dir={root / 'train'}", QUIET,
         "--trainer.max_epochs=2"])
    run(["fit", "--config", str(CONFIGS / "retrain.yaml"), f"--trainer.default_root_dir={root / 'retrain'}", QUIET,
         "--trainer.max_epochs=2"])
    return {"root": root, "original": root / "train" / "model.safetensors", "retrain": root / "retrain"}


def rl_args(runs: dict[str, Path]) -> list[str]:
    return ["--config", str(CONFIGS / "rl.yaml"), f"--model.init_args.original_weights={runs['original']}", QUIET,
            "--trainer.max_epochs=1"]


def counting_fits(monkeypatch, interrupt_at: int = -1) -> list[list[str]]:
    """Record every ``salun fit`` a study makes; the fit numbered ``interrupt_at`` is cut off (Ctrl-C) halfway."""
    calls: list[list[str]] = []
    real = salun_lightning.cli.run

    def fit(args):
        if args[0] == "fit":
            calls.append(list(args))
            if len(calls) - 1 == interrupt_at:
                raise KeyboardInterrupt
        real(args)

    monkeypatch.setattr(salun_lightning.cli, "run", fit)
    return calls


def test_an_interrupted_study_resumes_without_repeating_a_finished_trial(runs, tmp_path, monkeypatch, capsys):
    study_dir = tmp_path / "study"
    calls = counting_fits(monkeypatch, interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        tune(rl_args(runs), study_dir, trials=3, reference_dir=runs["retrain"])
    assert len(calls) == 3
    cut_off = optuna.load_study(study_name="study", storage=f"sqlite:///{study_dir / 'study.db'}").trials[2]
    assert cut_off.state == optuna.trial.TrialState.FAIL

    calls = counting_fits(monkeypatch)
    study = tune(rl_args(runs), study_dir, trials=3, reference_dir=runs["retrain"])
    assert len(calls) == 1  # only the cut-off trial's values run again
    assert "trial 2 was cut off" in capsys.readouterr().out
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert [t.number for t in complete] == [0, 1, 3]
    assert complete[2].params == cut_off.params
    assert f"--trainer.default_root_dir={study_dir / 'trial_0003'}" in calls[0]

    calls = counting_fits(monkeypatch)
    tune(rl_args(runs), study_dir, trials=3, reference_dir=runs["retrain"])  # the budget is spent: nothing runs
    assert calls == []
    summary = json.loads((study_dir / "summary.json").read_text())
    assert [row["number"] for row in summary["trials"] if row["state"] == "COMPLETE"] == [0, 1, 3]
    assert (study_dir / "plots" / "objective_by_trial.png").is_file()


def test_the_best_trials_config_reproduces_its_metrics(runs, tmp_path, capsys):
    study_dir = tmp_path / "study"
    study = tune(rl_args(runs), study_dir, trials=2, reference_dir=runs["retrain"])
    printed = capsys.readouterr().out
    best = study.best_trial
    config = study_dir / f"trial_{best.number:04d}" / "config.yaml"
    assert f"config: {config}" in printed
    rerun = tmp_path / "rerun"
    run(["fit", "--config", str(config), f"--trainer.default_root_dir={rerun}"])
    metrics = json.loads((rerun / "metrics.json").read_text())
    for key in ("UA", "RA", "TA", "MIA"):
        assert metrics[key] == best.user_attrs["metrics"][key]
    retrain = json.loads((runs["retrain"] / "metrics.json").read_text())
    assert best.value == pytest.approx(sum(abs(metrics[k] - retrain[k]) for k in ("UA", "RA", "TA", "MIA")) / 4)


def test_the_narrowed_space_is_honoured_in_every_trial(runs, tmp_path):
    study = tune([*rl_args(runs), "--model.init_args.saliency_ratio=0.5"], tmp_path / "study", trials=2,
                 reference_dir=runs["retrain"], narrowings=["lr=0.001:0.002", "saliency_ratio=0.2:0.3"])
    for trial in study.trials:
        assert set(trial.params) == {"lr", "saliency_ratio"}  # rl under a mask searches the mask's ratio too
        assert 0.001 <= trial.params["lr"] <= 0.002 and 0.2 <= trial.params["saliency_ratio"] <= 0.3
        saved = yaml.safe_load((tmp_path / "study" / f"trial_{trial.number:04d}" / "config.yaml").read_text())
        assert saved["model"]["init_args"]["lr"] == trial.params["lr"]
        assert saved["model"]["init_args"]["saliency_ratio"] == trial.params["saliency_ratio"]


def test_method_hyperparameters_reach_the_fit_and_keep_the_configs_others(runs, tmp_path):
    args = ["--config", str(CONFIGS / "salun_soft.yaml"), f"--model.init_args.original_weights={runs['original']}",
            QUIET, "--trainer.max_epochs=1"]
    study = tune(args, tmp_path / "study", trials=1, reference_dir=runs["retrain"], narrowings=["lr=0.01:0.02"])
    trial = study.trials[0]
    saved = yaml.safe_load((tmp_path / "study" / "trial_0000" / "config.yaml").read_text())
    assert saved["model"]["init_args"]["method_args"] == {"ratio": trial.params["ratio"], "random_labels": "any"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--space", "lr=1e-7:1e-2"], "the method searches lr in [1e-05, 0.1]"),
        (["--space", "beta=0.5:0.9"], "the method does not tune 'beta'; it tunes lr"),
        (["--space", "lr=small"], "write NAME=LOW:HIGH"),
        (["--trials", "0"], "--trials 0: give at least 1"),
        (["--objective", "UA", "--direction", "up"], "invalid choice: 'up'"),
    ],
)
def test_bad_tuning_input_is_refused_before_any_work(runs, tmp_path, monkeypatch, capsys, extra, message):
    calls = counting_fits(monkeypatch)
    with pytest.raises(SystemExit):
        salun_lightning.cli.main(["tune", *rl_args(runs), "--study", str(tmp_path / "study"), "--reference",
                                  str(runs["retrain"]), *extra])
    assert message in capsys.readouterr().err
    assert calls == [] and not (tmp_path / "study").exists()


def test_a_reference_of_another_forget_set_or_no_reference_is_refused(runs, tmp_path):
    with pytest.raises(ValueError, match="its forget set is not the one this config unlearns"):
        tune([*rl_args(runs), "--data.init_args.seed=1"], tmp_path / "s", trials=1, reference_dir=runs["retrain"])
    with pytest.raises(ValueError, match="the Avg. Gap needs a reference run"):
        tune(rl_args(runs), tmp_path / "s", trials=1)
    with pytest.raises(ValueError, match="no finished run there"):
        tune(rl_args(runs), tmp_path / "s", trials=1, reference_dir=runs["root"])
    assert not (tmp_path / "s").exists()


def test_resuming_with_other_settings_is_refused(runs, tmp_path):
    tune(rl_args(runs), tmp_path / "study", trials=1, reference_dir=runs["retrain"])
    with pytest.raises(ValueError, match="was made with other fit_args"):
        tune([*rl_args(runs), "--model.init_args.momentum=0.5"], tmp_path / "study", trials=2,
             reference_dir=runs["retrain"])


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_each_objective_prefers_the_right_run_of_a_hand_made_pair(name):
    reference = {"UA": 5.0, "RA": 100.0, "TA": 94.0, "MIA": 12.0, "RTE": 1.0}
    close = {"UA": 6.0, "RA": 99.0, "TA": 93.0, "MIA": 14.0, "RTE": 0.5}  # gap 1.25, the better of each metric
    far = {"UA": 1.0, "RA": 90.0, "TA": 85.0, "MIA": 2.0, "RTE": 3.0}  # gap 8.25
    objective = Objective(name)
    study = optuna.create_study(direction=objective.direction)
    for metrics in (far, close):
        study.add_trial(optuna.trial.create_trial(value=objective.value(metrics, reference),
                                                  user_attrs={"which": "close" if metrics is close else "far"}))
    assert study.best_trial.user_attrs["which"] == "close"
    assert Objective(name, "minimize" if objective.direction == "maximize" else "maximize").direction != \
        objective.direction


def test_every_method_declares_what_a_tuner_searches():
    iterative = [name for name, method in METHODS.items() if method.stream != "none"]
    for name in iterative:
        assert METHODS[name].tuning_space(masked=False)["lr"] == SearchRange(1e-5, 1e-1, log=True)
    assert set(METHODS["iu"].tuning_space(masked=True)) == {"alpha", "saliency_ratio"}
    assert set(METHODS["ssd"].tuning_space(masked=False)) == {"alpha", "lam"}
    assert METHODS["scrub"].tuning_space(masked=False, max_epochs=3)["msteps"] == SearchRange(1, 3)
    assert METHODS["neggrad_plus"].tuning_space(masked=False)["beta"] == SearchRange(0.5, 0.9999)
    assert METHODS["bs"].tuning_space(masked=False)["epsilon"].log


def method_page_rows(table: str) -> dict[str, str]:
    """A docs/method.md table's rows by method name (a row naming several methods counts for each)."""
    rows = {}
    for line in table.splitlines()[2:]:
        names, rest = line.split("|")[1], "|".join(line.split("|")[2:])
        for name in names.replace("`", "").split(","):
            rows[name.strip()] = rest
    return rows


def test_the_method_page_lists_every_methods_search_space():
    page = (Path(__file__).resolve().parents[1] / "docs" / "method.md").read_text()
    rows = method_page_rows(page.split("### What `salun tune` searches", 1)[1].split("\n\n")[2])
    for name, method in METHODS.items():
        if name in ("train", "retrain"):
            continue
        for tuned, bounds in method.tuning_space(masked=False).items():
            found = re.search(rf"`{tuned}` ([\d.e+-]+) to ([\d.e+-]+)(, log)?", rows[name])
            assert found, (name, tuned)
            assert (float(found[1]), float(found[2]), bool(found[3])) == (bounds.low, bounds.high, bounds.log)


def test_a_trial_whose_process_died_runs_again_with_its_values(runs, tmp_path, monkeypatch, capsys):
    import socket
    import subprocess
    import sys

    study_dir = tmp_path / "study"
    tune(rl_args(runs), study_dir, trials=1, reference_dir=runs["retrain"])
    study = optuna.load_study(study_name="study", storage=f"sqlite:///{study_dir / 'study.db'}")
    killed = study.ask({"lr": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True)})  # left RUNNING
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    killed.set_user_attr("host", socket.gethostname())
    killed.set_user_attr("pid", gone.pid)
    calls = counting_fits(monkeypatch)
    study = tune(rl_args(runs), study_dir, trials=2, reference_dir=runs["retrain"])
    assert "trial 1 was cut off" in capsys.readouterr().out
    assert len(calls) == 1 and study.trials[1].state == optuna.trial.TrialState.FAIL
    assert study.trials[2].params == killed.params and study.trials[2].value is not None


def test_the_tuned_digits_configs_carry_the_recorded_choices_and_their_forget_set():
    from tests.test_cli import parsed

    recorded = json.loads((CONFIGS.parents[1] / "docs" / "results" / "tuned_comparison.json").read_text())
    for scenario in ("random10", "class"):
        forget = yaml.safe_load((CONFIGS / "forget" / f"{scenario}.yaml").read_text())["data"]["init_args"]
        for name, row in recorded["regimes"][f"digits_{scenario}"].items():
            config = parsed(f"digits/tuned/{scenario}/{name.replace('+mask', '_masked')}.yaml")
            model = config["model"]["init_args"]
            assert model["method"] == name.removesuffix("+mask")
            for key, value in row["params"].items():
                assert (model[key] if key in ("lr", "saliency_ratio") else model["method_args"][key]) == value
            assert {k: config["data"]["init_args"][k] for k in forget} == forget


def test_the_random_sampler_draws_uniformly_and_is_bound_to_the_study(runs, tmp_path):
    study = tune(rl_args(runs), tmp_path / "study", trials=2, reference_dir=runs["retrain"], sampler="random")
    assert type(study.sampler).__name__ == "RandomSampler"
    assert study.user_attrs["settings"]["sampler"] == "random"
    with pytest.raises(ValueError, match="was made with other sampler"):
        tune(rl_args(runs), tmp_path / "study", trials=3, reference_dir=runs["retrain"])
    with pytest.raises(ValueError, match="--sampler grid: choose one of tpe, random"):
        tune(rl_args(runs), tmp_path / "other", trials=1, reference_dir=runs["retrain"], sampler="grid")


def test_the_method_page_lists_every_diffusion_methods_search_space():
    from salun_lightning.diffusion.methods import METHODS as DIFFUSION_METHODS

    page = (Path(__file__).resolve().parents[1] / "docs" / "method.md").read_text()
    rows = method_page_rows("| diffusion method |" + page.split("| diffusion method |", 1)[1].split("\n\n")[0])
    for name, method in DIFFUSION_METHODS.items():
        if name in ("train", "retrain", "relearn"):  # relearn is the revival attack's fine-tuning: nothing to tune
            continue
        for tuned, bounds in method.tuning_space(masked=True).items():
            found = re.search(rf"`{tuned}` ([\d.e+-]+) to ([\d.e+-]+)(, log)?", rows[name])
            assert found, (name, tuned)
            assert (float(found[1]), float(found[2]), bool(found[3])) == (bounds.low, bounds.high, bounds.log)


def test_a_resumed_study_draws_what_an_uninterrupted_one_would(tmp_path):
    from salun_lightning.tuning import run_study

    space = {"lr": SearchRange(1e-5, 1e-1, log=True)}

    def study(directory: Path, trials: int) -> list[float]:
        done = run_study(directory, trials, {"case": "draws"}, space, frozenset(), lambda values, _: (values["lr"], {}),
                         "lr", "minimize")
        return [t.params["lr"] for t in done.trials]

    uninterrupted = study(tmp_path / "whole", 4)
    study(tmp_path / "resumed", 2)  # stopped after two trials, then started again (a new sampler each time)
    resumed = study(tmp_path / "resumed", 4)
    assert resumed == uninterrupted and len(set(resumed)) == 4
