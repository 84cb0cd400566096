"""``SalunCLI``: LightningCLI over any LightningModule and LightningDataModule, with the data linked into the model,
the run's whole config saved into its directory, its curves logged there and a saved model found for ``test`` and
``validate``. The ``salun`` command (:mod:`salun_lightning.cli`) runs it for ``fit``, ``validate``, ``test`` and
``predict``; it is imported only then, so that the other commands and ``salun --help`` do not wait for Lightning.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import yaml
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar
from lightning.pytorch.cli import ArgsType, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE
from typing_extensions import override

from salun_lightning.files import write_atomically
from salun_lightning.progress import EpochLine
from salun_lightning.runs import (
    CHECKPOINTS_DIRNAME,
    CONFIG_FILENAME,
    FRESH_RUNS_DIRNAME,
    LOGS_DIRNAME,
    MODEL_FILENAME,
    is_incomplete,
    method_name,
    open_run,
    read_forget_set,
    run_directory_of,
)

FIT_ONLY_KEYS = ("ckpt_path", "weights_only")  # arguments of Trainer.fit that a saved config leaves out

# What the model needs to know about the data: (data attribute, model argument, conversion). A link whose model
# argument the chosen model class lacks is skipped.
DATA_TO_MODEL: tuple[tuple[str, str, Optional[Callable[[Any], Any]]], ...] = (
    ("num_classes", "num_classes", None),
    ("image_shape", "in_channels", lambda shape: shape[0]),
    ("image_shape", "image_shape", tuple),
    ("class_names", "class_names", None),
    ("class_prompts", "class_prompts", None),
    ("forget_class_index", "forget_class", None),
)
CONFIG_HEADER = (
    "The whole run, as `salun fit` ran it: the values linked from the data into the model (num_classes, in_channels, "
    "...) and the training stream chosen by the method are filled in. Rerun or test with --config <this file>."
)

def stream_of_method(class_path: Optional[str], method: Optional[str]) -> Optional[str]:
    """The training stream of ``method`` in the model class's ``methods`` table (``None`` for other models, or an
    unknown method, which the model's constructor then refuses)."""
    if not class_path or method is None:
        return None
    module_name, _, name = class_path.rpartition(".")
    methods = getattr(getattr(importlib.import_module(module_name), name, None), "methods", None)
    spec = methods.get(method) if isinstance(methods, dict) else None
    return getattr(spec, "stream", None)


class RunConfigCallback(SaveConfigCallback):
    """Save the fit's whole configuration as ``<run directory>/config.yaml`` (not the logger's folder), with the
    values linked from the data into the model (class count, image shape, ...) filled in, as the model got them."""

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":  # the run directory first, whichever data module the fit has (open_run is idempotent)
            open_run(trainer, method_name(pl_module))
        super().setup(trainer, pl_module, stage)

    @override
    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        directory = Path(trainer.default_root_dir)  # the run's: setup opened it (and owns its config.yaml)
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for key in FIT_ONLY_KEYS:  # how this fit started, not what the run is (test, sample and mask refuse them)
            config.pop(key, None)
        model_args = config.get("model", {}).setdefault("init_args", {})
        accepted = inspect.signature(type(pl_module)).parameters
        for target in dict.fromkeys(target for _, target, _ in DATA_TO_MODEL):  # as the model got them, or none
            model_args.pop(target, None)
            if target in accepted and target in pl_module.hparams:
                model_args[target] = _plain(pl_module.hparams[target])
        data_args = config.get("data", {}).setdefault("init_args", {})
        if trainer.datamodule is not None and "stream" in trainer.datamodule.hparams:
            data_args["stream"] = trainer.datamodule.hparams["stream"]
        text = f"# {CONFIG_HEADER}\n" + yaml.safe_dump(config, sort_keys=False)
        write_atomically(directory / CONFIG_FILENAME, lambda stream: stream.write(text.encode()))


class RunProgressBar(RichProgressBar):
    """Lightning's rich progress bar, saying ``Epoch 3`` (not ``Epoch 3/-2``) when the run is counted in steps."""

    @override
    def _get_train_description(self, current_epoch: int) -> str:
        if self.trainer.max_epochs in (None, -1):
            return f"Epoch {current_epoch} of a {self.trainer.max_steps}-step run"
        return super()._get_train_description(current_epoch)


def _plain(value: Any) -> Any:
    """A hyper-parameter as YAML writes it (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value


class SalunCLI(LightningCLI):
    """LightningCLI over any LightningModule and LightningDataModule, with the data linked into the model.

    ``fit`` tests the model afterwards (``--test_after_fit``) and saves ``config.yaml`` into its run directory (a
    second fit into the same directory overwrites it); no other command writes a config. Unless the config sets
    ``trainer.logger``, a fit logs its curves with Lightning's ``CSVLogger`` (and ``TensorBoardLogger`` when
    tensorboard is installed) into ``<run>/logs/version_<N>/``, and prints a line per epoch when its output is not
    a terminal (:class:`~salun_lightning.progress.EpochLine`); other commands log nothing.
    ``--trainer.enable_checkpointing true`` keeps ``<run>/checkpoints/last.ckpt``.
    """

    def __init__(self, args: ArgsType = None, run: bool = True) -> None:
        super().__init__(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=RunConfigCallback,
            save_config_kwargs={"overwrite": True, "save_to_log_dir": False},
            parser_kwargs={"exit_on_error": False, **{name: {"exit_on_error": False} for name in self.subcommands()}},
            args=args,
            run=run,
        )

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self._get(self.config_init, "trainer", default={})
        if config.get("logger") in (None, True):
            kwargs["logger"] = self.run_loggers() if self.subcommand == "fit" else False
        callbacks = config.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        has_bar = any(isinstance(callback, ProgressBar) for callback in callbacks)
        if config.get("enable_progress_bar") is not False and _RICH_AVAILABLE and not has_bar:  # else Lightning's
            callbacks.append(RunProgressBar())
        kwargs["callbacks"] = [*callbacks, EpochLine()]
        return super().instantiate_trainer(**kwargs)

    def run_loggers(self) -> list[Logger]:
        """The fit's loggers: CSV (and TensorBoard, when installed) under ``<run>/logs/version_<N>``; with no run
        directory given, a fresh ``runs/<method>/version_<N>``, which then is the run directory."""
        root = self._get(self.config_init, "trainer", default={}).get("default_root_dir")
        if root is None:
            save_dir, name = str(Path(FRESH_RUNS_DIRNAME) / method_name(self.model)), ""
        else:
            save_dir, name = str(root), LOGS_DIRNAME
        loggers: list[Logger] = [CSVLogger(save_dir, name=name)]
        if importlib.util.find_spec("tensorboard") is not None:
            loggers.append(TensorBoardLogger(save_dir, name=name, version=loggers[0].version, sub_dir="tensorboard"))
        return loggers

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--test_after_fit", type=bool, default=True, help="run the test stage after fit (writes metrics.json)"
        )
        parser.link_arguments(
            ("model.class_path", "model.init_args.method"),
            "data.init_args.stream",
            compute_fn=stream_of_method,
            apply_on="parse",
        )
        for source, target, convert in DATA_TO_MODEL:
            parser.link_arguments(f"data.{source}", f"model.init_args.{target}", compute_fn=convert, apply_on="instantiate")

    def parse_arguments(self, parser, args: ArgsType) -> None:
        # LightningCLI warns whenever ``args`` and ``sys.argv`` are both given; this command always passes ``args``.
        self.config = parser.parse_object(args) if isinstance(args, dict) else parser.parse_args(args)

    def before_instantiate_classes(self) -> None:
        if self.subcommand != "fit":  # only a fit owns its run directory
            self.save_config_callback = None

    def before_fit(self) -> None:
        root = self._get(self.config_init, "trainer", default={}).get("default_root_dir")
        for callback in self.trainer.checkpoint_callbacks:
            if callback.save_last is None:
                callback.save_last = True
            if callback.dirpath is None and root is not None:  # not inside the logger's folder: <run>/checkpoints
                callback.dirpath = str(Path(root) / CHECKPOINTS_DIRNAME)

    def after_fit(self) -> None:
        if self.config[self.subcommand].get("test_after_fit") and self.trainer.state.status == "finished":
            self.trainer.test(self.model, datamodule=self.datamodule, verbose=False)  # the module prints one line

    def _parse_ckpt_path(self) -> None:
        """Keep the config as given: LightningCLI would overwrite the model's arguments with a checkpoint's, which
        hides what the run does; `test` instead refuses a checkpoint of another method."""

    def test(self, model: LightningModule, datamodule: Optional[LightningDataModule] = None,
             ckpt_path: Optional[str] = None, **kwargs: Any) -> None:
        """Test a saved model: ``ckpt_path`` (safetensors or checkpoint), else ``<default_root_dir>/model.safetensors``."""
        ckpt_path = self._load_saved_model(model, datamodule, ckpt_path, "test")
        kwargs.setdefault("verbose", not hasattr(model, "tested_run_directory"))  # salun's modules print one line
        self.trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, **kwargs)

    def validate(self, model: LightningModule, datamodule: Optional[LightningDataModule] = None,
                 ckpt_path: Optional[str] = None, **kwargs: Any) -> None:
        """Validate a saved model, as :meth:`test` finds it (a fit's model, not the weights it started from)."""
        ckpt_path = self._load_saved_model(model, datamodule, ckpt_path, "validate")
        self.trainer.validate(model, datamodule=datamodule, ckpt_path=ckpt_path, **kwargs)

    def _load_saved_model(self, model: LightningModule, datamodule: Optional[LightningDataModule],
                          ckpt_path: Optional[str], command: str) -> Optional[str]:
        """Load ``ckpt_path`` (a ``model.safetensors``) or ``<default_root_dir>/model.safetensors`` into ``model``;
        return the checkpoint for Lightning to restore instead, if that is what was given."""
        path = Path(ckpt_path) if ckpt_path else Path(self.trainer.default_root_dir) / MODEL_FILENAME
        if not path.is_file():
            raise FileNotFoundError(
                f"no saved model to {command}: {path} does not exist. Fit first, or give --ckpt_path <run>/"
                f"{MODEL_FILENAME} (or a Lightning checkpoint)."
            )
        check_same_forget_set(run_directory_of(path), datamodule)
        if path.suffix != ".safetensors":  # a checkpoint's method is checked by the module as it loads
            return str(path)
        if not callable(getattr(model, "load_model", None)):
            raise ValueError(f"{type(model).__name__} cannot load {path.name}; give a Lightning checkpoint.")
        model.load_model(str(path))
        return None


def load_run(run_dir: Path) -> tuple[LightningModule, LightningDataModule]:
    """The model and data module of a finished run, built from its ``config.yaml`` (in a scratch directory, so that
    nothing is written into the run) with its saved model loaded; the data module is not set up yet.

    Raises:
        ValueError: no finished run in ``run_dir``.
    """
    if not (run_dir / MODEL_FILENAME).is_file() or is_incomplete(run_dir):
        raise ValueError(f"{run_dir}: no finished run there (it needs {MODEL_FILENAME} and no INCOMPLETE marker).")
    with tempfile.TemporaryDirectory(prefix="salun-run-") as scratch:
        cli = SalunCLI(args=["--config", str(run_dir / CONFIG_FILENAME), f"--trainer.default_root_dir={scratch}"],
                       run=False)
    cli.model.load_model(str(run_dir / MODEL_FILENAME))
    return cli.model, cli.datamodule


def check_same_forget_set(run_dir: Path, datamodule: Any) -> None:
    """Refuse to test the model of ``run_dir`` on another forget set than the one it was made for.

    Raises:
        ValueError: both forget sets are known and differ (the message names both).
    """
    record = read_forget_set(run_dir)
    if record is None or not hasattr(datamodule, "forget_set_id"):
        return
    current = datamodule.forget_set_id
    if current != record["id"]:
        raise ValueError(
            f"the model in {run_dir} was made for the forget set {record.get('description')!r} "
            f"({record['id'][:19]}, seed {record.get('seed')}), but this config's data draw "
            f"{getattr(datamodule, 'forget_set_description', '?')!r} ({current[:19]}): its UA and RA would be measured "
            f"on the wrong samples. Test it with its own config: salun test --config {run_dir / 'config.yaml'}"
        )
