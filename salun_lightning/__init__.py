"""salun-lightning: saliency-based machine unlearning (SalUn) for PyTorch Lightning."""

from salun_lightning.callbacks import WeightSaliencyCallback
from salun_lightning.classifier import ClassifierUnlearningModule
from salun_lightning.data import UnlearningDataModule

__version__ = "0.1.0"
__all__ = ["ClassifierUnlearningModule", "UnlearningDataModule", "WeightSaliencyCallback"]
