"""Score run jobs exactly as the organisers' Track 2 evaluation does, with intervals and a report.

For each JOBS/<job>: the stack's name from input/inputs.json picks its ground truth; the result file
output/multiple-mitotic-figure-classification.json must pass the organisers' checks
(amf.results.validate: a list, one dict per label, class normal/atypical, confidence a float),
else the error names the stack. Then, over all figures pooled: sensitivity, specificity, balanced
accuracy and accuracy from the classes, ROC AUC on the confidences, and the same per tumour domain
(training.metrics.aggregates: the organisers' keys). metrics.json holds them under "aggregates" exactly
as the organisers' metrics.json does; everything else sits under its own top-level key:
  confidence_intervals  seeded bootstrap over figures (training.metrics.bootstrap_ci), overall and per domain
  roc_band              grand-challenge-metrics' bootstrapped ROC band (training.metrics.roc_band)
  confidence_semantics  how the confidence was read (below)
  hindsight             the threshold that would have maximised balanced accuracy on this very set
  counts, checks, run, departures
Confidence semantics: by default the confidence is P(atypical) (the organisers' README example and
this project's result schema). One published version of the organisers' evaluator instead reads it
as the confidence of the predicted class (P(atypical) = c if class is atypical else 1 - c);
--confidence predicted-class reproduces that variant. Only ROC AUC (and the curves) depend on it.
Departures from the organisers' code: a set or domain with one class only gets roc_auc null (theirs
raises), and a rate with an empty denominator is null (theirs gives 0 with a warning).
Everything is read and checked before anything is written (a result's confidence must lie in
[0, 1]; run.json and figures.csv must parse and hold their fields), and OUT/metrics.json from an
earlier run is removed first: after a failed score no metrics.json claims a result.
Run:  python -m training.evaluate score JOBS --ground-truth GT --out DIR [--confidence p-atypical|predicted-class]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from amf import AmfError, jobs, one_line
from amf.fileio import read_json, write_text_atomic
from amf.results import ATYPICAL, CLASS_ID, validate
from training.metrics import aggregates, best_threshold, bootstrap_ci, roc_band, summary

CONFIDENCE_MODES = {
    "p-atypical": "confidence = P(atypical); ROC AUC on the confidence as given",
    "predicted-class": "confidence = confidence of the predicted class; ROC AUC on "
    "P(atypical) = confidence if class is atypical else 1 - confidence",
}
DEPARTURES = [
    "a set or tumour domain with one class only reports roc_auc as null (the organisers' code raises)",
    "a rate whose denominator is empty (no atypical or no normal figure) is null (sklearn gives 0.0)",
]
MAX_LISTED = 5  # problems named in the one error line


def load_ground_truth(path) -> dict[str, dict]:
    """ground_truth.json -> {stack name: {"labels": [0/1...], "tumordomains": [int...]}}."""
    truth = read_json(path, "ground truth")
    out = {}
    for i, entry in enumerate(truth if isinstance(truth, list) else [None]):
        ok = (
            isinstance(entry, dict)
            and isinstance(entry.get("image"), str)
            and isinstance(entry.get("labels"), list)
            and isinstance(entry.get("tumordomains"), list)
            and len(entry["labels"]) == len(entry["tumordomains"])
            and all(lab in CLASS_ID for lab in entry["labels"])
            and all(isinstance(d, int) and not isinstance(d, bool) for d in entry["tumordomains"])
        )
        if not ok:
            raise AmfError(
                f"ground truth {path}: entry {i} must be {{image, labels (normal/atypical), "
                "tumordomains (integers, one per label)}"
            )
        if not entry["labels"]:
            raise AmfError(f"ground truth {path}: entry {i} (stack {entry['image']}) has no labels")
        if entry["image"] in out:
            raise AmfError(f"ground truth {path}: stack {entry['image']} listed twice")
        out[entry["image"]] = {
            "labels": [CLASS_ID[lab] for lab in entry["labels"]],
            "tumordomains": entry["tumordomains"],
        }
    return out


def p_atypical(results: list[dict], confidence: str) -> list[float]:
    """The score the ROC is computed on, per CONFIDENCE_MODES."""
    if confidence == "p-atypical":
        return [r["confidence"] for r in results]
    if confidence == "predicted-class":
        return [r["confidence"] if r["class"] == ATYPICAL else 1 - r["confidence"] for r in results]
    raise AmfError(f"unknown confidence semantics {confidence!r}; choose one of {', '.join(CONFIDENCE_MODES)}")


def read_job(job: Path, truth: dict, confidence: str) -> list[dict]:
    """One job's figures as rows; raises AmfError naming the job and its stack."""
    name = jobs.image_name(jobs.read_inputs(job / "input"))
    if name is None:
        raise AmfError(f"job {job.name}: inputs.json names no {jobs.INPUT_SLUG} image")
    if name not in truth:
        raise AmfError(f"job {job.name}: no ground truth for stack {name}")
    path = job / "output" / jobs.OUTPUT_FILE
    if not path.is_file():
        raise AmfError(f"result for {name}: no {path} (did job {job.name} fail?)")
    results = read_json(path, f"result for {name}:")
    gt = truth[name]
    validate(results, len(gt["labels"]), stack=name)
    score = p_atypical(results, confidence)
    return [
        {
            "job": job.name,
            "image": name,
            "index": i,
            "label": gt["labels"][i],
            "tumordomain": gt["tumordomains"][i],
            "class": r["class"],
            "confidence": r["confidence"],
            "p_atypical": score[i],
            "predicted": CLASS_ID[r["class"]],
        }
        for i, r in enumerate(results)
    ]


def collect(jobs_dir, truth: dict, confidence: str = "p-atypical"):
    """Every job's figures in one table; all problems reported together, and nothing scored."""
    import pandas as pd

    from training.evaluate.run import list_jobs

    rows, problems, seen = [], [], {}
    job_dirs = list_jobs(jobs_dir)
    for job in job_dirs:
        try:
            job_rows = read_job(job, truth, confidence)
        except AmfError as e:
            problems.append(one_line(e))
            continue
        name = job_rows[0]["image"] if job_rows else None
        if name in seen:
            problems.append(f"jobs {seen[name]} and {job.name} both hold stack {name}")
        seen[name] = job.name
        rows += job_rows
    unscored = sorted(set(truth) - set(seen))
    if unscored and not problems:
        problems.append(f"{len(unscored)} ground-truth stacks have no job, e.g. {unscored[0]}")
    if problems:
        more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise AmfError(
            f"{len(problems)} of {len(job_dirs)} jobs cannot be scored: " + "; ".join(problems[:MAX_LISTED]) + more
        )
    return pd.DataFrame(rows)


def run_times(jobs_dir) -> dict | None:
    """What `run` recorded in JOBS/<job>/run.json, summarised; None if it recorded nothing."""
    from training.evaluate.run import RUN_RECORD, list_jobs

    records = []
    for path in (j / RUN_RECORD for j in list_jobs(jobs_dir)):
        if path.is_file():
            r = read_json(path, "run record")
            if not (
                isinstance(r, dict)
                and isinstance(r.get("seconds"), (int, float))
                and not isinstance(r["seconds"], bool)
                and isinstance(r.get("mode"), str)
            ):
                raise AmfError(f"run record {path}: needs 'seconds' (a number) and 'mode' (text); run the jobs again")
            records.append(r)
    if not records:
        return None
    secs = np.array([r["seconds"] for r in records])
    return {
        "jobs": len(records),
        "mode": sorted({r["mode"] for r in records}),
        "seconds_mean": float(secs.mean()),
        "seconds_median": float(np.median(secs)),
        "seconds_max": float(secs.max()),
        "seconds_total": float(secs.sum()),
    }


def read_figures(path):
    """pack's figures.csv (which figure sits where): columns image, index (an integer), figure."""
    import pandas as pd

    try:
        placed = pd.read_csv(path, dtype={"image": str, "figure": str})
    except (OSError, ValueError) as e:  # pandas' parser errors are ValueErrors
        raise AmfError(f"figure table {path} cannot be read ({one_line(e)})") from None
    missing = {"image", "index", "figure"} - set(placed.columns)
    if missing:
        raise AmfError(f"figure table {path} lacks the columns {', '.join(sorted(missing))}")
    if not pd.api.types.is_integer_dtype(placed["index"]):
        raise AmfError(f"figure table {path}: column index must hold integers")
    if placed.duplicated(["image", "index"]).any():  # a merge would count such a figure twice
        raise AmfError(f"figure table {path}: a stack position is listed twice")
    return placed[["image", "index", "figure"]]


def evaluate(table, n_boot: int = 1000, seed: int = 0, confidence: str = "p-atypical") -> dict:
    """The figure table -> the metrics.json document (less the run record)."""
    y, score, pred, dom = (table[c].to_numpy() for c in ("label", "p_atypical", "predicted", "tumordomain"))
    agg = aggregates(y, score, domains=dom, y_pred=pred)
    overall = summary(y, score, y_pred=pred)
    intervals = {
        "level": 0.95,
        "method": f"percentile bootstrap over figures, {n_boot} resamples, seed {seed}",
        "overall": bootstrap_ci(y, score, n_boot=n_boot, seed=seed, y_pred=pred),
    }
    for d in np.sort(np.unique(dom)):
        m = dom == d
        intervals[f"domain_{d}"] = bootstrap_ci(y[m], score[m], n_boot=n_boot, seed=seed, y_pred=pred[m])
    best = best_threshold(y, score)
    normal_max = score[pred == 0].max(initial=-np.inf)
    atypical_min = score[pred == 1].min(initial=np.inf)
    return {
        "aggregates": agg,
        "confidence_intervals": intervals,
        "roc_band": roc_band(y, score, n_boot=n_boot),
        "confidence_semantics": {"mode": confidence, "meaning": CONFIDENCE_MODES[confidence]},
        "hindsight": {
            "threshold": best,
            "balanced_accuracy": summary(y, score, threshold=best)["balanced_accuracy"],
            "note": "chosen on this very set after seeing its labels: optimistic, not an estimate "
            "of performance on new data",
        },
        "counts": {
            "stacks": int(table.image.nunique()),
            "figures": len(table),
            "atypical": int(y.sum()),
            "normal": int(len(y) - y.sum()),
            **{k: overall[k] for k in ("tp", "fp", "fn", "tn")},
        },
        # if the classes are not one threshold on the score, the score is probably read the wrong way
        "checks": {"classes_are_a_threshold_on_score": bool(normal_max < atypical_min)},
        "departures": DEPARTURES,
    }


def score(
    jobs_dir,
    ground_truth,
    out_dir,
    confidence: str = "p-atypical",
    n_boot: int = 1000,
    seed: int = 0,
    report: bool = True,
) -> dict:
    """Check and score every job; write OUT/metrics.json, OUT/predictions.csv and the report."""
    if confidence not in CONFIDENCE_MODES:
        raise AmfError(f"unknown confidence semantics {confidence!r}; choose one of {', '.join(CONFIDENCE_MODES)}")
    if n_boot < 1:
        raise AmfError(f"the number of bootstrap resamples must be >= 1, got {n_boot}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise AmfError(f"{out_dir} is a file; score needs a folder (new or existing) for its report")
    (out_dir / "metrics.json").unlink(missing_ok=True)  # a failed score leaves no earlier result behind
    truth = load_ground_truth(ground_truth)
    table = collect(jobs_dir, truth, confidence)
    figures = Path(ground_truth).parent / "figures.csv"  # written by pack: which figure is where
    if figures.is_file():
        table = table.merge(read_figures(figures), on=["image", "index"], how="left")
    run = run_times(jobs_dir)
    metrics = evaluate(table, n_boot=n_boot, seed=seed, confidence=confidence)
    metrics["run"] = run
    metrics["sources"] = {"jobs": str(Path(jobs_dir).resolve()), "ground_truth": str(Path(ground_truth).resolve())}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "predictions.csv", table.drop(columns="predicted").to_csv(index=False))
    if report:
        from training.evaluate.report import write_report

        write_report(out_dir, metrics, table)
    write_text_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")  # last: the sign it all worked
    return metrics
