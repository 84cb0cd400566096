"""salun-lightning: saliency-based machine unlearning (SalUn) for PyTorch Lightning.

The names below are imported on first use, so that ``import salun_lightning`` (and ``salun --help``) does not wait
for Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["ClassifierUnlearningModule", "UnlearningDataModule", "WeightSaliencyCallback"]
_LOCATIONS = {
    "ClassifierUnlearningModule": "salun_lightning.classifier",
    "UnlearningDataModule": "salun_lightning.data",
    "WeightSaliencyCallback": "salun_lightning.callbacks",
}


def __getattr__(name: str) -> Any:
    if name not in _LOCATIONS:
        raise AttributeError(f"module 'salun_lightning' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LOCATIONS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
