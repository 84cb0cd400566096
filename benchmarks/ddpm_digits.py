"""Diffusion unlearning end to end on a CPU: forget digit 0 in a class-conditional DDPM, then in a tiny latent
text-to-image model.

Steps (all through the ``salun`` command line and the configs in ``configs/diffusion``):

1. train the judge classifier (``configs/digits``) and the original class-conditional DDPM on digits (16x16);
2. unlearn digit 0 with salun (pseudo class: a random other digit), rl (salun without the mask) and ga (shortened
   schedules, stated in the output); ``--ddpm-methods`` adds salun_next, salun with upstream's pseudo class c_f + 1;
3. generate ``--per-class`` images of every digit with each model (DDIM, classifier-free guidance 2.0, seed 0),
   and judge them: UA, the judge's accuracy on retained-class generations, FID on retained classes (judge
   features; Inception weights are not available offline); write grids before/after;
4. the same for the latent text-to-image path ("an image of the digit {class}"): a tiny VAE trained briefly to
   reconstruct digits and a tiny CLIP text encoder trained briefly to tell the ten prompts apart (both then frozen,
   as Stable Diffusion's), and a UNet built from configs, trained briefly, then unlearned with salun.

The two parts run in two processes at once (``--jobs``), one torch thread each::

    python benchmarks/ddpm_digits.py [--ddpm-methods salun salun_next rl ga] [--out runs/ddpm_digits]

Prints the report tables and writes ``report.md``/``report.png`` and the grids into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import yaml
from diffusers import AutoencoderKL
from torch.nn import functional as F
from torchvision.utils import save_image

from salun_lightning.lightning_cli import SalunCLI
from salun_lightning.cli import run as salun
from salun_lightning.data.sources import load_digits_data
from salun_lightning.diffusion import sample_images, to_diffusion_range
from salun_lightning.diffusion.evaluation import Judge, evaluate_generations, write_metrics

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "diffusion"
FORGOTTEN = 0


def fit(config: str, root: Path, *extra: str) -> float:
    """Run ``salun fit`` and return its wall-clock minutes."""
    started = time.perf_counter()
    salun(["fit", "--config", str(CONFIGS / config), f"--trainer.default_root_dir={root}",
           "--trainer.enable_progress_bar=false", *extra])
    return (time.perf_counter() - started) / 60


def generate(config: str, root: Path, per_class: int, steps: int, *extra: str) -> dict[int, torch.Tensor]:
    """Sample ``per_class`` images of every class from the denoiser saved in ``root/unet``, in [-1, 1]."""
    cli = SalunCLI(args=["--config", str(CONFIGS / config), f"--trainer.default_root_dir={root}", *extra], run=False)
    module = cli.model
    module.load_unet(str(root / "unet"))
    classes = torch.arange(module.num_classes).repeat_interleave(per_class)
    images = sample_images(module, module.class_condition(classes), seed=0, steps=steps) * 2 - 1
    return {c: images[c * per_class : (c + 1) * per_class] for c in range(module.num_classes)}


def evaluate(name: str, method: str, generations: dict, judge: Judge, real: torch.Tensor, out: Path, rte: float) -> dict:
    metrics = evaluate_generations(judge, generations, FORGOTTEN, real)
    record = {"method": method, "seed": 0, **metrics, "RTE": rte}
    write_metrics(out / name, record)
    grid = torch.cat([generations[c][:8] for c in sorted(generations)])
    grid = torch.nn.functional.interpolate(grid, scale_factor=3, mode="nearest")  # 16x16 digits are tiny on screen
    save_image((grid + 1) / 2, out / f"{name}_grid.png", nrow=8, padding=2)
    print(f"{name}: UA {metrics['UA']:.1f}, retained accuracy {metrics['retained_accuracy']:.1f}, "
          f"FID {metrics['FID']:.3f} ({metrics['fid_features']})", flush=True)
    return record


DDPM_RUNS = {  # name: (config, extra arguments); every run unlearns the same original model
    "salun": ("ddpm_digits_salun.yaml", ()),  # pseudo class: a random other digit
    "salun_next": ("ddpm_digits_salun.yaml", ("--model.init_args.pseudo=next",)),  # c_f + 1, as upstream
    "rl": ("ddpm_digits_rl.yaml", ()),  # salun without the mask
    "ga": ("ddpm_digits_ga.yaml", ()),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=1000)
    parser.add_argument("--unlearn-steps", type=int, default=250, help="steps of salun, salun_next and rl")
    parser.add_argument("--ga-steps", type=int, default=50)
    parser.add_argument("--ddpm-methods", nargs="+", choices=list(DDPM_RUNS), default=["salun", "rl", "ga"],
                        help="add salun_next for upstream's pseudo class (about 5 more minutes)")
    parser.add_argument("--vae-steps", type=int, default=500, help="steps of the tiny VAE's reconstruction training")
    parser.add_argument("--text-steps", type=int, default=200, help="steps of the tiny text encoder's pre-training")
    parser.add_argument("--t2i-train-steps", type=int, default=1000)
    parser.add_argument("--t2i-unlearn-steps", type=int, default=250)
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--sample-steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each process")
    parser.add_argument("--parts", nargs="+", choices=["ddpm", "t2i"], default=["ddpm", "t2i"])
    parser.add_argument("--jobs", type=int, default=2, help="run the parts in this many processes at once")
    parser.add_argument("--out", type=Path, default=Path("runs/ddpm_digits"))
    args = parser.parse_args()
    quiet(args.threads)
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)

    # The judge: the classifier module's original model on digits (8x8), 30 epochs.
    salun(["fit", "--config", str(ROOT / "configs/digits/train.yaml"),
           f"--trainer.default_root_dir={args.out / 'judge'}", "--trainer.enable_progress_bar=false"])
    if args.jobs > 1 and len(args.parts) > 1:
        with ProcessPoolExecutor(min(args.jobs, len(args.parts)), mp_context=get_context("spawn")) as pool:
            results = list(pool.map(run_part, args.parts, [args] * len(args.parts)))
    else:
        results = [run_part(part, args) for part in args.parts]
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, {args.threads} thread(s) in each of "
          f"{min(args.jobs, len(args.parts))} process(es), torch {torch.__version__}, CPU; "
          f"{time.perf_counter() - started:.0f} s in all")
    print(f"DDPM: {args.train_steps} training steps, salun/salun_next/rl {args.unlearn_steps} steps, ga "
          f"{args.ga_steps} steps; text-to-image: {args.t2i_train_steps} training steps, salun {args.t2i_unlearn_steps} "
          f"steps; {args.per_class} generations per class, {args.sample_steps} DDIM steps, seed 0")
    print(json.dumps([record for records in results for record in records], indent=1))


def quiet(threads: int) -> None:
    torch.set_num_threads(threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)


def run_part(part: str, args: argparse.Namespace) -> list[dict]:
    """One part of the benchmark (``ddpm`` or ``t2i``), judged by the judge trained in ``args.out / "judge"``."""
    quiet(args.threads)
    judge = Judge.load(args.out / "judge" / "model.safetensors", "small_resnet", dataset="digits")
    digits = load_digits_data()
    real = digits.test_images[digits.test_labels != FORGOTTEN]  # retained-class test digits (uint8, 8x8) for FID
    part_fn = class_conditional if part == "ddpm" else text_to_image
    return part_fn(args, args.out, judge, real)


def class_conditional(args: argparse.Namespace, out: Path, judge: Judge, real: torch.Tensor) -> list[dict]:
    """Train the DDPM, unlearn digit 0 with each of ``args.ddpm_methods``, judge them all."""
    records = []
    minutes = fit("ddpm_digits_train.yaml", out / "train", f"--trainer.max_steps={args.train_steps}")
    generations = generate("ddpm_digits_train.yaml", out / "train", args.per_class, args.sample_steps)
    records.append(evaluate("ddpm_original", "train", generations, judge, real, out, minutes))
    pretrained = f"--model.init_args.pretrained={out / 'train'}"
    for name in args.ddpm_methods:
        config, extra = DDPM_RUNS[name]
        steps = args.ga_steps if name == "ga" else args.unlearn_steps
        minutes = fit(config, out / name, f"--trainer.max_steps={steps}", pretrained, *extra)
        generations = generate(config, out / name, args.per_class, args.sample_steps, pretrained, *extra)
        records.append(evaluate(f"ddpm_{name}", name, generations, judge, real, out, minutes))
    salun(["report", *(str(out / f"ddpm_{name}") for name in ["original", *args.ddpm_methods]),
           "--out", str(out / "ddpm_report")])
    return records


def train_vae(out: Path, steps: int, images: Optional[torch.Tensor] = None) -> Path:
    """Train the tiny VAE of ``t2i_digits_train.yaml`` to reconstruct 16x16 images; scale its latents to unit std.

    ``images``: uint8 ``(N, 1, H, W)`` training images (resized to 16x16); default the digits' training split.
    """
    config = yaml.safe_load((CONFIGS / "t2i_digits_train.yaml").read_text())["model"]["init_args"]["vae"]
    torch.manual_seed(0)
    vae = AutoencoderKL(**config)
    images = to_diffusion_range(load_digits_data().train_images if images is None else images, 16, 1)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    for _ in range(steps):
        batch = images[torch.randint(0, len(images), (128,))]
        posterior = vae.encode(batch).latent_dist
        loss = F.mse_loss(vae.decode(posterior.sample()).sample, batch) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        scale = 1 / vae.encode(images).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=scale)
    vae.save_pretrained(out)
    print(f"vae: reconstruction MSE {loss.item():.4f} after {steps} steps, latent scaling {scale:.3f}", flush=True)
    return out


def train_text_encoder(out: Path, steps: int, prompts: Optional[Sequence[str]] = None,
                       tokenizer_path: Optional[Path] = None, **config_overrides: Any) -> Path:
    """Pre-train the tiny CLIP text encoder of ``t2i_digits_train.yaml`` to tell the prompts apart.

    Stable Diffusion's CLIP arrives pre-trained; a random one gives prompts that differ in one token nearly the same
    embedding, and the denoiser then ignores the prompt. A linear probe on the pooled output learns to name each
    prompt; the encoder is frozen afterwards, as in Stable Diffusion.

    Args:
        prompts: the prompts to tell apart (default: the config's ten digit prompts).
        tokenizer_path: the tokenizer (default: the config's byte-level one).
        config_overrides: text-encoder config entries to change (e.g. ``max_position_embeddings`` for long prompts).
    """
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    train_config = yaml.safe_load((CONFIGS / "t2i_digits_train.yaml").read_text())
    config = {**train_config["model"]["init_args"]["text_encoder"], **config_overrides}
    template = train_config["data"]["init_args"]["prompt_template"]
    torch.manual_seed(0)
    encoder = CLIPTextModel(CLIPTextConfig(**config))
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_path or ROOT / train_config["model"]["init_args"]["tokenizer"])
    if prompts is None:
        prompts = [template.format(**{"class": str(digit)}) for digit in range(10)]
    prompts = list(prompts)
    ids = tokenizer(prompts, padding="max_length", max_length=config["max_position_embeddings"], truncation=True,
                    return_tensors="pt").input_ids
    probe = torch.nn.Linear(config["hidden_size"], len(prompts))
    optimizer = torch.optim.Adam([*encoder.parameters(), *probe.parameters()], lr=1e-3)
    labels = torch.arange(len(prompts))
    for _ in range(steps):
        loss = F.cross_entropy(probe(encoder(ids).pooler_output), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        states = encoder(ids).last_hidden_state
    spread = ((states - states.mean(0)).norm() / states.norm()).item()
    encoder.save_pretrained(out)
    print(f"text encoder: probe loss {loss.item():.4f} after {steps} steps; the prompts' embeddings differ from their "
          f"mean by {spread:.2f} of their norm", flush=True)
    return out


def text_to_image(args: argparse.Namespace, out: Path, judge: Judge, real: torch.Tensor) -> list[dict]:
    """Train a tiny VAE and text encoder, then the tiny latent text-to-image model; unlearn digit 0 with salun;
    judge both."""
    records = []
    vae = f"--model.init_args.vae={train_vae(out / 't2i_vae', args.vae_steps)}"
    text_encoder = f"--model.init_args.text_encoder={train_text_encoder(out / 't2i_text_encoder', args.text_steps)}"
    parts = (vae, text_encoder)
    minutes = fit("t2i_digits_train.yaml", out / "t2i_train", f"--trainer.max_steps={args.t2i_train_steps}", *parts)
    records.append(evaluate("t2i_original", "train", generate("t2i_digits_train.yaml", out / "t2i_train", args.per_class, args.sample_steps, *parts), judge, real, out, minutes))
    pretrained = f"--model.init_args.pretrained={out / 't2i_train'}"
    minutes = fit("t2i_digits_salun.yaml", out / "t2i_salun", f"--trainer.max_steps={args.t2i_unlearn_steps}", pretrained)
    generations = generate("t2i_digits_salun.yaml", out / "t2i_salun", args.per_class, args.sample_steps, pretrained)
    records.append(evaluate("t2i_salun", "salun", generations, judge, real, out, minutes))
    salun(["report", str(out / "t2i_original"), str(out / "t2i_salun"), "--out", str(out / "t2i_report")])
    return records


if __name__ == "__main__":
    main()
