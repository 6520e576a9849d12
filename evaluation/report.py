"""The evaluation report: OUT/report.md and its PNG plots. The text is rendered from metrics.json's content alone;
the ROC curve and the calibration plot also read the figure table.

report.md opens with what a reviewer must know first: a warning when the model trained on some of these
figures (how many; every metric is then given on all figures and on the unseen ones only), or that this could
not be checked, or that none was among its training figures. Then the model (folder, manifest SHA-256, members,
TTA, threshold and its source, training data, toolkit version), the metrics with their intervals, the
breakdowns, confidence semantics, the hindsight threshold, the run, the departures.
Plots: roc.png (ROC curve with its 95% band from the same resamples as the table's intervals, the operating point
of the submitted classes and the hindsight threshold), confusion.png, breakdowns.png (balanced accuracy per tumour
domain, scanner, origin and source, with intervals: those with two or more values), calibration.png (reliability
curve and score histogram). Called by evaluation.score; every file is written to a temporary name and
renamed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from amf.fileio import write_text_atomic
from amf.results import CLASSES
from evaluation.measure import BREAKDOWNS
from training.domains import tumor_name
from training.metrics import fmt, fmt_ci, save_figure

NA = "n/a"  # a metric that does not exist (ROC AUC of a one-class set)
REPORT_MD = "report.md"
PLOTS = {
    "roc": "roc.png",
    "confusion": "confusion.png",
    "breakdowns": "breakdowns.png",
    "calibration": "calibration.png",
}
FILES = (REPORT_MD, *PLOTS.values())  # what write_report writes
UNIT_WORD = {"slide": "slide-level", "figure": "figure-level"}


def plot_roc(path: Path, metrics: dict, table) -> str:
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    y, score = table.label.to_numpy(), table.p_atypical.to_numpy()
    agg, band = metrics["aggregates"], metrics["roc_band"]
    unit = metrics["confidence_intervals"]["unit"]
    fig, ax = plt.subplots(figsize=(5.2, 5))
    ax.plot([0, 1], [0, 1], color="0.75", lw=1, ls="--")
    if band is not None:
        ax.fill_between(
            band["fpr"],
            band["low_tpr"],
            band["high_tpr"],
            color="tab:blue",
            alpha=0.2,
            label=f"95% band, {UNIT_WORD[unit]} bootstrap as the table (AUC {fmt_ci(band['roc_auc'], NA)})",
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
    return save_figure(fig, path)


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
    return save_figure(fig, path)


def value_name(col: str, value: str) -> str:
    """A breakdown value as the report names it: a tumour domain by number and name."""
    return f"{value}: {tumor_name(int(value))}" if col == "tumordomain" else value


def plot_breakdowns(path: Path, metrics: dict) -> str:
    import matplotlib.pyplot as plt

    agg, parts = metrics["aggregates"], varied(metrics) or metrics["breakdowns"]
    unit = metrics["confidence_intervals"]["unit"]
    cols = list(parts) or ["tumordomain"]
    width = [max(2.2, 0.9 * len(parts.get(c, {})) + 1) for c in cols]
    fig, axes = plt.subplots(1, len(cols), figsize=(sum(width) + 1, 3.8), width_ratios=width, squeeze=False)
    for ax, col in zip(axes[0], cols):
        groups = parts.get(col, {})
        x = np.arange(len(groups))
        values = [g["balanced_accuracy"] for g in groups.values()]
        ax.bar(x, [v if v is not None else 0 for v in values], width=0.6, color="tab:blue", alpha=0.8)
        for i, g in enumerate(groups.values()):
            ci = g["ci95"]["balanced_accuracy"]
            if values[i] is not None and ci is not None:
                ax.errorbar(i, values[i], yerr=[[values[i] - ci[0]], [ci[1] - values[i]]], color="black", capsize=4)
            ax.text(i, 0.02, fmt(values[i], NA), ha="center", va="bottom", color="white", fontsize=9)
        if agg["overall_balanced_accuracy"] is not None:
            ax.axhline(agg["overall_balanced_accuracy"], color="tab:red", ls="--", lw=1, label="overall")
        ax.axhline(0.5, color="0.6", lw=1, ls=":")
        ax.set(xticks=x, xlim=(-0.7, max(len(groups), 1) - 0.3), ylim=(0, 1), title=f"per {BREAKDOWNS[col]}")
        ax.set_xticklabels([value_name(col, v) for v in groups], rotation=20, ha="right", fontsize=8)
    axes[0][0].set_ylabel(f"balanced accuracy ({UNIT_WORD[unit]} 95% CI)")
    if agg["overall_balanced_accuracy"] is not None:
        axes[0][-1].legend(loc="upper right", fontsize=8)
    return save_figure(fig, path)


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
    return save_figure(fig, path)


def with_ci(value, ci) -> str:
    return f"{fmt(value, NA)} {fmt_ci(ci, NA)}"


def headline(metrics: dict) -> list[str]:
    """report.md's first lines: whether the model trained on these figures."""
    seen, c = metrics["seen"], metrics["counts"]
    if not seen["checked"]:
        return [f"> **Not checked whether the model trained on these figures**: {seen['reason']}."]
    fp = seen["fingerprint"]
    how = f"by content: the fingerprints of its {fp['figures']:,} training figures in the model's `{fp['file']}`"
    if seen["seen"] == 0:
        return [f"None of these {c['figures']} figures is among the model's training figures ({how})."]
    unseen = (
        f"the {seen['unseen']} it did not train on are scored apart below (**unseen only**): those are the estimate"
        if seen["unseen"]
        else "none is left unseen: nothing here estimates performance on new data"
    )
    return [
        f"> **Warning: the model trained on {seen['seen']} of these {seen['figures']} figures** ({how}). "
        f"Metrics on them are in-sample and flatter the model; {unseen}."
    ]


def model_lines(metrics: dict) -> list[str]:
    m, tk = metrics["model"], metrics["toolkit"]
    changes = {True: " (with uncommitted changes)", False: "", None: ""}[tk["git_changes"]]
    toolkit = f"Toolkit: amf {tk['version']}, git commit `{tk['git_commit']}`{changes}."
    if m is None:
        return ["## Model", "", "Not known: no run.json names it (`score --model` names it).", "", toolkit, ""]
    src, data = m["threshold_source"], m["training_data"]
    pred = src["predictions"] or {}
    lines = [
        "## Model",
        "",
        f"`{m['folder']}`, manifest SHA-256 `{m['manifest_sha256']}`"
        + ("" if m["trained"] else " (**untrained placeholder**)")
        + f"; test-time augmentation **{m['tta']}**; threshold **{m['threshold']:.4f}** on the members' mean "
        "P(atypical).",
        "",
        "| member | backbone | fold | input | resize | parameters | SHA-256 |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {x['file']} | {x['backbone'] or NA} | {NA if x['fold'] is None else x['fold']} | {x['input_size']} px "
            f"| {x['resize']} | {x['parameters']:,} | `{x['sha256'][:16]}` |"
            for x in m["members"]
        ),
        "",
        "Threshold: "
        + (src["note"] or "the manifest records no source")
        + (f" (predictions: `{pred.get('run')}`, TTA {pred.get('tta')})" if pred else "")
        + (
            f"; for scanner shift the {src['for_shift']['chosen']} rule was chosen (leave-one-scanner-out run "
            f"`{src['for_shift']['loso_run']}`)"
            if src["for_shift"]
            else ""
        )
        + ".",
        "",
        "Training data (as the manifest names it): "
        + (
            f"run `{data['run']}`, {data['figures']} figures ({data['atypical']} atypical) in "
            f"{len(data['folds'] or [])} folds ({data['split_kind']}), label `{data['label']}`"
            + (f", extra sets {', '.join(data['extra_sets'])}" if data["extra_sets"] else "")
            + (f", synthetic atypicals from `{data['synthetic']}`" if data["synthetic"] else "")
            if data["run"]
            else "not recorded"
        )
        + ".",
        "",
        toolkit,
        "",
    ]
    return lines


SHOWN = [
    ("balanced accuracy (leaderboard)", "balanced_accuracy"),
    ("sensitivity (atypical)", "sensitivity"),
    ("specificity (normal)", "specificity"),
    ("ROC AUC", "roc_auc"),
]


def overall_table(blocks: list[tuple[str, dict]]) -> list[str]:
    """The overall metrics of each BLOCKS entry (title, measured block) side by side, with their intervals."""
    lines = [
        "| metric | " + " | ".join(f"{t}: value [95% CI]" for t, _ in blocks) + " |",
        "|---|" + "---|" * len(blocks),
    ]
    for name, key in SHOWN:
        cells = [
            with_ci(b["aggregates"][f"overall_{key}"], b["confidence_intervals"]["overall"][key]) for _, b in blocks
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| accuracy | " + " | ".join(fmt(b["aggregates"]["overall_accuracy"], NA) for _, b in blocks) + " |")
    for _, b in blocks:
        c = b["counts"]
        lines += ["", f"Counts ({c['figures']} figures): TP {c['tp']}, FP {c['fp']}, FN {c['fn']}, TN {c['tn']}."]
    return lines


def varied(block: dict) -> dict:
    """The breakdowns with two or more values (a one-value breakdown repeats the overall figures)."""
    return {col: groups for col, groups in block["breakdowns"].items() if len(groups) > 1}


def breakdown_tables(block: dict, level: str = "##") -> list[str]:
    unit = block["confidence_intervals"]["unit"]
    single = [
        f"one {BREAKDOWNS[col]} ({value_name(col, next(iter(groups)))})"
        for col, groups in block["breakdowns"].items()
        if len(groups) == 1
    ]
    lines = ["", f"All figures share {', '.join(single)}."] if single else []
    for col, groups in varied(block).items():
        lines += [
            "",
            f"{level} Per {BREAKDOWNS[col]}",
            "",
            f"| {BREAKDOWNS[col]} | figures | atypical | {unit}s | balanced accuracy [95% CI] | sensitivity "
            "| specificity | accuracy | ROC AUC [95% CI] |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {value_name(col, v)} | {g['n']} | {g['n_atypical']} | {g['n_units']} "
            f"| {with_ci(g['balanced_accuracy'], g['ci95']['balanced_accuracy'])} | {fmt(g['sensitivity'], NA)} "
            f"| {fmt(g['specificity'], NA)} | {fmt(g['accuracy'], NA)} "
            f"| {with_ci(g['roc_auc'], g['ci95']['roc_auc'])} |"
            for v, g in groups.items()
        ]
    return lines


def write_report(out_dir, metrics: dict, table) -> Path:
    import matplotlib

    matplotlib.use("Agg")

    out_dir = Path(out_dir)
    plots = {
        "roc": plot_roc(out_dir / PLOTS["roc"], metrics, table),
        "confusion": plot_confusion(out_dir / PLOTS["confusion"], metrics),
        "breakdowns": plot_breakdowns(out_dir / PLOTS["breakdowns"], metrics),
        "calibration": plot_calibration(out_dir / PLOTS["calibration"], table),
    }
    ci, c, seen = metrics["confidence_intervals"], metrics["counts"], metrics["seen"]
    unseen = metrics.get("unseen_only")
    blocks = [(f"all {c['figures']} figures", metrics)]
    if unseen:
        blocks.append((f"unseen only ({unseen['counts']['figures']})", unseen))
    lines = [
        "# Offline evaluation (MIDOG 2025 Track 2 metrics)",
        "",
        *headline(metrics),
        "",
        f"{c['figures']} figures ({c['atypical']} atypical, {c['normal']} normal) in {c['stacks']} stacks"
        + (f" from {c['slides']} slides" if "slides" in c else "")
        + ", scored with the organisers' Track 2 metrics.",
        "",
        *model_lines(metrics),
        "## Metrics",
        "",
        f"Intervals ({int(100 * ci['level'])}%, in the tables and the ROC band alike): {ci['method']}.",
        "",
        *overall_table(blocks),
        *breakdown_tables(metrics),
    ]
    if unseen:
        lines += ["", f"## Unseen only: the {unseen['counts']['figures']} figures the model did not train on"]
        lines += breakdown_tables(unseen, "###")
    elif seen["checked"] and seen["seen"]:
        lines += ["", "## Unseen only", "", "None: the model trained on every one of these figures."]
    sem, hind, agg = metrics["confidence_semantics"], metrics["hindsight"], metrics["aggregates"]
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
        f"![Breakdowns]({plots['breakdowns']})",
        f"![Calibration]({plots['calibration']})",
        "",
    ]
    path = out_dir / REPORT_MD
    write_text_atomic(path, "\n".join(lines))
    return path
