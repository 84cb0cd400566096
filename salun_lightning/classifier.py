"""One LightningModule for every classifier unlearning method: the method (:mod:`salun_lightning.methods`) picks
the data stream and the loss or update; the module does the rest.

Data flow one way: the data module's class count and image channels are constructor arguments of the model, and
the model's method names the training stream the data module must serve (``train_stream``); the ``salun`` command
line links both. Test batches say which split they come from (``batch["split"]``).

Example::

    >>> import tempfile
    >>> from lightning.pytorch import Trainer
    >>> from salun_lightning.data import UnlearningDataModule
    >>> run = tempfile.mkdtemp()
    >>> model = ClassifierUnlearningModule("train", model="small_resnet", num_classes=10, in_channels=1)
    >>> data = UnlearningDataModule("digits", forget_fraction=0.1, stream=model.train_stream)
    >>> trainer = Trainer(max_steps=2, default_root_dir=run, logger=False, enable_progress_bar=False,
    ...                   enable_checkpointing=False, enable_model_summary=False, limit_test_batches=1)
    >>> trainer.fit(model, data)  # writes <run>/model.safetensors; salun also adds the WeightSaliencyCallback
    >>> _ = trainer.test(model, data, verbose=False)  # UA, RA, TA, MIA-Efficacy, RTE -> <run>/metrics.json
    >>> sorted(p.name for p in Path(run).iterdir())
    ['forget_indices.json', 'forget_set.json', 'manifest.json', 'metrics.json', 'model.safetensors']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import torch
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from salun_lightning.callbacks import WeightSaliencyCallback
from salun_lightning.methods import METHODS, build_method
from salun_lightning.metrics import MIAEfficacy
from salun_lightning.models import build_classifier, load_weights, save_weights
from salun_lightning.runs import (
    METRICS_FILENAME,
    MODEL_FILENAME,
    FitClock,
    check_mask_output,
    check_writable,
    close_run,
    open_fit,
    run_directory_of,
    run_id_of,
    write_output,
)

Method = Literal[
    "train", "retrain", "ft", "ga", "rl", "l1_sparse", "salun", "iu", "bs", "be", "salun_soft", "neggrad_plus", "scrub",
    "ssd",
]  # the names of salun_lightning.methods.METHODS (a test keeps them equal), spelled out for the CLI's help
MODEL_FORMAT = "salun-lightning/classifier"
TEST_SPLITS = ("forget", "retain", "test", "test_forgotten_class")


class ClassifierUnlearningModule(LightningModule):
    """Train an image classifier, or unlearn part of its training data with one of the methods of docs/method.md,
    'Classifier unlearning'.

    Methods (:mod:`salun_lightning.methods`, one file each): ``train`` (the original model, all training data),
    ``retrain`` (from scratch on D_r: exact unlearning), ``ft`` (fine-tune on D_r), ``ga`` (gradient ascent on D_f),
    ``rl`` (random labels on D_f plus D_r), ``l1_sparse`` (``ft`` plus a decaying L1 penalty), ``salun`` (``rl``
    under the saliency mask), ``iu`` (the official influence-unlearning step), ``bs`` (boundary shrink), ``be``
    (boundary expanding), ``salun_soft`` (soft-thresholded ``rl``), ``neggrad_plus``, ``scrub`` and ``ssd``
    (selective synaptic dampening). Each method's own hyper-parameters come in ``method_args``. Any method that
    changes weights by gradients or by an additive update takes the saliency mask (``saliency_ratio`` or
    ``mask_path``: a :class:`~salun_lightning.callbacks.WeightSaliencyCallback` added by :meth:`configure_callbacks`;
    ``salun`` has it by default); the others refuse it and say why. Batches are the dicts of
    :class:`~salun_lightning.data.UnlearningDataModule` (``image``, ``label``, ``is_forget``; test batches also
    ``split``), whose ``stream`` must be this module's :attr:`train_stream`.

    A fit marks its run directory (``trainer.default_root_dir``) incomplete, and at its end writes the network it
    produced to ``model.safetensors`` there (with ``method``, ``model``, ``num_classes``, ``in_channels`` and
    ``fit_minutes`` as metadata) and clears the mark (:mod:`salun_lightning.runs`). The test stage reports UA = 100 -
    forget accuracy, RA = retain accuracy, TA = test accuracy (remaining classes for class-wise forgetting),
    MIA-Efficacy and RTE (minutes of the fit) and writes them to ``metrics.json`` in the directory of the model it
    tested: the checkpoint's run (``trainer.test(ckpt_path=...)``), the file given to :meth:`load_model`, else the
    run directory of the fit.

    Args:
        method: the training or unlearning method.
        model: classifier name for :func:`~salun_lightning.models.build_classifier`.
        num_classes: number of classes of the data (the ``salun`` CLI links the data module's).
        in_channels: channels of the data's images (the ``salun`` CLI links the data module's).
        original_weights: the original model (Lightning checkpoint, safetensors or ``torch.save``d state dict,
            loaded strictly with ``weights_only=True``); required by every method that starts from it.
        optimizer: ``sgd`` (momentum, the paper) or ``adamw``.
        lr: learning rate.
        momentum: SGD momentum.
        weight_decay: weight decay.
        lr_milestones: epochs at which the learning rate is multiplied by ``lr_gamma`` (empty: constant).
        lr_gamma: the factor at each milestone.
        method_args: the method's own hyper-parameters by name (e.g. ``{"l1_alpha": 5e-4}`` for ``l1_sparse``,
            ``{"random_labels": "any"}`` for ``rl`` and ``salun``; docs/method.md lists them); defaults where absent.
        saliency_ratio: the fraction of weights to train under the saliency mask: default 0.5 for ``salun``, no mask
            for the other methods.
        freeze_non_salient: with a mask: restore non-salient weights after every step so they never move (exact; the
            reference code since February 2026), or only mask their gradients (the code that produced the paper's
            tables, where weight decay and momentum still shrink them).
        saliency_precision: with a mask: ``float32`` saliency pass whatever the Trainer's precision (the reference
            code), or ``trainer`` (see :class:`~salun_lightning.callbacks.WeightSaliencyCallback`).
        mask_path: load the mask from this file (``salun mask`` writes one) instead of computing it.
        save_mask_path: write the computed mask here (default: the run's ``mask.safetensors``).
        mia_seed: seed of the MIA-Efficacy shadow-set subsampling.
        channels_last: use the channels-last memory format (faster convolutions on GPUs); default: on CUDA only.
        compile_backend: compile the network's forward with ``torch.compile(backend=...)`` (``inductor`` on GPUs);
            ``None`` runs it eagerly. The saved weights and checkpoints are the plain network's.

    Raises:
        ValueError: an unknown method, missing or superfluous ``original_weights``, no ``num_classes`` or
            ``in_channels``, invalid hyper-parameters, or a mask for a method that cannot take one.
        FileNotFoundError: ``original_weights`` does not exist.
    """

    methods = METHODS  # method name -> its class (its training stream, loss or update, hyper-parameters)

    def __init__(
        self,
        method: Method = "salun",
        model: str = "resnet18",
        num_classes: Optional[int] = None,
        in_channels: Optional[int] = None,
        original_weights: Optional[str] = None,
        optimizer: Literal["sgd", "adamw"] = "sgd",
        lr: float = 0.013,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        lr_milestones: Optional[list[int]] = None,
        lr_gamma: float = 0.1,
        method_args: Optional[dict[str, Any]] = None,
        saliency_ratio: Optional[float] = None,
        freeze_non_salient: bool = True,
        saliency_precision: Literal["float32", "trainer"] = "float32",
        mask_path: Optional[str] = None,
        save_mask_path: Optional[str] = None,
        mia_seed: int = 0,
        channels_last: Optional[bool] = None,
        compile_backend: Optional[str] = None,
    ) -> None:
        super().__init__()
        unit = build_method(method, method_args)  # refuses an unknown method and bad hyper-parameters
        if unit.from_original and original_weights is None:
            raise ValueError(
                f"method {method!r} unlearns from the original model: pass original_weights=<checkpoint or "
                "safetensors file> (a 'train' run writes model.safetensors into its run directory)."
            )
        if not unit.from_original and original_weights is not None:
            raise ValueError(f"method {method!r} trains from fresh weights: remove original_weights.")
        if lr <= 0 or weight_decay < 0 or not 0 <= momentum < 1:
            raise ValueError("lr must be positive, weight_decay non-negative, momentum in [0, 1).")
        masked = saliency_ratio is not None or mask_path is not None or save_mask_path is not None
        if masked and unit.mask_refusal is not None:
            raise ValueError(f"method {method!r} cannot take a saliency mask: {unit.mask_refusal}. Remove "
                             "saliency_ratio, mask_path and save_mask_path.")
        if saliency_ratio is not None and not 0 < saliency_ratio <= 1:
            raise ValueError(f"saliency_ratio must be in (0, 1], got {saliency_ratio}.")
        ratio = saliency_ratio if saliency_ratio is not None else unit.default_saliency_ratio
        if ratio is None and masked:
            raise ValueError(f"method {method!r} has no saliency mask by default: with mask_path or save_mask_path, "
                             "set saliency_ratio too (the fraction of weights to train; a loaded mask's own ratio).")
        if compile_backend is not None and compile_backend not in torch._dynamo.list_backends(exclude_tags=()):
            raise ValueError(
                f"unknown compile_backend {compile_backend!r}; choose one of "
                f"{', '.join(torch._dynamo.list_backends())} (inductor on GPUs), or null to run eagerly."
            )
        if num_classes is None or in_channels is None:
            raise ValueError(
                "num_classes and in_channels are required: give the data's class count and image channels (the salun "
                "command line links them from the data module, e.g. UnlearningDataModule.num_classes)."
            )
        self.save_hyperparameters()
        self.method = unit
        self.saliency_ratio = ratio  # None: no saliency mask
        self.num_classes = num_classes
        self.net = build_classifier(model, num_classes, in_channels)
        self.clock = FitClock()  # RTE: the minutes of the fit, across resumes (fit_minutes)
        self.run_id: Optional[str] = None  # the run that made the weights (manifest.json), once known
        self.model_path: Optional[str] = None  # the saved model given to load_model, if any
        self._saliency: Optional[WeightSaliencyCallback] = None  # salun's callback, once configured
        if original_weights is not None:
            load_weights(self.net, original_weights, "original_weights")
        self.net = unit.prepare(self.net)  # be widens its head; scrub and bs copy their frozen model
        self._channels_last = bool(channels_last)
        self.__dict__["_compiled"] = None  # torch.compile(self.net) once set up; kept out of the submodules
        self.test_accuracy = nn.ModuleDict(
            {name: MulticlassAccuracy(unit.output_classes(num_classes), average="micro") for name in TEST_SPLITS}
        )
        self.mia = MIAEfficacy(seed=mia_seed)

    @property
    def fit_minutes(self) -> Optional[float]:
        """RTE: the minutes of the last fit (a resumed one's earlier part included), or of the model loaded."""
        return self.clock.minutes

    @property
    def train_stream(self) -> str:
        """The training stream the data module must serve for this module's method."""
        return self.method.stream

    @property
    def uses_channels_last(self) -> bool:
        """Whether the network runs in the channels-last memory format."""
        return self._channels_last

    def saliency_mask(self) -> Optional[dict[str, Tensor]]:
        """The saliency mask by parameter name of :attr:`net` (``True``: trained), or ``None`` without a mask."""
        if self._saliency is None or not self._saliency.mask:
            return None
        return {name.removeprefix("net."): mask for name, mask in self._saliency.mask.items()}

    # ------------------------------------------------------------------------------------------------ model
    def load_model(self, path: str) -> None:
        """Load a saved network (``model.safetensors`` of a run, or a checkpoint) to test it; the test writes its
        metrics into that run's directory.

        Raises:
            FileNotFoundError, ValueError: no such file, an unreadable one, one that does not fit the network, or
                one saved by another method (the message names both).
        """
        self.net = self.method.tested_network(self.net)  # be with prune: the saved head has no shadow row
        metadata = load_weights(self.net, path, "the model to test")
        self._check_saved_method(metadata.get("method"), repr(path))
        minutes = metadata.get("fit_minutes")
        self.clock.restore(float(minutes) if minutes not in (None, "None") else None)
        self.run_id = metadata.get("run_id") if metadata.get("run_id") not in (None, "None") else None
        self.model_path = path

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_with(self.net if self._compiled is None else self._compiled, images)

    def forward_with(self, net: nn.Module, images: Tensor) -> Tensor:
        """``net(images)`` in this module's memory format (for a method's frozen copies)."""
        if self._channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return net(images)

    def configure_callbacks(self) -> list[Callback]:
        if self.saliency_ratio is None or (self._trainer is not None and self._trainer.state.fn != "fit"):
            return []  # a test after the fit keeps the fit's callback, which does nothing outside fit
        hp = self.hparams
        self._saliency = WeightSaliencyCallback(  # setup("fit") points it at the run directory's mask file
            ratio=self.saliency_ratio,
            mask_path=hp.mask_path,
            save_mask_path=hp.save_mask_path,
            freeze_non_salient=hp.freeze_non_salient,
            saliency_precision=hp.saliency_precision,
        )
        return [self._saliency]

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        else:
            optimizer = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if not hp.lr_milestones:
            return optimizer
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=hp.lr_milestones, gamma=hp.lr_gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # ------------------------------------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Optional[Tensor]:
        loss = self.method.training_loss(self, batch)
        if loss is not None:
            self.log("train/loss", loss, prog_bar=True)
        return loss

    def log_accuracy(self, logits: Tensor, labels: Tensor) -> None:
        """Log a training batch's accuracy against its true labels (``train/accuracy``)."""
        accuracy = (logits.detach().argmax(1) == labels).float().mean() * 100
        self.log("train/accuracy", accuracy, prog_bar=True, batch_size=len(labels))

    def on_train_epoch_start(self) -> None:
        self.method.on_train_epoch_start(self)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.method.after_optimizer_step(self)

    def on_fit_start(self) -> None:  # after the callbacks' on_fit_start: the saliency mask exists
        self.method.on_fit_start(self)

    def saliency_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """The loss the saliency mask ranks weights by: cross-entropy with the true labels (docs/method.md, 'The
        weight saliency mask')."""
        return nn.functional.cross_entropy(self(batch["image"]), batch["label"])

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        logits = self(batch["image"])
        accuracy = (logits.argmax(1) == batch["label"]).float().mean() * 100
        self.log("val/accuracy", accuracy, prog_bar=True, batch_size=len(logits))

    def setup(self, stage: str) -> None:
        hp = self.hparams
        if stage == "fit":  # before the callbacks' on_fit_start, so that RTE includes the saliency mask
            open_fit(self.trainer, self.hparams.method, self._saliency, self.clock)
        on_cuda = self.trainer.strategy.root_device.type == "cuda"
        self._channels_last = on_cuda if hp.channels_last is None else hp.channels_last
        if self._channels_last:
            self.net.to(memory_format=torch.channels_last)
        if hp.compile_backend is not None and self._compiled is None:
            self.__dict__["_compiled"] = torch.compile(self.net, backend=hp.compile_backend)

    def run_inputs(self) -> dict[str, Optional[str]]:
        """The files this module reads during a fit (a fit refuses a run directory that holds one of them)."""
        return {"original_weights": self.hparams.original_weights, "mask_path": self.hparams.mask_path}

    def check_outputs(self) -> None:
        """Refuse, before the run directory is touched, outputs that cannot be written (``save_mask_path``) and a
        fit the method cannot do (e.g. ``scrub`` with fewer epochs than ``msteps``)."""
        check_mask_output(self.hparams.save_mask_path)
        self.method.check_fit(self.trainer)

    def on_fit_end(self) -> None:
        self.net = self.method.tested_network(self.net)  # be with prune drops its shadow row
        self.clock.stop()
        self.run_id = run_id_of(self.trainer)
        if self.trainer.is_global_zero:
            hp, root = self.hparams, Path(self.trainer.default_root_dir)
            metadata = {
                "format": MODEL_FORMAT,
                "method": hp.method,
                "model": hp.model,
                "num_classes": hp.num_classes,
                "in_channels": hp.in_channels,
                "fit_minutes": self.fit_minutes,
                "run_id": self.run_id,
            }
            save_weights(self.net, root / MODEL_FILENAME, metadata)
        close_run(self.trainer)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["fit_minutes"] = self.clock.checkpoint_minutes()
        checkpoint["run_id"] = (run_id_of(self.trainer) if self._trainer is not None else None) or self.run_id

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._check_saved_method(checkpoint.get("hyper_parameters", {}).get("method"), "the checkpoint")
        self.clock.restore(checkpoint.get("fit_minutes"))  # a resumed fit adds its own minutes to these (RTE)
        self.run_id = checkpoint.get("run_id")

    def _check_saved_method(self, saved: Optional[str], source: str) -> None:
        """Refuse weights saved by another method: their metrics would carry the wrong method's name."""
        if saved is not None and saved != self.hparams.method:
            raise ValueError(
                f"{source} was saved by method {saved!r}, but this model is configured as "
                f"{self.hparams.method!r}: test it with the config of the run that made it (its config.yaml)."
            )

    # ------------------------------------------------------------------------------------------------ testing
    def on_test_start(self) -> None:
        check_writable(self.tested_run_directory(), METRICS_FILENAME)  # before any test batch
        for metric in (*self.test_accuracy.values(), self.mia):
            metric.reset()

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        split = batch.get("split")
        if split not in TEST_SPLITS:
            raise ValueError(
                f"test batches must say their split in batch['split'] (one of {', '.join(TEST_SPLITS)}), got "
                f"{split!r}; test with an UnlearningDataModule."
            )
        logits = self(batch["image"]).float()
        self.test_accuracy[split].update(logits, batch["label"])
        if split in ("forget", "retain", "test"):
            self.mia.update(logits, batch["label"], split)

    def on_test_epoch_end(self) -> None:
        accuracy = {
            name: 100 * metric.compute().item() for name, metric in self.test_accuracy.items() if metric.update_called
        }
        missing = [name for name in ("forget", "retain", "test") if name not in accuracy]
        if missing:
            raise ValueError(f"the test data had no {', '.join(missing)} batches; UA, RA and TA need all three.")
        results = {
            "method": self.hparams.method,
            "UA": 100 - accuracy["forget"],
            "RA": accuracy["retain"],
            "TA": accuracy["test"],
            "MIA": self.mia.compute().item(),
            "RTE": self.fit_minutes,
            "run_id": self.run_id,
        }
        if "test_forgotten_class" in accuracy:
            results["forgotten_class_test_accuracy"] = accuracy["test_forgotten_class"]
        for key in ("UA", "RA", "TA", "MIA"):
            self.log(f"test/{key}", results[key], add_dataloader_idx=False)
        if self.trainer.is_global_zero:
            write_output(self.tested_run_directory(), METRICS_FILENAME, results)
            rank_zero_info("test: " + ", ".join(f"{k} {v:.2f}" for k, v in results.items() if isinstance(v, float)))

    def tested_run_directory(self) -> Path:
        """Where the test writes ``metrics.json``: the run directory of the model under test."""
        tested = self.trainer.ckpt_path or self.model_path
        return run_directory_of(tested) if tested else Path(self.trainer.default_root_dir)
