"""The evaluation report: OUT/report.md and its PNG plots, from metrics.json's content and the figure table.

Plots: roc.png (ROC curve with grand-challenge-metrics' bootstrapped 95% band, the operating point
of the submitted classes and the hindsight threshold), confusion.png, domains.png (balanced accuracy
per tumour domain with bootstrap intervals), calibration.png (reliability curve and score histogram).
Called by training.evaluate.score; every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from amf.fileio import write_text_atomic
from amf.results import CLASSES
from training.domains import tumor_name
from training.metrics import fmt, fmt_ci

NA = "n/a"  # a metric that does not exist (ROC AUC of a one-class set)


def _save(fig, path: Path) -> str:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


def plot_roc(path: Path, metrics: dict, table) -> str:
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    y, score = table.label.to_numpy(), table.p_atypical.to_numpy()
    agg, band = metrics["aggregates"], metrics["roc_band"]
    fig, ax = plt.subplots(figsize=(5.2, 5))
    ax.plot([0, 1], [0, 1], color="0.75", lw=1, ls="--")
    if band is not None:
        ax.fill_between(
            band["fpr"],
            band["low_tpr"],
            band["high_tpr"],
            color="tab:blue",
            alpha=0.2,
            label=f"95% bootstrap band (AUC {fmt_ci(band['roc_auc'], NA)})",
        )
    if agg["overall_roc_auc"] is not None:
        fpr, tpr, _ = roc_curve(y, score)
        ax.plot(fpr, tpr, color="tab:blue", lw=2, label=f"ROC, AUC {agg['overall_roc_auc']:.3f}")
    sens, spec = agg["overall_sensitivity"], agg["overall_specificity"]
    if sens is not None and spec is not None:
        ax.plot(
            1 - spec,
            sens,
            "o",
            color="tab:red",
            ms=8,
            label=f"submitted classes (bal. acc. {agg['overall_balanced_accuracy']:.3f})",
        )
    hind = metrics["hindsight"]
    pred = score >= hind["threshold"]
    if y.any() and (~y.astype(bool)).any():
        ax.plot(
            np.mean(pred[y == 0]),
            np.mean(pred[y == 1]),
            "D",
            color="tab:orange",
            ms=7,
            mfc="none",
            mew=2,
            label=f"hindsight threshold {hind['threshold']:.3f} (bal. acc. {fmt(hind['balanced_accuracy'], NA)})",
        )
    ax.set(
        xlabel="1 - specificity (false-positive rate)",
        ylabel="sensitivity (true-positive rate)",
        xlim=(0, 1),
        ylim=(0, 1.01),
        title=f"ROC, {len(y)} figures, {int(y.sum())} atypical",
    )
    if ax.get_legend_handles_labels()[0]:  # a one-class set has no curve and no point
        ax.legend(loc="lower right", fontsize=8)
    ax.set_aspect("equal")
    return _save(fig, path)


def plot_confusion(path: Path, metrics: dict) -> str:
    import matplotlib.pyplot as plt

    c = metrics["counts"]
    cm = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
    rows = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(2):
        for j in range(2):
            ax.text(
                j,
                i,
                f"{cm[i, j]}\n{100 * rows[i, j]:.1f}%",
                ha="center",
                va="center",
                color="white" if rows[i, j] > 0.5 else "black",
                fontsize=11,
            )
    ax.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=CLASSES,
        yticklabels=CLASSES,
        xlabel="predicted class",
        ylabel="ground truth",
        title="Confusion matrix (row %)",
    )
    return _save(fig, path)


def plot_domains(path: Path, metrics: dict) -> str:
    import matplotlib.pyplot as plt

    agg, ci = metrics["aggregates"], metrics["confidence_intervals"]
    keys = [k for k in agg if k.startswith("domain_")]
    values = [agg[k]["balanced_accuracy"] for k in keys]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(keys) + 2), 3.8))
    x = np.arange(len(keys))
    ax.bar(x, [v if v is not None else 0 for v in values], width=0.6, color="tab:blue", alpha=0.8)
    for i, k in enumerate(keys):
        if values[i] is not None and ci[k]["balanced_accuracy"] is not None:
            lo, hi = ci[k]["balanced_accuracy"]
            ax.errorbar(i, values[i], yerr=[[values[i] - lo], [hi - values[i]]], color="black", capsize=4)
        ax.text(i, 0.02, fmt(values[i], NA), ha="center", va="bottom", color="white", fontsize=9)
    if agg["overall_balanced_accuracy"] is not None:
        ax.axhline(agg["overall_balanced_accuracy"], color="tab:red", ls="--", lw=1, label="overall")
        ax.legend(loc="upper right", fontsize=8)
    ax.axhline(0.5, color="0.6", lw=1, ls=":")
    ax.set(
        xticks=x,
        xlim=(-0.7, len(keys) - 0.3),
        ylim=(0, 1),
        ylabel="balanced accuracy",
        title="Balanced accuracy per tumour domain (95% CI)",
    )
    ax.set_xticklabels(
        [f"{k.split('_')[1]}: {tumor_name(int(k.split('_')[1]))}" for k in keys], rotation=20, ha="right", fontsize=8
    )
    return _save(fig, path)


def plot_calibration(path: Path, table, bins: int = 10) -> str:
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve

    y, score = table.label.to_numpy(), table.p_atypical.to_numpy()
    fig, (ax, hx) = plt.subplots(2, 1, figsize=(5, 5.6), height_ratios=[3, 1.2], sharex=True)
    ax.plot([0, 1], [0, 1], color="0.75", ls="--", lw=1, label="perfectly calibrated")
    if y.any() and not y.all():
        frac, mean = calibration_curve(y, score, n_bins=bins, strategy="uniform")
        ax.plot(mean, frac, "o-", color="tab:blue", label="this set")
    ax.set(ylabel="fraction atypical", ylim=(0, 1), title=f"Calibration ({bins} equal-width bins)")
    ax.legend(loc="upper left", fontsize=8)
    edges = np.linspace(0, 1, 2 * bins + 1)
    hx.hist(score[y == 0], bins=edges, alpha=0.6, label="normal", color="tab:green")
    hx.hist(score[y == 1], bins=edges, alpha=0.6, label="atypical", color="tab:red")
    hx.set(xlabel="P(atypical) as scored", ylabel="figures", xlim=(0, 1))
    hx.legend(fontsize=8)
    return _save(fig, path)


def write_report(out_dir, metrics: dict, table) -> Path:
    import matplotlib

    matplotlib.use("Agg")

    out_dir = Path(out_dir)
    plots = {
        "roc": plot_roc(out_dir / "roc.png", metrics, table),
        "confusion": plot_confusion(out_dir / "confusion.png", metrics),
        "domains": plot_domains(out_dir / "domains.png", metrics),
        "calibration": plot_calibration(out_dir / "calibration.png", table),
    }
    agg, ci, c = metrics["aggregates"], metrics["confidence_intervals"], metrics["counts"]
    o = ci["overall"]
    lines = [
        "# Offline evaluation (MIDOG 2025 Track 2 metrics)",
        "",
        f"{c['figures']} figures ({c['atypical']} atypical, {c['normal']} normal) in {c['stacks']} stacks, "
        f"scored with the organisers' Track 2 metrics. Intervals: {ci['method']}, {int(100 * ci['level'])}%.",
        "",
        "| metric | value | 95% CI |",
        "|---|---|---|",
        f"| balanced accuracy (leaderboard) | {fmt(agg['overall_balanced_accuracy'], NA)} "
        f"| {fmt_ci(o['balanced_accuracy'], NA)} |",
        f"| sensitivity (atypical) | {fmt(agg['overall_sensitivity'], NA)} | {fmt_ci(o['sensitivity'], NA)} |",
        f"| specificity (normal) | {fmt(agg['overall_specificity'], NA)} | {fmt_ci(o['specificity'], NA)} |",
        f"| ROC AUC | {fmt(agg['overall_roc_auc'], NA)} | {fmt_ci(o['roc_auc'], NA)} |",
        f"| accuracy | {fmt(agg['overall_accuracy'], NA)} | |",
        "",
        f"Counts: TP {c['tp']}, FP {c['fp']}, FN {c['fn']}, TN {c['tn']}.",
        "",
        "## Per tumour domain",
        "",
        "| domain | figures | atypical | balanced accuracy | 95% CI | sensitivity | specificity | accuracy | ROC AUC |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key in (k for k in agg if k.startswith("domain_")):
        d = int(key.split("_")[1])
        sub = table[table.tumordomain == d]
        a = agg[key]
        lines.append(
            f"| {d}: {tumor_name(d)} | {len(sub)} | {int(sub.label.sum())} "
            f"| {fmt(a['balanced_accuracy'], NA)} | {fmt_ci(ci[key]['balanced_accuracy'], NA)} "
            f"| {fmt(a['sensitivity'], NA)} | {fmt(a['specificity'], NA)} "
            f"| {fmt(a['accuracy'], NA)} | {fmt(a['roc_auc'], NA)} |"
        )
    sem, hind = metrics["confidence_semantics"], metrics["hindsight"]
    consistent = "yes" if metrics["checks"]["classes_are_a_threshold_on_score"] else "no"
    lines += [
        "",
        "## Confidence semantics",
        "",
        f"Read as **{sem['mode']}**: {sem['meaning']}. The organisers' README example and this project's "
        "result schema write confidence = P(atypical); one published version of their evaluator instead takes "
        "it as the confidence of the predicted class (`--confidence predicted-class` reproduces that). "
        "Only ROC AUC and the curves depend on this; the classes give the other metrics.",
        f"Classes are one threshold on the score: **{consistent}**"
        " (a 'no' suggests the confidence is meant the other way).",
        "",
        "## Threshold in hindsight",
        "",
        f"On this set a threshold of **{hind['threshold']:.4f}** on P(atypical) would have given balanced accuracy "
        f"**{fmt(hind['balanced_accuracy'], NA)}** (submitted classes: {fmt(agg['overall_balanced_accuracy'], NA)}). "
        f"Hindsight: {hind['note']}.",
        "",
    ]
    run = metrics.get("run")
    if run:
        lines += [
            "## Run",
            "",
            f"{run['jobs']} jobs ({', '.join(run['mode'])}): seconds per job mean "
            f"{run['seconds_mean']:.2f}, median {run['seconds_median']:.2f}, max {run['seconds_max']:.2f}; "
            f"total {run['seconds_total']:.1f}.",
            "",
        ]
    lines += ["## Departures from the organisers' code", ""] + [f"- {d}" for d in metrics["departures"]]
    lines += [
        "",
        "## Plots",
        "",
        f"![ROC]({plots['roc']})",
        f"![Confusion matrix]({plots['confusion']})",
        f"![Per domain]({plots['domains']})",
        f"![Calibration]({plots['calibration']})",
        "",
    ]
    path = out_dir / "report.md"
    write_text_atomic(path, "\n".join(lines))
    return path
