"""The organisers' Track 2 metrics, shared by training (out-of-fold) and offline evaluation.

Exactly as the MIDOG 2025 Track 2 evaluation container computes them: sensitivity, specificity,
balanced accuracy and accuracy from pooled counts (atypical is the positive class), ROC AUC on the
confidences (P(atypical)), and the same per tumour domain under "domain_<N>".
One documented departure: a domain (or set) with one class only reports roc_auc as None (the
organisers' code would raise), and a rate with an empty denominator is None.
Added for reports: roc_band (grand-challenge-metrics' bootstrapped ROC band, on given resamples: the
intervals' own, slide_draws), and the one slide-level resampling of the project: slide_draws and
slide_bootstrap_ci (figures of one slide are not independent).
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


def slide_draws(slides, n_boot: int, seed: int = 0):
    """Cluster bootstrap: N_BOOT index arrays, each the figures of len(slides' unique values) slides drawn
    with replacement (a slide drawn twice counts twice); seeded."""
    _, of = np.unique(np.asarray(slides).astype(str), return_inverse=True)
    # the figures grouped by slide (slides in sorted order, each slide's figures ascending): ORDER[START:START+SIZE]
    order, sizes = np.argsort(of, kind="stable"), np.bincount(of)
    starts = np.cumsum(sizes) - sizes
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        drawn = rng.integers(0, len(sizes), len(sizes))
        n = sizes[drawn]
        # the drawn slides' figures one after another, gathered at once (one slide per figure is a common case)
        yield order[np.repeat(starts[drawn] - (np.cumsum(n) - n), n) + np.arange(n.sum())]


def slide_bootstrap_ci(y, p, slides, y_pred, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile intervals of balanced accuracy, sensitivity, specificity, ROC AUC over slide resamples
    (slide_draws); the predicted classes Y_PRED are held fixed. A rate undefined in a resample
    (one class only) is left out of that rate's interval; an interval with no defined resample is None.
    Each resample is a weight per figure (how often it was drawn): the rates are weighted counts and ROC AUC the
    weighted Mann-Whitney statistic (ties count 1/2), as training.metrics computes them on the drawn figures."""
    y, p, y_pred = np.asarray(y, int), np.asarray(p, float), np.asarray(y_pred, int)
    if len(y) == 0:
        return {k: None for k in ("balanced_accuracy", "sensitivity", "specificity", "roc_auc")}
    w = np.stack([np.bincount(idx, minlength=len(y)) for idx in slide_draws(slides, n_boot, seed)])
    w = w.astype(float)
    pos, neg = w * (y == 1), w * (y == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = (pos * (y_pred == 1)).sum(1) / pos.sum(1)
        spec = (neg * (y_pred == 0)).sum(1) / neg.sum(1)
        values, inverse = np.unique(p, return_inverse=True)
        # weight of each class at each distinct score, ascending: per-draw sums of whole counts (exact in float64),
        # as one bincount over (draw, score) cells: memory n_boot x figures, not figures x distinct scores
        cell = (np.arange(len(w))[:, None] * len(values) + inverse).ravel()
        pos_at, neg_at = (
            np.bincount(cell, weights=m.ravel(), minlength=len(w) * len(values)).reshape(len(w), len(values))
            for m in (pos, neg)
        )
        below = np.cumsum(neg_at, 1) - neg_at
        auc = (pos_at * (below + 0.5 * neg_at)).sum(1) / (pos.sum(1) * neg.sum(1))
    draws = {"balanced_accuracy": (sens + spec) / 2, "sensitivity": sens, "specificity": spec, "roc_auc": auc}
    tail = 100 * (1 - level) / 2
    out = {}
    for k, v in draws.items():
        v = v[np.isfinite(v)]
        out[k] = [float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))] if len(v) else None
    return out


def roc_band(y_true, score, draws, level: float = 0.95) -> dict | None:
    """A bootstrapped ROC band computed as grand-challenge-metrics computes one (each resample's ROC curve read at
    101 fixed false-positive rates, its TPR set to 0 at FPR 0; the mean curve and pointwise percentiles), but on
    the resamples DRAWS (index arrays: slide_draws), so that the band and the intervals beside it
    come from the same resampling. Percentiles as numpy's (linear), like the intervals'. A resample with one class
    has no ROC curve and is left out; None when none is left. Returns lists: fpr, mean_tpr, low_tpr, high_tpr,
    and the number of resamples used."""
    from sklearn.metrics import roc_curve

    y_true = np.asarray(y_true).astype(int)
    score = np.asarray(score, dtype=np.float64)
    base = np.linspace(0, 1, 101)
    tprs = []
    for idx in draws:
        if len(np.unique(y_true[idx])) < 2:
            continue
        fpr, tpr, _ = roc_curve(y_true[idx], score[idx])
        at = np.interp(base, fpr, tpr)
        at[0] = 0.0
        tprs.append(at)
    if not tprs:
        return None
    tprs = np.array(tprs)
    tail = 100 * (1 - level) / 2
    return {
        "fpr": base.tolist(),
        "mean_tpr": tprs.mean(axis=0).tolist(),
        "low_tpr": np.percentile(tprs, tail, axis=0).tolist(),
        "high_tpr": np.percentile(tprs, 100 - tail, axis=0).tolist(),
        "resamples": len(tprs),
    }


def save_figure(fig, path) -> str:
    """A matplotlib figure as the reports save it (PNG, 120 dpi, tight), written beside PATH then renamed over it
    (curves.png, evaluation's plots); the figure is closed. Returns the file's name."""
    import os
    from pathlib import Path

    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)
    plt.close(fig)
    return path.name


def fmt(x, missing: str = "–") -> str:
    """A metric as the reports print it: three decimals, MISSING for None (a one-class set has no ROC AUC)."""
    return missing if x is None else f"{x:.3f}"


def fmt_ci(pair, missing: str = "n/a") -> str:
    """A 95% interval as the reports print it: [low, high]."""
    return missing if pair is None else f"[{pair[0]:.3f}, {pair[1]:.3f}]"
