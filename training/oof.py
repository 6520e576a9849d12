"""Out-of-fold results: pool the folds' predictions, choose the threshold, compute the metrics.

Every number comes from amf.metrics (the module offline evaluation uses): the threshold that maximises
balanced accuracy on the pooled out-of-fold predictions (the ensemble applies it to its members' mean
probability), balanced accuracy, ROC AUC, sensitivity and specificity overall, per fold and per domain
value (canonical names), the organisers' aggregates (per tumour domain), and seeded bootstrap 95% intervals.
Writes RUN_DIR/oof.csv and RUN_DIR/oof_metrics.json (atomically); refuses, naming them, if folds are missing.
Run:  python -m training.oof RUN_DIR
"""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pandas as pd

from amf import AmfError, metrics
from amf.domains import DOMAIN_COLUMNS, TUMOR_DOMAINS, tumor_domain
from amf.fileio import write_text_atomic
from training import splits as splits_io

DONE = "done.json"


def fold_done(run_dir, k: int) -> bool:
    return (Path(run_dir) / f"fold{k}" / DONE).is_file()


def missing_folds(run_dir, splits: pd.DataFrame) -> list[int]:
    return [k for k in splits_io.folds_of(splits) if not fold_done(run_dir, k)]


def compute(oof: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict:
    y, p = oof["label"].to_numpy(int), oof["probability"].to_numpy(float)
    thr = metrics.best_threshold(y, p)
    out = {"n": int(len(y)), "n_atypical": int(y.sum()), "threshold": thr,
           "threshold_rule": "maximises balanced accuracy on the pooled out-of-fold predictions",
           "at_threshold": metrics.summary(y, p, threshold=thr),
           "at_0.5": metrics.summary(y, p, threshold=0.5),
           "ci95": metrics.bootstrap_ci(y, p, threshold=thr, n_boot=n_boot, seed=seed),
           "bootstrap": {"n_boot": n_boot, "seed": seed, "level": 0.95}}
    known = oof["Tumor"].isin(list(TUMOR_DOMAINS))
    if known.all():
        out["aggregates"] = metrics.aggregates(y, p, domains=[tumor_domain(t) for t in oof["Tumor"]],
                                               threshold=thr)
    out["per_fold"] = {str(k): metrics.summary(g["label"], g["probability"], threshold=thr)
                       for k, g in oof.groupby("fold")}
    out["per_domain"] = {col: {str(v): metrics.summary(g["label"], g["probability"], threshold=thr)
                               for v, g in oof.groupby(col)} for col in DOMAIN_COLUMNS if col in oof}
    return out


def pool(run_dir, n_boot: int = 1000, seed: int = 0, write: bool = True) -> tuple[pd.DataFrame, dict]:
    """All folds' oof.csv -> RUN_DIR/oof.csv and oof_metrics.json; AmfError naming missing folds."""
    run_dir = Path(run_dir)
    if not (run_dir / "splits.csv").is_file():
        raise AmfError(f"{run_dir} is not a training run folder (no splits.csv)")
    splits = splits_io.read(run_dir / "splits.csv")
    missing = missing_folds(run_dir, splits)
    if missing:
        raise AmfError(f"fold(s) {', '.join(map(str, missing))} of {run_dir} are not finished "
                       f"(no fold<k>/{DONE}); train them with --fold")
    oof = pd.concat([pd.read_csv(run_dir / f"fold{k}" / "oof.csv", dtype={"image_id": str, "slide": str},
                                 keep_default_na=False)
                     for k in splits_io.folds_of(splits)], ignore_index=True)
    expected = set(splits.loc[splits["fold"] >= 0, "image_id"])
    if set(oof["image_id"]) != expected or oof["image_id"].duplicated().any():
        raise AmfError(f"{run_dir}: the folds' oof.csv do not cover the validation figures exactly once")
    result = compute(oof, n_boot, seed)
    if write:
        buf = io.StringIO()
        oof.to_csv(buf, index=False)
        write_text_atomic(run_dir / "oof.csv", buf.getvalue())
        write_text_atomic(run_dir / "oof_metrics.json", json.dumps(result, indent=2) + "\n")
    return oof, result


def fmt(x) -> str:
    return "  -  " if x is None else f"{x:.3f}"


def summary_text(result: dict) -> str:
    s, ci = result["at_threshold"], result["ci95"]

    def with_ci(key):
        return f"{fmt(s[key])} [{fmt((ci[key] or [None])[0])}, {fmt((ci[key] or [None, None])[1])}]"
    lines = [f"out-of-fold: {result['n']} figures ({result['n_atypical']} atypical), threshold {result['threshold']:.3f}",
             f"  balanced accuracy {with_ci('balanced_accuracy')}   ROC AUC {with_ci('roc_auc')}",
             f"  sensitivity {with_ci('sensitivity')}   specificity {with_ci('specificity')}",
             "  per fold: " + "; ".join(f"{k}: bal {fmt(v['balanced_accuracy'])} auc {fmt(v['roc_auc'])}"
                                       for k, v in result["per_fold"].items())]
    for col in ("Scanner", "Tumor"):
        per = result["per_domain"].get(col, {})
        if len(per) > 1:
            lines.append(f"  per {col.lower()}: " + "; ".join(
                f"{v}: bal {fmt(m['balanced_accuracy'])} auc {fmt(m['roc_auc'])}" for v, m in per.items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    from amf import report_error
    from amf.cli import EXPECTED, ArgumentParser, as_error

    ap = ArgumentParser(prog="python -m training.oof", description=__doc__.splitlines()[0])
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
