"""The saliency threshold at Stable Diffusion 1.x scale: ``saliency_mask`` against the double argsort (random weights).

Builds ``TextToImageDiffusion`` with a UNet of Stable Diffusion 1.x's configuration (``--size sd``, about 860M
parameters, 64x64x4 latents, 77x768 text states) or a tiny one (``--size tiny``, to check the script on a CPU),
next to a small VAE and a one-layer CLIP text encoder of the right widths (they only feed the UNet). Then:

1. the saliency pass: gradient of the module's ``saliency_loss`` (guided, w = 7.5) on one forget batch, bf16 autocast;
2. the threshold: time and peak extra memory of ``saliency_mask`` against the upstream double argsort
   (``benchmarks/mask_threshold.py``'s reference), on those gradients, each after a warm-up run on them, the best of
   ``--repeats`` runs; both must keep the same count.

The unlearning steps at this scale go through the module, the callback and a Trainer: ``sd_concept_step.py``.

    python benchmarks/sd_unet_salun.py [--size sd] [--batch 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from mask_threshold import reference_mask
from salun_lightning.callbacks import saliency_mask
from salun_lightning.diffusion import TextToImageDiffusion

TOKENIZER = Path(__file__).resolve().parents[1] / "configs" / "diffusion" / "tiny_clip_tokenizer"
UNETS = {
    "sd": {"sample_size": 64, "cross_attention_dim": 768},  # diffusers' defaults are SD 1.x's otherwise
    "tiny": {"sample_size": 8, "cross_attention_dim": 32, "block_out_channels": [32, 64],
             "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
             "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "layers_per_block": 1, "norm_num_groups": 8},
}


def sd_parts(size: str) -> dict[str, dict]:
    """Config dicts of the benchmark's pipeline: the UNet of ``size`` (``sd``: Stable Diffusion 1.x's), with a small
    VAE and a one-layer text encoder shaped to fit it (77 positions, the UNet's cross-attention width)."""
    unet = {"in_channels": 4, "out_channels": 4, **UNETS[size]}
    width = unet["cross_attention_dim"]
    vae = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [32, 32],
           "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
           "layers_per_block": 1, "norm_num_groups": 8, "sample_size": unet["sample_size"] * 2}
    text = {"vocab_size": 514, "hidden_size": width, "intermediate_size": width, "num_hidden_layers": 1,
            "num_attention_heads": 8, "max_position_embeddings": 77, "bos_token_id": 512, "eos_token_id": 513,
            "pad_token_id": 513}
    return {"unet": unet, "vae": vae, "text_encoder": text}


def build(size: str) -> TextToImageDiffusion:
    model = TextToImageDiffusion(method="train", **sd_parts(size), tokenizer=str(TOKENIZER),
                                 alpha=0.5, lr=1e-5, gradient_checkpointing=True, forget_class=0,
                                 class_names=[str(c) for c in range(10)],
                                 class_prompts=[f"an image of class {c}" for c in range(10)])
    model.tokenizer.model_max_length = 77  # Stable Diffusion's prompt length
    return model


def batch(model: TextToImageDiffusion, size: int, forget: bool, device: torch.device) -> dict:
    channels, side, _ = model.image_shape
    classes = torch.zeros(size, dtype=torch.long) if forget else torch.randint(1, 10, (size,))
    return {"image": torch.rand(size, channels, side, side, device=device) * 2 - 1, "class": classes.to(device),
            "prompt": model.class_condition(classes)}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_extra_mib(device: torch.device, run, *args) -> tuple[float, float, object]:
    """Seconds and peak extra memory (MiB, CUDA only; NaN elsewhere) of ``run(*args)``."""
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    result = run(*args)
    synchronize(device)
    seconds = time.perf_counter() - start
    extra = (torch.cuda.max_memory_allocated(device) - before) / 2**20 if device.type == "cuda" else float("nan")
    return seconds, extra, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=list(UNETS), default="sd")
    parser.add_argument("--batch", type=int, default=8, help="images per forget and per retain batch (paper: 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each threshold after a warm-up")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = build(args.size).to(device)
    model.train()
    params = dict(model.unet.named_parameters())
    count = sum(p.numel() for p in params.values())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()})"
    print(f"device: {name}; torch {torch.__version__}; UNet '{args.size}': {count:,} parameters; batch {args.batch}")

    def saliency() -> dict[str, torch.Tensor]:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model.saliency_loss(batch(model, args.batch, True, device))
        grads = torch.autograd.grad(loss, list(params.values()))
        return {n: g.detach().float().abs() for n, g in zip(params, grads)}

    seconds, extra, grads = peak_extra_mib(device, saliency)
    print(f"saliency pass (one batch, the first CUDA work included): {seconds:.2f} s, peak extra {extra:.0f} MiB")
    rows = {}
    for label, select in (("saliency_mask", saliency_mask), ("double argsort", reference_mask)):
        select(grads, 0.5)  # warm-up on the same input: kernels, allocator
        runs = [peak_extra_mib(device, select, grads, 0.5) for _ in range(args.repeats)]
        kept = sum(int(m.sum()) for m in runs[0][2].values())
        rows[label] = (min(r[0] for r in runs), max(r[1] for r in runs), kept)
        del runs
    assert rows["saliency_mask"][2] == rows["double argsort"][2] == count // 2, rows
    print("| threshold | seconds (best) | peak extra MiB |\n| --- | ---: | ---: |")
    for label, (seconds, extra, _) in rows.items():
        print(f"| {label} | {seconds:.3f} | {extra:.0f} |")
    ours, ref = rows["saliency_mask"], rows["double argsort"]
    print(f"speed-up {ref[0] / ours[0]:.1f}x; memory ratio {ours[1] / ref[1]:.3f}")


if __name__ == "__main__":
    main()
