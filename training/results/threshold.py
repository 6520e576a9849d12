"""Every decision-threshold rule of the project, in one module: what chooses a threshold, on which figures.

  best_threshold         the one primitive: the threshold that maximises balanced accuracy (ties: nearest 0.5)
  choosing               which figures may choose (the main set's; extra labelled sets never do)
  pooled                 the out-of-fold rule: best_threshold on a run's pooled predictions of the choosing figures
                         (chosen on the figures it is reported on: optimistic)
  nested_classes         each fold (or held-out group) at a threshold chosen on the other folds' predictions
                         (leave_one_group_out_thresholds): no reported figure chose its own threshold
  choose                 the threshold for domain shift: the out-of-fold rule against the leave-one-domain-out rule
  predictions_for, for_export   which run's predictions choose the shipped threshold, and the threshold and words
                         training.export writes into the manifest
The threshold for domain shift. Two pooled prediction sets of the same figures of the main set (each a finished
run's oof.csv):
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
Run:  python -m training.results.threshold OOF_RUN LOSO_RUN
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from amf import AmfError, report_error
from amf.cli import EXPECTED, ArgumentParser, as_error, first_sentence
from training import metrics
from training.rundir import RunDir, write_json_atomic

RULES = ("oof", "loso")
HELD_OUT = ("Scanner", "source", "Tumor", "Origin", "Species")  # the columns a leave-one-out split can hold out


def best_threshold(y_true, score) -> float:
    """The threshold on score that maximises balanced accuracy (ties: the one nearest 0.5)."""
    from sklearn.metrics import roc_curve

    y_true = np.asarray(y_true).astype(int)
    if len(np.unique(y_true)) < 2:
        return 0.5
    fpr, tpr, thr = roc_curve(y_true, np.asarray(score, dtype=np.float64))
    bal = (tpr + 1 - fpr) / 2
    thr = np.clip(thr, 0.0, 1.0)  # roc_curve's first threshold is +inf
    best = np.flatnonzero(np.isclose(bal, bal.max()))
    return float(thr[best[np.argmin(np.abs(thr[best] - 0.5))]])


def choosing(table: pd.DataFrame) -> np.ndarray:
    """Which figures choose a threshold: the main set's (not an extra set's: column extra), else (tables from before
    that column) the official ones where the source names any, else all."""
    if "extra" in table:
        main = ~table["extra"].astype(str).str.lower().isin(["true", "1"]).to_numpy()
    elif "source" in table:
        main = (table["source"] == "official").to_numpy()
    else:
        main = np.ones(len(table), bool)
    return main if main.any() else np.ones(len(table), bool)


def pooled(y, p, chooses) -> tuple[float, str]:
    """The out-of-fold rule on pooled predictions: its threshold (chosen where CHOOSES) and the words that say so."""
    rule = (
        "maximises balanced accuracy on the pooled out-of-fold predictions"
        + (" of the official figures" if not chooses.all() else "")
        + " (pooled: chosen on the figures it is reported on, optimistic)"
    )
    return best_threshold(y[chooses], p[chooses]), rule


def nested_rule(chooses) -> str:
    return (
        "each fold's threshold maximises balanced accuracy on the other folds' pooled out-of-fold predictions"
        + (" (official figures)" if not chooses.all() else "")
        + " and is applied to that fold only"
    )


def leave_one_group_out_thresholds(y, p, groups, chooses=None) -> dict:
    """{group: the threshold that maximises balanced accuracy on the other groups' pooled predictions} (only rows
    where CHOOSES is true choose): no group's figures choose the threshold applied to them."""
    y, p, groups = np.asarray(y, int), np.asarray(p, float), np.asarray(groups)
    chooses = np.ones(len(y), bool) if chooses is None else np.asarray(chooses, bool)
    return {g: best_threshold(y[chooses & (groups != g)], p[chooses & (groups != g)]) for g in sorted(set(groups))}


def nested_classes(y, p, folds, chooses) -> tuple[np.ndarray | None, dict]:
    """Each figure's class at its fold's nested threshold (leave_one_group_out_thresholds over FOLDS, chosen where
    CHOOSES) and those thresholds by fold; (None, {}) with one fold."""
    folds = np.asarray(folds)
    if len(np.unique(folds)) < 2:
        return None, {}
    thresholds = {int(k): v for k, v in leave_one_group_out_thresholds(y, p, folds, chooses).items()}
    return (np.asarray(p, float) >= np.array([thresholds[int(k)] for k in folds])).astype(int), thresholds


def table_nested_classes(oof: pd.DataFrame) -> np.ndarray | None:
    """nested_classes of an out-of-fold table (label, probability, fold; its own choosing figures)."""
    y, p = oof["label"].to_numpy(int), oof["probability"].to_numpy(float)
    return nested_classes(y, p, oof["fold"].to_numpy(), choosing(oof))[0]


# ---- the threshold for domain shift ---------------------------------------------------------------------------


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
    """One row per figure of the main set (choosing: not an extra set's): label, slide, group (the loso run's
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
        thr = best_threshold(y, t[f"p_{rule}"])
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


# ---- the shipped threshold (training.export) ------------------------------------------------------------------


def predictions_for(run: RunDir, threshold_run, tta: str) -> RunDir:
    """The run whose pooled predictions choose the threshold: RUN itself, or THRESHOLD_RUN, RUN's held-out figures
    re-predicted under the container's test-time augmentation TTA (training.results.tta_oof)."""
    if threshold_run is None:
        return run
    predictions = RunDir(threshold_run)
    if predictions.from_run() != run.path.resolve():
        raise AmfError(f"--threshold-run {threshold_run} holds predictions of {predictions.from_run()}, not of {run}")
    mode = predictions.predicted_tta()
    if mode != tta:
        raise AmfError(
            f"--threshold-run {threshold_run} was predicted with test-time augmentation {mode}, the container runs "
            f"{tta}: python -m training.results.tta_oof {run} --tta {tta}"
        )
    return predictions


def for_export(
    oof: pd.DataFrame, result: dict, mode: str, tta: str, shift_run=None, seed: int = 0, oof_run=None, subset=None
) -> dict:
    """The shipped threshold: the out-of-fold rule on the pooled predictions OOF (of the run OOF_RUN; their metrics
    RESULT, made with test-time augmentation MODE, for a container running TTA), or with SHIFT_RUN (a pooled
    leave-one-domain-out run of the same figures, predicted under MODE too) choose()'s choice between the rules.
    SUBSET: the folds OOF holds, when a subset export ships only them (SHIFT_RUN's predictions of their figures only).
    {threshold, note, shift, source}: the note says where the threshold came from, shift is choose()'s whole
    comparison with both rules' runs (None without SHIFT_RUN), source the predictions the shipped threshold is the
    optimum of: the run whose rule won (the manifest's threshold_predictions)."""
    made = f"predictions made with test-time augmentation {mode}"
    if mode != tta:  # the run's own one-view predictions under a TTA container: say so, the card shows it
        made += f" (the container runs {tta}: an estimate; --threshold-run RUN_tta_{tta} chooses on its own)"
    if shift_run is None:
        note = (
            f"chosen on the pooled out-of-fold {made} to maximise balanced accuracy; applied to the ensemble's "
            "mean P(atypical)"
        )
        source = {"run": str(oof_run), "tta": mode, "rule": "oof"}
        return {"threshold": result["threshold"], "note": note, "shift": None, "source": source}
    shift_mode = RunDir(shift_run).predicted_tta()
    if shift_mode != mode:
        raise AmfError(
            f"--shift-run {shift_run} holds predictions made with test-time augmentation {shift_mode}, the "
            f"threshold's out-of-fold ones with {mode}: python -m training.results.tta_oof {shift_run} --tta {mode}"
        )
    runs = {"oof": str(oof_run), "loso": str(shift_run)}
    loso = RunDir(shift_run).read_oof()
    if subset is not None:  # the folds a subset export ships: the leave-one-out predictions of their figures only
        loso = loso[loso["image_id"].isin(set(oof["image_id"]))]
    shift = {**choose(oof, loso, seed=seed), "oof_run": runs["oof"], "loso_run": runs["loso"]}
    if subset is not None:
        shift["folds"] = list(subset)
    note = (
        f"the {shift['chosen']} rule (training.threshold: {shift['rule']}), on {made}; applied to the "
        "ensemble's mean P(atypical)"
    )
    source = {"run": runs[shift["chosen"]], "tta": mode, "rule": shift["chosen"]}
    return {"threshold": shift["threshold"], "note": note, "shift": shift, "source": source}


def source(provenance: dict) -> dict | None:
    """The predictions a manifest's threshold is the optimum of, {run, tta, rule}: the run whose rule won (with a
    threshold for shift that chose the loso rule, its leave-one-out run). A manifest from before for_export's source
    named the out-of-fold predictions whichever rule won: read it by the rule chosen."""
    recorded, shift = provenance.get("threshold_predictions"), provenance.get("threshold_for_shift")
    if not recorded or "rule" in recorded:
        return recorded
    if shift and shift.get("chosen") == "loso":
        return {"run": shift["loso_run"], "tta": recorded.get("tta"), "rule": "loso"}
    return {**recorded, "rule": "oof"}


def oof_predictions(threshold_predictions: dict | None, shift: dict | None) -> str | None:
    """The out-of-fold predictions an export chose on (its --threshold-run, or the run itself), as its provenance
    records them: the threshold for shift's oof_run, else the threshold's own source (threshold_predictions; a
    manifest from before oof_run was kept names them there)."""
    return (shift or {}).get("oof_run") or (threshold_predictions or {}).get("run")


def main(argv=None) -> int:
    ap = ArgumentParser(prog="python -m training.results.threshold", description=first_sentence(__doc__))
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
