"""What a user of the ``salun`` command sees: one-line errors, every command listed, a fast overview, a line per
epoch and curves for unattended runs, checkpoints where the README says, a config that shows the linked values, and
no noise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from salun_lightning.cli import main, run

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
QUIET = "--trainer.enable_progress_bar=false"


def salun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``salun`` in a fresh process, output captured (so not a terminal)."""
    return subprocess.run([sys.executable, "-m", "salun_lightning.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=timeout)


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    run(["fit", "--config", str(CONFIGS / "digits/train.yaml"), f"--trainer.default_root_dir={root}", QUIET,
         "--trainer.max_epochs=2", "--test_after_fit=false"])
    return root / "model.safetensors"


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("option, message", [
    (["--model.init_args.lrr", "0.1"],
     "--model.init_args.lrr: no such option of ClassifierUnlearningModule (salun fit --help lists the options"),
    (["--model.init_args.optimizer", "adam"], "--model.init_args.optimizer: expected one of 'sgd', 'adamw', got 'adam'"),
    (["--trainer.max_epochs", "x"], "--trainer.max_epochs: expected int or null, got 'x'"),
    (["--trainer.max_epochz", "3"], "unrecognized arguments: --trainer.max_epochz 3"),
])
def test_a_bad_option_prints_one_line_naming_it(option, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "digits/train.yaml"), *option])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"salun: error: {message}"), err
    assert "usage:" not in out + err and "jsonargparse" not in out + err


def test_a_bad_option_of_salun_mask_prints_one_line(capsys):
    with pytest.raises(SystemExit):
        main(["mask", "--config", str(CONFIGS / "digits/salun.yaml"), "--out", "m.safetensors", "--model.init_args.lrr",
              "1"])
    assert capsys.readouterr().err.startswith("salun: error: --model.init_args.lrr: no such option")


def test_an_unknown_command_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["foo"])
    err = capsys.readouterr().err
    assert "unknown command 'foo'; the commands are fit, validate, test, predict, mask, tune, audit, relearn, report, " \
           "curves, sample, generate, nudity" in err


def test_the_overview_does_not_wait_for_lightning():
    probe = ("import sys; from salun_lightning.cli import run; run(['--help']); "
             "print('lightning imported' if 'lightning' in sys.modules else 'lightning not imported')")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("lightning not imported"), result.stdout


def test_an_unwritable_save_mask_path_is_refused_before_the_saliency_pass(original, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match=r"save_mask_path '.*a-file/mask.safetensors' cannot be written"):
        run(["fit", "--config", str(CONFIGS / "digits/salun.yaml"), f"--trainer.default_root_dir={tmp_path / 'run'}",
             QUIET, f"--model.init_args.original_weights={original}",
             f"--model.init_args.save_mask_path={blocker / 'mask.safetensors'}"])
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_the_readme_deletion_request_command_works(original, tmp_path):
    request = tmp_path / "request.txt"
    request.write_text("3\n14\n15\n92\n")
    assert "--config configs/digits/forget/request.yaml --data.init_args.forget_indices_file request.txt" in (
        (CONFIGS.parent / "README.md").read_text())
    run(["fit", "--config", str(CONFIGS / "digits/ft.yaml"), "--config", str(CONFIGS / "digits/forget/request.yaml"),
         f"--data.init_args.forget_indices_file={request}", f"--trainer.default_root_dir={tmp_path / 'run'}", QUIET,
         f"--model.init_args.original_weights={original}", "--trainer.max_steps=1", "--test_after_fit=false"])
    assert json.loads((tmp_path / "run" / "forget_indices.json").read_text()) == [3, 14, 15, 92]


# ------------------------------------------------------------------------------------------------ watching
def test_an_unattended_fit_prints_an_epoch_line_keeps_curves_and_plots_them(tmp_path):
    result = salun("fit", "--config", str(CONFIGS / "digits/train.yaml"), f"--trainer.default_root_dir={tmp_path}",
                   "--trainer.max_epochs=2", "--data.init_args.val_size=100", "--test_after_fit=false")
    assert result.returncode == 0, result.stderr
    epochs = [line for line in result.stderr.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/2", "epoch 2/2"], result.stderr
    assert "train/loss" in epochs[0] and "val/accuracy" in epochs[0]
    log = tmp_path / "logs" / "version_0" / "metrics.csv"
    header = log.read_text().splitlines()[0].split(",")
    assert {"train/loss", "train/accuracy", "val/accuracy", "step"} <= set(header)
    steps = [line for line in log.read_text().splitlines()[1:] if line.split(",")[header.index("train/loss")]]
    assert len(steps) >= 6  # log_every_n_steps 5 on about 20 steps an epoch
    assert (tmp_path / "config.yaml").is_file()  # where the README says, not in the logger's folder
    run(["curves", str(tmp_path)])
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_a_checkpointing_config_keeps_last_ckpt_in_the_run_directory(tmp_path):
    run(["fit", "--config", str(CONFIGS / "digits/train.yaml"), f"--trainer.default_root_dir={tmp_path}", QUIET,
         "--trainer.enable_checkpointing=true", "--trainer.max_epochs=1", "--test_after_fit=false"])
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    for config in ("cifar10/base.yaml", "diffusion/ddpm_digits_base.yaml", "diffusion/sd_nudity_salun.yaml"):
        assert yaml.safe_load((CONFIGS / config).read_text())["trainer"]["enable_checkpointing"] is True, config


def test_the_saved_config_shows_the_linked_values_and_reruns(original, tmp_path):
    run(["fit", "--config", str(CONFIGS / "digits/rl.yaml"), f"--trainer.default_root_dir={tmp_path}", QUIET,
         f"--model.init_args.original_weights={original}", "--trainer.max_steps=1", "--test_after_fit=false"])
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["model"]["init_args"]["num_classes"] == 10 and saved["model"]["init_args"]["in_channels"] == 1
    assert saved["data"]["init_args"]["stream"] == "forget_retain"
    assert "class_names" not in saved["model"]["init_args"]  # not an argument of the classifier
    run(["test", "--config", str(tmp_path / "config.yaml")])
    assert json.loads((tmp_path / "metrics.json").read_text())["method"] == "rl"


# ------------------------------------------------------------------------------------------------ noise
def test_a_salun_fit_and_its_test_print_no_override_warning_and_no_dataloader_table(original, tmp_path):
    result = salun("fit", "--config", str(CONFIGS / "digits/salun.yaml"), f"--trainer.default_root_dir={tmp_path}",
                   f"--model.init_args.original_weights={original}", "--trainer.max_steps=2", QUIET)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "will override" not in output and "DataLoader 0" not in output, output
    assert "test: UA " in output


def test_a_step_counted_run_shows_no_negative_epoch_total(tmp_path):
    from salun_lightning.lightning_cli import RunProgressBar

    class Trainer:
        max_epochs, max_steps = -1, 1000

    bar = RunProgressBar()
    bar._trainer = Trainer()
    assert bar._get_train_description(3) == "Epoch 3 of a 1000-step run"


def test_a_refit_removes_the_previous_runs_samples(tmp_path):
    args = ["fit", "--config", str(CONFIGS / "diffusion/ddpm_digits_train.yaml"), QUIET, "--trainer.max_steps=1",
            f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_checkpointing=false"]
    run(args)
    run(["sample", "--config", str(tmp_path / "config.yaml"), "--out", str(tmp_path / "samples"), "--steps", "1",
         "--classes", "0"])
    assert (tmp_path / "samples" / "grid.png").is_file()
    run(args)
    assert not (tmp_path / "samples").exists() and (tmp_path / "unet").is_dir()


def test_a_class_scenario_fit_logs_the_models_hyperparameters(tmp_path):
    run(["fit", "--config", str(CONFIGS / "digits/train.yaml"), "--config", str(CONFIGS / "digits/forget/class.yaml"),
         f"--trainer.default_root_dir={tmp_path}", QUIET, "--trainer.max_steps=1", "--test_after_fit=false"])
    logged = (tmp_path / "logs" / "version_0" / "hparams.yaml").read_text().splitlines()
    assert "method: train" in logged and "num_classes: 10" in logged
