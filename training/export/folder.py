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

from amf import manifest
from amf.fileio import write_text_atomic
from training import ownership
from training.export import fingerprint
from training.export.paths import relocate
from training.ownership import EXPECTED_OUTPUT, MODEL
from training.results import oof, threshold
from training.rundir import RunDir
from training.splits import folds_of

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
) -> Path:
    """RUN_DIR's export into OUT_DIR (training/export/__main__.py says what it writes): first the one check of
    training.ownership for every file it will write (nothing is done when it refuses), then everything into a
    scratch folder, installed only when all of it succeeded."""
    from training.export.members import export_members, member_file  # torch: only an export needs it

    run, out_dir = RunDir(run_dir), Path(out_dir)
    splits = run.read_splits()
    writes = [*(member_file(k) for k in folds_of(splits)), fingerprint.FILE, manifest.MANIFEST_NAME, EXPECTED_OUTPUT]
    ownership.claim(out_dir, writes, MODEL, beside)
    cfg = run.read_config(complete=True)
    seed, tta = int(cfg["train"]["seed"]), tta or cfg["export"]["tta"]

    predictions = threshold.predictions_for(run, threshold_run, tta)
    predicted, result = oof.pool(predictions, seed=seed)
    mode = predictions.predicted_tta()
    chosen = threshold.for_export(predicted, result, mode, tta, shift_run, seed, predictions.path)
    if chosen["shift"]:
        log(threshold.summary_text(chosen["shift"]))
    log(oof.summary_text(result))
    with ownership.scratch(out_dir, "export") as tmp:
        members, checks = export_members(run, cfg, splits, tmp, data_dir, n_real, log)
        # after the members: a damaged checkpoint is refused (naming it) before the whole training set is read
        fingerprint.write(tmp / fingerprint.FILE, fingerprint.of_splits(splits, data_dir))
        provenance = {
            "backbone": cfg["model"]["backbone"],
            "finetune": cfg["model"]["finetune"],
            "config": cfg,
            "folds": [m.fold for m in members],
            "split_kind": cfg["splits"]["kind"],
            "fold_names": {str(m.fold): splits.loc[splits["fold"] == m.fold, "fold_name"].iloc[0] for m in members},
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
        f"wrote {out_dir / manifest.MANIFEST_NAME}: {len(members)} member(s), threshold {chosen['threshold']:.3f}, "
        f"tta {tta}; {out_dir / EXPECTED_OUTPUT}: the container's result on {SAMPLE_JOB.relative_to(ROOT)}"
    )
    return out_dir / manifest.MANIFEST_NAME


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
