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

On a GPU (``--accelerator cuda``, the default when one is present) both run there with ``--precision``
(``bf16-mixed``: autocast in the plain loop); the module keeps the data set on the GPU (``data_on_device``) and
the network channels-last. ``--tiny`` replaces the CIFAR-10 subset by a small synthetic image folder (a check of the
script, not a measurement).

    python benchmarks/throughput.py [--rounds 2] [--workers 2] [--model small_resnet] [--accelerator cuda]
        [--precision bf16-mixed] [--tiny]
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
from cifar_subset import ARCHIVE, build_subset  # noqa: E402

BATCH = 256


class EpochTimer(pl.Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.seconds.append(time.perf_counter() - self._start)


def module_epoch(subset: Path, weights: Path, mask: Path, cache: Path, args: argparse.Namespace) -> tuple[int, float]:
    module = ClassifierUnlearningModule("salun", model=args.model, num_classes=10, in_channels=3,
                                        original_weights=str(weights), mask_path=str(mask))
    data = UnlearningDataModule("image_folder", data_path=str(subset), cache_dir=str(cache), forget_fraction=0.1,
                                batch_size=BATCH, seed=0, stream=module.train_stream,
                                data_on_device=args.accelerator == "cuda")
    timer = EpochTimer()
    trainer = pl.Trainer(accelerator=args.accelerator, devices=1, precision=args.precision, max_epochs=1,
                         logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
                         default_root_dir=str(cache.parent))
    trainer.fit(module, data)
    return len(data.split.forget) + len(data.split.retain), timer.seconds[0]


def plain_epoch(subset: Path, weights: Path, mask: Path, args: argparse.Namespace) -> tuple[int, float]:
    """Upstream-style RL epoch: the forget loader (random labels), then the retain loader, PIL transforms."""
    device = torch.device(args.accelerator)
    mean, std = KNOWN_DATASETS["cifar10"].mean, KNOWN_DATASETS["cifar10"].std
    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])
    dataset = datasets.ImageFolder(str(subset / "train"), transform=transform)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist()
    forget, retain = Subset(dataset, order[: len(dataset) // 10]), Subset(dataset, order[len(dataset) // 10 :])
    loaders = [(DataLoader(part, batch_size=BATCH, shuffle=True, num_workers=args.workers,
                           pin_memory=device.type == "cuda"), relabel)
               for part, relabel in ((forget, True), (retain, False))]
    net = build_classifier(args.model, 10)
    load_weights(net, str(weights))
    net.to(device)
    masks = {name.removeprefix("net."): value.float().to(device) for name, value in load_mask(mask)[0].items()}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed")
    optimizer = torch.optim.SGD(net.parameters(), lr=0.013, momentum=0.9, weight_decay=5e-4)
    net.train()
    start = time.perf_counter()
    seen = 0
    for loader, relabel in loaders:
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if relabel:
                labels = random_other_labels(labels, 10)
            with autocast:
                loss = F.cross_entropy(net(images), labels)
            optimizer.zero_grad()
            loss.backward()
            for name, param in net.named_parameters():
                param.grad *= masks[name]
            optimizer.step()
            seen += len(labels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen, time.perf_counter() - start


def synthetic_folder(out: Path, per_class: int) -> Path:
    """A small image folder of random 32x32 RGB images (``--tiny``): the pipelines' work, not CIFAR-10's."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", per_class), ("test", 2)):
        for label in range(10):
            folder = out / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                pixels = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=generator).numpy()
                Image.fromarray(pixels).save(folder / f"{index}.png")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the plain loop")
    parser.add_argument("--model", default="small_resnet")
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path("runs/throughput"))
    parser.add_argument("--archive", type=Path, default=ARCHIVE, help="the CIFAR-10 JPEG archive")
    parser.add_argument("--accelerator", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="32-true", help="32-true or bf16-mixed")
    parser.add_argument("--tiny", action="store_true", help="a small synthetic image folder: a check of the script")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    if args.tiny:
        subset = synthetic_folder(args.out / "synthetic", per_class=min(args.train_per_class, 30))
    else:
        subset = build_subset(args.out / "data", args.train_per_class, 10, args.archive)
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
        trainer = pl.Trainer(accelerator=args.accelerator, devices=1, max_steps=0, logger=False,
                             enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=str(args.out))
        trainer.fit(module, data)
        rates: dict[str, list[float]] = {"plain loop": [], "module": []}
        for _ in range(args.rounds):
            images, seconds = plain_epoch(subset, weights, mask, args)
            rates["plain loop"].append(images / seconds)
            images, seconds = module_epoch(subset, weights, mask, cache, args)
            rates["module"].append(images / seconds)
    plain, ours = statistics.median(rates["plain loop"]), statistics.median(rates["module"])
    device = torch.cuda.get_device_name() if args.accelerator == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"machine: {platform.machine()}, {device}, torch {torch.__version__}, {args.precision}; model {args.model}, "
          f"batch {BATCH}, {len(list((subset / 'train').rglob('*.*')))} training images, {args.rounds} rounds"
          f"{' (tiny: synthetic images)' if args.tiny else ''}")
    print("| pipeline | images/s (median) | all rounds |")
    print("| --- | --- | --- |")
    for name, values in rates.items():
        print(f"| {name} | {statistics.median(values):.0f} | {', '.join(f'{v:.0f}' for v in values)} |")
    print(f"ratio module / plain loop: {ours / plain:.2f}x")


if __name__ == "__main__":
    main()
