"""One LightningModule for every classifier unlearning method: the method picks the loss and the data stream.

Example::

    from lightning.pytorch import Trainer
    from salun_lightning.classifier import ClassifierUnlearningModule
    from salun_lightning.data import UnlearningDataModule

    data = UnlearningDataModule("digits", forget_fraction=0.1)
    model = ClassifierUnlearningModule("salun", model="small_resnet", original_weights="runs/train/model.safetensors")
    trainer = Trainer(max_epochs=10, default_root_dir="runs/salun")
    trainer.fit(model, data)   # adds the WeightSaliencyCallback itself
    trainer.test(model, data)  # UA, RA, TA, MIA-Efficacy, RTE -> runs/salun/metrics.json
"""

from __future__ import annotations

import os
import time
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
from salun_lightning.files import write_atomically, write_json
from salun_lightning.metrics import MIAEfficacy
from salun_lightning.models import build_classifier

Method = Literal["train", "retrain", "ft", "ga", "rl", "l1_sparse", "salun"]
METRICS_FILENAME = "metrics.json"


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


def random_other_labels(labels: Tensor, num_classes: int) -> Tensor:
    """Uniformly random labels that always differ from the true ones (the rl / salun forget targets)."""
    offsets = torch.randint(1, num_classes, labels.shape, device=labels.device)
    return (labels + offsets) % num_classes


class ClassifierUnlearningModule(LightningModule):
    """Train an image classifier, or unlearn part of its training data with one of SPEC section 3's methods.

    Methods: ``train`` (the original model, all training data), ``retrain`` (from scratch on D_r: exact
    unlearning), ``ft`` (fine-tune on D_r), ``ga`` (gradient ascent on D_f), ``rl`` (random labels on D_f plus
    D_r), ``l1_sparse`` (``ft`` plus an L1 penalty whose weight decays linearly to 0) and ``salun`` (``rl`` under the
    WeightSaliencyCallback, added by :meth:`configure_callbacks`). Batches are the dicts of
    :class:`~salun_lightning.data.UnlearningDataModule` (``image``, ``label``, ``is_forget``).

    The test stage reports UA = 100 - forget accuracy, RA = retain accuracy, TA = test accuracy (remaining classes
    for class-wise forgetting), MIA-Efficacy and RTE (minutes of the fit), and writes them to
    ``<trainer.default_root_dir>/metrics.json``.

    Args:
        method: the training or unlearning method.
        model: classifier name for :func:`~salun_lightning.models.build_classifier`.
        num_classes: number of classes; default: the datamodule's.
        in_channels: image channels; default: the datamodule's.
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
        mask_path: ``salun``: load the mask from this file (``salun mask`` writes one) instead of computing it.
        save_mask_path: ``salun``: write the computed mask here.
        mia_seed: seed of the MIA-Efficacy shadow-set subsampling.
        channels_last: use the channels-last memory format (faster convolutions on GPUs).

    Raises:
        ValueError: an unknown method, missing or superfluous ``original_weights``, or invalid hyper-parameters.
    """

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
        mask_path: Optional[str] = None,
        save_mask_path: Optional[str] = None,
        mia_seed: int = 0,
        channels_last: bool = False,
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
        if (mask_path or save_mask_path) and not spec.saliency:
            raise ValueError(f"mask_path and save_mask_path belong to method 'salun', not {method!r}.")
        self.save_hyperparameters()
        self.spec = spec
        self.net: Optional[nn.Module] = None
        self.fit_minutes: Optional[float] = None
        self._fit_started: Optional[float] = None
        if num_classes is not None and in_channels is not None:
            self._build(num_classes, in_channels)

    @property
    def train_stream(self) -> str:
        """The training stream the datamodule should serve for this method."""
        return self.spec.stream

    # ------------------------------------------------------------------------------------------------ model
    def configure_model(self) -> None:
        """Build the network now if ``num_classes``/``in_channels`` had to come from the datamodule."""
        if self.net is not None:
            return
        hp = self.hparams
        data = self.trainer.datamodule if self._trainer is not None else None
        num_classes = hp.num_classes or getattr(data, "num_classes", None)
        in_channels = hp.in_channels or (data.image_shape[0] if data is not None else None)
        if num_classes is None or in_channels is None:
            raise ValueError("set num_classes and in_channels, or fit with a datamodule that provides them.")
        self._build(num_classes, in_channels)

    def _build(self, num_classes: int, in_channels: int) -> None:
        hp = self.hparams
        self.net = build_classifier(hp.model, num_classes, in_channels)
        self.num_classes = num_classes
        if hp.original_weights is not None:
            load_weights(self.net, hp.original_weights)
        if hp.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.test_accuracy = nn.ModuleDict()
        self.mia = MIAEfficacy(seed=hp.mia_seed)

    def forward(self, images: Tensor) -> Tensor:
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def configure_callbacks(self) -> list[Callback]:
        if not self.spec.saliency:
            return []
        return [
            WeightSaliencyCallback(
                ratio=self.hparams.saliency_ratio,
                mask_path=self.hparams.mask_path,
                save_mask_path=self.hparams.save_mask_path,
            )
        ]

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
            labels = torch.where(is_forget, random_other_labels(labels, logits.shape[1]), labels)
        loss = F.cross_entropy(logits, labels)
        if self.spec.forget_loss == "ascent":
            loss = -loss
        self.log("train/loss", loss, prog_bar=True)
        if self.spec.l1:
            weight = self.hparams.l1_alpha * (1 - self.global_step / max(1, self.trainer.estimated_stepping_batches))
            loss = loss + weight * sum(p.abs().sum() for p in self.net.parameters())
            self.log("train/l1_weight", weight)
        return loss

    def saliency_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """The loss the saliency mask ranks weights by: cross-entropy with the true labels (SPEC 1, item 5)."""
        return F.cross_entropy(self(batch["image"]), batch["label"])

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        logits = self(batch["image"])
        accuracy = (logits.argmax(1) == batch["label"]).float().mean() * 100
        self.log("val/accuracy", accuracy, prog_bar=True, batch_size=len(logits))

    def setup(self, stage: str) -> None:
        if stage == "fit":  # before the callbacks' on_fit_start, so that RTE includes the saliency mask
            self._fit_started = time.perf_counter()

    def on_fit_end(self) -> None:
        if self._fit_started is not None:
            self.fit_minutes = (time.perf_counter() - self._fit_started) / 60
        if self.hparams.method == "train" and self.trainer.is_global_zero:
            save_weights(self.net, Path(self.trainer.default_root_dir) / "model.safetensors")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["fit_minutes"] = self.fit_minutes

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.fit_minutes = checkpoint.get("fit_minutes")

    # ------------------------------------------------------------------------------------------------ testing
    def on_test_start(self) -> None:
        names = getattr(self.trainer.datamodule, "test_split_names", None)
        if not names:
            raise ValueError("testing needs an UnlearningDataModule (its test_split_names name the test loaders).")
        self.test_split_names = list(names)
        self.test_accuracy = nn.ModuleDict(
            {name: MulticlassAccuracy(self.num_classes, average="micro").to(self.device) for name in names}
        )
        self.mia.reset()

    def test_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        split = self.test_split_names[dataloader_idx]
        logits = self(batch["image"]).float()
        self.test_accuracy[split].update(logits, batch["label"])
        if split in ("forget", "retain", "test"):
            self.mia.update(logits, batch["label"], split)

    def on_test_epoch_end(self) -> None:
        accuracy = {name: 100 * metric.compute().item() for name, metric in self.test_accuracy.items()}
        results = {
            "method": self.hparams.method,
            "seed": getattr(self.trainer.datamodule, "hparams", {}).get("seed", 0),
            "UA": 100 - accuracy["forget"],
            "RA": accuracy["retain"],
            "TA": accuracy["test"],
            "MIA": self.mia.compute().item(),
            "RTE": self.fit_minutes if self.fit_minutes is not None else float("nan"),
        }
        if "test_forgotten_class" in accuracy:
            results["forgotten_class_test_accuracy"] = accuracy["test_forgotten_class"]
        for key in ("UA", "RA", "TA", "MIA"):
            self.log(f"test/{key}", results[key], add_dataloader_idx=False)
        if self.trainer.is_global_zero:
            write_json(Path(self.trainer.default_root_dir) / METRICS_FILENAME, results)
            rank_zero_info("test: " + ", ".join(f"{k} {v:.2f}" for k, v in results.items() if isinstance(v, float)))


# ---------------------------------------------------------------------------------------------------- files
def load_weights(net: nn.Module, path: str) -> None:
    """Load a classifier's weights strictly from a Lightning checkpoint, safetensors or state-dict file.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file's keys or shapes do not match the network (naming them).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"original_weights {path!r} does not exist; run the 'train' method first.")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        if all(key.startswith("net.") for key in state):  # a checkpoint of this module: take its network
            state = {key[len("net.") :]: value for key, value in state.items()}
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise ValueError(
            f"original_weights {path!r} do not fit the {type(net).__name__}: "
            f"missing {missing[:5]} ({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)}), "
            f"wrong shape {wrong[:5]} ({len(wrong)}). Check the model name and num_classes."
        )
    net.load_state_dict(state, strict=True)


def save_weights(net: nn.Module, path: Path) -> None:
    """Write the network's state dict as safetensors, atomically."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    write_atomically(path, lambda stream: stream.write(save(state)))
