"""salun-lightning: saliency-based machine unlearning (SalUn) for PyTorch Lightning."""

__version__ = "0.1.0"
