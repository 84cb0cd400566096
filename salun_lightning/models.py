"""Image classifiers for unlearning experiments, built by name.

Example::

    from salun_lightning.models import build_classifier

    net = build_classifier("resnet18", num_classes=10)  # CIFAR stem: 3x3 conv, stride 1, no max-pool
    net = build_classifier("small_resnet", num_classes=10, in_channels=1)  # trains in minutes on a CPU
    net = build_classifier("torchvision:mobilenet_v3_small", num_classes=10)  # any torchvision classifier
"""

from __future__ import annotations

from torch import nn
from torchvision import models as tv_models
from torchvision.models.resnet import BasicBlock

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
    """Build a classifier: one of ``CLASSIFIERS`` or ``"torchvision:<model name>"`` (random weights).

    Raises:
        ValueError: an unknown name, or a torchvision model that is not a classifier.
    """
    if name == "resnet18":
        return cifar_resnet18(num_classes, in_channels)
    if name == "small_resnet":
        return SmallResNet(num_classes, in_channels)
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
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(CLASSIFIERS)} or 'torchvision:<name>'.")
