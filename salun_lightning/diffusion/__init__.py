"""Diffusion unlearning (SPEC section 5): class-conditional DDPM and latent text-to-image, one module.

Example::

    salun fit --config configs/diffusion/ddpm_digits_train.yaml     # the original model -> runs/.../unet
    salun fit --config configs/diffusion/ddpm_digits_salun.yaml     # forget digit 0
    salun sample --config configs/diffusion/ddpm_digits_salun.yaml --out runs/ddpm_digits/salun/samples
"""

from salun_lightning.diffusion.data import DiffusionDataModule, to_diffusion_range
from salun_lightning.diffusion.module import (
    METHODS,
    ClassConditionalDiffusion,
    DiffusionUnlearningModule,
    TextToImageDiffusion,
    denoising_target,
    load_component,
)
from salun_lightning.diffusion.sampling import sample_images, sample_main, write_samples

__all__ = [
    "METHODS",
    "ClassConditionalDiffusion",
    "DiffusionDataModule",
    "DiffusionUnlearningModule",
    "TextToImageDiffusion",
    "denoising_target",
    "load_component",
    "sample_images",
    "sample_main",
    "to_diffusion_range",
    "write_samples",
]
