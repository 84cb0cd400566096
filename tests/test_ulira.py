"""U-LiRA's pieces against hand computations: the stable logit-scaled confidence, the leave-one-out likelihood
ratio of two Gaussians, and the attack's metrics on hand-made scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from salun_lightning.metrics.ulira import attack_metrics, likelihood_ratio_scores, logit_confidence


def test_the_logit_scaled_confidence_is_finite_where_the_softmax_saturates():
    logits = torch.tensor([[100.0, 0.0, 0.0], [100.0, 0.0, 0.0], [1.0, 2.0, 3.0]], dtype=torch.float32)
    phi = logit_confidence(logits, torch.tensor([0, 1, 2]))
    assert torch.softmax(logits, 1)[0, 0] == 1.0  # float32 says p = 1: log(1 - p) would be -inf
    assert phi.dtype == torch.float64
    assert phi[0].item() == pytest.approx(100 - math.log(2), abs=1e-9)
    assert phi[1].item() == pytest.approx(-100 - math.log1p(math.exp(-100)), abs=1e-9)  # p = 0 in float32
    p = torch.softmax(logits[2].double(), 0)[2].item()
    assert phi[2].item() == pytest.approx(math.log(p) - math.log(1 - p), rel=1e-12)


@pytest.mark.parametrize("variance", ["shared", "per_example"])
def test_each_run_is_scored_from_two_gaussians_fitted_to_the_other_runs(variance):
    statistics = np.array([[1.0], [3.0], [0.0], [2.0], [5.0]])
    forgot = np.array([[True], [True], [False], [False], [True]])
    scores = likelihood_ratio_scores(statistics, forgot, variance)
    # run 4 against the others: forgotten {1, 3} (mean 2, variance 2), never seen {0, 2} (mean 1, variance 2)
    assert scores[4, 0] == pytest.approx(-(5 - 2) ** 2 / 4 + (5 - 1) ** 2 / 4)
    # run 0 against the others: forgotten {3, 5} (mean 4, var 2), never seen {0, 2} (mean 1, var 2)
    assert scores[0, 0] == pytest.approx(-(1 - 4) ** 2 / 4 + (1 - 1) ** 2 / 4)


def test_an_example_with_too_few_runs_on_a_side_gets_no_score():
    statistics = np.arange(8.0).reshape(4, 2)
    forgot = np.array([[True, True], [False, True], [False, True], [False, False]])
    scores = likelihood_ratio_scores(statistics, forgot, "per_example")
    assert np.isnan(scores[:, 0]).all()  # one forgotten run: no Gaussian to fit without it
    with pytest.raises(ValueError, match="at least 3 runs"):
        likelihood_ratio_scores(statistics[:2], forgot[:2])


def test_tpr_at_a_low_false_positive_rate_counts_only_scores_above_that_many_negatives():
    negatives = np.linspace(0, 1, 1000)
    positives = np.array([2.0] * 5 + [0.995] * 5)
    scores = np.concatenate([positives, negatives])
    forgot = np.concatenate([np.ones(10, bool), np.zeros(1000, bool)])
    metrics = attack_metrics(scores, forgot)
    assert metrics["tpr_at_0.1pct_fpr"] == 0.5 and metrics["tpr_at_1pct_fpr"] == 1.0
    assert metrics["auc"] == pytest.approx((5 * 1000 + 5 * 995) / 10000)


def test_the_attack_is_near_chance_when_forgotten_and_unseen_look_alike_and_strong_when_not():
    rng = np.random.default_rng(0)
    forgot = rng.random((16, 500)) < 0.5
    alike = rng.normal(size=(16, 500)) + rng.normal(size=500)  # an example's own level, the same either way
    metrics = attack_metrics(likelihood_ratio_scores(alike, forgot), forgot)
    assert abs(metrics["balanced_accuracy"] - 0.5) < 0.02 and abs(metrics["auc"] - 0.5) < 0.02
    remembered = alike + 3.0 * forgot
    assert attack_metrics(likelihood_ratio_scores(remembered, forgot), forgot)["balanced_accuracy"] > 0.9
