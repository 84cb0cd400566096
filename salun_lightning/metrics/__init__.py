"""Classifier unlearning metrics: UA, RA, TA (``accuracy_percent``), MIA-Efficacy and Avg. Gap (SPEC section 4)."""

from salun_lightning.metrics.functional import accuracy_percent, average_gap, mia_efficacy, true_label_confidence
from salun_lightning.metrics.mia import MIAEfficacy

__all__ = ["MIAEfficacy", "accuracy_percent", "average_gap", "mia_efficacy", "true_label_confidence"]
