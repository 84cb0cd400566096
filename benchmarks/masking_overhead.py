"""Training-step time with the WeightSaliencyCallback versus without it (CIFAR ResNet-18, batch 64, CPU).

Three configurations share one model size and synthetic 32x32 data: no callback, the callback with
``freeze_non_salient=True`` (mask gradients, restore non-salient weights and zero their optimizer state after each
step) and with ``freeze_non_salient=False`` (mask gradients only). They run in interleaved rounds in one process;
a step is timed from ``on_train_batch_start`` to ``on_train_batch_end`` (forward, backward, masking, optimizer
step, restore), the first steps of each fit are discarded, and the median over all rounds is reported.

    python benchmarks/masking_overhead.py [--rounds 4] [--steps 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import lightning.pytorch as pl
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from salun_lightning.callbacks import WeightSaliencyCallback
from salun_lightning.models import cifar_resnet18

WARMUP_STEPS = 2


class Classifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = cifar_resnet18(10)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)


class StepTimer(pl.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx >= WARMUP_STEPS:
            self.times.append(time.perf_counter() - self._start)


def run(config: str, steps: int, data: DataLoader, mask_path: str) -> list[float]:
    timer = StepTimer()
    callbacks: list[pl.Callback] = [timer]
    if config != "no callback":
        callbacks.append(WeightSaliencyCallback(mask_path=mask_path, freeze_non_salient=config == "freeze_non_salient=True"))
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=steps + WARMUP_STEPS, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
    )
    trainer.fit(Classifier(), data)
    return timer.times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration and round")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    count = 64 * (args.steps + WARMUP_STEPS)
    dataset = TensorDataset(torch.randn(count, 3, 32, 32, generator=generator), torch.randint(0, 10, (count,), generator=generator))
    data = DataLoader(dataset, batch_size=64)
    with tempfile.TemporaryDirectory() as tmp:
        mask_path = os.path.join(tmp, "mask.safetensors")
        start = time.perf_counter()
        saliency = WeightSaliencyCallback(forget_dataloader=DataLoader(dataset, batch_size=64), save_mask_path=mask_path)
        pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, callbacks=[saliency]).fit(Classifier(), data)
        print(f"mask computation on {count} forget images plus one step: {time.perf_counter() - start:.1f} s")
        configs = ["no callback", "freeze_non_salient=True", "freeze_non_salient=False"]
        times: dict[str, list[float]] = {c: [] for c in configs}
        for _ in range(args.rounds):
            for config in configs:
                times[config].extend(run(config, args.steps, data, mask_path))
    base = statistics.median(times["no callback"])
    print(f"machine: {platform.machine()}, {args.threads} threads, torch {torch.__version__}; "
          f"{len(times['no callback'])} timed steps per configuration")
    print("| configuration | median step s | ratio to no callback |")
    print("| --- | --- | --- |")
    for config in configs:
        median = statistics.median(times[config])
        print(f"| {config} | {median:.4f} | {median / base:.3f}x |")


if __name__ == "__main__":
    main()
