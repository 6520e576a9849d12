"""Which model was scored, by which toolkit, and which of the scored figures that model trained on.

  describe(MODEL_DIR)   the model: folder, the manifest's SHA-256, members (backbone, input size, resize,
                        parameters, file SHA-256), TTA, threshold and where it came from
                        (threshold_predictions, threshold_note, threshold_for_shift), the training data the
                        manifest names, and its fingerprint file (training.export.fingerprint), if any
  toolkit()             this toolkit's version: amf.__version__ and the git commit of the checkout ("unknown"
                        outside one), with whether its tracked files had changes
  model_of_runs(...)    the model folder the jobs ran with (run.json), checked against --model and the manifest
  seen(...)             each scored figure: did the model train on it? (its fingerprint in the model's file)
Parameter counts read the ONNX graphs' initializers (onnx, without their external data). Torch-free.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import numpy as np

import amf
from amf import AmfError, jobs, manifest
from training.export import fingerprint

ROOT = Path(__file__).resolve().parents[1]  # the repository root


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest_digest(model_dir) -> str:
    """The SHA-256 of MODEL_DIR/ensemble.json's bytes: names the model (members, threshold, provenance)."""
    return sha256(Path(model_dir) / manifest.MANIFEST_NAME)


def parameters(path) -> int:
    """The number of weights in an ONNX graph's initializers (external data is not loaded)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return int(sum(int(np.prod(t.dims)) for t in graph.initializer))


def _file(mf, name: str) -> dict:
    path = mf.path(name)
    out = {"sha256": sha256(path), "bytes": path.stat().st_size}
    data = path.with_name(f"{path.name}.data")  # an over-2-GB member's weights (training.export)
    if data.is_file():
        out["data_sha256"] = sha256(data)
    return out


def describe(model_dir) -> dict:
    """The model in MODEL_DIR as the report names it (see the module docstring)."""
    model_dir = Path(model_dir)
    mf = manifest.load(model_dir)
    prov = mf.provenance
    cfg = prov.get("config") if isinstance(prov.get("config"), dict) else {}
    data = cfg.get("data") or {}
    oof = prov.get("oof_metrics") or {}
    shift = prov.get("threshold_for_shift") or None
    fp = model_dir / fingerprint.FILE
    return {
        "folder": str(model_dir.resolve()),
        "manifest_sha256": manifest_digest(model_dir),
        "trained": mf.trained,
        "tta": mf.tta,
        "threshold": mf.threshold,
        "threshold_source": {
            "predictions": prov.get("threshold_predictions"),
            "note": prov.get("threshold_note"),
            "for_shift": {k: shift.get(k) for k in ("chosen", "rule", "loso_run")} if shift else None,
        },
        "members": [
            {
                "file": m.file,
                "backbone": m.backbone,
                "fold": m.fold,
                "input_size": m.input_size,
                "resize": m.resize,
                "parameters": parameters(mf.path(m.file)),
                **_file(mf, m.file),
            }
            for m in mf.members
        ],
        "training_data": {
            "run": prov.get("run"),
            "split_kind": prov.get("split_kind"),
            "folds": prov.get("folds"),
            "figures": oof.get("n"),
            "atypical": oof.get("n_atypical"),
            "label": data.get("label"),
            "extra_sets": [e.get("name") for e in data.get("extra") or [] if isinstance(e, dict)],
            "synthetic": data.get("synthetic"),
        },
        "fingerprint": {"file": fp.name, "recorded": prov.get("training_figures")} if fp.is_file() else None,
    }


def toolkit() -> dict:
    """amf.__version__ and the checkout's git commit ("unknown" where there is no git or no checkout)."""

    def git(*args) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    changes = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "version": amf.__version__,
        "git_commit": commit or "unknown",
        "git_changes": None if changes is None else bool(changes),
    }


def model_of_runs(records: list[dict], model=None) -> Path | None:
    """The model folder the jobs were scored for: MODEL (score --model) when given, else the one the run records
    name; None when neither names one. Refused: records naming two models, or a manifest that differs from the one
    the jobs ran with (its SHA-256 in run.json): the report would name a model that did not make the results."""
    named = {r["model"] for r in records if isinstance(r.get("model"), str)}
    digests = {r["manifest_sha256"] for r in records if isinstance(r.get("manifest_sha256"), str)}
    if len(named) > 1 and model is None:
        raise AmfError(f"the jobs ran with {len(named)} model folders ({', '.join(sorted(named))}); score them apart")
    if len(digests) > 1:
        raise AmfError("the jobs ran with different manifests (run.json's manifest_sha256 differ); run them again")
    folder = Path(model) if model is not None else (Path(named.pop()) if named else None)
    if folder is None:
        return None
    if not (folder / manifest.MANIFEST_NAME).is_file():
        raise AmfError(f"the model folder {folder} holds no {manifest.MANIFEST_NAME}; give it with --model")
    if digests and manifest_digest(folder) not in digests:
        raise AmfError(
            f"{folder / manifest.MANIFEST_NAME} is not the manifest the jobs ran with (its SHA-256 differs from "
            "run.json's): run the jobs again, or give the model they ran with as --model"
        )
    return folder


def seen(jobs_dir, table, model: dict | None) -> tuple[np.ndarray | None, dict]:
    """(per row of TABLE: did the model train on this figure?, the record metrics.json keeps). Every job's stack is
    read with the container's reader (amf.jobs) and each patch fingerprinted; None where it cannot be told (no
    model named, or a model without a fingerprint file), and the record says why. A fingerprint file that is not
    the format, or not the one the manifest recorded, is an error: never a wrong count."""
    if model is None:
        return None, {
            "checked": False,
            "reason": "the model is not known (no run.json names it): give score --model MODEL_DIR",
        }
    if model["fingerprint"] is None:
        return None, {
            "checked": False,
            "reason": f"{model['folder']} has no {fingerprint.FILE} (exported before training fingerprints; "
            "python -m training.export.fingerprint adds one): could not check whether the model trained on these "
            "figures",
        }
    path = Path(model["folder"]) / fingerprint.FILE
    known = fingerprint.read(path)
    recorded = model["fingerprint"]["recorded"]
    actual = fingerprint.describe(path)
    if isinstance(recorded, dict) and recorded.get("sha256") not in (None, actual["sha256"]):
        raise AmfError(f"{path} is not the fingerprint file the manifest records (its SHA-256 differs)")
    values = np.zeros(len(table), dtype=np.uint64)
    for job, rows in table.groupby("job", sort=False).indices.items():
        stack = jobs.read_stack(jobs.find_stack(Path(jobs_dir) / job / "input"))
        if len(stack) != len(rows):
            raise AmfError(f"job {job}: its stack holds {len(stack)} patches, its result {len(rows)}")
        values[rows] = fingerprint.digests(stack)[table["index"].to_numpy()[rows]]
    hit = np.isin(values, known)
    return hit, {
        "checked": True,
        "fingerprint": actual,
        "figures": int(len(hit)),
        "seen": int(hit.sum()),
        "unseen": int(len(hit) - hit.sum()),
    }
