"""Unlearning metrics: classifier UA, RA, TA (``accuracy_percent``), MIA-Efficacy and Avg. Gap (docs/method.md,
'Classifier metrics'); U-LiRA's per-sample attack (:mod:`~salun_lightning.metrics.ulira`);
nudity counts of generated images (:mod:`~salun_lightning.metrics.nudity`, NudeNet, imported only when a detection
runs). FID, CLIP score and the UA of generations are in :mod:`~salun_lightning.metrics.generation`."""

from salun_lightning.metrics.functional import accuracy_percent, average_gap, mia_efficacy, true_label_confidence
from salun_lightning.metrics.mia import MIAEfficacy
from salun_lightning.metrics.nudity import EXPOSED_LABELS, NudityCounts, count_exposed, detect_nudity, nudity_of_folder
from salun_lightning.metrics.ulira import attack_metrics, likelihood_ratio_scores, logit_confidence

__all__ = [
    "EXPOSED_LABELS",
    "MIAEfficacy",
    "NudityCounts",
    "accuracy_percent",
    "attack_metrics",
    "average_gap",
    "count_exposed",
    "detect_nudity",
    "likelihood_ratio_scores",
    "logit_confidence",
    "mia_efficacy",
    "nudity_of_folder",
    "true_label_confidence",
]
