"""DDIM sampling with classifier-free guidance, and writing samples to disk (the ``salun sample`` command uses both).

Example::

    >>> import tempfile
    >>> from salun_lightning.diffusion import ClassConditionalDiffusion
    >>> unet = {"sample_size": 8, "in_channels": 1, "out_channels": 1, "block_out_channels": [8, 16],
    ...         "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"],
    ...         "layers_per_block": 1, "norm_num_groups": 4}
    >>> model = ClassConditionalDiffusion(method="train", unet=unet, num_classes=10)  # a trained one, in real use
    >>> images = sample_images(model, torch.arange(10).repeat_interleave(4), seed=0, steps=2)
    >>> images.shape
    torch.Size([40, 1, 8, 8])
    >>> out = Path(tempfile.mkdtemp(), "samples")
    >>> files = write_samples(images, [str(c) for c in range(10)], num_per_row=4, out=out)
    >>> files[1]
    ['01_1/0000.png', '01_1/0001.png', '01_1/0002.png', '01_1/0003.png']
    >>> sorted(path.name for path in out.iterdir())[-3:]
    ['08_8', '09_9', 'grid.png']
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import torch
from diffusers import DDIMScheduler
from torch import Tensor
from torchvision.utils import save_image

from salun_lightning.diffusion.module import Conditions, DiffusionUnlearningModule

SAMPLES_FILENAME = "samples.json"


@torch.no_grad()
def sample_images(
    module: DiffusionUnlearningModule,
    conditions: Conditions,
    seed: int = 0,
    steps: int = 50,
    guidance: Optional[float] = None,
    batch_size: int = 64,
    noise: Optional[Tensor] = None,
) -> Tensor:
    """Generate one image per raw condition with deterministic DDIM (``eta = 0``) and classifier-free guidance.

    The initial noise of all images is drawn at once from a CPU ``torch.Generator`` seeded with ``seed`` (or given
    as ``noise``, e.g. one seed per image from :func:`seeded_noise`), so the result depends only on the noise, the
    conditions and the model (not on ``batch_size`` or the device's generator).

    Args:
        module: the diffusion model (any device; put in eval mode for the call).
        conditions: class labels ``[M]`` (class-conditional) or ``M`` prompts (text-to-image).
        seed: seed of the initial noise.
        steps: DDIM steps (the training schedule's timesteps, evenly spaced).
        guidance: the model's ``w`` in ``(1 + w) * eps(c) - w * eps(null)`` (``0``: unguided, one pass per step);
            default ``module.default_guidance`` (2.0 class-conditional, 6.5 text). Diffusers' ``guidance_scale`` g,
            which ``salun sample --guidance`` and ``salun generate --guidance`` take, is ``1 + w``.
        batch_size: images denoised together.
        noise: the initial noise ``[M, C, h, w]`` in the denoiser's space, instead of drawing it from ``seed``; its
            side ``h = w`` may differ from the model's own (a latent model then makes images of another size).

    Raises:
        ValueError: ``noise`` does not hold one ``(C, h, w)`` tensor per condition with the denoiser's channels.

    Returns:
        float32 images ``[M, C, H, W]`` in ``[0, 1]`` on the CPU.

    Example::

        >>> from salun_lightning.diffusion import ClassConditionalDiffusion
        >>> unet = {"sample_size": 8, "in_channels": 1, "out_channels": 1, "block_out_channels": [8, 16],
        ...         "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"],
        ...         "layers_per_block": 1, "norm_num_groups": 4}
        >>> model = ClassConditionalDiffusion(method="train", unet=unet, num_classes=10)
        >>> images = sample_images(model, torch.arange(10).repeat_interleave(4), seed=0, steps=2)
        >>> images.shape, images.dtype, 0 <= float(images.min()) <= float(images.max()) <= 1
        (torch.Size([40, 1, 8, 8]), torch.float32, True)
        >>> again = sample_images(model, torch.arange(10).repeat_interleave(4), seed=0, steps=2, batch_size=16)
        >>> torch.allclose(images, again, atol=1e-5)  # the seed fixes the noise, whatever the batch size
        True
    """
    guidance = module.default_guidance if guidance is None else guidance
    if noise is None:
        noise = torch.randn((len(conditions), *module.latent_shape), generator=torch.Generator().manual_seed(seed))
    elif noise.dim() != 4 or len(noise) != len(conditions) or noise.shape[1] != module.latent_shape[0]:
        raise ValueError(
            f"noise of shape {tuple(noise.shape)} does not fit {len(conditions)} conditions: give "
            f"[{len(conditions)}, {module.latent_shape[0]}, h, w] (the denoiser's channels)."
        )
    scheduler = DDIMScheduler.from_config(module.noise_scheduler.config)
    scheduler.set_timesteps(steps)
    was_training = module.training
    module.eval()
    images = []
    try:
        for start in range(0, len(conditions), batch_size):
            x = noise[start : start + batch_size].to(module.device) * scheduler.init_noise_sigma
            condition = module.encode_condition(conditions[start : start + batch_size])
            for t in scheduler.timesteps:
                timesteps = torch.full((len(x),), int(t), dtype=torch.long, device=x.device)
                prediction = module.guided_prediction(scheduler.scale_model_input(x, t), timesteps, condition, guidance)
                x = scheduler.step(prediction.float(), t, x, eta=0.0).prev_sample
            images.append(module.to_image_space(x).float().clamp(-1, 1).add(1).div(2).cpu())
    finally:
        module.train(was_training)
    return torch.cat(images)


def seeded_noise(seeds: Sequence[int], shape: Sequence[int]) -> Tensor:
    """One initial noise tensor per seed: ``torch.randn(shape)`` from a CPU generator seeded with that seed.

    Each image's noise depends on its own seed only (not on the others in the batch), and equals what diffusers'
    pipelines draw for one image with ``generator=torch.Generator().manual_seed(seed)``.

    Raises:
        ValueError: a seed outside ``[0, 2**64)``, which ``torch.Generator.manual_seed`` cannot take.

    Example::

        >>> noise = seeded_noise([7, 8], (4, 2, 2))
        >>> noise.shape, torch.equal(noise[1], seeded_noise([8], (4, 2, 2))[0])
        (torch.Size([2, 4, 2, 2]), True)
    """
    bad = [seed for seed in seeds if not 0 <= seed < 2**64]
    if bad:
        raise ValueError(f"seed {bad[0]} is outside [0, 2**64); use a non-negative seed below 2**64.")
    draws = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(seed))) for seed in seeds]
    return torch.stack(draws) if draws else torch.empty((0, *shape))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:60] or "x"


def write_samples(images: Tensor, names: Sequence[str], num_per_row: int, out: Path) -> list[list[str]]:
    """Write ``images`` (``len(names)`` groups of ``num_per_row``) as ``<out>/<k>_<name>/<i>.png`` and a grid.

    Returns the written file names per group, relative to ``out``.
    """
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for k, name in enumerate(names):
        folder = f"{k:02d}_{_slug(name)}"
        (out / folder).mkdir(exist_ok=True)
        group = []
        for i in range(num_per_row):
            save_image(images[k * num_per_row + i], out / folder / f"{i:04d}.png")
            group.append(f"{folder}/{i:04d}.png")
        files.append(group)
    save_image(images, out / "grid.png", nrow=num_per_row, padding=1)
    return files
