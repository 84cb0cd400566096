"""U-LiRA: a per-example likelihood-ratio attack that tells "trained on, then unlearned" from "never seen"
(Hayes et al., *Inexact Unlearning Needs More Careful Evaluations to Avoid a False Sense of Privacy*, SaTML 2025).

The protocol (docs/method.md, 'U-LiRA: a per-sample attack'): ``K`` shadow runs share a fixed audit set; in run
``k`` every audit example is in the training set with probability 1/2 and, when it is, in the forget set of the
method under test. After unlearning, each run's model gives every audit example its logit-scaled confidence
:func:`logit_confidence`. :func:`likelihood_ratio_scores` then treats each run in turn as the target: from the other
runs it fits, per example, one Gaussian to the confidences of the runs that forgot it and one to those of the runs
that never saw it, and scores the target's confidence by the log-ratio of the two densities. :func:`attack_metrics`
summarises how well the scores separate the two cases: balanced accuracy 0.5 means the unlearned examples look
exactly like unseen ones.

Example::

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> forgot = rng.random((16, 200)) < 0.5                      # K = 16 runs, 200 audit examples
    >>> shift = np.where(forgot, 2.0, 0.0)                        # forgotten examples keep a higher confidence
    >>> statistics = rng.normal(size=(16, 200)) + shift
    >>> metrics = attack_metrics(likelihood_ratio_scores(statistics, forgot), forgot)
    >>> round(metrics["balanced_accuracy"], 2), round(metrics["auc"], 2)
    (0.84, 0.91)
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from torch import Tensor

# With fewer runs than this per side, per-example variances are too noisy: one variance per side is shared by every
# example (LiRA's "fixed variance"; Carlini et al. find it better below about 64 shadow models).
PER_EXAMPLE_VARIANCE_MIN_RUNS = 32


def logit_confidence(logits: Tensor, labels: Tensor) -> Tensor:
    """``φ = log p_y − log(1 − p_y)`` of every sample, in float64 and stable at ``p_y`` = 0 or 1.

    With ``z`` the logits, ``φ = z_y − logsumexp_{j≠y} z_j`` exactly, which never forms ``1 − p_y``.

    Example::

        >>> logit_confidence(torch.tensor([[0.0, 0.0], [200.0, 0.0], [-200.0, 0.0]]), torch.tensor([0, 0, 0]))
        tensor([   0.,  200., -200.], dtype=torch.float64)
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits must be (N, C) and labels (N,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if logits.shape[1] < 2:
        raise ValueError("logit_confidence needs at least two classes")
    z = logits.detach().to(torch.float64)
    true = z.gather(1, labels.long().unsqueeze(1)).squeeze(1)
    others = z.scatter(1, labels.long().unsqueeze(1), -math.inf)
    return true - torch.logsumexp(others, dim=1)


def likelihood_ratio_scores(statistics: np.ndarray, forgot: np.ndarray,
                            variance: Optional[Literal["shared", "per_example"]] = None) -> np.ndarray:
    """Leave-one-out log-likelihood ratios, ``(K, A)``: run ``k``'s score of example ``a`` from the other runs.

    Args:
        statistics: ``(K, A)`` logit-scaled confidences of ``A`` audit examples under ``K`` runs.
        forgot: ``(K, A)`` booleans: the example was trained on and forgotten in that run (else never seen).
        variance: ``shared`` (one variance per side over all examples), ``per_example``, or ``None``: shared when
            any example has fewer than :data:`PER_EXAMPLE_VARIANCE_MIN_RUNS` runs on a side.

    Returns:
        ``log N(φ; μ_in, σ_in²) − log N(φ; μ_out, σ_out²)`` per run and example (higher: looks forgotten rather than
        unseen); NaN where the other runs hold fewer than two of either case for that example.
    """
    statistics, forgot = np.asarray(statistics, dtype=np.float64), np.asarray(forgot, dtype=bool)
    if statistics.shape != forgot.shape or statistics.ndim != 2:
        raise ValueError(f"statistics and forgot must both be (K, A), got {statistics.shape} and {forgot.shape}")
    if not np.isfinite(statistics).all():
        raise ValueError("statistics contain NaN or infinite values (use logit_confidence, which is stable)")
    runs = statistics.shape[0]
    if runs < 3:
        raise ValueError(f"U-LiRA needs at least 3 runs (each run is scored from the others), got {runs}")
    if variance is None:
        fewest = min(forgot.sum(0).min(), (~forgot).sum(0).min())
        variance = "per_example" if fewest >= PER_EXAMPLE_VARIANCE_MIN_RUNS else "shared"
    scores = np.full(statistics.shape, np.nan)
    for target in range(runs):
        others = np.arange(runs) != target
        density = {}
        for side, chosen in (("in", forgot[others]), ("out", ~forgot[others])):
            values, count = statistics[others], chosen.sum(0)
            mean = np.where(chosen, values, 0.0).sum(0) / np.maximum(count, 1)
            squares = np.where(chosen, (values - mean) ** 2, 0.0)
            if variance == "shared":
                var = np.full(mean.shape, squares.sum() / max(int(count.sum()) - len(count), 1))
            else:
                var = squares.sum(0) / np.maximum(count - 1, 1)
            var = np.maximum(var, 1e-12)
            point = statistics[target]
            log_density = -0.5 * (np.log(2 * np.pi * var) + (point - mean) ** 2 / var)
            density[side] = np.where(count >= 2, log_density, np.nan)
        scores[target] = density["in"] - density["out"]
    return scores


def attack_metrics(scores: np.ndarray, forgot: np.ndarray) -> dict[str, float]:
    """Balanced accuracy (deciding "forgotten" where the likelihood ratio exceeds 1, the Bayes rule at the prior
    1/2), ROC-AUC, and the true-positive rate at 1% and 0.1% false positives, over every finite score.

    Example::

        >>> metrics = attack_metrics(np.array([3.0, 2.0, -1.0, 1.0, -2.0, -3.0]), np.array([1, 1, 1, 0, 0, 0], bool))
        >>> {name: round(value, 4) for name, value in metrics.items()}  # AUC: 8 of the 9 pairs ordered right
        {'balanced_accuracy': 0.6667, 'auc': 0.8889, 'tpr_at_1pct_fpr': 0.6667, 'tpr_at_0.1pct_fpr': 0.6667, 'examples': 6}
    """
    scores, forgot = np.ravel(scores), np.ravel(np.asarray(forgot, dtype=bool))
    kept = np.isfinite(scores)
    scores, forgot = scores[kept], forgot[kept]
    if forgot.all() or not forgot.any():
        raise ValueError("attack_metrics needs scored examples of both cases (forgotten and never seen)")
    decided = scores > 0
    balanced = 0.5 * (decided[forgot].mean() + (~decided[~forgot]).mean())
    false_positive, true_positive, _ = roc_curve(forgot, scores)

    def tpr_at(rate: float) -> float:
        return float(true_positive[false_positive <= rate].max())

    return {"balanced_accuracy": float(balanced), "auc": float(roc_auc_score(forgot, scores)),
            "tpr_at_1pct_fpr": tpr_at(0.01), "tpr_at_0.1pct_fpr": tpr_at(0.001), "examples": int(kept.sum())}
