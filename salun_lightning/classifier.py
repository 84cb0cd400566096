"""One LightningModule for every classifier unlearning method: the method picks the loss and the data stream.

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

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics.classification import MulticlassAccuracy

from salun_lightning.callbacks import WeightSaliencyCallback
from salun_lightning.labels import random_forget_labels
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

Method = Literal["train", "retrain", "ft", "ga", "rl", "l1_sparse", "salun"]
MODEL_FORMAT = "salun-lightning/classifier"
TEST_SPLITS = ("forget", "retain", "test", "test_forgotten_class")


@dataclass(frozen=True)
class MethodSpec:
    """What a method trains on and how: the only things that vary between methods."""

    stream: str  # the UnlearningDataModule training stream
    from_original: bool  # starts from the original model's weights (else from fresh weights)
    forget_loss: Literal["none", "ascent", "random_labels"]  # what happens to forget samples in the stream
    l1: bool = False
    saliency: bool = False


METHODS: dict[str, MethodSpec] = {
    "train": MethodSpec("full", from_original=False, forget_loss="none"),
    "retrain": MethodSpec("retain", from_original=False, forget_loss="none"),
    "ft": MethodSpec("retain", from_original=True, forget_loss="none"),
    "ga": MethodSpec("forget", from_original=True, forget_loss="ascent"),
    "rl": MethodSpec("forget_retain", from_original=True, forget_loss="random_labels"),
    "l1_sparse": MethodSpec("retain", from_original=True, forget_loss="none", l1=True),
    "salun": MethodSpec("forget_retain", from_original=True, forget_loss="random_labels", saliency=True),
}


class ClassifierUnlearningModule(LightningModule):
    """Train an image classifier, or unlearn part of its training data with one of the methods of docs/method.md,
    'Classifier unlearning'.

    Methods: ``train`` (the original model, all training data), ``retrain`` (from scratch on D_r: exact
    unlearning), ``ft`` (fine-tune on D_r), ``ga`` (gradient ascent on D_f), ``rl`` (random labels on D_f plus
    D_r), ``l1_sparse`` (``ft`` plus an L1 penalty whose weight decays linearly to 0) and ``salun`` (``rl`` under the
    WeightSaliencyCallback, added by :meth:`configure_callbacks`). Batches are the dicts of
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
        l1_alpha: the L1 weight at the first step of ``l1_sparse`` (decays linearly to 0).
        saliency_ratio: ``salun``: the fraction of weights to train.
        freeze_non_salient: ``salun``: restore non-salient weights after every step so they never move (exact; the
            reference code since February 2026), or only mask their gradients (the code that produced the paper's
            tables, where weight decay and momentum still shrink them).
        saliency_precision: ``salun``: ``float32`` saliency pass whatever the Trainer's precision (the reference
            code), or ``trainer`` (see :class:`~salun_lightning.callbacks.WeightSaliencyCallback`).
        random_labels: ``rl`` and ``salun``: the forget samples' labels: a random ``other`` class (the paper's
            equation), or ``any`` class, the true one included one time in C (the reference code).
        mask_path: ``salun``: load the mask from this file (``salun mask`` writes one) instead of computing it.
        save_mask_path: ``salun``: write the computed mask here (default: the run's ``mask.safetensors``).
        mia_seed: seed of the MIA-Efficacy shadow-set subsampling.
        channels_last: use the channels-last memory format (faster convolutions on GPUs); default: on CUDA only.
        compile_backend: compile the network's forward with ``torch.compile(backend=...)`` (``inductor`` on GPUs);
            ``None`` runs it eagerly. The saved weights and checkpoints are the plain network's.

    Raises:
        ValueError: an unknown method, missing or superfluous ``original_weights``, no ``num_classes`` or
            ``in_channels``, or invalid hyper-parameters.
        FileNotFoundError: ``original_weights`` does not exist.
    """

    methods = METHODS  # method name -> MethodSpec (its training stream, loss, ...)

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
        l1_alpha: float = 5e-4,
        saliency_ratio: float = 0.5,
        freeze_non_salient: bool = True,
        saliency_precision: Literal["float32", "trainer"] = "float32",
        random_labels: Literal["other", "any"] = "other",
        mask_path: Optional[str] = None,
        save_mask_path: Optional[str] = None,
        mia_seed: int = 0,
        channels_last: Optional[bool] = None,
        compile_backend: Optional[str] = None,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}.")
        spec = METHODS[method]
        if spec.from_original and original_weights is None:
            raise ValueError(
                f"method {method!r} unlearns from the original model: pass original_weights=<checkpoint or "
                "safetensors file> (a 'train' run writes model.safetensors into its run directory)."
            )
        if not spec.from_original and original_weights is not None:
            raise ValueError(f"method {method!r} trains from fresh weights: remove original_weights.")
        if lr <= 0 or weight_decay < 0 or l1_alpha < 0 or not 0 <= momentum < 1:
            raise ValueError("lr must be positive, weight_decay and l1_alpha non-negative, momentum in [0, 1).")
        if not 0 < saliency_ratio <= 1:
            raise ValueError(f"saliency_ratio must be in (0, 1], got {saliency_ratio}.")
        if random_labels not in ("other", "any"):
            raise ValueError(f"random_labels must be 'other' or 'any', got {random_labels!r}.")
        if (mask_path or save_mask_path) and not spec.saliency:
            raise ValueError(f"mask_path and save_mask_path belong to method 'salun', not {method!r}.")
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
        self.spec = spec
        self.num_classes = num_classes
        self.net = build_classifier(model, num_classes, in_channels)
        self.clock = FitClock()  # RTE: the minutes of the fit, across resumes (fit_minutes)
        self.run_id: Optional[str] = None  # the run that made the weights (manifest.json), once known
        self.model_path: Optional[str] = None  # the saved model given to load_model, if any
        self._saliency: Optional[WeightSaliencyCallback] = None  # salun's callback, once configured
        if original_weights is not None:
            load_weights(self.net, original_weights, "original_weights")
        self._channels_last = bool(channels_last)
        self.__dict__["_compiled"] = None  # torch.compile(self.net) once set up; kept out of the submodules
        self.test_accuracy = nn.ModuleDict(
            {name: MulticlassAccuracy(num_classes, average="micro") for name in TEST_SPLITS}
        )
        self.mia = MIAEfficacy(seed=mia_seed)

    @property
    def fit_minutes(self) -> Optional[float]:
        """RTE: the minutes of the last fit (a resumed one's earlier part included), or of the model loaded."""
        return self.clock.minutes

    @property
    def train_stream(self) -> str:
        """The training stream the data module must serve for this module's method."""
        return self.spec.stream

    # ------------------------------------------------------------------------------------------------ model
    def load_model(self, path: str) -> None:
        """Load a saved network (``model.safetensors`` of a run, or a checkpoint) to test it; the test writes its
        metrics into that run's directory.

        Raises:
            FileNotFoundError, ValueError: no such file, an unreadable one, one that does not fit the network, or
                one saved by another method (the message names both).
        """
        metadata = load_weights(self.net, path, "the model to test")
        self._check_saved_method(metadata.get("method"), repr(path))
        minutes = metadata.get("fit_minutes")
        self.clock.restore(float(minutes) if minutes not in (None, "None") else None)
        self.run_id = metadata.get("run_id") if metadata.get("run_id") not in (None, "None") else None
        self.model_path = path

    def forward(self, images: Tensor) -> Tensor:
        if self._channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return (self.net if self._compiled is None else self._compiled)(images)

    def configure_callbacks(self) -> list[Callback]:
        if not self.spec.saliency or (self._trainer is not None and self._trainer.state.fn != "fit"):
            return []  # a test after the fit keeps the fit's callback, which does nothing outside fit
        hp = self.hparams
        self._saliency = WeightSaliencyCallback(  # setup("fit") points it at the run directory's mask file
            ratio=hp.saliency_ratio,
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
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits = self(batch["image"])
        labels, is_forget = batch["label"], batch["is_forget"]
        if self.spec.forget_loss == "random_labels":
            drawn = random_forget_labels(labels, logits.shape[1], exclude_true=self.hparams.random_labels == "other")
            labels = torch.where(is_forget, drawn, labels)
        loss = F.cross_entropy(logits, labels)
        if self.spec.forget_loss == "ascent":
            loss = -loss
        self.log("train/loss", loss, prog_bar=True)
        accuracy = (logits.detach().argmax(1) == batch["label"]).float().mean() * 100  # against the true labels
        self.log("train/accuracy", accuracy, prog_bar=True)
        if self.spec.l1:
            weight = self.hparams.l1_alpha * (1 - self.global_step / max(1, self.trainer.estimated_stepping_batches))
            loss = loss + weight * sum(p.abs().sum() for p in self.net.parameters())
            self.log("train/l1_weight", weight)
        return loss

    def saliency_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """The loss the saliency mask ranks weights by: cross-entropy with the true labels (docs/method.md, 'The
        weight saliency mask')."""
        return F.cross_entropy(self(batch["image"]), batch["label"])

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
        """Refuse, before the run directory is touched, outputs that cannot be written (``save_mask_path``)."""
        check_mask_output(self.hparams.save_mask_path)

    def on_fit_end(self) -> None:
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
