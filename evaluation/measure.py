"""The metrics of a set of scored figures, with one interval story: the organisers' aggregates, 95% intervals,
breakdowns per tumour domain, scanner, origin and source, and the ROC band.

Every interval and the ROC band come from the same resamples: training's slide-level bootstrap
(training.metrics.slide_draws through training.metrics.slide_bootstrap_ci; figures of one slide are not
independent) where every figure's slide is known (pack's figures.csv records it when the labels have one), else
the same resampler with each figure its own unit (a figure-level bootstrap); the result says which ("unit").
The classes are held fixed (the submitted ones); a resample in which a rate is undefined is left out of that
rate's interval. Breakdowns: every column of figures.csv among BREAKDOWNS, each value with its counts, metrics
and intervals (resampled within the value). Torch-free.
"""

from __future__ import annotations

import numpy as np

from training.metrics import aggregates, roc_band, slide_bootstrap_ci, slide_draws, summary

LEVEL = 0.95
# figure-table column -> what a breakdown by it is called
BREAKDOWNS = {"tumordomain": "tumour domain", "Scanner": "scanner", "Origin": "origin", "source": "source"}
SHOWN = ("balanced_accuracy", "sensitivity", "specificity", "accuracy", "roc_auc")


def resampling_units(table) -> tuple[np.ndarray, str]:
    """(the unit each figure is resampled with, "slide" or "figure"): slides when every figure has one."""
    if "slide" in table:
        slides = table["slide"].fillna("").astype(str).str.strip()
        if len(slides) and (slides != "").all():
            return slides.to_numpy(), "slide"
    return np.arange(len(table)).astype(str), "figure"


def method(unit: str, n_boot: int, seed: int) -> str:
    over = (
        "slides (training.metrics.slide_draws: a drawn slide brings all its figures)"
        if unit == "slide"
        else "figures (training.metrics.slide_draws with each figure its own unit: the figures' slides are not known)"
    )
    return f"percentile bootstrap over {over}, {n_boot} resamples, seed {seed}; submitted classes held fixed"


def measured(table, n_boot: int = 1000, seed: int = 0) -> dict:
    """TABLE (label, p_atypical, predicted, tumordomain, and any BREAKDOWNS columns) -> aggregates,
    confidence_intervals, breakdowns, counts and roc_band, all on one resampling."""
    y, score, pred = (table[c].to_numpy() for c in ("label", "p_atypical", "predicted"))
    units, unit = resampling_units(table)

    def ci(m):
        return slide_bootstrap_ci(y[m], score[m], units[m], pred[m], n_boot, seed, LEVEL)

    every = np.ones(len(y), bool)
    intervals = {
        "level": LEVEL,
        "unit": unit,
        "method": method(unit, n_boot, seed),
        "n_boot": n_boot,
        "seed": seed,
        "overall": ci(every),
    }
    breakdowns = {}
    for col in (c for c in BREAKDOWNS if c in table):
        values = table[col].fillna("unknown").astype(str).to_numpy()
        groups = {}
        for v in sorted(set(values), key=lambda v: (len(v), v) if col == "tumordomain" else (0, v)):
            m = values == v
            s = summary(y[m], score[m], y_pred=pred[m])
            groups[v] = {
                "n": s["n"],
                "n_atypical": s["n_atypical"],
                "n_units": int(len(np.unique(units[m]))),
                **{k: s[k] for k in SHOWN},
                "ci95": ci(m),
            }
        breakdowns[col] = groups
    for d, g in breakdowns.get("tumordomain", {}).items():
        intervals[f"domain_{d}"] = g["ci95"]
    band = roc_band(y, score, slide_draws(units, n_boot, seed), LEVEL)
    if band is not None:  # the band's AUC interval is the table's: the same resamples
        band |= {"roc_auc": intervals["overall"]["roc_auc"], "unit": unit}
    overall = summary(y, score, y_pred=pred)
    return {
        "aggregates": aggregates(y, score, domains=table["tumordomain"].to_numpy(), y_pred=pred),
        "confidence_intervals": intervals,
        "breakdowns": breakdowns,
        "counts": {
            "stacks": int(table["image"].nunique()),
            "figures": len(table),
            "atypical": int(y.sum()),
            "normal": int(len(y) - y.sum()),
            **({"slides": int(len(np.unique(units)))} if unit == "slide" else {}),
            **{k: overall[k] for k in ("tp", "fp", "fn", "tn")},
        },
        "roc_band": band,
    }
