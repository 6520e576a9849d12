"""Preflight: the container exactly as packaged, on labelled data, checked against what its card says, before upload.

  python -m evaluation preflight MODEL --data DATA [--run RUN] [--limit N] [--seed S] [--n-boot N] [--tumor TYPE]
                                 [--in-process] [--python PATH] [--timeout S] [--out DIR] [--beside]
  make preflight MODEL=model DATA=DIR [RUN=DIR]        (builds .venv-runtime first: the image's runtime)

do_test_run.sh compares the image with an expected output the same model wrote: a model whose confidence is
P(normal), or whose threshold or normalisation is off, passes it. The preflight runs the container's entrypoint
(evaluation.run: a fresh process per job with .venv-runtime/bin/python, as the platform runs it; without that
runtime, in-process here, said in one line) on jobs packed by evaluation.pack, reads the results with score's
readers, and measures them with training.metrics' functions:
  members    each member alone, in a temporary model folder holding that one member (the shipped threshold and
             TTA, the member's own input size, normalisation and resize), on its own held-out fold: the fold the
             manifest names (members[i].fold), its figures from RUN's splits.csv, else from MODEL/oof.csv matched to
             DATA's figures by name and then by content (each must be a figure of training_fingerprints.bin). A
             member with no fold is not checkable alone.
  ensemble   the whole model on DATA's figures it did not train on (training_fingerprints.bin,
             evaluation.identity.seen); where it trained on every one, one line says so (not a failure).
Checks, one line each, PASS, FAIL or SKIP (with the reason), with the figure measured (docs/evaluation.md,
"Preflight", says why each rule):
  ROC AUC       each member on its fold, and the ensemble on the unseen figures: at least AUC_FLOOR, and the lower
                end of its 95% slide-bootstrap interval above 0.5; below 0.5 is named: inverted confidence?
  out-of-fold   the members' held-out predictions pooled: balanced accuracy at the shipped threshold, and ROC AUC,
                agree with the manifest's recorded out-of-fold figures (threshold_for_shift's chosen rule on the
                out-of-fold predictions, else oof_metrics): the measured value inside the recorded 95% interval, or
                the recorded value inside the measured one (a --limit sample is wider); the line says whether the
                recorded predictions were made with the container's TTA (like with like) or not
  calls         the share of atypical calls at the shipped threshold, against the labels' share: their odds
                within a factor CALLS_ODDS of each other
  folder        holds exactly what its manifest and card name (training.ownership) and what they name is there;
                no absolute path in its text files (training.export.paths); its size against the 10 GB image limit
                less RUNTIME_ALLOWANCE; the GPU memory of the members at batch 16, estimated from the graphs
                (member_memory), against a T4's
  time          seconds per stack of the whole ensemble, measured here (the run records), against the platform's
                20-minute job limit: at most JOB_SHARE of it
Exit 0 when nothing FAILs, 1 when something does; bad input is one `error: ...` line and exit 2 (__main__.py).
--out DIR also writes DIR/preflight.json (every check and its figures) and DIR/predictions.csv (every figure run),
by training.ownership's rule (a new or empty folder, or an earlier preflight's). Torch-free.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from amf import AmfError, jobs, manifest
from amf.ensemble import CHUNK
from amf.fileio import write_text_atomic
from evaluation import identity, labels
from evaluation.measure import resampling_units
from evaluation.pack import pack_table
from evaluation.run import RUNTIME_PYTHON, list_jobs, run_jobs
from evaluation.score import collect, load_ground_truth, read_figures
from training import ownership
from training.export import fingerprint
from training.export.paths import absolute_paths
from training.metrics import slide_bootstrap_ci, summary

AUC_FLOOR = 0.60  # a point ROC AUC below this is no clear margin above chance, whatever the interval says
CALLS_ODDS = 4.0  # the atypical calls' odds within this factor of the labels' odds (both ways)
BATCH = CHUNK  # patches per run of a session (amf.ensemble): the batch the members see
ARENA = 2.0  # onnxruntime's memory arena grows by doubling: up to twice the activations it plans
CUDA_OVERHEAD = 2**30  # the CUDA context, cuDNN handles and workspace: an allowance, not a measurement
T4_BYTES = 15 * 2**30  # the platform's T4: 16 GB, of which nvidia-smi shows 15,360 MiB usable
IMAGE_LIMIT = 10 * 10**9  # Grand Challenge's largest image
RUNTIME_ALLOWANCE = 4 * 10**9  # the image's own layers (CUDA 12 + cuDNN 9 runtime, Python, onnxruntime-gpu)
JOB_LIMIT_S = 20 * 60  # the platform's default time limit of a job (one stack)
JOB_SHARE = 0.5  # of it, for a machine slower than this one and the container's start
TIMING_STACKS = 3  # stacks the whole ensemble is timed on where it had no unseen figure to run on
TEXT_SUFFIXES = (".json", ".md", ".csv", ".yaml", ".yml", ".txt")
RECORD, PREDICTIONS = ownership.PREFLIGHT_JSON, "predictions.csv"
SCHEMA = "amf-preflight"


@dataclass
class Check:
    status: str  # PASS, FAIL or SKIP
    what: str
    figure: str
    values: dict = field(default_factory=dict)

    def line(self) -> str:
        return f"{self.status:<4}  {self.what}: {self.figure}"


def runtime(in_process: bool, python: str | None) -> tuple[bool, str | None, str]:
    """(in-process?, the jobs' interpreter, how the jobs run in words): the image's runtime when it is built."""
    if in_process:
        return True, None, "in-process (--in-process)"
    if python:
        return False, python, f"a process per job with {python}"
    if RUNTIME_PYTHON.is_file():
        return False, str(RUNTIME_PYTHON), "a process per job with .venv-runtime/bin/python, as the platform runs it"
    return True, None, "in-process: no .venv-runtime here (make runtime builds it); the entrypoint's code, here"


# ---------------------------------------------------------------- measuring


def measured(table, n_boot: int, seed: int) -> dict:
    """Scored figures (label, p_atypical, predicted, slide where known) -> summary, its 95% intervals over slides
    (training.metrics, as score resamples) and the share of atypical calls."""
    y, p, pred = (table[c].to_numpy() for c in ("label", "p_atypical", "predicted"))
    units, unit = resampling_units(table)
    return {
        **summary(y, p, y_pred=pred),
        "ci95": slide_bootstrap_ci(y, p, units, pred, n_boot, seed),
        "unit": unit,
        "units": int(len(np.unique(units))),
        "calls": float(np.mean(pred)) if len(pred) else None,
    }


def interval(ci) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "[no interval]"


def auc_check(what: str, m: dict) -> Check:
    """ROC AUC above chance by a clear margin: >= AUC_FLOOR and the interval's lower end > 0.5."""
    auc, ci = m["roc_auc"], m["ci95"]["roc_auc"]
    values = {"roc_auc": auc, "ci95": ci, "n": m["n"], "n_atypical": m["n_atypical"]}
    if auc is None:
        return Check("SKIP", what, f"one class only among {m['n']} figures: no ROC AUC", values)
    figure = (
        f"ROC AUC {auc:.3f} {interval(ci)} ({m['n']} figures, {m['n_atypical']} atypical, {m['units']} {m['unit']}s)"
    )
    if auc < 0.5:
        why = "below chance: inverted confidence? the container's confidence must be P(atypical)"
        return Check("FAIL", what, f"{figure}: {why}", values)
    if auc < AUC_FLOOR or (ci is not None and ci[0] <= 0.5):
        more = "; more figures narrow the interval" if auc >= AUC_FLOOR else ""
        why = f"not clearly above chance (rule: >= {AUC_FLOOR}, lower end > 0.5{more})"
        return Check("FAIL", what, f"{figure}: {why}", values)
    return Check("PASS", what, f"{figure} (rule: >= {AUC_FLOOR}, lower end > 0.5)", values)


def calls_check(what: str, m: dict, threshold: float) -> Check:
    """The share of atypical calls within reason of the labels' share: odds within a factor CALLS_ODDS."""
    q, share = m["calls"], m["n_atypical"] / m["n"] if m["n"] else None
    values = {"calls": q, "labels": share, "threshold": threshold}
    if share in (None, 0.0, 1.0):
        return Check("SKIP", what, "the labels hold one class only: no share to compare with", values)

    def odds(x: float) -> float:
        return np.inf if x >= 1 else x / (1 - x)

    ratio = odds(q) / odds(share)
    values["odds_ratio"] = float(ratio)
    ok = 1 / CALLS_ODDS <= ratio <= CALLS_ODDS
    figure = (
        f"atypical calls {q:.1%} at the threshold {threshold:.3f}, labels {share:.1%} atypical (odds ratio "
        f"{ratio:.2f}; rule: within 1/{CALLS_ODDS:g} to {CALLS_ODDS:g})"
    )
    return Check("PASS" if ok else "FAIL", what, figure + ("" if ok else ": is the threshold the shipped one?"), values)


def recorded(mf) -> dict | None:
    """The out-of-fold figures the manifest records at its threshold: threshold_for_shift's chosen rule on the
    out-of-fold predictions (its threshold is the shipped one), else oof_metrics (at its own threshold); with the
    TTA those predictions were made with (training.results.threshold.source)."""
    from training.results.threshold import source

    prov = mf.provenance
    shift, oof = prov.get("threshold_for_shift") or {}, prov.get("oof_metrics") or {}
    rule = (shift.get("rules") or {}).get(shift.get("chosen")) or {}
    block = (rule.get("on") or {}).get("oof")
    tta = (source(prov) or {}).get("tta")
    if block and block.get("ci95"):
        where = f"provenance.threshold_for_shift.rules.{shift['chosen']}.on.oof"
        return {"threshold": rule["threshold"], **block, "where": where, "tta": tta}
    if oof.get("at_threshold") and oof.get("ci95"):
        return {
            "threshold": oof["threshold"],
            **oof["at_threshold"],
            "ci95": oof["ci95"],
            "where": "provenance.oof_metrics",
            "tta": tta,
        }
    return None


def agree(what: str, key: str, m: dict, ref: dict | None, mf) -> Check:
    """KEY measured (M) against the recorded out-of-fold figure (REF): the measured value inside the recorded 95%
    interval, or the recorded value inside the measured one."""
    name = {"balanced_accuracy": "balanced accuracy", "roc_auc": "ROC AUC"}[key]
    if ref is None:
        return Check("SKIP", what, f"the manifest records no out-of-fold {name} with an interval to compare with")
    value, ci, rv, rci = m[key], m["ci95"][key], ref.get(key), (ref.get("ci95") or {}).get(key)
    values = {"measured": value, "ci95": ci, "recorded": rv, "recorded_ci95": rci, "where": ref["where"]}
    if value is None or rv is None:
        return Check("SKIP", what, f"no {name} measured or recorded", values)
    inside = (rci is not None and rci[0] <= value <= rci[1]) or (ci is not None and ci[0] <= rv <= ci[1])
    at = f" at the shipped threshold {mf.threshold:.3f}" if key == "balanced_accuracy" else ""
    where = ref["where"].removeprefix("provenance.")
    same = (
        f"both {mf.tta}: like with like"
        if ref["tta"] == mf.tta
        else f"recorded with TTA {ref['tta'] or 'unknown'}, the container runs {mf.tta}: not like with like"
    )
    moved = (
        f"; recorded at the threshold {ref['threshold']:.3f}, not the shipped one"
        if key == "balanced_accuracy" and abs(ref["threshold"] - mf.threshold) > 1e-9
        else ""
    )
    figure = (
        f"{name}{at} {value:.3f} {interval(ci)}; recorded out-of-fold {rv:.3f} {interval(rci)} ({where}; {same}{moved})"
    )
    if inside:
        return Check("PASS", what, figure, values)
    return Check(
        "FAIL", what, f"{figure}: outside the recorded interval (threshold, normalisation or members changed?)", values
    )


# ---------------------------------------------------------------- running


def placed(folder: Path):
    """pack's figures.csv with each figure's job folder (its stack named by the job's inputs.json)."""
    figures = read_figures(folder / "figures.csv")
    job_of = {jobs.image_name(jobs.read_inputs(j / "input")): j.name for j in list_jobs(folder / "jobs")}
    return figures.assign(job=figures["image"].map(job_of))


def scored(folder: Path):
    """The jobs' results as score reads them (the organisers' checks), with figures.csv's columns."""
    table = collect(folder / "jobs", load_ground_truth(folder / "ground_truth.json"))
    return table.merge(read_figures(folder / "figures.csv"), on=["image", "index"], how="left")


def one_member(mf, member, folder: Path) -> Path:
    """A model folder holding MEMBER alone (its file, and its .data where it has one), with the manifest's
    threshold and TTA: the container runs it as it runs the whole model."""
    for name in (member.file, f"{member.file}.data"):
        src = mf.path(name)
        if src.is_file():
            dst = folder / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
    note = {"preflight": f"member {member.file} of {mf.root} alone"}
    manifest.save(
        manifest.Manifest(members=[member], threshold=mf.threshold, tta=mf.tta, trained=mf.trained, provenance=note),
        folder,
    )
    return folder


def failed(records: list[dict]) -> str | None:
    bad = [r for r in records if not r["ok"]]
    if not bad:
        return None
    return f"the container failed on {len(bad)} of {len(records)} stacks, e.g. {bad[0]['job']}: {bad[0]['error']}"


def held_out(model: Path, mf, table, run, data, tumor) -> tuple[dict, str]:
    """Each fold a member names -> its held-out figures (rows of pack's table) and how many the source lists;
    and the source in words. RUN's splits.csv, else MODEL/oof.csv matched to TABLE (DATA's figures) by name."""
    folds = sorted({m.fold for m in mf.members if m.fold is not None})
    if run is not None:
        tables = {k: labels.run_fold_table(run, k, data, tumor) for k in folds}
        return {k: (t, len(t)) for k, t in tables.items()}, f"{run}'s splits.csv"
    path = model / ownership.OOF_CSV
    if not path.is_file():
        return {}, f"no {path} (the card writes it) and no --run"
    from training.rundir import read_predictions

    oof = read_predictions(path)
    out = {}
    for k in folds:
        names = set(oof.loc[oof["fold"] == k, "image_id"])
        out[k] = (table[table["figure"].isin(names)].reset_index(drop=True), len(names))
    return out, f"{path.name} matched to DATA by name"


# ---------------------------------------------------------------- the model folder


def member_memory(path, size: int, batch: int = BATCH) -> dict:
    """A member's GPU memory at BATCH, estimated from its graph: the weights (its initializers' bytes) and the peak of
    the activations live at once (onnx shape inference with the input fixed at BATCH x 3 x SIZE x SIZE; a tensor lives
    from the node that makes it to the last node that reads it, in the graph's order). Tensors whose shape inference
    cannot fix are not counted (unknown)."""
    import onnx
    from onnx import helper, shape_inference

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph

    def nbytes(elem_type: int, dims) -> int:
        return (
            int(np.prod([int(d) for d in dims], dtype=np.int64)) * helper.tensor_dtype_to_np_dtype(elem_type).itemsize
        )

    weights = sum(nbytes(t.data_type, t.dims) for t in graph.initializer)
    # value_info a converter left (onnxruntime's float16 one: types without shapes) would stop inference there
    del graph.value_info[:]
    inits = {t.name for t in graph.initializer}
    x = next(i for i in graph.input if i.name not in inits)  # the container checks there is exactly one
    for dim, value in zip(x.type.tensor_type.shape.dim, (batch, 3, size, size)):
        dim.Clear()
        dim.dim_value = value
    inferred = shape_inference.infer_shapes(model, data_prop=True).graph
    sizes = {}
    for vi in [*inferred.input, *inferred.value_info, *inferred.output]:
        tt = vi.type.tensor_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            sizes[vi.name] = nbytes(tt.elem_type, [d.dim_value for d in tt.shape.dim])
    nodes = list(inferred.node)
    last = {name: i for i, node in enumerate(nodes) for name in node.input}
    last |= {o.name: len(nodes) for o in inferred.output}
    live, peak, unknown = {x.name: sizes.get(x.name, 0)}, 0, 0
    for i, node in enumerate(nodes):
        for out in (o for o in node.output if o):
            unknown += out not in sizes
            live[out] = sizes.get(out, 0)
        peak = max(peak, sum(live.values()))
        live = {n: b for n, b in live.items() if last.get(n, -1) > i}
    return {"weights": int(weights), "peak_activations": int(peak), "unknown_tensors": int(unknown)}


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def folder_checks(model: Path, mf) -> list[Check]:
    """What ships: the folder's files against its records, its text files, its size, the members' GPU memory."""
    checks = []
    files = ownership.files_under(model, temporaries=True)
    records = ownership.named(model, ownership.MODEL)
    extra = ownership.unnamed(model)
    required = [m.file for m in mf.members] + [ownership.EXPECTED_OUTPUT] + sorted(records.get(ownership.CARD_JSON, ()))
    missing = [n for n in required if not (model / n).is_file()]
    names = " and ".join(r for r in (ownership.MANIFEST, ownership.CARD_JSON) if r in records)
    what = "model folder"
    if extra:
        checks.append(
            Check(
                "FAIL",
                what,
                f"holds files {names} do not name ({ownership.listing(extra)}): they would ship; remove them, or "
                "install the model folder whole (make install-model FROM=DIR)",
                {"extra": extra},
            )
        )
    elif missing:
        checks.append(
            Check("FAIL", what, f"lacks what {names} name ({ownership.listing(missing)})", {"missing": missing})
        )
    else:
        card = "" if ownership.CARD_JSON in records else f" (no {ownership.CARD_JSON}: no card)"
        checks.append(Check("PASS", what, f"holds exactly what {names} name, {len(files)} files{card}"))

    texts = [n for n in files if Path(n).suffix.lower() in TEXT_SUFFIXES]
    found = [f"{n}: {p}" for n in texts for p in absolute_paths((model / n).read_text(errors="replace"))]
    what = "absolute paths"
    if found:
        checks.append(
            Check(
                "FAIL",
                what,
                f"{len(found)} in the folder's text files, e.g. {ownership.listing(found, 2)}: "
                "paths of the machine that made it ship with it",
                {"found": found[:20]},
            )
        )
    else:
        checks.append(Check("PASS", what, f"none in the folder's {len(texts)} text files ({', '.join(TEXT_SUFFIXES)})"))

    total = sum((model / n).stat().st_size for n in files)
    room = IMAGE_LIMIT - RUNTIME_ALLOWANCE
    figure = (
        f"{total / 1e6:.1f} MB in {len(files)} files, against the {IMAGE_LIMIT / 1e9:g} GB image limit less "
        f"{RUNTIME_ALLOWANCE / 1e9:g} GB for the image's runtime (rule: at most {room / 1e9:g} GB)"
    )
    checks.append(Check("PASS" if total <= room else "FAIL", "size", figure, {"bytes": total}))

    per = [member_memory(mf.path(m.file), m.input_size) for m in mf.members]
    need = sum(p["weights"] + ARENA * p["peak_activations"] for p in per) + CUDA_OVERHEAD
    unknown = sum(p["unknown_tensors"] for p in per)
    weights, peaks = (sum(p[k] for p in per) for k in ("weights", "peak_activations"))
    figure = (
        f"{gib(need)} estimated for {len(per)} member(s) at batch {BATCH} (weights {gib(weights)} + {ARENA:g} x "
        f"peak activations {gib(peaks)} + {gib(CUDA_OVERHEAD)} for CUDA), against a T4's {gib(T4_BYTES)} usable"
        + (f"; {unknown} tensors of unknown shape not counted" if unknown else "")
    )
    checks.append(
        Check("PASS" if need <= T4_BYTES else "FAIL", "GPU memory", figure, {"bytes": int(need), "members": per})
    )
    return checks


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def time_check(records: list[dict], what: str) -> Check:
    """Seconds per stack from the run records (each job's wall time, a process start included in process mode)."""
    from amf.ensemble import pick_providers

    secs = np.array([r["seconds"] for r in records if r["ok"]])
    bad = failed(records)
    if bad:
        return Check("FAIL", "seconds per stack", bad)
    device = "GPU" if pick_providers()[0] == "CUDAExecutionProvider" else "no GPU"
    limit = JOB_SHARE * JOB_LIMIT_S
    mode = "a process per job" if records[0]["mode"] == "process" else "in-process"
    figure = (
        f"slowest {secs.max():.2f} s, median {np.median(secs):.2f} s over {len(secs)} stacks ({what}, {mode}; "
        f"{cpu_name()}, {os.cpu_count()} CPUs, {device}), against the {JOB_LIMIT_S // 60}-minute job limit "
        f"(rule: at most {limit:g} s)"
    )
    values = {"max": float(secs.max()), "median": float(np.median(secs)), "stacks": int(len(secs))}
    return Check("PASS" if secs.max() <= limit else "FAIL", "seconds per stack", figure, values)


# ---------------------------------------------------------------- the preflight


@dataclass
class Runner:
    """How the preflight packs, runs and measures its sets of figures: each a folder under WORK."""

    work: Path
    in_process: bool
    python: str | None
    timeout: float
    seed: int
    n_boot: int
    progress: bool

    def pack(self, rows, name: str) -> Path:
        pack_table(rows, self.work / name, "tiff", self.seed, progress=self.progress)
        return self.work / name

    def run(self, folder: Path, model_dir: Path) -> tuple[list[dict], str | None]:
        """Every job of FOLDER with the model MODEL_DIR: the run records, and what failed (None: nothing)."""
        records = run_jobs(folder / "jobs", model_dir, self.in_process, self.python, self.timeout, self.progress)
        return records, failed(records)

    def measure(self, scores) -> dict:
        return measured(scores, self.n_boot, self.seed)


def member_checks(mf, described: dict, folds: dict, source: str, limit, runner: Runner, add) -> list:
    """Each member alone on its held-out fold: one line each (ADD); the scored figures of those that ran."""
    scored_sets = []
    for i, member in enumerate(mf.members):
        what = f"member {member.file} alone"
        if member.fold is None:
            why = "it names no held-out fold (fold null: trained on every figure): not checkable alone"
            add(Check("SKIP", what, why))
            continue
        what += f" on its fold {member.fold}"
        if member.fold not in folds:
            add(Check("SKIP", what, f"its held-out figures are not known: {source}"))
            continue
        rows, listed = folds[member.fold]
        if rows.empty:
            add(Check("SKIP", what, f"none of the {listed} held-out figures ({source}) is in DATA"))
            continue
        rows = rows if limit is None else labels.limit(rows, limit, runner.seed)
        folder = runner.pack(rows, f"member{i}")
        hit, _ = identity.seen(folder / "jobs", placed(folder), described)
        # fold k's held-out figures are in the fingerprint file when another shipped member trained on them (every
        # member of a k-fold ensemble); where no other member has a fold (one fold of the run shipped), none may be
        others = any(m.fold is not None and m.fold != member.fold for m in mf.members)
        if hit is not None and others and not hit.all():
            raise AmfError(
                f"{int((~hit).sum())} of the figures of DATA given as fold {member.fold}'s held-out figures "
                f"({source}) are not figures {described['folder']} trained on, by content ({fingerprint.FILE}): DATA "
                "or RUN is not the data of this model"
            )
        if hit is not None and not others and hit.any():
            raise AmfError(
                f"{int(hit.sum())} of the figures of DATA given as fold {member.fold}'s held-out figures ({source}) "
                f"are figures {described['folder']} trained on, by content ({fingerprint.FILE}), and it has no other "
                "member: RUN is not the run of this model, or its member saw its held-out figures"
            )
        records, bad = runner.run(folder, one_member(mf, member, runner.work / f"model{i}"))
        if bad:
            add(Check("FAIL", what, bad))
            continue
        scores = scored(folder).assign(set=f"{member.file} on fold {member.fold}")
        scored_sets.append(scores)
        check = auc_check(what, runner.measure(scores))
        if len(rows) < listed and limit is None:
            check.figure += f"; {len(rows)} of the fold's {listed} figures in DATA"
        add(check)
    return scored_sets


def pooled_checks(mf, scored_sets: list, runner: Runner, add) -> None:
    """The members' held-out predictions pooled, against the recorded out-of-fold figures; the atypical calls."""
    what = "members pooled on their held-out folds"
    if not scored_sets:
        add(Check("SKIP", what, "no member could be run on its held-out fold"))
        return
    import pandas as pd

    m, ref = runner.measure(pd.concat(scored_sets, ignore_index=True)), recorded(mf)
    add(agree(what, "balanced_accuracy", m, ref, mf))
    add(agree(what, "roc_auc", m, ref, mf))
    add(calls_check(what, m, mf.threshold))


def ensemble_checks(mf, model: Path, described: dict, table, limit, runner: Runner, add) -> list:
    """The whole model on DATA's figures it did not train on, and its seconds per stack (timed on a few stacks of DATA
    where none is left); the scored figures, if any."""
    what = "ensemble on DATA's figures it did not train on"
    picked = table if limit is None else labels.limit(table, limit, runner.seed)
    every = runner.pack(picked, "data")
    figures = placed(every)
    hit, seen = identity.seen(every / "jobs", figures, described)
    scores, timed = [], None
    if hit is None:
        add(Check("SKIP", what, seen["reason"]))
    elif hit.all():
        why = f"the model trained on all {len(hit)} figures of DATA ({fingerprint.FILE}): nothing left to check it on"
        add(Check("SKIP", what, why))
    else:
        folder = runner.pack(picked[picked["figure"].isin(set(figures["figure"][~hit]))], "unseen")
        records, bad = runner.run(folder, model)
        if bad:
            add(Check("FAIL", what, bad))
        else:
            scores = [scored(folder).assign(set="ensemble")]
            m = runner.measure(scores[0])
            check = auc_check(what, m)
            check.figure += (
                f"; balanced accuracy {m['balanced_accuracy']:.3f} {interval(m['ci95']['balanced_accuracy'])}"
            )
            add(check)
            add(calls_check(what, m, mf.threshold))
            timed = records, f"the ensemble on {len(records)} stacks of unseen figures"
    if timed is None:
        timing = runner.work / "timing"
        for job in list_jobs(every / "jobs")[:TIMING_STACKS]:
            shutil.copytree(job, timing / "jobs" / job.name)
        records, _ = runner.run(timing, model)
        timed = records, f"the ensemble timed on {len(records)} stacks of DATA"
    add(time_check(*timed))
    return scores


def preflight(
    model,
    data,
    run=None,
    limit: int | None = None,
    seed: int = 0,
    n_boot: int = 1000,
    tumor: str | None = None,
    in_process: bool = False,
    python: str | None = None,
    timeout: float = 600.0,
    out=None,
    beside: bool = False,
    log=print,
    progress: bool = False,
) -> dict:
    """Every check of the module docstring, each line given to LOG as it is made; returns the record
    (preflight.json's content). Bad input raises AmfError, before anything runs where it can be told then."""
    start = time.perf_counter()
    model = Path(model)
    mf = manifest.load(model)
    described = identity.describe(model)
    if out is not None:
        ownership.claim(out, [RECORD, PREDICTIONS], ownership.PREFLIGHT, beside)
    table = labels.layout_table(data, tumor)
    folds, source = held_out(model, mf, table, run, data, tumor)
    in_process, python, how = runtime(in_process, python)
    n_atypical = int((table["label"] == "atypical").sum())
    log(
        f"preflight {model}: {len(mf.members)} member(s), TTA {mf.tta}, threshold {mf.threshold:.3f}; on {data} "
        f"({len(table)} figures, {n_atypical} atypical)"
        + (f", at most {limit} figures a set (--limit)" if limit else "")
    )
    log(f"note  the jobs run {how}")
    checks = []

    def add(check: Check) -> None:
        checks.append(check)
        log(check.line())

    for check in folder_checks(model, mf):
        add(check)
    with tempfile.TemporaryDirectory(prefix="amf-preflight.") as tmp:
        runner = Runner(Path(tmp), in_process, python, timeout, seed, n_boot, progress)
        scored_sets = member_checks(mf, described, folds, source, limit, runner, add)
        pooled_checks(mf, scored_sets, runner, add)
        scored_sets += ensemble_checks(mf, model, described, table, limit, runner, add)
    record = {
        "schema": SCHEMA,
        "model": described,
        "data": str(data),
        "run": None if run is None else str(run),
        "held_out_from": source,
        "limit": limit,
        "seed": seed,
        "n_boot": n_boot,
        "jobs": how,
        "checks": [asdict(c) for c in checks],
        "counts": {s: sum(c.status == s for c in checks) for s in ("PASS", "FAIL", "SKIP")},
        "seconds": round(time.perf_counter() - start, 1),
        "toolkit": identity.toolkit(),
    }
    if out is not None:
        write_report(Path(out), record, scored_sets)
    return record


def summary_line(record: dict) -> str:
    c = record["counts"]
    verdict = "FAIL" if c["FAIL"] else "PASS"
    return (
        f"preflight {verdict}: {c['PASS']} passed, {c['FAIL']} failed, {c['SKIP']} skipped ({record['seconds']:.0f} s)"
    )


def write_report(out: Path, record: dict, rows: list) -> None:
    """OUT/preflight.json and OUT/predictions.csv, replacing an earlier preflight's (training.ownership)."""
    import pandas as pd

    columns = ["set", "figure", "slide", "label", "p_atypical", "class", "image", "index"]
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=columns)
    ownership.remove_records(out, ownership.PREFLIGHT)
    with ownership.scratch(out, "preflight") as tmp:
        write_text_atomic(tmp / PREDICTIONS, table[[c for c in columns if c in table]].to_csv(index=False))
        record = record | {"files": [PREDICTIONS]}
        write_text_atomic(tmp / RECORD, json.dumps(record, indent=2, default=str) + "\n")
        ownership.install(tmp, out, ownership.PREFLIGHT)
