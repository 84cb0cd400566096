"""The salun command line: fit (then test) through LightningCLI, config stacking, mask, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from salun_lightning.callbacks import load_mask
from salun_lightning.cli import SalunCLI, main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def fit(config: str, root: Path, *extra: str) -> None:
    main(["fit", "--config", str(CONFIGS / config), f"--trainer.default_root_dir={root}",
          "--trainer.enable_progress_bar=false", *extra])


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    fit("digits/train.yaml", root, "--trainer.max_epochs=1")
    return root / "model.safetensors"


def test_fit_then_test_writes_metrics_and_a_second_run_reuses_the_directory(original, tmp_path):
    args = ("--trainer.max_epochs=1", "--trainer.limit_train_batches=2", f"--model.init_args.original_weights={original}")
    fit("digits/salun.yaml", tmp_path, *args)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["method"] == "salun"
    assert (tmp_path / "config.yaml").is_file()
    fit("digits/salun.yaml", tmp_path, *args)  # the saved config.yaml must not stop a second run


@pytest.mark.parametrize("method", ["retrain", "ft", "ga", "rl", "l1_sparse", "salun"])
def test_every_digits_method_config_runs(method, original, tmp_path):
    extra = [] if method == "retrain" else [f"--model.init_args.original_weights={original}"]
    fit(f"digits/{method}.yaml", tmp_path, "--trainer.fast_dev_run=true", *extra)
    assert json.loads((tmp_path / "metrics.json").read_text())["method"] == method


def parse(*configs: str) -> dict:
    cli = SalunCLI(args=[arg for c in configs for arg in ("--config", str(CONFIGS / c))], run=False)
    return cli.datamodule.hparams


@pytest.mark.parametrize("dataset", ["digits", "cifar10"])
def test_forget_scenarios_stack_on_method_configs(dataset):
    assert parse(f"{dataset}/salun.yaml", f"{dataset}/forget/random50.yaml")["forget_fraction"] == 0.5
    scenario = parse(f"{dataset}/rl.yaml", f"{dataset}/forget/class.yaml")
    assert scenario["forget_set"] == "class" and scenario["forget_fraction"] is None
    assert parse(f"{dataset}/ga.yaml", f"{dataset}/forget/random10.yaml")["forget_fraction"] == 0.1


def test_cifar10_salun_config_has_the_paper_hyper_parameters():
    cli = SalunCLI(args=["--config", str(CONFIGS / "cifar10/salun.yaml")], run=False)
    hparams = cli.model.hparams
    assert (hparams.lr, hparams.momentum, hparams.weight_decay, hparams.saliency_ratio) == (0.013, 0.9, 5e-4, 0.5)
    assert cli.trainer.max_epochs == 10 and cli.datamodule.hparams.batch_size == 256
    assert cli.datamodule.hparams.val_size == 5000


def test_mask_command_writes_a_mask_without_training(original, tmp_path, capsys):
    out = tmp_path / "mask.safetensors"
    main(["mask", "--config", str(CONFIGS / "digits/salun.yaml"), "--ratio", "0.3", "--out", str(out),
          f"--model.init_args.original_weights={original}", f"--trainer.default_root_dir={tmp_path}",
          "--trainer.enable_progress_bar=false"])
    mask, metadata = load_mask(out)
    total = sum(m.numel() for m in mask.values())
    assert metadata["ratio"] == "0.3" and sum(int(m.sum()) for m in mask.values()) == int(0.3 * total)
    assert "of" in capsys.readouterr().out
    assert not (tmp_path / "metrics.json").exists()  # no training, no testing

    run = tmp_path / "salun"
    fit("digits/salun.yaml", run, "--trainer.fast_dev_run=true", f"--model.init_args.original_weights={original}",
        f"--model.init_args.mask_path={out}", "--model.init_args.saliency_ratio=0.3")
    assert json.loads((run / "metrics.json").read_text())["method"] == "salun"


def test_mask_command_rejects_a_bad_ratio(tmp_path):
    with pytest.raises(ValueError, match=r"ratio must be a number in \(0, 1\]"):
        main(["mask", "--config", str(CONFIGS / "digits/salun.yaml"), "--ratio", "2", "--out", str(tmp_path / "m")])


def test_report_command_prints_and_writes_the_table(tmp_path, capsys):
    for method, ua in (("retrain", 5.0), ("salun", 4.0)):
        run = tmp_path / method
        run.mkdir()
        (run / "metrics.json").write_text(json.dumps(
            {"method": method, "seed": 0, "UA": ua, "RA": 100.0, "TA": 90.0, "MIA": 10.0, "RTE": 1.0}))
    main(["report", str(tmp_path / "retrain"), str(tmp_path / "salun"), "--out", str(tmp_path / "report")])
    out = capsys.readouterr().out
    assert "| salun" in out and "0.25" in out  # Avg. Gap = |4 - 5| / 4
    assert (tmp_path / "report" / "report.md").is_file()
    assert (tmp_path / "report" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_data_argument_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"forget_fraction"):
        fit("digits/train.yaml", tmp_path, "--data.init_args.forget_fraction=1.5")
    assert not (tmp_path / "metrics.json").exists()
