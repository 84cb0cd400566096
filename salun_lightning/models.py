"""Image classifiers for unlearning experiments, built by name, and their weight files.

Example::

    >>> net = build_classifier("resnet18", num_classes=10)  # CIFAR stem: 3x3 conv, stride 1, no max-pool
    >>> net = build_classifier("torchvision:mobilenet_v3_small", num_classes=10)  # any torchvision classifier
    >>> net = build_classifier("small_resnet", num_classes=10, in_channels=1)  # trains in minutes on a CPU
    >>> import tempfile; path = Path(tempfile.mkdtemp()) / "model.safetensors"
    >>> save_weights(net, path, {"method": "train"})
    >>> load_weights(build_classifier("small_resnet", 10, 1), path)["method"]
    'train'
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn
from torchvision import models as tv_models
from torchvision.models.resnet import BasicBlock

from salun_lightning.files import write_atomically

CLASSIFIERS = ("resnet18", "small_resnet", "vgg16_bn")


def cifar_resnet18(num_classes: int, in_channels: int = 3) -> nn.Module:
    """ResNet-18 with the CIFAR stem used by the paper: a 3x3 stride-1 first convolution and no max-pool."""
    net = tv_models.resnet18(num_classes=num_classes)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


class SmallResNet(nn.Module):
    """A three-stage ResNet (one basic block per stage, widths w, 2w, 4w) for quick CPU experiments."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        stages, channels = [], width
        for stage, out_channels in enumerate((width, 2 * width, 4 * width)):
            stride = 1 if stage == 0 else 2
            downsample = None
            if stride != 1 or channels != out_channels:
                downsample = nn.Sequential(
                    nn.Conv2d(channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
                )
            stages.append(BasicBlock(channels, out_channels, stride=stride, downsample=downsample))
            channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.stages(self.stem(x))).flatten(1))


def cifar_vgg16_bn(num_classes: int, in_channels: int = 3) -> nn.Module:
    """VGG-16 with batch norm for 32x32 inputs: global pooling and a single linear classifier."""
    net = tv_models.vgg16_bn(num_classes=num_classes)
    if in_channels != 3:
        net.features[0] = nn.Conv2d(in_channels, 64, kernel_size=3, padding=1)
    net.avgpool = nn.AdaptiveAvgPool2d(1)
    net.classifier = nn.Linear(512, num_classes)
    return net


def build_classifier(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """Build a classifier: one of ``CLASSIFIERS``, ``"small_resnet_w<width>"`` (the small ResNet with stage widths
    width, 2 width, 4 width; ``small_resnet`` is ``small_resnet_w16``) or ``"torchvision:<model name>"`` (random
    weights).

    Raises:
        ValueError: an unknown name, or a torchvision model that is not a classifier.
    """
    if name == "resnet18":
        return cifar_resnet18(num_classes, in_channels)
    if name == "small_resnet":
        return SmallResNet(num_classes, in_channels)
    wide = re.fullmatch(r"small_resnet_w([1-9][0-9]*)", name)
    if wide:
        return SmallResNet(num_classes, in_channels, width=int(wide.group(1)))
    if name == "vgg16_bn":
        return cifar_vgg16_bn(num_classes, in_channels)
    if name.startswith("torchvision:"):
        model_name = name.split(":", 1)[1]
        available = tv_models.list_models(module=tv_models)
        if model_name not in available:
            raise ValueError(
                f"unknown torchvision classification model {model_name!r}; choose one of "
                f"torchvision.models.list_models(module=torchvision.models), e.g. {', '.join(available[:6])}."
            )
        if in_channels != 3:
            raise ValueError(f"torchvision models take 3-channel images; {model_name!r} cannot take {in_channels}.")
        return tv_models.get_model(model_name, weights=None, num_classes=num_classes)
    raise ValueError(
        f"unknown model {name!r}; choose one of {', '.join(CLASSIFIERS)}, 'small_resnet_w<width>' or 'torchvision:<name>'."
    )


def load_weights(net: nn.Module, path: Union[str, os.PathLike], option: str = "original_weights") -> dict[str, str]:
    """Load a classifier's weights strictly from safetensors, a Lightning checkpoint or a ``torch.save``d state dict.

    Checkpoints and state dicts are read with ``weights_only=True``: a file that would run code is refused. A
    checkpoint of :class:`~salun_lightning.classifier.ClassifierUnlearningModule` gives its ``net.`` weights.

    Args:
        net: the network to load into.
        path: the file.
        option: the option that named the file, for error messages.

    Returns:
        The file's metadata (safetensors metadata as written by :func:`save_weights`; a checkpoint's
        ``fit_minutes`` as a string), possibly empty.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: an unreadable file, or keys or shapes that do not match the network (naming them).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{option} {path!r} does not exist; run the 'train' method first (it writes "
                                "model.safetensors into its run directory).")
    metadata: dict[str, str] = {}
    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt") as handle:
                metadata = dict(handle.metadata() or {})
                state = {key: handle.get_tensor(key) for key in handle.keys()}
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(loaded, Mapping):
                raise ValueError(f"it holds a {type(loaded).__name__}, not a state dict")
            if loaded.get("fit_minutes") is not None:
                metadata["fit_minutes"] = str(loaded["fit_minutes"])
            state = loaded.get("state_dict", loaded)
            if state and all(key.startswith("net.") for key in state):  # a checkpoint of the module: its network
                state = {key[len("net.") :]: value for key, value in state.items()}
    except Exception as error:  # safetensors, pickle and zip errors have many types; all mean "cannot read it"
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(
            f"cannot read {option} {path!r}: {reason}. Give a safetensors file written by a 'train' run, a Lightning "
            "checkpoint or a torch.save'd state dict (the file may be truncated: write it again)."
        ) from None
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{option} {path!r} do not fit the {type(net).__name__}: "
            f"missing {missing[:5]} ({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)}), "
            f"wrong shape {wrong[:5]} ({len(wrong)}). Check the model name and num_classes."
        )
    net.load_state_dict(state, strict=True)
    return metadata


def save_weights(net: nn.Module, path: Union[str, os.PathLike], metadata: Optional[Mapping[str, Any]] = None) -> None:
    """Write the network's state dict as safetensors, atomically, with ``metadata`` (values stored as strings)."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    meta = {key: str(value) for key, value in (metadata or {}).items()}
    write_atomically(Path(path), lambda stream: stream.write(save(state, metadata=meta)))
