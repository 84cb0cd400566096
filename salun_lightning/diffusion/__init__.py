"""Diffusion unlearning (docs/method.md, 'Diffusion unlearning'): class-conditional DDPM and latent text-to-image,
one module.

Example::

    >>> import tempfile
    >>> from pathlib import Path
    >>> from salun_lightning.cli import run as salun  # the salun command line, from Python
    >>> configs, runs = Path(__file__).resolve().parents[2] / "configs" / "diffusion", Path(tempfile.mkdtemp())
    >>> quick = ["--trainer.max_steps=1", "--trainer.enable_progress_bar=false", "--data.init_args.batch_size=64",
    ...          "--data.init_args.image_size=8"]  # a tiny run: leave these out for the real one
    >>> unet = ("--model.init_args.unet={sample_size: 8, in_channels: 1, out_channels: 1, block_out_channels: [8, 16], "
    ...         "down_block_types: [DownBlock2D, DownBlock2D], up_block_types: [UpBlock2D, UpBlock2D], "
    ...         "layers_per_block: 1, norm_num_groups: 4}")
    >>> salun(["fit", "--config", f"{configs}/ddpm_digits_train.yaml", *quick, unet,  # the original model
    ...        f"--trainer.default_root_dir={runs}/train"])  # -> <runs>/train/{unet,scheduler}
    >>> salun(["fit", "--config", f"{configs}/ddpm_digits_salun.yaml", *quick,  # forget digit 0
    ...        f"--model.init_args.pretrained={runs}/train", f"--trainer.default_root_dir={runs}/salun"])
    >>> salun(["sample", "--config", f"{configs}/ddpm_digits_salun.yaml", *quick, "--num-per-class=2", "--steps=2",
    ...        f"--model.init_args.pretrained={runs}/train", f"--trainer.default_root_dir={runs}/salun",
    ...        "--out", f"{runs}/salun/samples"])  # doctest: +ELLIPSIS
    wrote 20 images to .../salun/samples (grid.png, samples.json)
    >>> sorted(path.name for path in (runs / "salun" / "samples").iterdir())[-4:]
    ['08_8', '09_9', 'grid.png', 'samples.json']
"""

from salun_lightning.diffusion.data import DiffusionDataModule, to_diffusion_range
from salun_lightning.diffusion.components import load_component, resolve_pretrained
from salun_lightning.diffusion.methods import METHODS, DiffusionMethod
from salun_lightning.diffusion.module import (
    ClassConditionalDiffusion,
    DiffusionUnlearningModule,
    TextToImageDiffusion,
    denoising_target,
)
from salun_lightning.diffusion.sampling import sample_images, write_samples

__all__ = [
    "METHODS",
    "ClassConditionalDiffusion",
    "DiffusionDataModule",
    "DiffusionMethod",
    "DiffusionUnlearningModule",
    "TextToImageDiffusion",
    "denoising_target",
    "load_component",
    "resolve_pretrained",
    "sample_images",
    "to_diffusion_range",
    "write_samples",
]
