"""Paired comparison of two runs' out-of-fold predictions on the same figures.

  python -m training.compare RUN_A RUN_B [--n-boot 2000] [--seed 0] [--json OUT.json]

Both runs must cover the same figures (same splits). The bootstrap resamples *slides* (all figures of
a drawn slide together), since figures of one slide are not independent, and recomputes, on the
same draw for both runs, balanced accuracy at 0.5, balanced accuracy at each run's own out-of-fold
threshold (optimistic: chosen on these predictions) and ROC AUC. A difference whose 95% interval
excludes 0 is told from noise; one whose interval spans 0 is not.
The thresholds are held fixed: they are not chosen again in each resample, so the interval leaves out
the threshold's own uncertainty. P(B<=A) is the share of resamples in which B did not beat A: a
description of the bootstrap distribution, not a p-value (no null hypothesis was resampled).
slide_draws() is the one slide-level resampling of the project (training.oof's intervals use it too).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from amf import AmfError, report_error
from amf.cli import ArgumentParser
from amf.fileio import write_text_atomic
from training import metrics
from training.run import RunDir


def load_oof(run) -> tuple[pd.DataFrame, float]:
    """A run's pooled out-of-fold predictions (image ids as written) and its out-of-fold threshold."""
    run = RunDir(run)
    return run.read_oof(), float(run.read_oof_metrics()["threshold"])


def scores(y, p, thr) -> dict:
    s05, sthr = metrics.summary(y, p, threshold=0.5), metrics.summary(y, p, threshold=thr)
    return {
        "balanced_accuracy@0.5": s05["balanced_accuracy"],
        "balanced_accuracy@oof_threshold": sthr["balanced_accuracy"],
        "roc_auc": s05["roc_auc"],
    }


def slide_draws(slides, n_boot: int, seed: int = 0):
    """Cluster bootstrap: N_BOOT index arrays, each the figures of len(slides' unique values) slides drawn
    with replacement (a slide drawn twice counts twice); seeded."""
    slides = np.asarray(slides).astype(str)
    groups = [np.flatnonzero(slides == s) for s in np.unique(slides)]
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield np.concatenate([groups[i] for i in rng.integers(0, len(groups), len(groups))])


def compare(run_a, run_b, n_boot: int = 2000, seed: int = 0) -> dict:
    a, thr_a = load_oof(run_a)
    b, thr_b = load_oof(run_b)
    m = a.merge(b, on="image_id", suffixes=("_a", "_b"))
    if len(m) != len(a) or len(m) != len(b):
        raise AmfError(f"the runs cover different figures ({len(a)} vs {len(b)}, {len(m)} shared)")
    if (m["label_a"] != m["label_b"]).any():
        raise AmfError("the runs disagree on labels")
    y, pa, pb = m["label_a"].to_numpy(), m["probability_a"].to_numpy(), m["probability_b"].to_numpy()
    slides = m["slide_a"].astype(str).to_numpy()
    point_a, point_b = scores(y, pa, thr_a), scores(y, pb, thr_b)
    diffs = {k: [] for k in point_a}
    for idx in slide_draws(slides, n_boot, seed):
        if len(np.unique(y[idx])) < 2:
            continue
        sa, sb = scores(y[idx], pa[idx], thr_a), scores(y[idx], pb[idx], thr_b)
        for k in diffs:
            diffs[k].append(sb[k] - sa[k])
    out = {
        "run_a": str(run_a),
        "run_b": str(run_b),
        "n_figures": int(len(y)),
        "n_slides": int(len(np.unique(slides))),
        "n_boot": n_boot,
        "seed": seed,
        "resampling": "slides (cluster bootstrap), paired",
        "thresholds": {"a": thr_a, "b": thr_b, "note": "held fixed in every resample (not chosen again)"},
        "p_b_not_better_note": "share of resamples with B <= A; not a p-value",
        "metrics": {},
    }
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


def main(argv=None) -> int:
    ap = ArgumentParser(prog="python -m training.compare", description=__doc__.splitlines()[0])
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
    for k, v in res["metrics"].items():
        print(
            f"  {k:34s} A {v['a']:.3f}  B {v['b']:.3f}  B-A {v['b_minus_a']:+.3f} "
            f"[{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]  P(B<=A) {v['p_b_not_better']:.3f}"
        )
    print(
        f"thresholds held fixed (A {res['thresholds']['a']:.3f}, B {res['thresholds']['b']:.3f}), not chosen again "
        f"per resample; P(B<=A) is the share of resamples in which B did not beat A, not a p-value"
    )
    if args.json:
        try:
            write_text_atomic(args.json, json.dumps(res, indent=2) + "\n")
        except AmfError as e:
            return report_error(e)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
