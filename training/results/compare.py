"""Paired comparison of two runs' out-of-fold predictions on the same figures: on the folds both runs finished.

  python -m training.results.compare RUN_A RUN_B [--n-boot 2000] [--seed 0] [--json OUT.json]

A run contributes its pooled oof.csv when every fold is done, else the predictions of its finished folds (each
fold<k>/oof.csv beside a done.json): a partial run is compared on the folds both runs finished, which must hold
the same figures in the same folds (same splits), else one error. The result names the folds compared and whether
each run was complete.
The bootstrap resamples *slides* (all figures of a drawn slide together), since figures of one slide are not
independent, and recomputes, on the same draw for both runs, balanced accuracy at 0.5, balanced accuracy at
nested thresholds and ROC AUC. Nested: each compared fold's threshold is the one that maximises balanced accuracy
on the run's other compared folds (threshold.leave_one_group_out_thresholds, official figures choose), so no
figure chose its own threshold: selection-free for a k-fold run trained with train.selection last or inner; for a
leave-one-scanner-out run (folds = scanners) each scanner is judged at a threshold chosen on the other scanners.
With one compared fold there is no nested threshold and that metric is left out (the result says so).
A difference whose 95% interval excludes 0 is told from noise; one whose interval spans 0 is not.
The thresholds, hence each figure's predicted class, are held fixed: they are not chosen again in each resample,
so the interval leaves out the threshold's own uncertainty. P(B<=A) is the share of resamples in which B did not
beat A: a description of the bootstrap distribution, not a p-value (no null hypothesis was resampled).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from amf import AmfError, report_error
from amf.cli import ArgumentParser, first_sentence
from amf.fileio import write_text_atomic
from training import metrics
from training.results import threshold
from training.rundir import DONE, RunDir
from training.splits import folds_of

NESTED = "balanced_accuracy@nested_thresholds"


def finished_oof(run) -> tuple[pd.DataFrame, list[int], list[int]]:
    """A run's out-of-fold predictions (image ids as written): the pooled oof.csv when the run is pooled, else its
    finished folds' (fold<k>/oof.csv of each fold with done.json); the folds they cover; all folds of the run."""
    run = RunDir(run)
    if run.is_pooled():
        oof = run.read_oof()
        folds = sorted(int(k) for k in oof["fold"].unique())
        return oof, folds, folds
    if not run.splits.is_file():
        raise AmfError(f"{run} has no out-of-fold predictions: no pooled {run.oof}, no splits.csv of its folds")
    folds = folds_of(run.read_splits())
    done = [k for k in folds if run.fold(k).is_done()]
    if not done:
        raise AmfError(f"{run} has no out-of-fold predictions: no fold finished (no fold<k>/{DONE})")
    return pd.concat([run.fold(k).read_oof() for k in done], ignore_index=True), done, folds


def scores(y, p, nested) -> dict:
    """Balanced accuracy at 0.5, at the fixed nested classes NESTED (when there are), and ROC AUC."""
    s05 = metrics.summary(y, p, threshold=0.5)
    out = {"balanced_accuracy@0.5": s05["balanced_accuracy"]}
    if nested is not None:
        out[NESTED] = metrics.summary(y, p, y_pred=nested)["balanced_accuracy"]
    return out | {"roc_auc": s05["roc_auc"]}


def compare(run_a, run_b, n_boot: int = 2000, seed: int = 0, folds=None) -> dict:
    """The paired comparison (module docstring) on the folds both runs finished; FOLDS: of those, these only (the
    folds a subset export ships), named in the result as restricted_to."""
    a, done_a, folds_a = finished_oof(run_a)
    b, done_b, folds_b = finished_oof(run_b)
    restricted_to = None if folds is None else sorted(int(k) for k in folds)
    folds = sorted(set(done_a) & set(done_b) & set(restricted_to if restricted_to is not None else done_a))
    if not folds:
        raise AmfError(
            f"the runs share no finished fold ({run_a}: {', '.join(map(str, done_a))}; "
            f"{run_b}: {', '.join(map(str, done_b))})"
        )
    a, b = a[a["fold"].isin(folds)], b[b["fold"].isin(folds)]
    m = a.merge(b, on="image_id", suffixes=("_a", "_b"))
    moved = int((m["fold_a"] != m["fold_b"]).sum())
    if len(m) != len(a) or len(m) != len(b) or moved:
        raise AmfError(
            f"the runs' splits differ: their folds {', '.join(map(str, folds))} cover different figures "
            f"({len(a)} vs {len(b)}, {len(m)} shared, {moved} of them in another fold)"
        )
    if (m["label_a"] != m["label_b"]).any():
        raise AmfError("the runs disagree on labels")
    y, pa, pb = m["label_a"].to_numpy(int), m["probability_a"].to_numpy(float), m["probability_b"].to_numpy(float)
    slides, fold = m["slide_a"].astype(str).to_numpy(), m["fold_a"].to_numpy(int)
    chooses = threshold.choosing(a.set_index("image_id").loc[m["image_id"]])
    out = {
        "run_a": str(run_a),
        "run_b": str(run_b),
        "folds": folds,
        "complete": {"a": done_a == folds_a, "b": done_b == folds_b},
        **({"restricted_to": restricted_to} if restricted_to is not None else {}),
        "folds_of_run": {"a": folds_a, "b": folds_b},
        "n_figures": int(len(y)),
        "n_slides": int(len(np.unique(slides))),
        "n_boot": n_boot,
        "seed": seed,
        "resampling": "slides (cluster bootstrap), paired",
    }
    if len(folds) > 1:
        nested_a, thr_a = threshold.nested_classes(y, pa, fold, chooses)
        nested_b, thr_b = threshold.nested_classes(y, pb, fold, chooses)
        out["nested_thresholds"] = {
            "a": {str(k): v for k, v in thr_a.items()},
            "b": {str(k): v for k, v in thr_b.items()},
            "rule": "each compared fold's threshold maximises the run's balanced accuracy on its other compared "
            "folds" + (" (official figures)" if not chooses.all() else "") + "; held fixed in every resample",
        }
    else:
        nested_a = nested_b = None
        out["nested_thresholds"] = None
        out["not_computed"] = {NESTED: "one compared fold: no other fold to choose its threshold on"}
    point_a, point_b = scores(y, pa, nested_a), scores(y, pb, nested_b)
    diffs = {k: [] for k in point_a}
    for idx in metrics.slide_draws(slides, n_boot, seed):
        if len(np.unique(y[idx])) < 2:
            continue
        na = None if nested_a is None else nested_a[idx]
        nb = None if nested_b is None else nested_b[idx]
        sa, sb = scores(y[idx], pa[idx], na), scores(y[idx], pb[idx], nb)
        for k in diffs:
            diffs[k].append(sb[k] - sa[k])
    out["p_b_not_better_note"] = "share of resamples with B <= A; not a p-value"
    out["metrics"] = {}
    for k, d in diffs.items():
        lo, hi = np.percentile(d, [2.5, 97.5])
        out["metrics"][k] = {
            "a": point_a[k],
            "b": point_b[k],
            "b_minus_a": point_b[k] - point_a[k],
            "ci95": [float(lo), float(hi)],
            "p_b_not_better": float(np.mean(np.array(d) <= 0)),
        }
    return out


def folds_text(res: dict) -> str:
    """Which folds were compared, and how complete each run was."""
    of = res["folds_of_run"]
    state = "; ".join(
        f"{w.upper()} complete ({len(of[w])} folds)"
        if res["complete"][w]
        else f"{w.upper()} partial ({len(of[w])} folds)"
        for w in ("a", "b")
    )
    return f"folds compared: {', '.join(map(str, res['folds']))} ({state})"


def main(argv=None) -> int:
    ap = ArgumentParser(prog="python -m training.results.compare", description=first_sentence(__doc__))
    ap.add_argument("run_a")
    ap.add_argument("run_b")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    try:
        res = compare(args.run_a, args.run_b, args.n_boot, args.seed)
    except AmfError as e:
        return report_error(e)
    print(
        f"B = {args.run_b}  vs  A = {args.run_a}  ({res['n_figures']} figures, {res['n_slides']} slides, "
        f"paired slide bootstrap x{res['n_boot']})"
    )
    print(folds_text(res))
    for k, v in res["metrics"].items():
        print(
            f"  {k:36s} A {v['a']:.3f}  B {v['b']:.3f}  B-A {v['b_minus_a']:+.3f} "
            f"[{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]  P(B<=A) {v['p_b_not_better']:.3f}"
        )
    for k, why in res.get("not_computed", {}).items():
        print(f"  {k}: not computed ({why})")
    print(
        "nested thresholds held fixed, not chosen again per resample; P(B<=A) is the share of resamples in which B "
        "did not beat A, not a p-value"
    )
    if args.json:
        try:
            write_text_atomic(args.json, json.dumps(res, indent=2) + "\n")
        except AmfError as e:
            return report_error(e)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
