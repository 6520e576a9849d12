"""A finished training run -> the container's model folder: export_run writes it, install puts it in place.

What a model folder holds: the ONNX members (members.py), training_fingerprints.bin (fingerprint.py), the manifest
ensemble.json (amf.manifest), the container's own result on the sample job (expected_output.json), and, written
afterwards by training.card, the model card (README.md, card.json, oof.csv, predictions/). Which of its files are
the toolkit's, and the one rule for writing there: training.ownership. The command line and its manual:
training/export/__main__.py (python -m training.export).
"""

from __future__ import annotations

import datetime
import json
import sys
import tempfile
from pathlib import Path

from amf import AmfError, manifest
from amf.fileio import write_text_atomic
from training import ownership
from training.export import fingerprint
from training.export.paths import relocate
from training.ownership import EXPECTED_OUTPUT, MODEL
from training.results import oof, threshold
from training.rundir import RunDir
from training.splits import folds_of, is_all

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_JOB = ROOT / "test" / "input"  # the project's sample job (test/make_sample_input.py)


def write_expected_output(model_dir, out=None, input_dir=SAMPLE_JOB) -> Path:
    """The container's result (inference.run, the entrypoint's own path) on the sample job with the model in
    MODEL_DIR, written to OUT (default MODEL_DIR/expected_output.json)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import inference

    with tempfile.TemporaryDirectory() as job_out:
        results = inference.run(input_dir, job_out, Path(model_dir))
    out = Path(out) if out else Path(model_dir) / EXPECTED_OUTPUT
    write_text_atomic(out, json.dumps(results, indent=2) + "\n")
    return out


def export_run(
    run_dir,
    out_dir,
    data_dir=None,
    tta: str | None = None,
    n_real: int = 16,
    log=print,
    shift_run=None,
    threshold_run=None,
    beside: bool = False,
    folds=None,
    precision: str | None = None,
    threshold_from=None,
) -> Path:
    """RUN_DIR's export into OUT_DIR (training/export/__main__.py says what it writes): first the one check of
    training.ownership for every file it will write (nothing is done when it refuses), then everything into a
    scratch folder, installed only when all of it succeeded. FOLDS: those folds' members only (default all);
    PRECISION: fp32 or fp16 (default export.precision); THRESHOLD_FROM: for a run of splits.kind all, the
    cross-validated run of the same figures and config whose out-of-fold predictions choose the threshold."""
    from training.export.members import export_members, member_file  # torch: only an export needs it

    run, out_dir = RunDir(run_dir), Path(out_dir)
    splits = run.read_splits()
    cfg = run.read_config(complete=True)
    all_figures, every = is_all(splits), folds_of(splits)
    shipped = every if folds is None else shipped_folds(folds, every, run)
    source = cv_run(run, cfg, splits, threshold_from) if all_figures else run
    if threshold_from is not None and not all_figures:
        raise AmfError(
            f"--threshold-from is for a run of splits.kind all; {run} is {cfg['splits']['kind']}: its own out-of-fold "
            "predictions choose the threshold"
        )
    writes = [*(member_file(k, all_figures) for k in shipped), fingerprint.FILE, manifest.MANIFEST_NAME]
    ownership.claim(out_dir, [*writes, EXPECTED_OUTPUT], MODEL, beside)
    seed, tta = int(cfg["train"]["seed"]), tta or cfg["export"]["tta"]
    precision = precision or cfg["export"]["precision"]
    subset = shipped if shipped != every else None

    predictions = threshold.predictions_for(source, threshold_run, tta)
    predicted, result = oof.pool(predictions, seed=seed, folds=subset)
    mode = predictions.predicted_tta()
    chosen = threshold.for_export(predicted, result, mode, tta, shift_run, seed, predictions.path, subset)
    if chosen["shift"]:
        log(threshold.summary_text(chosen["shift"]))
    if subset:
        log(f"folds {', '.join(map(str, subset))} of {len(every)} shipped: the threshold and figures are theirs")
    if all_figures:
        log(f"one member trained on all figures; the threshold and figures are the cross-validated run {source}'s")
    log(oof.summary_text(result))
    with ownership.scratch(out_dir, "export") as tmp:
        members, checks = export_members(
            run, cfg, splits, tmp, data_dir, n_real, log, shipped, precision, all_figures=all_figures
        )
        # after the members: a damaged checkpoint is refused (naming it) before the whole training set is read
        fingerprint.write(tmp / fingerprint.FILE, fingerprint.of_splits(trained_on(splits, shipped), data_dir))
        provenance = {
            "backbone": cfg["model"]["backbone"],
            "finetune": cfg["model"]["finetune"],
            "config": cfg,
            "folds": [] if all_figures else list(shipped),
            "run_folds": [] if all_figures else every,
            "split_kind": cfg["splits"]["kind"],
            "fold_names": {str(k): splits.loc[splits["fold"] == k, "fold_name"].iloc[0] for k in shipped},
            **({"all_figures": all_figures_facts(run, cfg, splits, source)} if all_figures else {}),
            "precision": precision,
            "threshold": chosen["threshold"],
            "threshold_note": chosen["note"],
            "threshold_predictions": chosen["source"],
            **({"threshold_for_shift": chosen["shift"]} if chosen["shift"] else {}),
            "oof_metrics": result,
            "parity": checks,
            "training_figures": fingerprint.describe(tmp / fingerprint.FILE),
            "run": str(run.path),
            "exported": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "versions": versions(),
        }
        written = manifest.Manifest(
            members=members,
            threshold=float(chosen["threshold"]),
            tta=tta,
            trained=True,
            provenance=relocate(json.loads(json.dumps(provenance, default=str)), run.path.parent),
        )
        manifest.save(written, tmp)
        manifest.load(tmp)  # the container's reader accepts it
        write_expected_output(tmp)
        install(tmp, out_dir, log)
    log(
        f"wrote {out_dir / manifest.MANIFEST_NAME}: {len(members)} {precision} member(s), threshold "
        f"{chosen['threshold']:.3f}, tta {tta}; {out_dir / EXPECTED_OUTPUT}: the container's result on "
        f"{SAMPLE_JOB.relative_to(ROOT)}"
    )
    return out_dir / manifest.MANIFEST_NAME


def shipped_folds(folds, every: list[int], run) -> list[int]:
    """FOLDS (--folds), checked against the run's folds EVERY: sorted, each once; an unknown fold is one AmfError."""
    wanted = sorted({int(k) for k in folds})
    unknown = [k for k in wanted if k not in every]
    if unknown or not wanted:
        raise AmfError(f"--folds {','.join(map(str, unknown or folds))}: {run} has folds {', '.join(map(str, every))}")
    return wanted


def trained_on(splits, folds):
    """The rows of SPLITS that trained at least one member of FOLDS (the train-only rows train every member): what
    the shipped members saw, for the fingerprints."""
    import numpy as np

    from training.splits import fold_rows

    rows = np.unique(np.concatenate([fold_rows(splits, k)[0] for k in folds]))
    return splits.iloc[rows]


# config keys a run of splits.kind all may differ in from the cross-validated run its threshold comes from
ALL_FIGURES_MAY_DIFFER = ("name", "splits.", "log.", "export.")


def cv_run(run: RunDir, cfg: dict, splits, threshold_from) -> RunDir:
    """The cross-validated run whose out-of-fold predictions choose the threshold of RUN, a run of splits.kind all:
    THRESHOLD_FROM, refused in one line unless it holds the same figures (labels too) and the same config but for
    its splits (and the name, log and export sections, which change no weight)."""
    from training.config import diff

    if threshold_from is None:
        raise AmfError(
            f"{run} trained one member on all figures (splits.kind all): it has no held-out predictions to choose a "
            "threshold on; give --threshold-from CV_RUN, a cross-validated run of the same figures and config"
        )
    cv = RunDir(threshold_from)
    cv_cfg, cv_splits = cv.read_config(complete=True), cv.read_splits()
    if is_all(cv_splits):
        raise AmfError(f"--threshold-from {cv}: a run of splits.kind all has no out-of-fold predictions either")
    differs = [k for k in diff(cv_cfg, cfg) if not k.startswith(ALL_FIGURES_MAY_DIFFER)]
    if differs:
        raise AmfError(
            f"--threshold-from {cv} was trained with another config than {run} (differs in {', '.join(differs[:6])}): "
            "its threshold is not this member's; train the cross-validated run with the same config"
        )
    mine, theirs = (s.set_index("image_id")["label"].sort_index() for s in (splits, cv_splits))
    if not mine.index.equals(theirs.index) or not mine.equals(theirs):
        raise AmfError(
            f"--threshold-from {cv} holds other figures than {run} ({len(theirs)} against {len(mine)}, "
            f"{len(theirs.index.intersection(mine.index))} shared; or other labels): its threshold is not this member's"
        )
    return cv


def all_figures_facts(run: RunDir, cfg: dict, splits, cv: RunDir) -> dict:
    """What the provenance says of a member trained on all figures: its run, figures, epochs (the last kept), and the
    cross-validated run whose out-of-fold predictions chose the threshold and give the figures."""
    real = splits[splits["fold"] >= 0]
    return {
        "figures": int(len(real)),
        "atypical": int(real["label"].sum()),
        "epochs": int(cfg["train"]["epochs"]),
        "selection": cfg["train"]["selection"],
        "cv_run": str(cv.path),
        "cv_kind": cv.read_config()["splits"]["kind"],
        "cv_folds": folds_of(cv.read_splits()),
    }


def versions() -> dict:
    """The versions of what made the members (recorded in the provenance)."""
    import onnx
    import onnxruntime
    import timm
    import torch

    return {
        "torch": torch.__version__,
        "timm": timm.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def install(new_dir: Path, out_dir: Path, log=print) -> None:
    """NEW_DIR's model (members, manifest, expected output, fingerprints) into OUT_DIR, replacing the model there
    whole (training.ownership.install): what described the old model goes first (its card: training.card writes this
    model's; its expected output), the manifest and expected output come last, and the old files its manifest named
    that the new model lacks go after them; a file neither its manifest nor its card named stays."""
    ownership.install(new_dir, out_dir, MODEL, log=log)
