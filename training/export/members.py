"""Each fold's checkpoint -> one ONNX member of the ensemble, checked against torch.

Each fold's best.pt (LoRA already merged) -> fold{k}.onnx: fp32, opset >= 17, input "input" float32 N x 3 x S x S
(dynamic N), output "logit" (N, 1) for atypical; TorchScript exporter (dynamo=False), weights inside the one file
(over 2 GB: in one fold{k}.onnx.data beside it). Parity: onnxruntime against torch on random inputs and on real
validation patches of that fold (prepared by amf.preprocess.prepare, as the container does); the largest |logit
difference| must be <= export.parity_tol (1e-3).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from amf import AmfError
from amf.manifest import Member
from amf.preprocess import prepare
from training.data import decode, image_path
from training.rundir import RunDir
from training.splits import folds_of
from training.train.models import load_for_export


def member_file(fold: int) -> str:
    """The model file of the member of fold FOLD."""
    return f"fold{fold}.onnx"


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
        file = member_file(k)
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
