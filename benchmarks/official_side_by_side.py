"""Each ported method beside the official SalUn code's function on the same digits original, split, mask and settings.

A recorded check, not a test (the official code is not shipped here): give the ``Classification`` folder of a
checkout of the official repository (OPTML-Group/Unlearn-Saliency). For every seed this trains our original model
(``configs/digits/train.yaml``), then for every method runs our ``salun fit`` (``configs/digits/<method>.yaml``, the
labels of ``rl`` and ``salun`` drawn from any class as the official code draws them) and the official function,
imported unmodified from ``unlearn/`` and called on:

- the same original weights (the network wrapped so that it takes ``[0, 1]`` pixels and normalises them, as the
  official models do inside, which is where the official boundary-shrink attack works);
- loaders over our split's forget and retain samples (shuffled, the config's batch size, no augmentation as the
  digits have none);
- our settings (SGD, momentum 0.9, weight decay 5e-4, the config's learning rate, epochs and hyper-parameters) and,
  for ``salun``, the mask our run used.

Shims stand in for what the official functions import for bookkeeping only (``utils``' meters, ``pruner``,
``imagenet``); ``.cuda()`` is the identity on the CPU. Both models are scored by ``salun test`` with our run's config;
the official model's metrics land beside it in ``<out>/seed<s>/<scenario>/official_<method>/``.

    python benchmarks/official_side_by_side.py --official path/to/Unlearn-Saliency/Classification [--seeds 0 1 2]
        [--methods rl salun ...] [--scenario random10] [--out runs/official] [--json docs/results/official.json]
        [--fit-arg=--model.init_args.lr=0.01 ...]

``--fit-arg`` adds an option to our fits (the official function reads the learning rate and hyper-parameters from
our run's saved config, so both sides get it): at the configs' settings several methods hardly move the digits
model, and agreeing then says little.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import statistics
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

from salun_lightning import UnlearningDataModule
from salun_lightning.cli import run as salun
from salun_lightning.files import write_json
from salun_lightning.metrics.functional import average_gap
from salun_lightning.models import build_classifier

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "digits"
OFFICIAL = {  # our method: (official module, official function)
    "rl": ("RL", "RL"), "salun": ("RL", "RL"), "ga": ("GA", "GA"), "ft": ("FT", "FT"), "l1_sparse": ("FT", "FT_l1"),
    "iu": ("Wfisher", "Wfisher"), "bs": ("boundary_sh", "boundary_shrink"), "be": ("boundary_ex", "boundary_expanding"),
    "salun_soft": ("RL_pro", "RL_proximal"),
}
KEYS = ("UA", "RA", "TA", "MIA")


class PixelDataset(Dataset):
    """``(image in [0, 1], label)`` pairs with the labels in ``targets`` (numpy), as the official loops expect."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.targets = images.float() / 255, labels.numpy().copy()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.targets[index])


class Normalised(nn.Module):
    """``net`` behind the data module's normalisation: takes ``[0, 1]`` pixels (parameters named ``net.*``)."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images - self.mean) / self.std)


def install_shims(official: Path) -> types.ModuleType:
    """Make the official ``unlearn`` package importable without its training, pruning and ImageNet modules."""

    class AverageMeter:
        def __init__(self) -> None:
            self.val = self.avg = self.sum = self.count = 0.0

        def update(self, value: float, n: int = 1) -> None:
            self.val, self.sum, self.count = value, self.sum + value * n, self.count + n
            self.avg = self.sum / self.count

    def accuracy(output: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...] = (1,)) -> list[torch.Tensor]:
        return [(output.argmax(1) == target).float().mean() * 100 for _ in topk]

    utils = types.ModuleType("utils")
    utils.AverageMeter, utils.accuracy = AverageMeter, accuracy
    utils.warmup_lr = lambda *args, **kwargs: None
    pruner = types.ModuleType("pruner")
    for name in ("extract_mask", "prune_model_custom", "remove_prune", "check_sparsity"):
        setattr(pruner, name, lambda *args, **kwargs: None)
    imagenet = types.ModuleType("imagenet")
    imagenet.get_x_y_from_data_dict = lambda data, device: (data["image"].to(device), data["label"].to(device))
    package = types.ModuleType("unlearn")
    package.__path__ = [str(official / "unlearn")]  # its __init__ imports every method: skip it
    sys.modules.update(utils=utils, pruner=pruner, imagenet=imagenet, unlearn=package)
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # the official loops move batches with .cuda()
    return package


def official_model(run_dir: Path, method: str, seed: int, official: Path) -> Path:
    """Run the official function with our run's data, weights, settings (and mask); return the saved model."""
    out = run_dir.parent / f"official_{method}"
    target = out / "model.safetensors"
    if target.is_file():
        return target
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    model_args, data_args = config["model"]["init_args"], config["data"]["init_args"]
    method_args = model_args.get("method_args") or {}
    data = UnlearningDataModule(**{**data_args, "stream": "forget"})
    data.setup("fit")
    loaded = data._load()
    torch.manual_seed(seed)
    np.random.seed(seed)
    generator = torch.Generator().manual_seed(seed)

    def loader(indices: torch.Tensor) -> DataLoader:
        dataset = PixelDataset(loaded.train_images[indices], loaded.train_labels[indices])
        return DataLoader(dataset, batch_size=data_args["batch_size"], shuffle=True, generator=generator)

    loaders = {"forget": loader(data.split.forget), "retain": loader(data.split.retain)}
    net = build_classifier(model_args["model"], model_args["num_classes"], model_args["in_channels"])
    net.load_state_dict(load_file(model_args["original_weights"]))
    model = Normalised(net, data.mean, data.std)
    mask = None
    if method == "salun":
        mask = {name: value.float() for name, value in load_file(str(run_dir / "mask.safetensors")).items()}
    args = types.SimpleNamespace(
        dataset="cifar10", num_classes=model_args["num_classes"], batch_size=data_args["batch_size"],
        unlearn=OFFICIAL[method][1], unlearn_lr=model_args["lr"], unlearn_epochs=config["trainer"]["max_epochs"],
        momentum=model_args["momentum"], weight_decay=model_args["weight_decay"], decreasing_lr="100000",
        rewind_epoch=0, imagenet_arch=False, warmup=0, print_freq=10**9, gpu=0, no_l1_epochs=0,
        alpha=method_args.get("l1_alpha", method_args.get("alpha", 0.0)), mask_ratio=method_args.get("ratio"),
    )
    module_name, function_name = OFFICIAL[method]
    function = getattr(importlib.import_module(f"unlearn.{module_name}"), function_name)
    function(loaders, model, nn.CrossEntropyLoss(), args, mask=mask)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.net.state_dict().items()}, str(target))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True, help="the official repository's Classification/")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=tuple(OFFICIAL), default=list(OFFICIAL))
    parser.add_argument("--scenario", default="random10", choices=("random10", "class"))
    parser.add_argument("--out", type=Path, default=Path("runs/official"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--fit-arg", action="append", default=[], help="an extra option of our unlearning fits")
    args = parser.parse_args()
    if not (args.official / "unlearn" / "RL.py").is_file():
        parser.error(f"{args.official} is not the official code's Classification/ folder (no unlearn/RL.py in it).")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).parent))
    from digits_methods import seeded
    from memorising import fit

    install_shims(args.official)
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for seed in args.seeds:
        original = args.out / f"seed{seed}" / "original"
        fit("train", "random10", seeded(original, seed), CONFIGS)
        base = args.out / f"seed{seed}" / args.scenario
        retrain = fit("retrain", args.scenario, seeded(base / "retrain", seed), CONFIGS)
        for method in args.methods:
            extra = [f"--model.init_args.original_weights={original / 'model.safetensors'}", *args.fit_arg]
            if method in ("rl", "salun"):
                extra.append("--model.init_args.method_args.random_labels=any")  # as the official code draws
            ours = fit(method, args.scenario, seeded(base / method, seed) + extra, CONFIGS)
            model = official_model(base / method, method, seed, args.official)
            salun(["test", "--config", str(base / method / "config.yaml"), f"--ckpt_path={model}"])
            theirs = json.loads((model.parent / "metrics.json").read_text())
            for name, metrics in (("ours", ours), ("official", theirs)):
                rows.setdefault(method, {}).setdefault(name, []).append(
                    {**{k: metrics[k] for k in KEYS}, "gap": average_gap(metrics, retrain)})
            print(f"seed {seed} {method}: gap ours {rows[method]['ours'][-1]['gap']:.2f}, "
                  f"official {rows[method]['official'][-1]['gap']:.2f}", flush=True)

    summary = {"seeds": args.seeds, "scenario": args.scenario, "fit_args": args.fit_arg, "methods": {}}
    print(f"\n| method | code | {' | '.join(KEYS)} | Avg. Gap |\n| --- | --- |{' --- |' * (len(KEYS) + 1)}")
    for method, by_code in rows.items():
        for code, runs in by_code.items():
            cells = {}
            for key in (*KEYS, "gap"):
                values = [run[key] for run in runs]
                cells[key] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
            summary["methods"].setdefault(method, {})[code] = cells
            print(f"| {method} | {code} | " + " | ".join(f"{m:.2f} ± {s:.2f}" for m, s in cells.values()) + " |")
    if args.json is not None:
        write_json(args.json, summary)


if __name__ == "__main__":
    main()
