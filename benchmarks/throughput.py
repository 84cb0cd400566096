"""Images per second of a salun unlearning epoch: the Lightning module versus an upstream-style PyTorch loop.

Both train the same model (``--model``, default the small ResNet) on the same CIFAR-10 JPEG subset with the same
batch size, optimizer and float32 precision, and multiply gradients by the same saliency mask:

- module: ``ClassifierUnlearningModule("salun")`` + ``UnlearningDataModule`` through a Lightning Trainer
  (uint8 images decoded once and cached, batched crop/flip/normalise on tensors);
- plain loop, upstream style: ``torchvision.datasets.ImageFolder`` with per-sample PIL transforms (RandomCrop
  with padding, RandomHorizontalFlip, ToTensor, Normalize) in a DataLoader, random labels for forget samples, the
  mask applied by a Python loop over ``named_parameters``.

Epochs alternate (plain, module, plain, module, ...); the mask computation and data decoding are outside the
timed epochs. Prints images/s of each and the ratio.

    python benchmarks/throughput.py [--rounds 2] [--workers 2] [--model small_resnet]
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from salun_lightning import ClassifierUnlearningModule, UnlearningDataModule
from salun_lightning.callbacks import WeightSaliencyCallback, load_mask
from salun_lightning.data.sources import KNOWN_DATASETS
from salun_lightning.labels import random_other_labels
from salun_lightning.models import build_classifier, load_weights, save_weights

sys.path.insert(0, str(Path(__file__).parent))
from cifar_subset import build_subset  # noqa: E402

BATCH = 256


class EpochTimer(pl.Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.seconds.append(time.perf_counter() - self._start)


def module_epoch(subset: Path, weights: Path, mask: Path, cache: Path, model: str) -> tuple[int, float]:
    module = ClassifierUnlearningModule("salun", model=model, num_classes=10, in_channels=3,
                                        original_weights=str(weights), mask_path=str(mask))
    data = UnlearningDataModule("image_folder", data_path=str(subset), cache_dir=str(cache), forget_fraction=0.1,
                                batch_size=BATCH, seed=0, stream=module.train_stream)
    timer = EpochTimer()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
                         default_root_dir=str(cache.parent))
    trainer.fit(module, data)
    return len(data.split.forget) + len(data.split.retain), timer.seconds[0]


def plain_epoch(subset: Path, weights: Path, mask: Path, workers: int, model: str) -> tuple[int, float]:
    """Upstream-style RL epoch: the forget loader (random labels), then the retain loader, PIL transforms."""
    mean, std = KNOWN_DATASETS["cifar10"].mean, KNOWN_DATASETS["cifar10"].std
    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])
    dataset = datasets.ImageFolder(str(subset / "train"), transform=transform)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist()
    forget, retain = Subset(dataset, order[: len(dataset) // 10]), Subset(dataset, order[len(dataset) // 10 :])
    loaders = [(DataLoader(part, batch_size=BATCH, shuffle=True, num_workers=workers), relabel)
               for part, relabel in ((forget, True), (retain, False))]
    net = build_classifier(model, 10)
    load_weights(net, str(weights))
    masks = {name.removeprefix("net."): value.float() for name, value in load_mask(mask)[0].items()}
    optimizer = torch.optim.SGD(net.parameters(), lr=0.013, momentum=0.9, weight_decay=5e-4)
    net.train()
    start = time.perf_counter()
    seen = 0
    for loader, relabel in loaders:
        for images, labels in loader:
            if relabel:
                labels = random_other_labels(labels, 10)
            loss = F.cross_entropy(net(images), labels)
            optimizer.zero_grad()
            loss.backward()
            for name, param in net.named_parameters():
                param.grad *= masks[name]
            optimizer.step()
            seen += len(labels)
    return seen, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the plain loop")
    parser.add_argument("--model", default="small_resnet")
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path("runs/throughput"))
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    subset = build_subset(args.out / "data", args.train_per_class, 10)
    cache = args.out / "cache"
    with tempfile.TemporaryDirectory() as tmp:
        weights, mask = Path(tmp) / "model.safetensors", Path(tmp) / "mask.safetensors"
        torch.manual_seed(0)
        save_weights(build_classifier(args.model, 10), weights)
        module = ClassifierUnlearningModule("salun", model=args.model, num_classes=10, in_channels=3,
                                            original_weights=str(weights))
        data = UnlearningDataModule("image_folder", data_path=str(subset), cache_dir=str(cache), forget_fraction=0.1,
                                    batch_size=BATCH, seed=0, stream=module.train_stream)
        saliency = WeightSaliencyCallback(save_mask_path=str(mask))
        module.configure_callbacks = lambda: [saliency]
        trainer = pl.Trainer(accelerator="cpu", max_steps=0, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=str(args.out))
        trainer.fit(module, data)
        rates: dict[str, list[float]] = {"plain loop": [], "module": []}
        for _ in range(args.rounds):
            images, seconds = plain_epoch(subset, weights, mask, args.workers, args.model)
            rates["plain loop"].append(images / seconds)
            images, seconds = module_epoch(subset, weights, mask, cache, args.model)
            rates["module"].append(images / seconds)
    plain, ours = statistics.median(rates["plain loop"]), statistics.median(rates["module"])
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, CPU; "
          f"model {args.model}, batch {BATCH}, {args.train_per_class * 10} training images, {args.rounds} rounds")
    print("| pipeline | images/s (median) | all rounds |")
    print("| --- | --- | --- |")
    for name, values in rates.items():
        print(f"| {name} | {statistics.median(values):.0f} | {', '.join(f'{v:.0f}' for v in values)} |")
    print(f"ratio module / plain loop: {ours / plain:.2f}x")


if __name__ == "__main__":
    main()
