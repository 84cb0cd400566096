"""The salun command line: fit (then test) through LightningCLI, linked data, config stacking, test, mask, report,
and what a user sees on errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from salun_lightning.callbacks import load_mask
from salun_lightning.cli import main, run
from salun_lightning.lightning_cli import SalunCLI
from salun_lightning.runs import INCOMPLETE_FILENAME
from salun_lightning.methods import METHODS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
QUIET = "--trainer.enable_progress_bar=false"


def fit(config: str, root: Path, *extra: str) -> None:
    run(["fit", "--config", str(CONFIGS / config), f"--trainer.default_root_dir={root}", QUIET, *extra])


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    fit("digits/train.yaml", root, "--trainer.max_epochs=1")
    return root / "model.safetensors"


def test_fit_saves_model_config_and_metrics_and_a_second_run_reuses_the_directory(original, tmp_path):
    args = ("--trainer.max_epochs=1", "--trainer.limit_train_batches=2", f"--model.init_args.original_weights={original}")
    fit("digits/salun.yaml", tmp_path, *args)
    assert json.loads((tmp_path / "metrics.json").read_text())["method"] == "salun"
    assert {"config.yaml", "model.safetensors", "forget_set.json", "forget_indices.json"} <= {
        p.name for p in tmp_path.iterdir()
    }
    assert not (tmp_path / INCOMPLETE_FILENAME).exists()
    fit("digits/salun.yaml", tmp_path, *args)  # the saved config.yaml must not stop a second run


def test_the_data_is_linked_into_the_model_and_the_method_chooses_the_stream(original):
    weights = f"--model.init_args.original_weights={original}"
    cli = SalunCLI(args=["--config", str(CONFIGS / "digits/salun.yaml"), weights], run=False)
    assert cli.datamodule.hparams.stream == "forget_retain"
    assert (cli.model.hparams.num_classes, cli.model.hparams.in_channels) == (10, 1)
    cli = SalunCLI(args=["--config", str(CONFIGS / "digits/ft.yaml"), weights], run=False)
    assert cli.datamodule.hparams.stream == "retain"
    cli = SalunCLI(args=["--config", str(CONFIGS / "diffusion/ddpm_digits_train.yaml"), "--data.init_args.forget_class=3"],
                   run=False)
    assert cli.model.forget_class_index == 3 and cli.model.class_names == [str(c) for c in range(10)]
    assert cli.datamodule.hparams.stream == "full"


@pytest.mark.parametrize("method", [name for name in METHODS if name != "train"])
def test_every_digits_method_config_runs(method, original, tmp_path):
    extra = [] if method == "retrain" else [f"--model.init_args.original_weights={original}"]
    if method == "scrub":  # fast_dev_run makes one epoch: one max epoch at most
        extra.append("--model.init_args.method_args.msteps=1")
    fit(f"digits/{method}.yaml", tmp_path, "--trainer.fast_dev_run=true", *extra)
    assert json.loads((tmp_path / "metrics.json").read_text())["method"] == method


class ParseOnly(SalunCLI):
    """Parses configs (links included) without building anything: no original weights are needed."""

    def instantiate_classes(self) -> None:
        """Nothing is instantiated: ``self.config`` holds the parsed configs, links applied."""


def parsed(*configs: str):
    return ParseOnly(args=[arg for c in configs for arg in ("--config", str(CONFIGS / c))], run=False).config


def parse(*configs: str) -> dict:
    return parsed(*configs)["data"]["init_args"]


@pytest.mark.parametrize("dataset", ["digits", "cifar10"])
def test_forget_scenarios_stack_on_method_configs(dataset):
    assert parse(f"{dataset}/salun.yaml", f"{dataset}/forget/random50.yaml")["forget_fraction"] == 0.5
    scenario = parse(f"{dataset}/rl.yaml", f"{dataset}/forget/class.yaml")
    assert scenario["forget_set"] == "class" and scenario["forget_fraction"] is None
    assert parse(f"{dataset}/ga.yaml", f"{dataset}/forget/random10.yaml")["forget_fraction"] == 0.1


def test_method_files_merge_into_the_base():
    config = parsed("cifar10/salun.yaml")
    hparams = config["model"]["init_args"]
    assert (hparams.lr, hparams.momentum, hparams.weight_decay, hparams.saliency_ratio) == (0.013, 0.9, 5e-4, 0.5)
    assert hparams.model == "resnet18" and config["trainer"]["max_epochs"] == 10
    assert config["trainer"]["precision"] == "bf16-mixed"
    assert config["data"]["init_args"]["batch_size"] == 256 and config["data"]["init_args"]["val_size"] == 5000
    assert parsed("digits/salun.yaml")["model"]["init_args"]["model"] == "small_resnet"


def test_checkpointing_keeps_last_ckpt_in_the_run(original, tmp_path):
    fit("digits/ft.yaml", tmp_path, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
        "--trainer.enable_checkpointing=true", "--test_after_fit=false", f"--model.init_args.original_weights={original}")
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "metrics.json").exists()


@pytest.fixture(scope="module")
def ft_run(original, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ft")
    fit("digits/ft.yaml", root, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--test_after_fit=false",
        "--trainer.enable_checkpointing=true", f"--model.init_args.original_weights={original}")
    return root


def test_test_writes_into_the_directory_of_the_model_it_tested(ft_run, tmp_path):
    config = ft_run / "config.yaml"
    run(["test", "--config", str(config), QUIET])  # default: <default_root_dir>/model.safetensors
    from_safetensors = json.loads((ft_run / "metrics.json").read_text())
    assert from_safetensors["method"] == "ft" and from_safetensors["RTE"] > 0
    (ft_run / "metrics.json").unlink()
    other = tmp_path / "other"  # another run's directory: the test must not write there
    run(["test", "--config", str(config), f"--trainer.default_root_dir={other}", QUIET,
         f"--ckpt_path={ft_run / 'checkpoints' / 'last.ckpt'}"])
    assert json.loads((ft_run / "metrics.json").read_text())["UA"] == pytest.approx(from_safetensors["UA"])
    assert not other.exists()


def test_test_refuses_a_model_of_another_forget_set(ft_run):
    with pytest.raises(ValueError, match=r"was made for the forget set 'random 10%'.*but this config's data draw "
                                         r"'random 50%'.*salun test --config .*config.yaml"):
        run(["test", "--config", str(ft_run / "config.yaml"), "--config", str(CONFIGS / "digits/forget/random50.yaml")])


def test_test_without_a_saved_model_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no saved model to test: .*model.safetensors does not exist. Fit first"):
        run(["test", "--config", str(CONFIGS / "digits/train.yaml"), f"--trainer.default_root_dir={tmp_path}"])


def test_mask_command_takes_the_models_ratio_and_touches_no_run_directory(original, tmp_path, capsys):
    out = tmp_path / "mask.safetensors"
    root = tmp_path / "config-root"
    run(["mask", "--config", str(CONFIGS / "digits/salun.yaml"), "--out", str(out), "--model.init_args.saliency_ratio=0.3",
         f"--model.init_args.original_weights={original}", f"--trainer.default_root_dir={root}", QUIET])
    mask, metadata = load_mask(out)
    total = sum(m.numel() for m in mask.values())
    assert metadata["ratio"] == "0.3" and sum(int(m.sum()) for m in mask.values()) == int(0.3 * total)
    assert metadata["forget_set"].startswith("sha256:") and metadata["forget_set_description"] == "random 10%"
    assert "(ratio 0.3)" in capsys.readouterr().out
    assert not root.exists()  # no config.yaml, forget set, marker or metrics in the config's run directory

    salun_run = tmp_path / "salun"
    fit("digits/salun.yaml", salun_run, "--trainer.fast_dev_run=true", f"--model.init_args.original_weights={original}",
        f"--model.init_args.mask_path={out}", "--model.init_args.saliency_ratio=0.3")
    assert json.loads((salun_run / "metrics.json").read_text())["method"] == "salun"
    with pytest.raises(ValueError, match=r"made for another run:\n  forget set: file sha256:\w+ \(random 10%\), this run"):
        fit("digits/salun.yaml", tmp_path / "salun50", "--trainer.fast_dev_run=true",
            "--config", str(CONFIGS / "digits/forget/random50.yaml"), f"--model.init_args.original_weights={original}",
            f"--model.init_args.mask_path={out}", "--model.init_args.saliency_ratio=0.3")


def test_mask_command_needs_a_saliency_method(original, tmp_path):
    with pytest.raises(ValueError, match=r"method 'ft'\) has no weight saliency callback; use a salun config"):
        run(["mask", "--config", str(CONFIGS / "digits/ft.yaml"), "--out", str(tmp_path / "m.safetensors"),
             f"--model.init_args.original_weights={original}"])


def test_report_command_prints_and_writes_the_table(tmp_path, capsys):
    for method, ua in (("retrain", 5.0), ("salun", 4.0)):
        run_dir = tmp_path / method
        run_dir.mkdir()
        (run_dir / "metrics.json").write_text(json.dumps(
            {"method": method, "seed": 0, "UA": ua, "RA": 100.0, "TA": 90.0, "MIA": 10.0, "RTE": 1.0}))
    (tmp_path / "mask.safetensors").write_bytes(b"not a run")
    run(["report", *map(str, sorted(tmp_path.iterdir())), "--out", str(tmp_path / "report")])
    captured = capsys.readouterr()
    assert "| salun" in captured.out and "0.25" in captured.out  # Avg. Gap = |4 - 5| / 4
    assert "mask.safetensors" in captured.err  # skipped, and said so
    assert (tmp_path / "report" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_data_argument_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"forget_fraction"):
        fit("digits/train.yaml", tmp_path, "--data.init_args.forget_fraction=1.5")
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "config.yaml").exists()


def test_main_prints_a_user_error_in_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    args = ["fit", "--config", str(CONFIGS / "digits/salun.yaml"), "--model.init_args.saliency_ratio=1.5",
            f"--trainer.default_root_dir={tmp_path}"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-2:] == ["salun: error: saliency_ratio must be in (0, 1], got 1.5.",
                          "(run with --debug, or SALUN_DEBUG=1, for the traceback)"]
    assert not any("Traceback" in line for line in lines)
    with pytest.raises(ValueError, match=r"saliency_ratio must be in \(0, 1\]"):
        main([*args, "--debug"])


def test_help_lists_every_command(capsys):
    run(["--help"])
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "mask", "tune", "audit", "relearn", "report", "curves",
                    "sample", "generate", "nudity"):
        assert f"\n  {command} " in out
    with pytest.raises(ValueError, match=r"unknown command 'sampel'; the commands are fit, validate, test, predict, "
                                         r"mask, tune, audit, relearn, report, curves, sample, generate, nudity "
                                         r"\(salun --help"):
        run(["sampel"])


def test_a_command_prints_no_warnings_or_tips(original, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "salun_lightning.cli", "fit", "--config", str(CONFIGS / "digits/ft.yaml"),
         "--trainer.fast_dev_run=true", f"--model.init_args.original_weights={original}", QUIET,
         f"--trainer.default_root_dir={tmp_path}"],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    for noise in ("Warning", "warn", "Tip:", "args parameter is intended"):
        assert noise not in output, output
    assert torch.cuda.is_available() or "GPU available: False" in output  # Lightning's device lines stay
