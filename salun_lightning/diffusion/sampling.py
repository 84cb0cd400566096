"""DDIM sampling with classifier-free guidance, and the ``salun sample`` command.

Example::

    salun sample --config configs/diffusion/ddpm_digits_salun.yaml --out runs/ddpm_digits/salun/samples \\
        --num_per_class 16 --seed 0        # PNGs per class, grid.png and samples.json
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import torch
from diffusers import DDIMScheduler
from torch import Tensor
from torchvision.utils import save_image

from salun_lightning.data.splits import resolve_class
from salun_lightning.diffusion.module import Conditions, DiffusionUnlearningModule, TextToImageDiffusion

SAMPLES_FILENAME = "samples.json"


@torch.no_grad()
def sample_images(
    module: DiffusionUnlearningModule,
    conditions: Conditions,
    seed: int = 0,
    steps: int = 50,
    guidance: Optional[float] = None,
    batch_size: int = 64,
) -> Tensor:
    """Generate one image per raw condition with deterministic DDIM (``eta = 0``) and classifier-free guidance.

    The initial noise of all images is drawn at once from a CPU ``torch.Generator`` seeded with ``seed``, so the
    result depends only on the seed, the conditions and the model (not on ``batch_size`` or the device's generator).

    Args:
        module: the diffusion model (any device; put in eval mode for the call).
        conditions: class labels ``[M]`` (class-conditional) or ``M`` prompts (text-to-image).
        seed: seed of the initial noise.
        steps: DDIM steps (the training schedule's timesteps, evenly spaced).
        guidance: ``w`` in ``(1 + w) * eps(c) - w * eps(null)`` (diffusers' ``guidance_scale`` is ``1 + w``);
            default ``module.default_guidance`` (2.0 class-conditional, 6.5 text).
        batch_size: images denoised together.

    Returns:
        float32 images ``[M, C, H, W]`` in ``[0, 1]`` on the CPU.

    Example::

        images = sample_images(model, torch.arange(10).repeat_interleave(4), seed=0, steps=50)
    """
    guidance = module.default_guidance if guidance is None else guidance
    scheduler = DDIMScheduler.from_config(module.noise_scheduler.config)
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(conditions), *module.latent_shape), generator=generator)
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


def sample_main(argv: Sequence[str]) -> None:
    """``salun sample``: build the model and data of a config, load the trained denoiser, write samples."""
    from salun_lightning.cli import SalunCLI

    parser = argparse.ArgumentParser(
        prog="salun sample",
        description="Generate images with the diffusion model of a config (the denoiser its fit saved): "
        "<out>/<k>_<class>/<i>.png per class or prompt, grid.png (one row each) and samples.json. Other arguments "
        "are those of 'salun fit'.",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num_per_class", type=int, default=8, help="images per class or prompt (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial noise (default 0)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    parser.add_argument(
        "--guidance", type=float, default=None, help="w in (1+w)eps(c) - w eps(null) (default: 2.0 class, 6.5 text)"
    )
    parser.add_argument("--classes", nargs="+", default=None, help="class names or indices (default: all)")
    parser.add_argument("--prompts", nargs="+", default=None, help="text models: prompts instead of classes")
    parser.add_argument("--unet", default=None, help="denoiser directory (default: <trainer.default_root_dir>/unet)")
    parser.add_argument("--batch_size", type=int, default=64, help="images denoised together (default 64)")
    parser.add_argument("--device", default="auto", help="torch device, e.g. cpu or cuda:0 (default: auto)")
    args, rest = parser.parse_known_args(argv)
    if args.num_per_class < 1 or args.steps < 1:
        parser.error("--num_per_class and --steps must be positive")
    cli = SalunCLI(args=rest, run=False)
    module, data = cli.model, cli.datamodule
    if not isinstance(module, DiffusionUnlearningModule):
        parser.error(f"the config's model is a {type(module).__name__}, not a diffusion model")
    module.bind_data(data)
    unet = args.unet or str(Path(cli.trainer.default_root_dir) / "unet")
    module.load_unet(unet)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    module.to(torch.device(device))
    if args.prompts:
        if not isinstance(module, TextToImageDiffusion):
            parser.error("--prompts needs a text-to-image model")
        names = list(args.prompts)
        conditions: Conditions = [prompt for prompt in names for _ in range(args.num_per_class)]
        indices = None
    else:
        indices = [resolve_class(c, module.class_names) for c in (args.classes or range(module.num_classes))]
        names = [module.class_names[i] for i in indices]
        classes = torch.tensor(indices).repeat_interleave(args.num_per_class)
        conditions = module.class_condition(classes)
    guidance = module.default_guidance if args.guidance is None else args.guidance
    images = sample_images(module, conditions, args.seed, args.steps, guidance, args.batch_size)
    out = Path(args.out)
    files = write_samples(images, names, args.num_per_class, out)
    summary = {
        "unet": unet,
        "method": module.hparams.method,
        "forget_class": module.forget_class_index,
        "class_indices": indices,
        "names": names,
        "num_per_class": args.num_per_class,
        "seed": args.seed,
        "steps": args.steps,
        "guidance": guidance,
        "files": files,
    }
    (out / SAMPLES_FILENAME).write_text(json.dumps(summary, indent=2))
    print(f"wrote {len(images)} images to {out} (grid.png, {SAMPLES_FILENAME})")
