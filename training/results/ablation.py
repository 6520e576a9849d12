"""The ablation's report: each arm against the base on the same figures, with training variance in the interval.

For each arm and seed (a run folder whose folds are all done): balanced accuracy at nested thresholds (each fold's
threshold maximises the run's balanced accuracy on its other folds: for a leave-one-source-out run, each source is
judged at a threshold chosen on the other; threshold.nested_classes) and ROC AUC of the pooled out-of-fold
predictions. An arm's figure is the mean over its seeds.
arm - base, and its 95% interval: d = mean over the arm's seeds - mean over the base's seeds;
  interval d +- 1.96 sqrt(V_slides + V_seeds)
  V_slides  the variance of d over slide resamples (the same draw of slides for every run, all figures of a drawn
            slide together; thresholds held fixed): how much d moves with the figures tested, the models fixed
  V_seeds   s_arm^2 / S_arm + s_base^2 / S_base, the seed-to-seed sample variances of the metric (S seeds each): how
            much d moves with the training's randomness, the figures fixed
By the law of total variance the two add up. With one seed an arm has no V_seeds term (the report says so), and
with S seeds the seed variance has S - 1 degrees of freedom: two seeds give an interval whose seed term is itself
uncertain (the normal approximation does not widen for it). Seeds are not paired: a seed shares the split, not the
draws (an arm that adds a part changes what the random streams feed).

The verdict (the rule that sets the shipped configs' defaults; written before the arms' second seeds had finished):
  helps        one metric's interval lies above 0 and the other's does not lie below 0
  hurts        one metric's interval lies below 0 and the other's does not lie above 0
  no evidence  neither (both intervals hold 0, or they point opposite ways)
  undecided    the interval has no full seed term (fewer than 2 seeds in the arm or the base): decides nothing
A part is on by default where its arm alone on the base says "helps"; "no evidence" leaves it off, for it costs
training time (the whole recipe 1.84x the plain run). The best part (best_arm) is the one whose two differences
have the largest mean: the arm "soft labels + the best part" is built from it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from amf import AmfError
from amf.fileio import write_text_atomic
from training import metrics
from training.results import threshold
from training.results.compare import NESTED, finished_oof
from training.rundir import RunDir, write_csv_atomic

METRICS = {NESTED: "balanced accuracy (nested thresholds)", "roc_auc": "ROC AUC"}
Z95 = 1.959963984540054


def complete_runs(runs_by_arm: dict) -> dict:
    """{arm: {seed: predictions}} of the runs whose folds are all done (others are left out: not finished)."""
    out = {}
    for arm, seeds in runs_by_arm.items():
        for seed, run in seeds.items():
            try:
                oof, done, folds = finished_oof(run)
            except AmfError:
                continue
            if done == folds:
                out.setdefault(arm, {})[seed] = oof.set_index("image_id")
    return out


def aligned(preds: dict) -> tuple[pd.Index, np.ndarray, np.ndarray, np.ndarray]:
    """(image ids, labels, folds, slides) shared by every run; one error where runs hold other figures or folds."""
    tables = [t for seeds in preds.values() for t in seeds.values()]
    first = tables[0].sort_index()
    for t in tables[1:]:
        if len(t) != len(first) or not t.index.sort_values().equals(first.index):
            raise AmfError("the ablation's runs hold different figures: every arm must train on the same data")
        if (t.loc[first.index, "fold"].to_numpy() != first["fold"].to_numpy()).any():
            raise AmfError("the ablation's runs have different folds: every arm must use the same split")
    return first.index, first["label"].to_numpy(int), first["fold"].to_numpy(int), first["slide"].astype(str).to_numpy()


def scores(y, p, nested) -> dict:
    s = metrics.summary(y, p, y_pred=nested)
    return {NESTED: s["balanced_accuracy"], "roc_auc": s["roc_auc"]}


def analyse(preds: dict, base: str, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per arm and metric: its mean over seeds, the seeds' values, and (other arms) arm - base with its
    interval and the two variance terms. PREDS: {arm: {seed: predictions indexed by image id}}."""
    if base not in preds:
        raise AmfError(f"the base arm has no finished run: nothing to compare the arms with ({sorted(preds)} done)")
    ids, y, fold, slides = aligned(preds)
    if len(np.unique(fold)) < 2:
        raise AmfError("the ablation's runs have one fold: no other fold to choose a nested threshold on")
    chooses = threshold.choosing(next(iter(preds[base].values())).loc[ids])
    runs = {}  # (arm, seed) -> (probabilities, nested classes)
    for arm, seeds in preds.items():
        for s, table in seeds.items():
            p = table.loc[ids, "probability"].to_numpy(float)
            runs[(arm, s)] = (p, threshold.nested_classes(y, p, fold, chooses)[0])
    point = {key: scores(y, p, nested) for key, (p, nested) in runs.items()}
    boot = {key: {m: [] for m in METRICS} for key in runs}
    for idx in metrics.slide_draws(slides, n_boot, seed):
        if len(np.unique(y[idx])) < 2:
            continue
        for key, (p, nested) in runs.items():
            for m, v in scores(y[idx], p[idx], nested[idx]).items():
                boot[key][m].append(v)
    rows = []
    for arm, seeds in preds.items():
        for m, label in METRICS.items():
            values = np.array([point[(arm, s)][m] for s in sorted(seeds)])
            row = {"arm": arm, "metric": label, "seeds": len(values), "mean": values.mean()}
            row["per_seed"] = " ".join(f"{v:.4f}" for v in values)
            if arm != base:
                row |= difference(
                    values,
                    np.array([point[(base, s)][m] for s in sorted(preds[base])]),
                    np.mean([boot[(arm, s)][m] for s in seeds], axis=0),
                    np.mean([boot[(base, s)][m] for s in preds[base]], axis=0),
                )
            rows.append(row)
    table = pd.DataFrame(rows)
    table.attrs |= {"n_figures": len(y), "n_slides": len(np.unique(slides)), "n_boot": n_boot}
    return table


def verdict(rows: pd.DataFrame) -> str:
    """One arm's verdict from its rows (one a metric) of analyse's table: the module docstring's rule."""
    if (rows["seed_term"] != "yes").any():
        return "undecided"
    above, below = rows["ci_low"] > 0, rows["ci_high"] < 0
    if above.any() and not below.any():
        return "helps"
    if below.any() and not above.any():
        return "hurts"
    return "no evidence"


def verdicts(table: pd.DataFrame, base: str) -> dict:
    """{arm: verdict} for every arm but the base."""
    return {arm: verdict(rows) for arm, rows in table.groupby("arm", sort=False) if arm != base}


def best_arm(table: pd.DataFrame, candidates) -> str:
    """Of CANDIDATES (arm names in the table), the one whose arm - base differences have the largest mean."""
    d = table[table["arm"].isin(list(candidates))].groupby("arm")["minus_base"].mean()
    if d.empty:
        raise AmfError(f"none of {list(candidates)} is in the ablation's table")
    return str(d.idxmax())


def difference(arm: np.ndarray, base: np.ndarray, boot_arm: np.ndarray, boot_base: np.ndarray) -> dict:
    """arm - base (the seeds' means), V_slides (from the slide resamples of the seeds' means), V_seeds and the
    interval (the module's docstring)."""
    d = arm.mean() - base.mean()
    v_slides = float(np.var(boot_arm - boot_base, ddof=1))
    v_seeds = sum(float(np.var(v, ddof=1)) / len(v) for v in (arm, base) if len(v) > 1)
    half = Z95 * np.sqrt(v_slides + v_seeds)
    return {
        "minus_base": d,
        "ci_low": d - half,
        "ci_high": d + half,
        "v_slides": v_slides,
        "v_seeds": v_seeds,
        "seed_term": "yes" if len(arm) > 1 and len(base) > 1 else "partial" if len(arm) + len(base) > 2 else "no",
    }


TERMS = {  # epochs.csv column -> the terms table's heading
    "train_share_kd": "distillation's share of the loss",
    "train_share_align": "alignment's share",
    "train_align": "alignment (unweighted)",
    "train_align_control": "its shuffled-domain control",
}


def terms(runs_by_arm: dict) -> pd.DataFrame:
    """Whether each part acts: per arm and fold, the mean over the finished folds' epochs (and seeds) of each
    TERMS column (a fold trained on one domain value has no alignment to measure: 0 and 0)."""
    rows = []
    for arm, seeds in runs_by_arm.items():
        frames = []
        for run in seeds.values():
            r = RunDir(run)
            for fold in r.fold_dirs() if r.path.is_dir() else []:
                if fold.is_done():
                    frames.append(fold.read_epochs().assign(fold=fold.k))
        if frames:
            means = pd.concat(frames).groupby("fold")[[c for c in TERMS]].mean()
            rows += [{"arm": arm, "fold": k, **v} for k, v in means.to_dict("index").items()]
    return pd.DataFrame(rows, columns=["arm", "fold", *TERMS])


def terms_markdown(t: pd.DataFrame) -> str:
    lines = [
        "",
        "## Does each part act? (training/results/ablation.py terms: means over every epoch of the finished folds)",
        "",
        "| arm | held-out fold | " + " | ".join(TERMS.values()) + " |",
        "|---|---|" + "---|" * len(TERMS),
    ]
    for r in t.to_dict("records"):
        cells = [f"{100 * r[c]:.1f}%" if "share" in c else f"{r[c]:.4f}" for c in TERMS]
        lines.append(f"| {r['arm']} | {r['fold']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown(table: pd.DataFrame, base: str, arms=None) -> str:
    """The report's table: one row per arm, both metrics, arm - base with its interval."""
    a = table.attrs
    lines = [
        "# Ablation",
        "",
        f"{a['n_figures']} figures, {a['n_slides']} slides; out-of-fold predictions of each arm x seed; arm - base "
        f"with a 95% interval carrying the slide resampling ({a['n_boot']} resamples) and the seed-to-seed variance "
        "(training/results/ablation.py).",
        "",
        "| arm | overrides | seeds | balanced accuracy | arm - base [95% CI] | ROC AUC | arm - base [95% CI] "
        "| verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    overrides = {arm.name: ", ".join(arm.sets) for arm in arms or []}
    said = verdicts(table, base)
    for arm, rows in table.groupby("arm", sort=False):
        cells = [arm, f"`{overrides[arm]}`" if overrides.get(arm) else "", str(int(rows["seeds"].iloc[0]))]
        for label in METRICS.values():
            r = rows[rows["metric"] == label].iloc[0]
            cells.append(f"{r['mean']:.3f}")
            cells.append(
                ""
                if arm == base
                else f"{r['minus_base']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
                f"{'' if r['seed_term'] == 'yes' else ' (no seed term)'}"
            )
        cells.append(said.get(arm, ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(table: pd.DataFrame, base: str, path) -> str:
    """arm - base with its interval, one panel per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = table[table["arm"] != base]
    arms = list(dict.fromkeys(others["arm"]))
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.5 * len(METRICS), 0.5 * len(arms) + 1.5), sharey=True)
    for ax, label in zip(np.atleast_1d(axes), METRICS.values(), strict=True):
        rows = others[others["metric"] == label].set_index("arm").loc[arms]
        pos = np.arange(len(arms))[::-1]
        d = rows["minus_base"].to_numpy(float)
        err = np.vstack([d - rows["ci_low"].to_numpy(float), rows["ci_high"].to_numpy(float) - d])
        ax.errorbar(d, pos, xerr=err, fmt="o", capsize=3)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_yticks(pos, arms)
        ax.set_title(f"{label}: arm - {base}", fontsize=9)
    return metrics.save_figure(fig, path)


def write_report(folder, runs_by_arm: dict, base: str, n_boot: int = 2000, arms=None, parts=()) -> str:
    """FOLDER/ablation.md, ablation.csv and ablation.png from the finished runs; returns what was written, in words.
    PARTS: the arms that each add one part; the report names the best of them (best_arm)."""
    preds = complete_runs(runs_by_arm)
    table = analyse(preds, base, n_boot)
    text = markdown(table, base, arms)
    done = [p for p in parts if p in preds]
    if done:
        text += (
            f"\nThe best part of {', '.join(done)} (the largest mean of its two differences; best_arm): "
            f"{best_arm(table, done)}{'' if len(done) == len(parts) else ' (of the finished ones)'}.\n"
        )
    text += terms_markdown(terms(runs_by_arm))
    missing = [f"{arm} seed{s}" for arm, seeds in runs_by_arm.items() for s in seeds if s not in preds.get(arm, {})]
    if missing:
        text += f"\nNot finished, left out: {', '.join(missing)}.\n"
    write_csv_atomic(table, f"{folder}/ablation.csv")
    write_text_atomic(f"{folder}/ablation.md", text)
    plot(table, base, f"{folder}/ablation.png")
    return text + f"\nwritten: {folder}/ablation.md, ablation.csv, ablation.png"
