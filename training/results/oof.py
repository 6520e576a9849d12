"""Out-of-fold results: pool the folds' predictions, choose the threshold, compute the metrics.

Every number comes from training.metrics (the module offline evaluation uses), every threshold from
training.results.threshold:
  threshold      maximises balanced accuracy on the pooled out-of-fold predictions of the official figures
                 (extra labelled sets never choose it; the ensemble applies it to its members' mean
                 probability). Chosen on the figures it is then reported on: "pooled (optimistic)".
  nested         each fold's threshold chosen on the other folds' pooled (official) predictions and applied
                 to that fold: no reported figure chose its own threshold ("nested", selection-free when the
                 run's train.selection is last or inner)
  at_threshold, at_0.5, at_nested_threshold   balanced accuracy, ROC AUC, sensitivity, specificity
  per fold (at the pooled and at its nested threshold), per domain value (canonical names), per source (extra
  labelled sets apart), by vote agreement (unanimous vs split expert vote, where the table has the experts' AMF
  share `soft`), the organisers' aggregates (per tumour domain), and seeded 95% intervals by a slide-level
  bootstrap (training.metrics' slide_draws: figures of one slide are not independent; thresholds held fixed).
Writes RUN_DIR/oof.csv and RUN_DIR/oof_metrics.json (atomically); refuses, naming them, if folds are missing.
Run:  python -m training.results.oof RUN_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from amf import AmfError
from training import metrics
from training.domains import DOMAIN_COLUMNS, TUMOR_DOMAINS, tumor_domain
from training.results import threshold
from training.rundir import DONE, RunDir
from training.splits import folds_of


def vote_agreement(soft) -> np.ndarray:
    """'unanimous' where every expert voted alike (AMF share 0 or 1), else 'split'."""
    soft = np.asarray(soft, float)
    return np.where(np.isclose(soft, 0) | np.isclose(soft, 1), "unanimous", "split")


def compute(oof: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict:
    y, p = oof["label"].to_numpy(int), oof["probability"].to_numpy(float)
    slides = oof["slide"].astype(str).to_numpy() if "slide" in oof else np.arange(len(y)).astype(str)
    chooses = threshold.choosing(oof)
    thr, rule = threshold.pooled(y, p, chooses)
    pred = (p >= thr).astype(int)
    out = {
        "n": int(len(y)),
        "n_atypical": int(y.sum()),
        "threshold": thr,
        "threshold_rule": rule,
        "at_threshold": metrics.summary(y, p, threshold=thr),
        "at_0.5": metrics.summary(y, p, threshold=0.5),
        "ci95": metrics.slide_bootstrap_ci(y, p, slides, pred, n_boot, seed),
        "bootstrap": {
            "n_boot": n_boot,
            "seed": seed,
            "level": 0.95,
            "unit": "slide",
            "note": "slides resampled with replacement (training.metrics.slide_draws); thresholds fixed",
        },
    }
    nested_pred, nested = threshold.nested_classes(y, p, oof["fold"].to_numpy(), chooses)
    if nested:
        out["nested"] = {
            "rule": threshold.nested_rule(chooses),
            "thresholds": {str(k): v for k, v in nested.items()},
            "at_nested_threshold": metrics.summary(y, p, y_pred=nested_pred),
            "ci95": metrics.slide_bootstrap_ci(y, p, slides, nested_pred, n_boot, seed),
        }
    known = oof["Tumor"].isin(list(TUMOR_DOMAINS)) if "Tumor" in oof else pd.Series(False, index=oof.index)
    if len(oof) and known.all():
        out["aggregates"] = metrics.aggregates(y, p, domains=[tumor_domain(t) for t in oof["Tumor"]], threshold=thr)
    out["per_fold"] = {
        str(k): metrics.summary(g["label"], g["probability"], threshold=thr) for k, g in oof.groupby("fold")
    }
    if nested_pred is not None:  # each fold at its own nested threshold: the per-fold figures that chose nothing
        folds = oof["fold"].to_numpy()
        out["per_fold_nested"] = {
            str(k): metrics.summary(y[folds == k], p[folds == k], y_pred=nested_pred[folds == k]) for k in nested
        }
    out["per_domain"] = {
        col: {str(v): metrics.summary(g["label"], g["probability"], threshold=thr) for v, g in oof.groupby(col)}
        for col in DOMAIN_COLUMNS
        if col in oof
    }

    def groups(keys) -> dict:
        res = {}
        for v in sorted(set(keys)):
            at = np.asarray(keys) == v
            res[str(v)] = {
                "at_threshold": metrics.summary(y[at], p[at], threshold=thr),
                "ci95": metrics.slide_bootstrap_ci(y[at], p[at], slides[at], pred[at], n_boot, seed),
            }
            if nested_pred is not None:
                res[str(v)]["at_nested_threshold"] = metrics.summary(y[at], p[at], y_pred=nested_pred[at])
                res[str(v)]["ci95_nested"] = metrics.slide_bootstrap_ci(
                    y[at], p[at], slides[at], nested_pred[at], n_boot, seed
                )
        return res

    if "source" in oof and oof["source"].nunique() > 1:
        out["per_source"] = groups(oof["source"].astype(str).to_numpy())
    if "soft" in oof and oof["soft"].notna().all():
        out["by_vote"] = groups(vote_agreement(oof["soft"]))
        out["by_vote_rule"] = "unanimous: all experts voted alike; split: the majority label had a dissenting vote"
    return out


def with_votes(oof: pd.DataFrame, votes: pd.DataFrame | None) -> pd.DataFrame:
    """OOF with the experts' AMF share from VOTES (image_id, soft) where its own `soft` lacks it (folds written before
    it was kept there); OOF itself when VOTES is None or nothing is missing."""
    if votes is None or ("soft" in oof and oof["soft"].notna().all()):
        return oof
    known = oof["soft"] if "soft" in oof else pd.Series(np.nan, index=oof.index)
    return oof.assign(soft=known.fillna(oof["image_id"].map(votes.set_index("image_id")["soft"])))


def pool(
    run_dir, n_boot: int = 1000, seed: int = 0, write: bool = True, votes: pd.DataFrame | None = None, folds=None
) -> tuple[pd.DataFrame, dict]:
    """All folds' oof.csv -> RUN_DIR/oof.csv and oof_metrics.json; AmfError naming missing folds.

    VOTES (image_id, soft), e.g. from training.data.read_table, adds the experts' AMF share where the folds'
    oof.csv lack it (runs from before it was written there), for the by-vote metrics. FOLDS: those folds only (the
    members a subset export ships; only they need be finished), never written into the run unless they are all."""
    run = RunDir(run_dir)
    splits = run.read_splits()
    every = folds_of(splits)
    folds = every if folds is None else sorted(int(k) for k in folds)
    missing = [k for k in run.missing_folds(splits) if k in folds]
    if missing:
        raise AmfError(
            f"fold(s) {', '.join(map(str, missing))} of {run} are not finished "
            f"(no fold<k>/{DONE}); train them with --fold"
        )
    oof = pd.concat([run.fold(k).read_oof() for k in folds], ignore_index=True)
    expected = set(splits.loc[splits["fold"].isin(folds), "image_id"])
    if set(oof["image_id"]) != expected or oof["image_id"].duplicated().any():
        raise AmfError(f"{run}: the folds' oof.csv do not cover the validation figures exactly once")
    oof = with_votes(oof, votes)
    selection = run.done_values("selection", "validation", folds)
    result = compute(oof, n_boot, seed)
    result["selection"] = sorted(selection)  # train.selection of the folds ("validation": epoch chosen on them)
    if write and folds == every:
        run.write_pooled(oof, result)
    return oof, result


NONE_MARK, NO_INTERVAL = "  -  ", "[  -  ,   -  ]"  # how the log prints a rate or interval that is undefined


def fmt(x) -> str:
    return metrics.fmt(x, missing=NONE_MARK)


def summary_text(result: dict) -> str:
    s, ci = result["at_threshold"], result["ci95"]

    def with_ci(key):
        return f"{fmt(s[key])} {metrics.fmt_ci(ci[key], missing=NO_INTERVAL)}"

    lines = [
        f"out-of-fold: {result['n']} figures ({result['n_atypical']} atypical), pooled threshold "
        f"{result['threshold']:.3f} (optimistic: chosen on these figures); 95% intervals over slides",
        f"  balanced accuracy {with_ci('balanced_accuracy')}   ROC AUC {with_ci('roc_auc')}",
        f"  sensitivity {with_ci('sensitivity')}   specificity {with_ci('specificity')}",
    ]
    if "nested" in result:
        n, nci = result["nested"]["at_nested_threshold"], result["nested"]["ci95"]
        lines.append(
            f"  nested thresholds (each fold's from the other folds): balanced accuracy "
            f"{fmt(n['balanced_accuracy'])} {metrics.fmt_ci(nci['balanced_accuracy'], missing=NO_INTERVAL)}, "
            f"sensitivity {fmt(n['sensitivity'])}, "
            f"specificity {fmt(n['specificity'])}"
        )
    for name in ("by_vote", "per_source"):
        if name in result:
            lines.append(
                f"  {name.replace('_', ' ')}: "
                + "; ".join(
                    f"{v}: n {g['at_threshold']['n']} auc {fmt(g['at_threshold']['roc_auc'])}"
                    for v, g in result[name].items()
                )
            )
    lines.append(
        "  per fold: "
        + "; ".join(
            f"{k}: bal {fmt(v['balanced_accuracy'])} auc {fmt(v['roc_auc'])}" for k, v in result["per_fold"].items()
        )
    )
    for col in ("Scanner", "Tumor"):
        per = result["per_domain"].get(col, {})
        if len(per) > 1:
            lines.append(
                f"  per {col.lower()}: "
                + "; ".join(f"{v}: bal {fmt(m['balanced_accuracy'])} auc {fmt(m['roc_auc'])}" for v, m in per.items())
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    from amf import report_error
    from amf.cli import EXPECTED, ArgumentParser, as_error, first_sentence

    ap = ArgumentParser(prog="python -m training.results.oof", description=first_sentence(__doc__))
    ap.add_argument("run_dir", help="run folder of training.train (splits.csv, fold<k>/oof.csv)")
    a = ap.parse_args(argv)
    try:
        if not Path(a.run_dir).is_dir():
            raise AmfError(f"no run folder {a.run_dir}")
        _, res = pool(a.run_dir)
    except EXPECTED as e:
        return report_error(as_error(e))
    print(summary_text(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
