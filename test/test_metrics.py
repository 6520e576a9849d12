"""training.metrics against scikit-learn on hand-made cases: the organisers' aggregates (overall and per
tumour domain), the one-class departure, the bootstrap intervals and the grand-challenge-metrics ROC band."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, recall_score, roc_auc_score

from training.metrics import aggregates, auc_rows, best_threshold, bootstrap_ci, roc_band, summary

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


def test_auc_rows_equals_roc_auc_score_with_ties():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, (40, 30))
    y[0] = 0  # one class only: undefined
    s = np.round(rng.random((40, 30)), 1)  # many ties
    got = auc_rows(y, s)
    assert np.isnan(got[0])
    assert np.allclose(got[1:], [roc_auc_score(y[i], s[i]) for i in range(1, 40)], atol=1e-12)


@pytest.mark.slow
def test_bootstrap_ci_is_a_seeded_percentile_bootstrap_over_figures():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 120)
    score = np.clip(0.3 * y + rng.random(120) * 0.7, 0, 1)
    pred = (score >= 0.5).astype(int)
    ci = bootstrap_ci(y, score, n_boot=200, seed=7)
    assert ci == bootstrap_ci(y, score, n_boot=200, seed=7)
    assert ci != bootstrap_ci(y, score, n_boot=200, seed=8)
    # the same resamples, scored one by one with scikit-learn
    idx = np.random.default_rng(7).integers(0, 120, size=(200, 120))
    draws = {
        "sensitivity": [recall_score(y[i], pred[i]) for i in idx],
        "specificity": [recall_score(y[i], pred[i], pos_label=0) for i in idx],
        "balanced_accuracy": [balanced_accuracy_score(y[i], pred[i]) for i in idx],
        "roc_auc": [roc_auc_score(y[i], score[i]) for i in idx],
    }
    point = summary(y, score)
    for k, v in draws.items():
        assert ci[k] == pytest.approx([np.percentile(v, 2.5), np.percentile(v, 97.5)], abs=1e-12), k
        assert ci[k][0] <= point[k] <= ci[k][1]


def test_bootstrap_ci_one_class_and_explicit_classes():
    ci = bootstrap_ci([0, 0, 0, 0], [0.1, 0.6, 0.3, 0.2], n_boot=50)
    assert ci["roc_auc"] is None and ci["sensitivity"] is None and ci["balanced_accuracy"] is None
    assert ci["specificity"] is not None and 0 <= ci["specificity"][0] <= ci["specificity"][1] <= 1
    # y_pred overrides the threshold: all-correct classes give a degenerate interval at 1
    ci = bootstrap_ci(Y, SCORE, y_pred=Y, n_boot=100)
    assert ci["balanced_accuracy"] == [1.0, 1.0]


def test_roc_band_from_grand_challenge_metrics():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    score = 0.4 * y + rng.random(200) * 0.6
    band = roc_band(y, score, n_boot=100)
    lo, mid, hi = (np.array(band[k]) for k in ("low_tpr", "mean_tpr", "high_tpr"))
    assert len(band["fpr"]) == 101 and band["fpr"][0] == 0 and band["fpr"][-1] == 1
    assert np.all(lo <= hi) and lo[0] == mid[0] == 0
    # pointwise percentiles of rising curves rise too
    assert np.all(np.diff(lo) >= 0) and np.all(np.diff(hi) >= 0)
    assert band["roc_auc"][0] <= roc_auc_score(y, score) <= band["roc_auc"][1]
    assert roc_band([0, 0, 0], [0.1, 0.2, 0.3]) is None
    # that library never draws the last figure: a lone positive there would make it loop for ever
    assert roc_band([0, 0, 0, 0, 1], [0.1, 0.2, 0.3, 0.4, 0.9]) is None


def test_best_threshold_maximises_balanced_accuracy():
    t = best_threshold(Y, SCORE)
    bal = summary(Y, SCORE, threshold=t)["balanced_accuracy"]
    brute = max(summary(Y, SCORE, threshold=c)["balanced_accuracy"] for c in np.unique(SCORE))
    assert bal == pytest.approx(brute)
