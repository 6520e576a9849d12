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

import numpy as np
import torch

from amf import AmfError, manifest, report_error
from amf.cli import EXPECTED, ArgumentParser, as_error, positive_int
from amf.fileio import read_json, write_text_atomic
from amf.manifest import Member
from amf.preprocess import TTA_MODES, prepare
from training.data import decode, image_path
from training.export import fingerprint
from training.results import oof, threshold
from training.rundir import RunDir
from training.splits import folds_of
from training.train.models import load_for_export

MANUAL = """Export a finished training run to the container's ONNX ensemble.

  python -m training.export RUN_DIR --out MODEL_DIR [--data DATA_DIR] [--tta none|flips|d4] [--n-real 16]
                           [--threshold-run RUN_tta_MODE] [--shift-run LOSO_RUN_DIR]

1. Pools the folds' out-of-fold predictions (RUN_DIR/oof.csv, oof_metrics.json; refuses, naming them,
   if folds are missing) and takes the threshold that maximises out-of-fold balanced accuracy; the
   container applies it to the ensemble's mean probability (the members' out-of-fold probabilities
   were each judged alone, so the threshold is an estimate for the mean; the model card says so).
   With --shift-run (a pooled leave-one-domain-out run of the same figures: scanners, sources) the threshold is the
   one training.results.threshold chooses between the out-of-fold and the leave-one-domain-out rule, and the whole
   comparison goes into the provenance (threshold_for_shift).
   With --tta and --threshold-run (RUN's held-out figures re-predicted under that mode by training.results.tta_oof) the
   out-of-fold predictions that choose the threshold are the ones the container makes; --shift-run must then be
   re-predicted under the same mode (refused otherwise). Without it the threshold comes from RUN's one-view
   predictions, and the provenance (threshold_predictions, threshold_note) says so.
2. Each fold's best.pt (LoRA already merged) -> MODEL_DIR/fold{k}.onnx: fp32, opset >= 17, input "input"
   float32 N x 3 x S x S (dynamic N), output "logit" (N, 1) for atypical; TorchScript exporter
   (dynamo=False), weights inside the one file (over 2 GB: in one fold{k}.onnx.data beside it).
3. Parity: onnxruntime against torch on random inputs and on real validation patches of that fold
   (prepared by amf.preprocess.prepare, as the container does); the largest |logit difference| must be
   <= export.parity_tol (1e-3); it is printed and recorded in the manifest.
4. MODEL_DIR/training_fingerprints.bin (training/export/fingerprint.py): the content fingerprint of every figure of the
   run's splits.csv, so that offline evaluation can tell the figures the model trained on; the container never
   reads it.
5. MODEL_DIR/ensemble.json through amf.manifest.save, trained: true, with provenance: backbone, config,
   folds, out-of-fold metrics with bootstrap intervals, threshold, parity, versions, training_figures (the
   fingerprint file's figure count and SHA-256).
6. MODEL_DIR/expected_output.json: the container's result (inference.run) on the project's sample job
   (test/input) with this model, which do_test_run.sh, make test and make demo's checks compare against.
Everything is written to a temporary folder first; MODEL_DIR changes only when all of it succeeded
(model files that an older manifest there named, and the new one does not, are removed; so is an older
fingerprint file). What described the model it replaces goes first: its card (README.md, card.json, oof.csv:
training.card writes this model's) and its expected output; the new expected output comes last, after the manifest.
"""
ROOT = Path(__file__).resolve().parents[2]
SAMPLE_JOB = ROOT / "test" / "input"  # the project's sample job (test/make_sample_input.py)
EXPECTED_OUTPUT = "expected_output.json"  # beside the manifest: the container's result on SAMPLE_JOB
CARD_JSON, OOF_CSV, README = "card.json", "oof.csv", "README.md"  # the model card's files (training.card writes them)
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
    predictions = threshold.predictions_for(run, threshold_run, tta)
    predicted, result = oof.pool(predictions, seed=seed)
    mode = predictions.predicted_tta()
    chosen = threshold.for_export(predicted, result, mode, tta, shift_run, seed)
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
            "threshold_predictions": {"run": str(predictions.path.resolve()), "tta": mode},
            **({"threshold_for_shift": chosen["shift"]} if chosen["shift"] else {}),
            "oof_metrics": result,
            "parity": checks,
            "training_figures": fingerprint.describe(tmp / fingerprint.FILE),
            "run": str(run.path.resolve()),
            "exported": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "versions": versions(),
        }
        written = manifest.Manifest(
            members=members,
            threshold=float(chosen["threshold"]),
            tta=tta,
            trained=True,
            provenance=json.loads(json.dumps(provenance, default=str)),
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
    """The model card files in MODEL_DIR (training.card's card.json and oof.csv, and README.md when it is a rendered
    card): they describe the model there, not the one being installed."""
    readme = model_dir / README
    card = [model_dir / name for name in (CARD_JSON, OOF_CSV) if (model_dir / name).is_file()]
    if readme.is_file() and (card or RENDERED_MARK in readme.read_text(errors="replace")):
        card.append(readme)
    return card


def export_onnx(model: torch.nn.Module, path: Path, size: int, opset: int = 17) -> None:
    import warnings

    dummy = torch.randn(2, 3, size, size)
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice is not for users
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model,
                (dummy,),
                str(path),
                input_names=["input"],
                output_names=["logit"],
                dynamic_axes={"input": {0: "batch"}, "logit": {0: "batch"}},
                opset_version=max(17, int(opset)),
                do_constant_folding=True,
                dynamo=False,
            )
        except Exception as e:  # the exporter's messages carry whole graphs: keep the first line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise AmfError(f"ONNX export of {path.name} failed: {first[:300]}") from None


def export_member(model: torch.nn.Module, out_dir: Path, file: str, size: int, opset: int = 17) -> Path:
    """Export to OUT_DIR/FILE. A model over protobuf's 2 GB (ViT-H) comes out of the exporter with one
    external file per tensor; it is re-saved with all weights in one FILE.data beside it."""
    work = Path(tempfile.mkdtemp(prefix=".export.", dir=out_dir))
    try:
        export_onnx(model, work / file, size, opset)
        extra = [p for p in work.iterdir() if p.name != file]
        if extra:
            import onnx

            proto = onnx.load(str(work / file))  # reads the external tensors
            onnx.save(
                proto,
                str(out_dir / file),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=f"{file}.data",
            )
        else:
            os.replace(work / file, out_dir / file)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir / file


def parity(model: torch.nn.Module, path: Path, batches: dict[str, np.ndarray]) -> dict[str, float]:
    """max |torch logit - onnxruntime logit| for each named input batch."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = {}
    for name, x in batches.items():
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        got = sess.run(["logit"], {"input": x})[0]
        if got.shape != (len(x), 1):
            raise AmfError(f"{path.name}: output shape {got.shape}, expected ({len(x)}, 1)")
        out[name] = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64))))
    return out


def real_patches(splits, k: int, n: int, data_dir=None) -> list[np.ndarray]:
    """Up to N of fold K's validation patches (both classes where possible), decoded as in training."""
    val = splits[splits["fold"] == k]
    val = val.sort_values("label", kind="stable")
    picks = list(val.groupby("label").head(max(1, n // 2)).index)[:n]
    patches, missing = [], []
    for i in picks:
        path = image_path(splits.loc[i], data_dir)
        if not path.is_file():
            missing.append(str(path))
            continue
        patches.append(decode(path))
    if missing:
        raise AmfError(
            f"real patches for the parity check are missing ({missing[0]}, {len(missing)} in all); "
            f"give the data folder with --data"
        )
    return patches


def export_members(run: RunDir, cfg: dict, splits, out: Path, data_dir, n_real: int, log) -> tuple[list, dict]:
    """Each fold's best.pt -> OUT/fold{k}.onnx, checked against torch on random and real patches of the fold: the
    manifest's members, and the parity figures by fold (an AmfError beyond export.parity_tol)."""
    d = cfg["data"]
    size, mean, std, method = int(d["input_size"]), d["mean"], d["std"], d["resize"]
    tol = float(cfg["export"]["parity_tol"])
    members, checks = [], {}
    rng = np.random.default_rng(0)
    for k in folds_of(splits):
        state = run.fold(k).load_best()
        model = load_for_export(cfg, state["state_dict"], run.fold(k).best)
        file = f"fold{k}.onnx"
        export_member(model, out, file, size, cfg["export"]["opset"])
        batches = {
            "random": rng.standard_normal((4, 3, size, size)).astype(np.float32),
            "real": prepare(real_patches(splits, k, n_real, data_dir), size, mean, std, method),
        }
        diff = parity(model, out / file, batches)
        checks[str(k)] = {
            **{f"max_abs_logit_diff_{n}": v for n, v in diff.items()},
            "n_real": int(len(batches["real"])),
            "best_epoch": int(state.get("epoch", 0)),
        }
        log(
            f"fold {k}: {file} {(out / file).stat().st_size / 1e6:.2f} MB; max |logit torch - onnxruntime| "
            f"random {diff['random']:.2e}, real {diff['real']:.2e} (tolerance {tol:g})"
        )
        if max(diff.values()) > tol:
            raise AmfError(f"fold {k}: ONNX and torch logits differ by {max(diff.values()):.2e} > {tol:g}")
        members.append(
            Member(
                file=file,
                input_size=size,
                mean=[float(v) for v in mean],
                std=[float(v) for v in std],
                resize=method,
                backbone=cfg["model"]["backbone"],
                fold=int(k),
            )
        )
    return members, checks


def main(argv=None) -> int:
    ap = ArgumentParser.from_doc("python -m training.export", MANUAL)
    ap.add_argument("run", help="training run folder")
    ap.add_argument("--out", required=True, help="model folder to write (ensemble.json + fold*.onnx)")
    ap.add_argument("--data", default=None, help="data folder, if the images moved since training")
    ap.add_argument("--tta", default=None, choices=list(TTA_MODES), help="overrides export.tta")
    ap.add_argument("--n-real", type=positive_int, default=16, help="real patches per fold for the parity check")
    ap.add_argument(
        "--shift-run",
        default=None,
        help="a pooled leave-one-domain-out run of the same figures (leave_scanner_out, leave_source_out): "
        "the threshold is chosen between the out-of-fold and the leave-one-domain-out rule "
        "(training.results.threshold) and the comparison recorded in the provenance",
    )
    ap.add_argument(
        "--threshold-run",
        default=None,
        help="RUN's held-out figures re-predicted under --tta (training.results.tta_oof RUN --tta MODE): the threshold "
        "is chosen on the predictions the container makes (default: RUN's own, one view)",
    )
    a = ap.parse_args(argv)
    try:
        export_run(a.run, a.out, a.data, a.tta, a.n_real, shift_run=a.shift_run, threshold_run=a.threshold_run)
    except EXPECTED as e:
        return report_error(as_error(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
