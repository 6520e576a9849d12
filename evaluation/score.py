"""Score run jobs exactly as the organisers' Track 2 evaluation does, with intervals, the model's identity,
the figures it trained on, and a report.

For each JOBS/<job>: the stack's name from input/inputs.json picks its ground truth; the result file
output/multiple-mitotic-figure-classification.json must pass the organisers' checks
(amf.results.validate: a list, one dict per label, class normal/atypical, confidence a float),
else the error names the stack. Then, over all figures pooled: sensitivity, specificity, balanced
accuracy and accuracy from the classes, ROC AUC on the confidences, and the same per tumour domain
(training.metrics.aggregates: the organisers' keys). metrics.json holds them under "aggregates" exactly
as the organisers' metrics.json does; everything else sits under its own top-level key:
  model                 the model the jobs ran with (run.json, or --model): folder, manifest SHA-256, members,
                        TTA, threshold and its source, training data (evaluation.identity); null if unknown
  toolkit               this toolkit's version and git commit
  seen                  how many scored figures the model trained on: each job's patches fingerprinted
                        (training.export.fingerprint) against the model's training_fingerprints.bin; or why not checked
  unseen_only           every metric again on the figures the model did not train on (when it trained on some;
                        null when it trained on all)
  confidence_intervals  95% intervals, overall and per domain, and roc_band, the ROC band: one resampling
                        (evaluation.measure: slides where figures.csv knows them, else figures)
  breakdowns            per tumour domain, scanner, origin, source (the figures.csv columns there are)
  confidence_semantics  how the confidence was read (below)
  hindsight             the threshold that would have maximised balanced accuracy on this very set
  counts, checks, run, departures
  files                 the other files score wrote into OUT beside metrics.json (the report folder's record)
Confidence semantics: by default the confidence is P(atypical) (the organisers' README example and
this project's result schema). One published version of the organisers' evaluator instead reads it
as the confidence of the predicted class (P(atypical) = c if class is atypical else 1 - c);
--confidence predicted-class reproduces that variant. Only ROC AUC (and the curves) depend on it.
Departures from the organisers' code: a set or domain with one class only gets roc_auc null (theirs
raises), and a rate with an empty denominator is null (theirs gives 0 with a warning).
Everything is read and checked before anything is written (a result's confidence must lie in
[0, 1]; run.json and figures.csv must parse and hold their fields; a fingerprint file must be the
format and the one the manifest records), and the report of an earlier run in OUT (the files its
metrics.json names) is removed first: after a failed score no metrics.json claims a result. OUT follows
training.ownership's rule: new, empty, or a report folder (a metrics.json there), else refused in one line
(--beside: write beside its files); a file there that no metrics.json names is never written over nor removed.
metrics.json's "files" names the other files score wrote beside it. Everything is written into a scratch folder
inside OUT and moved into place at the end, metrics.json last.
Run:  python -m evaluation score JOBS --ground-truth GT --out DIR [--model DIR]
      [--confidence p-atypical|predicted-class] [--beside]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from amf import AmfError, jobs, one_line
from amf.fileio import read_json, write_text_atomic
from amf.results import ATYPICAL, CLASS_ID, validate
from evaluation import identity, measure
from training import ownership
from training.metrics import summary
from training.results.threshold import best_threshold

METRICS, REPORT = ownership.METRICS, ownership.REPORT  # the report folder's record, naming its other files
PREDICTIONS_CSV = "predictions.csv"
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

    from evaluation.run import list_jobs

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


def run_records(jobs_dir) -> list[dict]:
    """What `run` recorded in JOBS/<job>/run.json, checked; [] where it recorded nothing."""
    from evaluation.run import RUN_RECORD, list_jobs

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
    return records


def run_times(records: list[dict]) -> dict | None:
    """The run records' times, summarised; None if there are none."""
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


FIGURE_COLUMNS = ("slide", *(c for c in measure.BREAKDOWNS if c != "tumordomain"))  # optional in figures.csv


def read_figures(path):
    """pack's figures.csv (which figure sits where): columns image, index (an integer), figure, and where pack
    knew them the figure's slide, Scanner, Origin and source (FIGURE_COLUMNS)."""
    import pandas as pd

    try:
        text = dict.fromkeys(("image", "figure", *FIGURE_COLUMNS), str)
        placed = pd.read_csv(path, dtype=text, keep_default_na=False)
    except (OSError, ValueError) as e:  # pandas' parser errors are ValueErrors
        raise AmfError(f"figure table {path} cannot be read ({one_line(e)})") from None
    missing = {"image", "index", "figure"} - set(placed.columns)
    if missing:
        raise AmfError(f"figure table {path} lacks the columns {', '.join(sorted(missing))}")
    if not pd.api.types.is_integer_dtype(placed["index"]):
        raise AmfError(f"figure table {path}: column index must hold integers")
    if placed.duplicated(["image", "index"]).any():  # a merge would count such a figure twice
        raise AmfError(f"figure table {path}: a stack position is listed twice")
    return placed[["image", "index", "figure", *(c for c in FIGURE_COLUMNS if c in placed)]]


def evaluate(table, n_boot: int = 1000, seed: int = 0, confidence: str = "p-atypical") -> dict:
    """The figure table -> the metrics.json document (less the model, the seen figures and the run record)."""
    y, score, pred = (table[c].to_numpy() for c in ("label", "p_atypical", "predicted"))
    best = best_threshold(y, score)
    normal_max = score[pred == 0].max(initial=-np.inf)
    atypical_min = score[pred == 1].min(initial=np.inf)
    block = measure.measured(table, n_boot, seed)
    return {
        "aggregates": block.pop("aggregates"),
        **block,
        "confidence_semantics": {"mode": confidence, "meaning": CONFIDENCE_MODES[confidence]},
        "hindsight": {
            "threshold": best,
            "balanced_accuracy": summary(y, score, threshold=best)["balanced_accuracy"],
            "note": "chosen on this very set after seeing its labels: optimistic, not an estimate "
            "of performance on new data",
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
    model=None,
    beside: bool = False,
) -> dict:
    """Check and score every job; write OUT/metrics.json, OUT/predictions.csv and the report. MODEL: the model
    folder the jobs ran with, where their run.json do not name it (or to check that they name that one)."""
    if confidence not in CONFIDENCE_MODES:
        raise AmfError(f"unknown confidence semantics {confidence!r}; choose one of {', '.join(CONFIDENCE_MODES)}")
    if n_boot < 1:
        raise AmfError(f"the number of bootstrap resamples must be >= 1, got {n_boot}")
    from evaluation import report as report_files

    out_dir = Path(out_dir)
    ownership.claim(out_dir, [METRICS, PREDICTIONS_CSV, *(report_files.FILES if report else ())], REPORT, beside)
    ownership.remove_records(out_dir, REPORT)  # a failed score leaves no earlier result behind
    truth = load_ground_truth(ground_truth)
    table = collect(jobs_dir, truth, confidence)
    figures = Path(ground_truth).parent / "figures.csv"  # written by pack: which figure is where
    if figures.is_file():
        table = table.merge(read_figures(figures), on=["image", "index"], how="left")
    records = run_records(jobs_dir)
    folder = identity.model_of_runs(records, model)
    described = identity.describe(folder) if folder is not None else None
    hit, seen = identity.seen(jobs_dir, table, described)
    if hit is not None:
        table["seen"] = hit
    metrics = evaluate(table, n_boot=n_boot, seed=seed, confidence=confidence)
    metrics["model"] = described
    metrics["toolkit"] = identity.toolkit()
    metrics["seen"] = seen
    if hit is not None and hit.any():  # in-sample figures: every metric again without them (None: none is left)
        unseen = table[~hit].reset_index(drop=True)
        metrics["unseen_only"] = measure.measured(unseen, n_boot, seed) if len(unseen) else None
    metrics["run"] = run_times(records)
    metrics["sources"] = {"jobs": str(Path(jobs_dir).resolve()), "ground_truth": str(Path(ground_truth).resolve())}
    with ownership.scratch(out_dir, "score") as tmp:
        write_text_atomic(tmp / PREDICTIONS_CSV, table.drop(columns="predicted").to_csv(index=False))
        if report:
            report_files.write_report(tmp, metrics, table)
        metrics["files"] = ownership.files_under(tmp)
        write_text_atomic(tmp / METRICS, json.dumps(metrics, indent=2) + "\n")
        ownership.install(tmp, out_dir, REPORT)  # metrics.json last: the sign it all worked
    return metrics
