"""Run directories: a fit never deletes its inputs or a file the project did not write, a bare Trainer writes into a
fresh folder, a failed refit leaves nothing that looks finished, and the data are checked against the model first."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from salun_lightning import ClassifierUnlearningModule, UnlearningDataModule
from salun_lightning.cli import run
from salun_lightning.diffusion import ClassConditionalDiffusion, DiffusionDataModule
from salun_lightning.models import build_classifier, load_weights
from salun_lightning.report import make_report
from salun_lightning.runs import INCOMPLETE_FILENAME, MANIFEST_FILENAME

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
QUIET = "--trainer.enable_progress_bar=false"


def model(method: str, **kwargs) -> ClassifierUnlearningModule:
    return ClassifierUnlearningModule(method, model="small_resnet", num_classes=10, in_channels=1, **kwargs)


def trainer(root, **kwargs) -> pl.Trainer:
    options = dict(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False)
    if root is not None:
        options["default_root_dir"] = str(root)
    return pl.Trainer(**{**options, **kwargs})


def fit(method: str, root, data_args=None, **kwargs) -> ClassifierUnlearningModule:
    network = model(method, **kwargs)
    data = UnlearningDataModule("digits", forget_fraction=0.1, stream=network.train_stream, **(data_args or {}))
    trainer(root).fit(network, data)
    return network


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def train_run(tmp_path_factory) -> Path:
    """A trained original model (about 90% accurate: unlike a wrecked one, it differs from chance)."""
    root = tmp_path_factory.mktemp("train")
    network = model("train", lr=0.05)
    trainer(root, max_steps=40).fit(network, UnlearningDataModule("digits", forget_fraction=0.1, stream="full"))
    return root


# ------------------------------------------------------------------------------------------------ inputs
def test_rerunning_salun_with_its_own_mask_is_refused_and_the_mask_kept(train_run, tmp_path):
    original = str(train_run / "model.safetensors")
    fit("salun", tmp_path, original_weights=original)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=r"mask_path \(.*mask.safetensors\) lies inside the run directory .*, which "
                                         r"this fit clears.*copy the input elsewhere"):
        fit("salun", tmp_path, original_weights=original, mask_path=str(tmp_path / "mask.safetensors"))
    assert snapshot(tmp_path) == before  # nothing removed, nothing written


def test_ft_into_the_train_runs_directory_is_refused_and_the_original_kept(train_run):
    before = snapshot(train_run)
    with pytest.raises(ValueError, match=r"original_weights \(.*model.safetensors\) lies inside the run directory"):
        run(["fit", "--config", str(CONFIGS / "digits/ft.yaml"), f"--trainer.default_root_dir={train_run}", QUIET,
             f"--model.init_args.original_weights={train_run / 'model.safetensors'}", "--trainer.max_steps=1"])
    assert snapshot(train_run) == before


def test_a_diffusion_run_into_its_own_pretrained_directory_is_refused_and_keeps_its_source(tmp_path):
    from tests.test_diffusion import DIGITS, PIXEL_UNET, SCHEDULER

    source = ClassConditionalDiffusion(method="train", num_classes=10, unet=PIXEL_UNET, scheduler=SCHEDULER, **DIGITS)
    source.save_components(tmp_path)
    before = snapshot(tmp_path)
    salun = ClassConditionalDiffusion(method="salun", num_classes=10, pretrained=str(tmp_path),
                                      mask_path=str(tmp_path / "no-mask"), **DIGITS)
    data = DiffusionDataModule("digits", forget_class=0, image_size=8, batch_size=8, stream=salun.train_stream)
    with pytest.raises(ValueError, match=r"pretrained \(.*\) lies inside the run directory"):
        trainer(tmp_path).fit(salun, data)
    assert snapshot(tmp_path) == before and not (tmp_path / INCOMPLETE_FILENAME).exists()


# ------------------------------------------------------------------------------------------------ files not ours
def test_a_directory_with_files_no_run_wrote_is_refused_untouched(tmp_path):
    (tmp_path / "metrics.json").write_text('{"mine": true}')
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "weights.bin").write_bytes(b"user's")
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=r"holds metrics.json, unet, which no salun run wrote there .*Give the run "
                                         r"another directory"):
        fit("train", tmp_path)
    assert snapshot(tmp_path) == before


def test_a_refit_replaces_only_what_the_earlier_run_wrote(tmp_path, train_run):
    fit("ga", tmp_path, original_weights=str(train_run / "model.safetensors"))
    (tmp_path / "notes.txt").write_text("my notes")
    (tmp_path / "metrics.json").write_text("{}")  # the run's own output name: replaced
    first = json.loads((tmp_path / MANIFEST_FILENAME).read_text())["run_id"]
    fit("ga", tmp_path, original_weights=str(train_run / "model.safetensors"))
    assert (tmp_path / "notes.txt").read_text() == "my notes" and not (tmp_path / "metrics.json").exists()
    assert json.loads((tmp_path / MANIFEST_FILENAME).read_text())["run_id"] != first


def test_a_bare_trainer_writes_into_a_fresh_versioned_folder_and_says_so(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics.json").write_text('{"mine": true}')
    (tmp_path / "model.safetensors").write_bytes(b"not a model of ours")
    (tmp_path / "unet").mkdir()
    before = snapshot(tmp_path)
    with caplog.at_level("INFO"):
        fit("train", None)
        fit("train", None)
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("runs/")} == before
    for version in (0, 1):
        assert (tmp_path / "runs" / "train" / f"version_{version}" / "model.safetensors").is_file()
    assert f"this run writes into {tmp_path / 'runs' / 'train' / 'version_1'}" in caplog.text


def test_a_bare_trainers_salun_fit_writes_its_mask_into_its_fresh_folder(train_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fit("salun", None, original_weights=str(train_run / "model.safetensors"))
    assert (tmp_path / "runs" / "salun" / "version_0" / "mask.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


def test_an_unwritable_mask_path_leaves_a_finished_run_untouched(train_run, tmp_path):
    weights = str(train_run / "model.safetensors")
    fit("salun", tmp_path / "run", original_weights=weights)
    before = snapshot(tmp_path / "run")
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(ValueError, match=r"save_mask_path '.*a-file/mask.safetensors' cannot be written"):
        fit("salun", tmp_path / "run", original_weights=weights,
            save_mask_path=str(tmp_path / "a-file" / "mask.safetensors"))
    assert snapshot(tmp_path / "run") == before


def test_a_model_of_another_project_with_salun_data_finishes_its_run(tmp_path):
    from tests.test_data import TinyClassifier

    trainer(tmp_path, max_steps=2).fit(TinyClassifier(), UnlearningDataModule("digits", forget_fraction=0.1,
                                                                              stream="full"))
    assert not (tmp_path / INCOMPLETE_FILENAME).exists() and (tmp_path / "forget_set.json").is_file()


def test_a_diffusion_stream_that_is_not_the_methods_is_refused(tmp_path):
    from tests.test_diffusion import DIGITS, PIXEL_UNET, SCHEDULER

    network = ClassConditionalDiffusion(method="train", num_classes=10, unet=PIXEL_UNET, scheduler=SCHEDULER, **DIGITS)
    data = DiffusionDataModule("digits", forget_class=0, image_size=8, batch_size=8, stream="retain")
    with pytest.raises(ValueError, match=r"serves the 'retain' stream but the model's method 'train' trains on 'full'"):
        trainer(tmp_path).fit(network, data)
    assert list(tmp_path.iterdir()) == []


def test_the_cli_without_a_run_directory_writes_config_and_model_into_a_fresh_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run(["fit", "--config", str(CONFIGS / "digits/base.yaml"), "--model.init_args.method=train", QUIET,
         "--trainer.max_steps=1", "--test_after_fit=false"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    folder = tmp_path / "runs" / "train" / "version_0"
    written = {p.name for p in folder.iterdir()}
    assert {"config.yaml", "model.safetensors", "forget_set.json", MANIFEST_FILENAME} <= written


# ------------------------------------------------------------------------------------------------ silently wrong
def test_a_refit_failing_after_setup_leaves_nothing_that_looks_finished(tmp_path, train_run):
    class FailAtSetup(Callback):  # fails after the data module's setup and before the model's
        def setup(self, trainer, pl_module, stage):
            raise RuntimeError("stopped on purpose")

    weights = str(train_run / "model.safetensors")
    fitted = fit("ga", tmp_path, original_weights=weights)
    trainer(tmp_path).test(fitted, UnlearningDataModule("digits", forget_fraction=0.1, stream="forget"), verbose=False)
    assert make_report([tmp_path], retrain="ga").skipped == []  # a finished, tested random-10% run
    refit = model("ga", original_weights=weights)
    with pytest.raises(RuntimeError, match="stopped on purpose"):
        trainer(tmp_path, callbacks=[FailAtSetup()]).fit(
            refit, UnlearningDataModule("digits", forget_set="class", forget_class=0, stream=refit.train_stream))
    assert json.loads((tmp_path / "forget_set.json").read_text())["description"].startswith("class 0")
    assert (tmp_path / INCOMPLETE_FILENAME).exists()
    assert not (tmp_path / "model.safetensors").exists() and not (tmp_path / "metrics.json").exists()


def test_the_report_skips_a_directory_whose_files_come_from_different_runs(tmp_path):
    for name, run_id in (("retrain", "a" * 32), ("rl", "b" * 32)):
        (tmp_path / name).mkdir()
        metrics = {"method": name, "UA": 1.0, "RA": 2.0, "TA": 3.0, "MIA": 4.0, "RTE": 0.1, "run_id": run_id}
        (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
        forget = {"id": "sha256:x", "description": "random 10%", "dataset": "digits", "seed": 0, "count": 1,
                  "run_id": "a" * 32}
        (tmp_path / name / "forget_set.json").write_text(json.dumps(forget))
    report = make_report(sorted(tmp_path.iterdir()))
    assert [entry.path.name for entry in report.skipped] == ["rl"]
    assert "metrics.json (run bbbbbbbb) and forget_set.json (run aaaaaaaa) come from different runs" in (
        report.skipped[0].reason)


def test_a_stream_that_is_not_the_methods_is_refused_before_anything_is_written(tmp_path):
    network = model("retrain")
    data = UnlearningDataModule("digits", forget_fraction=0.1, stream="full")
    with pytest.raises(ValueError, match=r"serves the 'full' stream but the model's method 'retrain' trains on "
                                         r"'retain'.*stream=model.train_stream"):
        trainer(tmp_path).fit(network, data)
    assert list(tmp_path.iterdir()) == []


def test_fewer_model_classes_than_labels_is_refused_before_anything_is_written(tmp_path):
    network = ClassifierUnlearningModule("train", model="small_resnet", num_classes=5, in_channels=1)
    data = UnlearningDataModule("digits", forget_fraction=0.1, stream=network.train_stream)
    with pytest.raises(ValueError, match=r"num_classes=5 but digits has 10 classes \(labels 0..9\)"):
        trainer(tmp_path).fit(network, data)
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_compile_backend_is_refused_when_the_model_is_built():
    with pytest.raises(ValueError, match=r"unknown compile_backend 'inductr'; choose one of .*inductor"):
        model("train", compile_backend="inductr")


def test_validate_evaluates_the_runs_model_not_its_original_weights(train_run, tmp_path):
    from salun_lightning.lightning_cli import SalunCLI

    run(["fit", "--config", str(CONFIGS / "digits/ga.yaml"), QUIET, "--data.init_args.val_size=100",
         f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=3", "--model.init_args.lr=5",
         f"--model.init_args.original_weights={train_run / 'model.safetensors'}", "--test_after_fit=false"])
    data = UnlearningDataModule("digits", forget_fraction=0.1, val_size=100, stream="forget")
    data.setup("validate")

    def accuracy(weights: Path) -> float:
        network = build_classifier("small_resnet", 10, 1).eval()
        load_weights(network, str(weights), "weights")
        with torch.no_grad():
            batches = [data.on_after_batch_transfer(b, 0) for b in data.val_dataloader()]
            correct = sum((network(b["image"]).argmax(1) == b["label"]).sum().item() for b in batches)
        return 100 * correct / sum(len(b["label"]) for b in batches)

    validated = SalunCLI(args=["validate", "--config", str(tmp_path / "config.yaml"), QUIET])
    measured = validated.trainer.callback_metrics["val/accuracy"].item()
    assert measured == pytest.approx(accuracy(tmp_path / "model.safetensors"), abs=1e-3)
    assert measured != pytest.approx(accuracy(train_run / "model.safetensors"), abs=1e-3)


def test_rte_after_a_resume_counts_the_time_before_it(tmp_path):
    class Slow(Callback):
        def on_train_batch_end(self, *args):
            time.sleep(0.75)

    data = UnlearningDataModule("digits", forget_fraction=0.1, stream="full")
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)
    trainer(tmp_path, max_steps=2, callbacks=[Slow(), checkpoints], enable_checkpointing=True).fit(model("train"), data)
    first = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["fit_minutes"]
    assert first * 60 >= 1.5
    resumed = model("train")
    data = UnlearningDataModule("digits", forget_fraction=0.1, stream="full")
    trainer(tmp_path, max_steps=3, enable_checkpointing=True,
            callbacks=[ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)]).fit(
        resumed, data, ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"))
    assert resumed.fit_minutes >= first
    second = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["fit_minutes"]
    assert second > first  # the resumed part's checkpoint counts both parts, for the next resume
