"""Concept erasure at Stable Diffusion 1.x scale: a few training steps of salun, esd_x and fmn (random weights).

Each method runs through ``TextToImageDiffusion`` and a Lightning ``Trainer`` (bf16 autocast and gradient
checkpointing on a GPU), erasing a style from a small image folder of random images: forget images captioned "a photo
of a <thing> in sketch style", retain images "a photo of a <thing>". ``salun``: pseudo ``replace`` (the forget prompt
without "in sketch style"), its mask computed from the forget set at fit start; ``esd_x``: concept prompt "sketch
style" (ESD's 50 sampling steps, batch 1); ``fmn``: concept "sketch" in "in sketch style". Every method starts from the
same random "original" model and takes one warm-up step and then ``--steps`` steps; each step's seconds and peak
CUDA memory (allocated, reset at every step) are printed, and for salun the saliency pass per forget batch and the
selection (``WeightSaliencyCallback.saliency_stats``). ``--checkpointing both`` runs every method with the
denoiser's gradient checkpointing on and off (off is faster where memory allows). ``--fsdp`` adds a salun run with
the denoiser sharded by FSDP2 (``ModelParallelStrategy`` on the one device: the sharded code path, not a memory
saving; with checkpointing as the first ``--checkpointing`` setting).

Parts: the UNet is Stable Diffusion 1.x's (``--size sd``: diffusers' ``UNet2DConditionModel`` defaults, which are SD
1.x's, with 64x64x4 latents and 768-wide text states, about 860M parameters); the VAE and the text encoder only feed
it and are SD-shaped but small (a 2-level ``AutoencoderKL`` with 4 latent channels, so 128x128 images give 64x64
latents; a one-layer CLIP text encoder, 768 wide, 77 positions, byte-level tokenizer). ``--size tiny`` runs the same
on the CPU at toy size (``benchmarks/gpu_check.sh --tiny``). The denoiser is not saved at the end of a fit (3.4 GB).

    python benchmarks/sd_concept_step.py [--size sd] [--batch 4] [--steps 2] [--checkpointing on|off|both] [--fsdp]
"""

from __future__ import annotations

import argparse
import csv
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.strategies import ModelParallelStrategy
from PIL import Image

from salun_lightning.callbacks import WeightSaliencyCallback
from salun_lightning.diffusion import DiffusionDataModule, TextToImageDiffusion
from sd_unet_salun import TOKENIZER, UNETS, sd_parts  # the same pipeline as the mask benchmark

THINGS = ["house", "tree", "dog", "cat", "boat", "car", "bird", "horse"]
METHODS = {  # method: its arguments (and its batch size: None is --batch)
    "salun": ({"pseudo": "replace", "concept": "in sketch style", "alpha": 0.5, "lr": 1e-5}, None),
    "esd_x": ({"concept_prompt": "sketch style", "lr": 1e-5, "esd_sampling_steps": 50}, 1),
    "fmn": ({"concept_prompt": "in sketch style", "concept": "sketch", "lr": 2e-6}, None),
}


def original(size: str, directory: Path) -> tuple[int, int]:
    """Save a random 'original' pipeline (SD 1.x UNet, small SD-shaped VAE and text encoder) into ``directory``;
    return the image side and the UNet's parameter count."""
    parts = sd_parts(size)
    side = parts["unet"]["sample_size"] * 2
    torch.manual_seed(0)
    model = TextToImageDiffusion(method="train", **parts, tokenizer=str(TOKENIZER))
    model.tokenizer.model_max_length = 77  # Stable Diffusion's prompt length
    model.save_components(directory)
    return side, sum(p.numel() for p in model.unet.parameters())


def image_folder(root: Path, side: int, count: int) -> Path:
    """``count`` random training images of each class (``sketch`` to forget, ``photo`` to keep) and one test image
    each, with ``prompts.csv``, as ``DiffusionDataModule`` reads them."""
    rows = [["file", "prompt"]]
    generator = np.random.default_rng(0)
    for split, number in (("train", count), ("test", 1)):
        for name in ("sketch", "photo"):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(number):
                pixels = generator.integers(0, 256, (side, side, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i:03d}.png")
                thing = THINGS[i % len(THINGS)]
                if split == "train":
                    rows.append([f"{name}/{i:03d}.png",
                                 f"a photo of a {thing} in sketch style" if name == "sketch" else f"a photo of a {thing}"])
    with open(root / "prompts.csv", "w", newline="") as stream:
        csv.writer(stream).writerows(rows)
    return root


class StepClock(Callback):
    """Seconds and peak CUDA memory of every training step, and the seconds from fit start to the first step."""

    def __init__(self) -> None:
        self.steps: list[tuple[float, float]] = []
        self.before_first = float("nan")
        self._fit_start = self._start = 0.0

    @staticmethod
    def _sync(module: Any) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        self._fit_start = time.perf_counter()

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._sync(pl_module)
        if not self.steps:
            self.before_first = time.perf_counter() - self._fit_start
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._sync(pl_module)
        seconds = time.perf_counter() - self._start
        peak = torch.cuda.max_memory_allocated(pl_module.device) / 2**30 if pl_module.device.type == "cuda" else float(
            "nan")
        self.steps.append((seconds, peak))


def run(method: str, pretrained: Path, folder: Path, side: int, args: argparse.Namespace, root: Path,
        checkpointing: bool, fsdp: bool = False) -> dict:
    """One method: warm-up step plus ``args.steps`` steps through the Trainer; their seconds and peak memory."""
    arguments, batch = METHODS[method]
    cuda = torch.cuda.is_available()
    data = DiffusionDataModule("image_folder", data_path=str(folder), prompts_csv=str(folder / "prompts.csv"),
                               cache_dir=str(root / "cache"), forget_class="sketch", image_size=side, channels=3,
                               batch_size=batch or args.batch)
    model = TextToImageDiffusion(method=method, pretrained=str(pretrained), gradient_checkpointing=checkpointing,
                                 class_names=data.class_names, forget_class="sketch", **arguments)
    model.save_components = lambda directory: None  # no 3.4 GB denoiser on disk per method
    data.hparams.stream = model.train_stream  # as the salun command line links it
    clock = StepClock()
    strategy = ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1) if fsdp else "auto"
    trainer = Trainer(accelerator="auto", devices=1, strategy=strategy, precision="bf16-mixed" if cuda else "32-true",
                      max_steps=1 + args.steps, default_root_dir=root / method, logger=False, callbacks=[clock],
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, data)
    timed = clock.steps[1:]  # after the warm-up step
    record = {"method": method + (" (FSDP2)" if fsdp else ""), "checkpointing": checkpointing,
              "batch": batch or args.batch,
              "first_step_s": clock.steps[0][0],
              "steps_s": [s for s, _ in timed], "median_s": statistics.median(s for s, _ in timed),
              "peak_gib": max(p for _, p in clock.steps), "before_first_step_s": clock.before_first}
    extra = ""
    saliency = next((c for c in trainer.callbacks if isinstance(c, WeightSaliencyCallback)), None)
    if saliency is not None:
        batches = len(data.forget_dataloader())
        record.update(forget_batches=batches, saliency_s=saliency.saliency_stats["saliency_seconds"],
                      selection_s=saliency.saliency_stats["selection_seconds"])
        extra = (f"; mask at fit start: saliency pass {record['saliency_s'] / batches:.2f} s per forget batch "
                 f"({batches} batches, the first CUDA work included), selection {record['selection_s']:.3f} s; "
                 f"fit start to first step {clock.before_first:.2f} s")
    memory = f"{record['peak_gib']:.1f} GiB" if cuda else "none (CPU)"
    print(f"{record['method']} (checkpointing {'on' if checkpointing else 'off'}): batch {record['batch']}; "
          f"warm-up step {record['first_step_s']:.2f} s; steps "
          f"{', '.join(f'{s:.3f}' for s in record['steps_s'])} s (median {record['median_s']:.3f} s); peak CUDA "
          f"memory {memory}{extra}", flush=True)
    del model, trainer
    if cuda:
        torch.cuda.empty_cache()
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=list(UNETS), default="sd")
    parser.add_argument("--batch", type=int, default=4, help="images per forget (and retain) batch of salun and fmn")
    parser.add_argument("--steps", type=int, default=2, help="timed steps after the warm-up step")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--fsdp", action="store_true", help="also salun with the denoiser sharded by FSDP2")
    parser.add_argument("--checkpointing", choices=("on", "off", "both"), default="on",
                        help="the denoiser's gradient checkpointing (both: every method with it on, then off)")
    args = parser.parse_args()
    if args.size == "tiny":
        torch.set_num_threads(1)
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if cuda else f"CPU ({platform.machine()})"
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        started = time.perf_counter()
        pretrained = root / "original"
        side, count = original(args.size, pretrained)
        folder = image_folder(root / "images", side, 2 * args.batch)
        print(f"device: {device}; torch {torch.__version__}; UNet '{args.size}': {count:,} parameters, "
              f"{side // 2}x{side // 2}x4 latents; SD-shaped small VAE and one-layer text encoder; "
              f"{'bf16 autocast' if cuda else 'float32'}; parts built and saved in "
              f"{time.perf_counter() - started:.1f} s", flush=True)
        settings = {"on": [True], "off": [False], "both": [True, False]}[args.checkpointing]
        records = [run(method, pretrained, folder, side, args, root, checkpointing)
                   for checkpointing in settings for method in args.methods]
        if args.fsdp:
            records.append(run("salun", pretrained, folder, side, args, root, settings[0], fsdp=True))
    print("\n| method | checkpointing | batch | median step s | peak CUDA GiB |\n| --- | --- | ---: | ---: | ---: |")
    for r in records:
        peak = f"{r['peak_gib']:.1f}" if cuda else "-"
        setting = "on" if r["checkpointing"] else "off"
        print(f"| {r['method']} | {setting} | {r['batch']} | {r['median_s']:.3f} | {peak} |")


if __name__ == "__main__":
    main()
