"""training.metrics against scikit-learn on hand-made cases: the organisers' aggregates (overall and per
tumour domain), the one-class departure, and the grand-challenge-metrics ROC band on given resamples."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, recall_score, roc_auc_score

from training.metrics import aggregates, roc_band, summary
from training.results.threshold import best_threshold

OVERALL_KEYS = {
    "overall_sensitivity",
    "overall_specificity",
    "overall_balanced_accuracy",
    "overall_roc_auc",
    "overall_accuracy",
}
DOMAIN_KEYS = {"sensitivity", "specificity", "balanced_accuracy", "accuracy", "roc_auc"}

# 18 figures in three tumour domains; tied scores, and classes that are not score >= 0.5
Y = np.array([1, 0, 1, 1, 0, 0, 1, 0, 0, 1, 0, 1, 0, 0, 1, 1, 0, 0])
SCORE = np.array([0.9, 0.2, 0.6, 0.4, 0.4, 0.1, 0.8, 0.7, 0.3, 0.55, 0.5, 0.5, 0.05, 0.6, 0.9, 0.2, 0.2, 0.35])
PRED = np.array([1, 0, 1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 0, 1, 1, 0, 1, 0])
DOM = np.array([1, 1, 1, 1, 1, 1, 3, 3, 3, 3, 3, 3, 7, 7, 7, 7, 7, 7])


def sk(y, pred, score) -> dict:
    return {
        "sensitivity": recall_score(y, pred),
        "specificity": recall_score(y, pred, pos_label=0),
        "balanced_accuracy": balanced_accuracy_score(y, pred),
        "accuracy": accuracy_score(y, pred),
        "roc_auc": roc_auc_score(y, score),
    }


def test_aggregates_equal_sklearn_overall_and_per_domain():
    agg = aggregates(Y, SCORE, domains=DOM, y_pred=PRED)
    assert set(agg) == OVERALL_KEYS | {"domain_1", "domain_3", "domain_7"}
    ref = sk(Y, PRED, SCORE)
    for k, v in ref.items():
        assert agg[f"overall_{k}"] == pytest.approx(v, abs=1e-12)
    for d in (1, 3, 7):
        m = d == DOM
        assert set(agg[f"domain_{d}"]) == DOMAIN_KEYS
        for k, v in sk(Y[m], PRED[m], SCORE[m]).items():
            assert agg[f"domain_{d}"][k] == pytest.approx(v, abs=1e-12), (d, k)


def test_classes_default_to_score_at_threshold():
    agg = aggregates(Y, SCORE, threshold=0.5)
    ref = sk(Y, (SCORE >= 0.5).astype(int), SCORE)  # 0.5 itself counts as atypical
    assert agg["overall_balanced_accuracy"] == pytest.approx(ref["balanced_accuracy"])
    assert agg["overall_sensitivity"] == pytest.approx(ref["sensitivity"])


def test_one_class_domain_gives_null_auroc_not_a_crash():
    y, dom = Y.copy(), DOM.copy()
    y[dom == 3] = 0  # domain 3: normal figures only
    agg = aggregates(y, SCORE, domains=dom, y_pred=PRED)
    d3 = agg["domain_3"]
    assert d3["roc_auc"] is None and d3["sensitivity"] is None and d3["balanced_accuracy"] is None
    m = dom == 3
    assert d3["specificity"] == pytest.approx(recall_score(y[m], PRED[m], pos_label=0))
    assert d3["accuracy"] == pytest.approx(accuracy_score(y[m], PRED[m]))
    assert agg["domain_1"]["roc_auc"] == pytest.approx(roc_auc_score(y[dom == 1], SCORE[dom == 1]))
    assert agg["overall_roc_auc"] == pytest.approx(roc_auc_score(y, SCORE))


def gcm_draws(n: int, n_boot: int):
    """grand-challenge-metrics' own resamples (its seed 40; it never draws the last figure, and skips one-class
    resamples, which roc_band skips too)."""
    rng = np.random.RandomState(40)
    return [rng.randint(0, n - 1, n) for _ in range(n_boot)]


def test_roc_band_is_grand_challenge_metrics_band_on_the_given_resamples():
    from grand_challenge_metrics.roc import get_bootstrapped_roc_ci_curves

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    score = 0.4 * y + rng.random(200) * 0.6
    band = roc_band(y, score, gcm_draws(200, 100))
    ref = get_bootstrapped_roc_ci_curves(score, y, num_bootstraps=100)
    lo, mid, hi = (np.array(band[k]) for k in ("low_tpr", "mean_tpr", "high_tpr"))
    assert band["fpr"] == ref.fpr_vals.tolist() and band["resamples"] == 100
    assert np.allclose(mid, ref.mean_tpr_vals, atol=1e-12)  # the same curves
    # its band takes sorted-point percentiles, ours numpy's (linear, as every interval here): ours lies inside
    assert np.all(ref.low_tpr_vals <= lo + 1e-12) and np.all(hi <= ref.high_tpr_vals + 1e-12)
    assert np.all(lo <= hi) and lo[0] == mid[0] == 0
    assert np.all(np.diff(lo) >= 0) and np.all(np.diff(hi) >= 0)  # pointwise percentiles of rising curves rise
    assert roc_band([0, 0, 0], [0.1, 0.2, 0.3], gcm_draws(3, 10)) is None  # one class: no curve


def test_best_threshold_maximises_balanced_accuracy():
    t = best_threshold(Y, SCORE)
    bal = summary(Y, SCORE, threshold=t)["balanced_accuracy"]
    brute = max(summary(Y, SCORE, threshold=c)["balanced_accuracy"] for c in np.unique(SCORE))
    assert bal == pytest.approx(brute)
