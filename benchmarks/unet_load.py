"""Loading a Stable-Diffusion-1.x-shaped UNet with and without ``low_cpu_mem_usage`` (random weights, nothing downloaded).

Builds a ``UNet2DConditionModel`` of the Stable Diffusion v1-4 UNet's configuration (859,520,964 parameters, about
3.3 GiB in float32) or a tiny one (``--tiny``, to check the script), saves it once with ``save_pretrained``
(safetensors) into a temporary directory, then loads it with
``UNet2DConditionModel.from_pretrained(dir, low_cpu_mem_usage=...)``. In diffusers 0.42 both variants skip
``torch.nn.init`` while they build the model; then

- ``True`` (diffusers' default when accelerate is installed) builds it on the meta device (accelerate's
  ``init_empty_weights``) and puts the saved tensors in its place: with safetensors they are views of the file's
  memory map, read when first used;
- ``False`` (what diffusers falls back to without accelerate) allocates every weight and copies the saved tensors
  into them.

Each load runs in a fresh process, the variants alternating (and which one comes first, too), so that its peak
resident memory (``resource.getrusage``'s ``ru_maxrss``) is its own. The parent process never imports torch: Linux
carries a process's ``ru_maxrss`` over ``execve``, so a large parent would raise every child's figure to its own.
Per load: the seconds of ``from_pretrained`` alone (after the imports), the seconds until every weight has also been
read once (a sum over each tensor, which pages in what a memory map left on disk), and the peak RSS before the
load, after it and after that read. Every load's weights must be bitwise equal to the saved model's (SHA-256 over
the state dict's names, dtypes, shapes and bytes). The file is in the page cache after it is written, so the reads
come from memory, not from the disk.

    python benchmarks/unet_load.py [--repeats 3] [--tiny] [--dir DIR]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

# The UNet of CompVis/stable-diffusion-v1-4 (its unet/config.json), and a tiny one of the same kinds of blocks.
SD_V1_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
TINY_UNET = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
}
VARIANTS = (True, False)
MiB = 1024 * 1024


def weights_digest(model) -> str:
    """SHA-256 of the model's state dict: every tensor's name, dtype, shape and bytes, in name order."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(dtype=torch.uint8).numpy().data)
    return digest.hexdigest()


def max_rss_mib() -> float:
    """The process's peak resident memory so far (Linux reports ``ru_maxrss`` in KiB, macOS in bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MiB if sys.platform == "darwin" else peak / 1024


# ------------------------------------------------------------------------------------ the children's work


def save_unet(config: dict, directory: str, seed: int) -> dict:
    """Build the UNet with random weights (seeded) and save it into ``directory``."""
    import torch
    from diffusers import UNet2DConditionModel

    start = time.perf_counter()
    torch.manual_seed(seed)
    model = UNet2DConditionModel(**config)
    model.save_pretrained(directory)  # one safetensors file
    size = sum(f.stat().st_size for f in Path(directory).rglob("*") if f.is_file())
    return {"parameters": sum(p.numel() for p in model.parameters()), "digest": weights_digest(model), "bytes": size,
            "seconds": time.perf_counter() - start, "threads": torch.get_num_threads()}


def load_once(directory: str, low_cpu_mem_usage: bool) -> dict:
    """One load in this (fresh) process: its seconds, peak RSS before, after, and after a first read, the digest."""
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.utils import is_accelerate_available

    if low_cpu_mem_usage and not is_accelerate_available():
        # diffusers would quietly load with low_cpu_mem_usage=False instead: the comparison would compare nothing
        raise SystemExit("accelerate is not installed: low_cpu_mem_usage=True is not available (pip install accelerate)")
    gc.collect()
    before = max_rss_mib()
    start = time.perf_counter()
    model, info = UNet2DConditionModel.from_pretrained(directory, low_cpu_mem_usage=low_cpu_mem_usage,
                                                       output_loading_info=True)
    loaded = time.perf_counter()
    after_load = max_rss_mib()
    with torch.no_grad():
        total = sum(float(tensor.sum()) for tensor in model.state_dict().values())  # every weight read once
    read = time.perf_counter()
    after_read = max_rss_mib()
    problems = {key: value for key, value in info.items() if value}
    if problems:
        raise SystemExit(f"the saved weights do not fit the config: {problems}")
    meta = [name for name, tensor in model.state_dict().items() if tensor.is_meta]
    if meta:
        raise SystemExit(f"{len(meta)} tensors left on the meta device, e.g. {meta[:3]}")
    return {"low_cpu_mem_usage": low_cpu_mem_usage, "seconds": loaded - start, "read_seconds": read - start,
            "rss_before_mib": before, "rss_load_mib": after_load, "rss_read_mib": after_read, "sum": total,
            "digest": weights_digest(model)}


# -------------------------------------------------------------------------------------------- the parent


def run_child(*arguments: str) -> dict:
    """Run this script with ``arguments`` in a fresh interpreter; the JSON object its last line prints."""
    result = subprocess.run([sys.executable, str(Path(__file__).resolve()), *arguments], capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(arguments)} failed with exit status {result.returncode}:\n"
                           f"{result.stdout[-2000:]}{result.stderr[-4000:]}")
    if result.stderr.strip():  # e.g. a warning from diffusers: show it
        print(result.stderr.strip(), file=sys.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])


def table(loads: list[dict]) -> list[str]:
    """The markdown table of the loads per variant (medians of the times, largest of the peaks) and the ratios."""
    rows = ["| variant | loads | from_pretrained min s | median s | with first read median s | RSS before MiB | "
            "peak RSS after load MiB | peak RSS after read MiB |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    summary = {}
    for variant in VARIANTS:
        mine = [load for load in loads if load["low_cpu_mem_usage"] is variant]
        seconds = [load["seconds"] for load in mine]
        median, read = statistics.median(seconds), statistics.median(load["read_seconds"] for load in mine)
        before, after_load, after_read = (max(load[key] for load in mine)
                                          for key in ("rss_before_mib", "rss_load_mib", "rss_read_mib"))
        summary[variant] = median, read, after_load, after_read
        rows.append(f"| low_cpu_mem_usage={variant} | {len(mine)} | {min(seconds):.3f} | {median:.3f} | {read:.3f} "
                    f"| {before:,.0f} | {after_load:,.0f} | {after_read:,.0f} |")
    ratios = [slow / fast for slow, fast in zip(summary[False], summary[True])]
    rows += ["", "ratio False / True: from_pretrained {:.2f}x, with first read {:.2f}x, peak RSS after load "
                 "{:.2f}x, after read {:.2f}x".format(*ratios)]
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="loads of each variant (default 3)")
    parser.add_argument("--tiny", action="store_true", help="a tiny UNet of the same kinds of blocks (a check)")
    parser.add_argument("--dir", type=Path, help="where to save the UNet (default: a temporary directory, removed)")
    parser.add_argument("--seed", type=int, default=0)
    # the children: save the UNet of a JSON config, or load a directory once; each prints one JSON object
    parser.add_argument("--save", nargs=2, metavar=("DIR", "CONFIG"), help=argparse.SUPPRESS)
    parser.add_argument("--load", help=argparse.SUPPRESS)
    parser.add_argument("--low-cpu-mem-usage", choices=("true", "false"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.save:
        print(json.dumps(save_unet(json.loads(args.save[1]), args.save[0], args.seed)))
        return
    if args.load:
        print(json.dumps(load_once(args.load, args.low_cpu_mem_usage == "true")))
        return
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    config = TINY_UNET if args.tiny else SD_V1_UNET
    with tempfile.TemporaryDirectory(prefix="unet_load_") as scratch:
        directory = (args.dir or Path(scratch)) / "unet"
        saved = run_child("--save", str(directory), json.dumps(config), "--seed", str(args.seed))
        print(f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {version('torch')} ({saved['threads']} "
              f"threads), diffusers {version('diffusers')}, accelerate {version('accelerate')}")
        print(f"UNet ({'tiny' if args.tiny else 'Stable Diffusion v1-4 config'}): {saved['parameters']:,} parameters, "
              f"{saved['bytes'] / MiB:,.1f} MiB saved to {directory} in {saved['seconds']:.1f} s (built and saved)")
        loads = []
        for round_ in range(args.repeats):
            for variant in VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]:
                load = run_child("--load", str(directory), "--low-cpu-mem-usage", str(variant).lower())
                loads.append(load)
                print(f"round {round_ + 1}: low_cpu_mem_usage={variant}: {load['seconds']:.3f} s "
                      f"({load['read_seconds']:.3f} s with the first read), peak RSS {load['rss_before_mib']:,.0f} "
                      f"MiB before, {load['rss_load_mib']:,.0f} after the load, {load['rss_read_mib']:,.0f} after "
                      "the read", flush=True)
    digests = {load["digest"] for load in loads}
    assert digests == {saved["digest"]}, f"loaded weights differ from the saved ones: {len(digests)} digests"
    print()
    print("\n".join(table(loads)))
    print(f"weights bitwise equal to the saved model in all {len(loads)} loads (both variants): True")


if __name__ == "__main__":
    main()
