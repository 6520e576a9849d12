"""A finished training run -> the container's model folder: export_run writes it, install puts it in place.

What a model folder holds: the ONNX members (members.py), training_fingerprints.bin (fingerprint.py), the manifest
ensemble.json (amf.manifest), the container's own result on the sample job (expected_output.json), and, written
afterwards by training.card, the model card (README.md, card.json, oof.csv; CARD_FILES). The command line and its
manual: training/export/__main__.py (python -m training.export).
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from amf import AmfError, manifest
from amf.fileio import read_json, write_text_atomic
from training.export import fingerprint
from training.export.paths import relocate
from training.results import oof, threshold
from training.rundir import RunDir

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_JOB = ROOT / "test" / "input"  # the project's sample job (test/make_sample_input.py)
EXPECTED_OUTPUT = "expected_output.json"  # beside the manifest: the container's result on SAMPLE_JOB
CARD_JSON, OOF_CSV, README = "card.json", "oof.csv", "README.md"  # the model card's files (training.card writes them)
PREDICTIONS = "predictions"  # the card's folder of every other run's out-of-fold predictions it reports
RENDERED_MARK = "<!-- rendered by `python -m training.card`"  # a rendered card's second line: how install knows one


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
) -> Path:
    run, out_dir = RunDir(run_dir), Path(out_dir)
    cfg = run.read_config(complete=True)
    seed, tta = int(cfg["train"]["seed"]), tta or cfg["export"]["tta"]
    from training.export.members import export_members  # torch: only an export needs it, not a card's reader

    predictions = threshold.predictions_for(run, threshold_run, tta)
    predicted, result = oof.pool(predictions, seed=seed)
    mode = predictions.predicted_tta()
    chosen = threshold.for_export(predicted, result, mode, tta, shift_run, seed, predictions.path)
    if chosen["shift"]:
        log(threshold.summary_text(chosen["shift"]))
    log(oof.summary_text(result))
    splits = run.read_splits()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
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
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
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


def install(tmp: Path, out_dir: Path, log=print) -> None:
    """Move the new files into OUT_DIR: first away what described the model there (its card, its expected output),
    then the members, the manifest, the expected output; drop files only the old manifest named, and an old
    fingerprint file the new model lacks (it would name another model's training figures)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    old_files = {fingerprint.FILE}
    if (out_dir / manifest.MANIFEST_NAME).is_file():
        try:
            old = read_json(out_dir / manifest.MANIFEST_NAME, "earlier manifest")
            entries = [*old.get("members", []), *(old.get("variants") or [])]
            old_files |= {e["file"] for e in entries if isinstance(e, dict) and isinstance(e.get("file"), str)}
        except (AmfError, AttributeError, TypeError):  # not a manifest: the files it may name are left alone
            pass
    stale = stale_card(out_dir)
    if stale:
        names = ", ".join(p.name for p in stale)
        log(f"removed the card of the model {out_dir} held ({names}): training.card writes this model's")
    for path in [*stale, out_dir / EXPECTED_OUTPUT]:
        path.unlink(missing_ok=True)
    last = [name for name in (manifest.MANIFEST_NAME, EXPECTED_OUTPUT) if (tmp / name).is_file()]
    new_files = [p.name for p in tmp.iterdir() if p.name not in last]
    for name in [*new_files, *last]:
        os.replace(tmp / name, out_dir / name)
    for name in old_files - set(new_files):
        for stale_file in (name, f"{name}.data") if name and "/" not in name else ():
            if stale_file not in new_files and (out_dir / stale_file).is_file():
                (out_dir / stale_file).unlink()


def stale_card(model_dir: Path) -> list[Path]:
    """The model card files in MODEL_DIR (training.card's card.json, oof.csv and predictions/*.csv, and README.md
    when it is a rendered card): they describe the model there, not the one being installed."""
    readme = model_dir / README
    card = [model_dir / name for name in (CARD_JSON, OOF_CSV) if (model_dir / name).is_file()]
    card += sorted((model_dir / PREDICTIONS).glob("*.csv"))
    if readme.is_file() and (card or RENDERED_MARK in readme.read_text(errors="replace")):
        card.append(readme)
    return card
