"""The organisers' Track 2 metrics, shared by training (out-of-fold) and offline evaluation.

Exactly as the MIDOG 2025 Track 2 evaluation container computes them: sensitivity, specificity,
balanced accuracy and accuracy from pooled counts (atypical is the positive class), ROC AUC on the
confidences (P(atypical)), and the same per tumour domain under "domain_<N>".
One documented departure: a domain (or set) with one class only reports roc_auc as None (the
organisers' code would raise), and a rate with an empty denominator is None.
Added for reports: bootstrap_ci (seeded percentile intervals over figures) and roc_band (the
bootstrapped ROC band of grand-challenge-metrics).
Needs numpy and scikit-learn (not part of the container's runtime).
"""

from __future__ import annotations

import numpy as np


def _rates(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    tp = int(np.sum((y_pred == 1) & (y_true == 1)))
    fp = int(np.sum((y_pred == 1) & (y_true == 0)))
    fn = int(np.sum((y_pred == 0) & (y_true == 1)))
    tn = int(np.sum((y_pred == 0) & (y_true == 0)))
    sens = tp / (tp + fn) if tp + fn else None
    spec = tn / (tn + fp) if tn + fp else None
    bal = (sens + spec) / 2 if sens is not None and spec is not None else None
    acc = (tp + tn) / (tp + tn + fp + fn) if tp + tn + fp + fn else None
    return {
        "sensitivity": sens,
        "specificity": spec,
        "balanced_accuracy": bal,
        "accuracy": acc,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def roc_auc(y_true, score) -> float | None:
    from sklearn.metrics import roc_auc_score

    y_true = np.asarray(y_true)
    if len(np.unique(y_true)) < 2:
        return None
    return float(roc_auc_score(y_true, np.asarray(score, dtype=np.float64)))


def summary(y_true, score, y_pred=None, threshold: float = 0.5) -> dict:
    """Metrics of one set: y_true in {0,1}; score = P(atypical); y_pred defaults to score >= threshold."""
    y_true = np.asarray(y_true).astype(int)
    score = np.asarray(score, dtype=np.float64)
    y_pred = (score >= threshold).astype(int) if y_pred is None else np.asarray(y_pred).astype(int)
    out = _rates(y_true, y_pred)
    out["roc_auc"] = roc_auc(y_true, score)
    out["n"] = int(len(y_true))
    out["n_atypical"] = int(y_true.sum())
    return out


def aggregates(y_true, score, domains=None, y_pred=None, threshold: float = 0.5) -> dict:
    """The organisers' metrics.json 'aggregates': overall_* keys and domain_<N> blocks."""
    y_true = np.asarray(y_true).astype(int)
    score = np.asarray(score, dtype=np.float64)
    y_pred = (score >= threshold).astype(int) if y_pred is None else np.asarray(y_pred).astype(int)
    s = summary(y_true, score, y_pred)
    agg = {
        "overall_sensitivity": s["sensitivity"],
        "overall_specificity": s["specificity"],
        "overall_balanced_accuracy": s["balanced_accuracy"],
        "overall_roc_auc": s["roc_auc"],
        "overall_accuracy": s["accuracy"],
    }
    if domains is not None:
        domains = np.asarray(domains)
        for d in np.sort(np.unique(domains)):
            m = domains == d
            sd = summary(y_true[m], score[m], y_pred[m])
            agg[f"domain_{d}"] = {
                k: sd[k] for k in ("sensitivity", "specificity", "balanced_accuracy", "accuracy", "roc_auc")
            }
    return agg


def best_threshold(y_true, score) -> float:
    """The threshold on score that maximises balanced accuracy (ties: the one nearest 0.5)."""
    from sklearn.metrics import roc_curve

    y_true = np.asarray(y_true).astype(int)
    if len(np.unique(y_true)) < 2:
        return 0.5
    fpr, tpr, thr = roc_curve(y_true, np.asarray(score, dtype=np.float64))
    bal = (tpr + 1 - fpr) / 2
    thr = np.clip(thr, 0.0, 1.0)  # roc_curve's first threshold is +inf
    best = np.flatnonzero(np.isclose(bal, bal.max()))
    return float(thr[best[np.argmin(np.abs(thr[best] - 0.5))]])


def auc_rows(y_true: np.ndarray, score: np.ndarray) -> np.ndarray:
    """ROC AUC of each row of 2-D arrays (Mann-Whitney U on mid-ranks, equal to roc_auc_score);
    NaN for a row with one class only. Vectorised so that a 1,000-fold bootstrap takes a moment."""
    from scipy.stats import rankdata

    y_true = np.asarray(y_true).astype(bool)
    ranks = rankdata(np.asarray(score, dtype=np.float64), axis=1)  # ties get the mean rank
    n_pos = y_true.sum(axis=1)
    n_neg = y_true.shape[1] - n_pos
    u = (ranks * y_true).sum(axis=1) - n_pos * (n_pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def bootstrap_ci(
    y_true, score, threshold: float = 0.5, n_boot: int = 1000, seed: int = 0, y_pred=None, level: float = 0.95
) -> dict:
    """Percentile bootstrap intervals over figures (resampled with replacement, seeded).

    Returns {"balanced_accuracy": [lo, hi], "sensitivity": ..., "specificity": ..., "roc_auc": ...};
    a resample where a rate is undefined (no positives or no negatives) is left out of that rate's
    interval, and an interval with no defined resample is None.
    """
    y_true = np.asarray(y_true).astype(int)
    score = np.asarray(score, dtype=np.float64)
    y_pred = (score >= threshold).astype(int) if y_pred is None else np.asarray(y_pred).astype(int)
    idx = np.random.default_rng(seed).integers(0, len(y_true), size=(n_boot, len(y_true)))
    t, p = y_true[idx], y_pred[idx]
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = ((p == 1) & (t == 1)).sum(1) / (t == 1).sum(1)  # NaN where the resample has no positive
        spec = ((p == 0) & (t == 0)).sum(1) / (t == 0).sum(1)
    draws = {
        "balanced_accuracy": (sens + spec) / 2,
        "sensitivity": sens,
        "specificity": spec,
        "roc_auc": auc_rows(t, score[idx]),
    }
    tail = 100 * (1 - level) / 2
    out = {}
    for name, values in draws.items():
        values = values[np.isfinite(values)]
        out[name] = (
            [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))] if len(values) else None
        )
    return out


def roc_band(y_true, score, n_boot: int = 100, level: float = 0.95) -> dict | None:
    """The bootstrapped ROC confidence band of grand-challenge-metrics (formerly evalutils), as lists:
    fpr, mean_tpr, low_tpr, high_tpr on 101 fixed false-positive rates, and its AUC interval.
    None where the set has one class only (no ROC curve exists)."""
    from grand_challenge_metrics.roc import get_bootstrapped_roc_ci_curves

    y_true = np.asarray(y_true).astype(int)
    # its resampling never draws the last figure (randint's high bound is exclusive), so both classes
    # must occur before it, or it would loop for ever looking for a two-class resample
    if len(np.unique(y_true[:-1])) < 2:
        return None
    band = get_bootstrapped_roc_ci_curves(
        np.asarray(score, dtype=np.float64), y_true, num_bootstraps=n_boot, ci_to_use=level
    )
    return {
        "fpr": band.fpr_vals.tolist(),
        "mean_tpr": band.mean_tpr_vals.tolist(),
        "low_tpr": band.low_tpr_vals.tolist(),
        "high_tpr": band.high_tpr_vals.tolist(),
        "roc_auc": [float(band.low_az_val), float(band.high_az_val)],
    }


def fmt(x, missing: str = "–") -> str:
    """A metric as the reports print it: three decimals, MISSING for None (a one-class set has no ROC AUC)."""
    return missing if x is None else f"{x:.3f}"


def fmt_ci(pair, missing: str = "n/a") -> str:
    """A 95% interval as the reports print it: [low, high]."""
    return missing if pair is None else f"[{pair[0]:.3f}, {pair[1]:.3f}]"
