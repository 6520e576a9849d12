"""The decision threshold for domain shift: chosen on out-of-fold or on leave-one-domain-out predictions?

Two pooled prediction sets of the same figures of the main set (each a finished run's oof.csv):
  oof    a k-fold run (slide-grouped): each figure predicted by a model that saw other slides of its domain
  loso   a leave-one-domain-out run (splits.kind leave_scanner_out, leave_source_out, ...): each figure predicted
         by a model that never saw its domain. The held-out domain column is read off the run: the domain column
         (Scanner, source, Tumor, Origin, Species) that is one value per fold and differs between folds.
Two rules, each the threshold that maximises balanced accuracy on one set's pooled predictions:
  oof rule (what training.export did alone), loso rule (tuned for figures from an unseen domain).
Both thresholds are reported on both sets (pooled, optimistic for the set that chose it). The choice between
the rules is made selection-free, on nested figures: for each held-out domain, each rule's threshold is chosen
on the other domains' figures only and applied to that domain's leave-one-domain-out predictions; the rule
with the higher pooled nested balanced accuracy ships (a tie keeps the out-of-fold rule), with its threshold
from all figures. training.export records the whole comparison in the manifest's provenance.
Run:  python -m training.threshold OOF_RUN LOSO_RUN
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from amf import AmfError, report_error
from amf.cli import EXPECTED, ArgumentParser, as_error
from training import metrics
from training.oof import choosing, leave_one_group_out_thresholds
from training.run import RunDir, write_json_atomic

RULES = ("oof", "loso")


HELD_OUT = ("Scanner", "source", "Tumor", "Origin", "Species")  # the columns a leave-one-out split can hold out


def held_out_column(loso: pd.DataFrame) -> str:
    """The domain column a leave-one-domain-out run held out: one value per fold, two or more values in all."""
    for col in HELD_OUT:
        if col in loso and loso[col].nunique() >= 2 and (loso.groupby("fold")[col].nunique() == 1).all():
            return col
    raise AmfError(
        "the second run is not a leave-one-domain-out run: no column of "
        f"{', '.join(HELD_OUT)} is one value per fold with two or more values in all"
    )


def paired(oof: pd.DataFrame, loso: pd.DataFrame) -> pd.DataFrame:
    """One row per figure of the main set (oof.choosing: not an extra set's): label, slide, group (the loso run's
    held-out domain of the figure), p_oof, p_loso (both sets must hold the same figures)."""
    oof, loso = oof[choosing(oof)], loso[choosing(loso)]
    if set(oof["image_id"]) != set(loso["image_id"]) or len(oof) != len(loso):
        raise AmfError("the two runs' out-of-fold predictions do not cover the same figures of the main set")
    column = held_out_column(loso)
    b = loso.set_index("image_id").loc[oof["image_id"]]
    if (b["label"].to_numpy(int) != oof["label"].to_numpy(int)).any():
        raise AmfError("the two runs label a figure differently")
    return pd.DataFrame(
        {
            "image_id": oof["image_id"].to_numpy(),
            "label": oof["label"].to_numpy(int),
            "slide": oof["slide"].astype(str).to_numpy(),
            "group": b[column].astype(str).to_numpy(),
            "p_oof": oof["probability"].to_numpy(float),
            "p_loso": b["probability"].to_numpy(float),
        }
    ).assign(held_out=column)


def nested_predictions(t: pd.DataFrame, rule: str) -> tuple[np.ndarray, dict]:
    """Classes of the leave-one-domain-out predictions, each held-out domain at the RULE's threshold chosen on the
    other domains' figures; and those thresholds by domain."""
    group = t["group"].to_numpy()
    thresholds = leave_one_group_out_thresholds(t["label"], t[f"p_{rule}"], group)
    pred = (t["p_loso"].to_numpy(float) >= np.array([thresholds[g] for g in group])).astype(int)
    return pred, thresholds


def choose(oof: pd.DataFrame, loso: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict:
    t = paired(oof, loso)
    y, slides = t["label"].to_numpy(int), t["slide"].to_numpy()
    column = t["held_out"].iloc[0]
    out = {"n": int(len(t)), "held_out": column, "groups": sorted(t["group"].unique()), "rules": {}}
    for rule in RULES:
        thr = metrics.best_threshold(y, t[f"p_{rule}"])
        nested_pred, nested_thr = nested_predictions(t, rule)
        on = {}
        for s in RULES:
            p = t[f"p_{s}"].to_numpy(float)
            on[s] = {
                **metrics.summary(y, p, threshold=thr),
                "ci95": metrics.slide_bootstrap_ci(y, p, slides, (p >= thr).astype(int), n_boot, seed),
            }
        out["rules"][rule] = {
            "threshold": thr,
            "on": on,
            "nested_thresholds": nested_thr,
            "nested_loso": {
                **metrics.summary(y, t["p_loso"], y_pred=nested_pred),
                "ci95": metrics.slide_bootstrap_ci(y, t["p_loso"], slides, nested_pred, n_boot, seed),
            },
        }
    bal = {r: out["rules"][r]["nested_loso"]["balanced_accuracy"] for r in RULES}
    out["chosen"] = "loso" if bal["loso"] > bal["oof"] else "oof"
    out["threshold"] = out["rules"][out["chosen"]]["threshold"]
    domain = {"Scanner": "scanner", "source": "source", "Tumor": "tumour type"}.get(column, column)
    out["rule"] = (
        f"the rule with the higher nested leave-one-{domain}-out balanced accuracy (each held-out "
        f"{domain} at a threshold chosen on the other {domain}s' figures); a tie keeps the out-of-fold "
        "rule; the shipped threshold is that rule's on all figures"
    )
    return out


def summary_text(res: dict) -> str:
    f = metrics.fmt
    held_out = f"{res['held_out']}: {', '.join(res['groups'])}"
    lines = [f"threshold for domain shift: {res['n']} figures, held out by {held_out}"]
    for rule, r in res["rules"].items():
        on = r["on"]
        lines.append(
            f"  {rule} rule {f(r['threshold'])}: balanced accuracy on oof {f(on['oof']['balanced_accuracy'])}"
            f", on loso {f(on['loso']['balanced_accuracy'])} (sensitivity {f(on['loso']['sensitivity'])})"
            f"; nested loso {f(r['nested_loso']['balanced_accuracy'])} "
            f"{metrics.fmt_ci(r['nested_loso']['ci95']['balanced_accuracy'])}"
        )
    lines.append(f"  chosen: {res['chosen']} rule, threshold {f(res['threshold'])}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = ArgumentParser(prog="python -m training.threshold", description=__doc__.split("\n")[0])
    ap.add_argument("oof_run", type=Path, help="a pooled k-fold run folder (its oof.csv)")
    ap.add_argument("loso_run", type=Path, help="a pooled leave-one-domain-out run folder of the same figures")
    ap.add_argument("--json", type=Path, default=None, help="also write the comparison here")
    a = ap.parse_args(argv)
    try:
        res = choose(RunDir(a.oof_run).read_oof(), RunDir(a.loso_run).read_oof())
        print(summary_text(res))
        if a.json:
            write_json_atomic(res, a.json)
    except EXPECTED as e:
        return report_error(as_error(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
