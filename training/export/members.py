"""Each fold's checkpoint -> one ONNX member of the ensemble, checked against torch.

Each fold's best.pt (LoRA already merged) -> fold{k}.onnx (the member of a run of splits.kind all, trained on every
figure: all.onnx): opset >= 17, input "input" float32 N x 3 x S x S (dynamic N), output "logit" float32 (N, 1) for
atypical; TorchScript exporter (dynamo=False), weights inside the one file (over 2 GB: in one FILE.data beside it).
Parity: onnxruntime against torch on random inputs and on real validation patches of that fold (prepared by
amf.preprocess.prepare, as the container does); the largest |logit difference| must be <= export.parity_tol (1e-3).
Precision fp16 (--precision, export.precision): the checked fp32 member is converted by onnxruntime's float16
converter (weights and compute in float16, input and output kept float32, so the container's path is the same) and
checked against it on the same real patches, twice: the fp16 file through onnxruntime on the CPU (whose CPU provider
casts to float32 around the operators it has no float16 kernel for: mostly the weights' rounding), and torch running the
model in float16 (activations in float16 too, as a GPU runs the file; on CUDA where torch has it, else the CPU). The
largest |P(atypical) difference| of either must be <= export.fp16_tol (1e-3), else the export is refused.
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
from training.export.onnxfile import save_onnx, to_fp16
from training.rundir import RunDir
from training.splits import folds_of
from training.train.models import load_for_export

ALL_FIGURES_FILE = "all.onnx"  # the member of a run of splits.kind all (trained on every figure, no fold)


def member_file(fold: int, all_figures: bool = False) -> str:
    """The model file of the member of fold FOLD (ALL_FIGURES: of the run's one member trained on every figure)."""
    return ALL_FIGURES_FILE if all_figures else f"fold{fold}.onnx"


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


def onnx_logits(sess, x: np.ndarray, name: str) -> np.ndarray:
    """The logits (N,) float64 of the onnxruntime session SESS (the member NAME) on X, its output shape checked."""
    got = sess.run(["logit"], {"input": x})[0]
    if got.shape != (len(x), 1):
        raise AmfError(f"{name}: output shape {got.shape}, expected ({len(x)}, 1)")
    return got.astype(np.float64).reshape(len(x))


def logits(model: torch.nn.Module, path: Path, batches: dict[str, np.ndarray]) -> dict[str, tuple]:
    """{name: (torch logits, onnxruntime logits)} of each named input batch, (N,) float64 each: MODEL and the ONNX
    file PATH (one CPU session) on the same inputs."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = {}
    for name, x in batches.items():
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy().astype(np.float64).reshape(len(x))
        out[name] = ref, onnx_logits(sess, x, path.name)
    return out


def largest_differences(pairs: dict[str, tuple]) -> dict[str, float]:
    """max |torch logit - onnxruntime logit| of each named pair of logits()."""
    return {name: float(np.max(np.abs(got - ref))) for name, (ref, got) in pairs.items()}


def parity(model: torch.nn.Module, path: Path, batches: dict[str, np.ndarray]) -> dict[str, float]:
    """max |torch logit - onnxruntime logit| for each named input batch."""
    return largest_differences(logits(model, path, batches))


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


def export_members(
    run: RunDir,
    cfg: dict,
    splits,
    out: Path,
    data_dir,
    n_real: int,
    log,
    folds=None,
    precision: str = "fp32",
    all_figures: bool = False,
) -> tuple[list, dict]:
    """FOLDS' (default: every fold's) best.pt -> OUT/fold{k}.onnx (ALL_FIGURES: OUT/all.onnx, a member of no fold),
    checked against torch on random and real patches of the fold (an AmfError beyond export.parity_tol), and in
    PRECISION fp16 converted and checked against the fp32 member (an AmfError beyond export.fp16_tol): the manifest's
    members, and the parity figures by fold."""
    d = cfg["data"]
    size, mean, std, method = int(d["input_size"]), d["mean"], d["std"], d["resize"]
    tol = float(cfg["export"]["parity_tol"])
    members, checks = [], {}
    rng = np.random.default_rng(0)
    for k in folds_of(splits) if folds is None else folds:
        state = run.fold(k).load_best()
        model = load_for_export(cfg, state["state_dict"], run.fold(k).best)
        file, name = member_file(k, all_figures), "all figures" if all_figures else f"fold {k}"
        export_member(model, out, file, size, cfg["export"]["opset"])
        batches = {
            "random": rng.standard_normal((4, 3, size, size)).astype(np.float32),
            "real": prepare(real_patches(splits, k, n_real, data_dir), size, mean, std, method),
        }
        pairs = logits(model, out / file, batches)  # the real ones serve the fp16 check too
        diff = largest_differences(pairs)
        checks[str(k)] = {
            **{f"max_abs_logit_diff_{n}": v for n, v in diff.items()},
            "n_real": int(len(batches["real"])),
            "real_from": "the training figures (no held-out fold)" if all_figures else f"held-out fold {k}",
            "best_epoch": int(state.get("epoch", 0)),
        }
        log(
            f"{name}: {file} {(out / file).stat().st_size / 1e6:.2f} MB; max |logit torch - onnxruntime| "
            f"random {diff['random']:.2e}, real {diff['real']:.2e} (tolerance {tol:g})"
        )
        if max(diff.values()) > tol:
            raise AmfError(f"{name}: ONNX and torch logits differ by {max(diff.values()):.2e} > {tol:g}")
        if precision == "fp16":
            checks[str(k)]["fp16"] = half_member(
                model, out, file, batches["real"], pairs["real"], float(cfg["export"]["fp16_tol"])
            )
            h = checks[str(k)]["fp16"]
            log(
                f"{name}: {file} in fp16 {h['fp16_bytes'] / 1e6:.2f} MB (fp32 {h['fp32_bytes'] / 1e6:.2f} MB); "
                f"max |P(atypical) fp16 - fp32| on {h['n_real']} real patches: onnxruntime CPU "
                f"{h['max_abs_prob_diff_real']:.2e}, float16 activations ({h['half_activations_on']}) "
                + (f"{h['max_abs_prob_diff_real_half_activations']:.2e}" if h["half_activations_on"] else "not run")
                + f" (export.fp16_tol {h['tol']:g})"
            )
        members.append(
            Member(
                file=file,
                input_size=size,
                mean=[float(v) for v in mean],
                std=[float(v) for v in std],
                resize=method,
                backbone=cfg["model"]["backbone"],
                fold=None if all_figures else int(k),
                precision=precision,
            )
        )
    return members, checks


def half_activations(model: torch.nn.Module, x: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """P(atypical) of MODEL run in float16 (weights and activations, as a GPU runs the fp16 file) on X, on CUDA where
    torch has it, else the CPU; and that device (None, None where torch has no float16 kernel for one of its
    operators there)."""
    import copy

    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        half = copy.deepcopy(model).half().to(device).eval()
        with torch.no_grad():
            logit = half(torch.from_numpy(x).half().to(device)).float().cpu().numpy()
    except (RuntimeError, NotImplementedError):  # e.g. "... not implemented for 'Half'"
        return None, None
    from amf.ensemble import sigmoid

    return sigmoid(logit.reshape(len(x))), device


def half_member(model: torch.nn.Module, out: Path, file: str, real: np.ndarray, fp32: tuple, tol: float) -> dict:
    """OUT/FILE (the checked fp32 member) replaced by its fp16 conversion, once both checks on REAL (prepared real
    patches) hold: the fp16 file through onnxruntime against the fp32 file, and MODEL with float16 activations
    against MODEL; FP32: (torch logits, onnxruntime logits) of REAL, as the parity check computed them. An AmfError
    naming the larger difference beyond TOL (export.fp16_tol). The parity record of the manifest."""
    import onnxruntime as ort

    from amf.ensemble import sigmoid

    torch_ref, onnx_ref = (sigmoid(v) for v in fp32)
    fp32_bytes = sum(p.stat().st_size for p in (out / file, out / f"{file}.data") if p.is_file())
    work = Path(tempfile.mkdtemp(prefix=".fp16.", dir=out))
    try:
        save_onnx(to_fp16(out / file), work / file)
        sess = ort.InferenceSession(str(work / file), providers=["CPUExecutionProvider"])
        on_cpu = float(np.max(np.abs(sigmoid(onnx_logits(sess, real, file)) - onnx_ref)))
        del sess  # its file is moved next
        p_half, device = half_activations(model, real)
        half = None if p_half is None else float(np.max(np.abs(p_half - torch_ref)))
        worst = max(on_cpu, half or 0.0)
        if not worst <= tol:  # NaN too: a float16 overflow
            raise AmfError(
                f"{file}: in fp16 P(atypical) moves by up to {worst:.2e} on {len(real)} real patches, more than "
                f"export.fp16_tol {tol:g}; export it in fp32 (--precision fp32) or, knowing why, raise export.fp16_tol"
            )
        (out / f"{file}.data").unlink(missing_ok=True)  # the fp32 weights beside a large member
        for p in work.iterdir():
            os.replace(p, out / p.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "max_abs_prob_diff_real": on_cpu,
        "max_abs_prob_diff_real_half_activations": half,
        "half_activations_on": device,
        "n_real": int(len(real)),
        "tol": tol,
        "fp32_bytes": int(fp32_bytes),
        "fp16_bytes": int(sum(p.stat().st_size for p in (out / file, out / f"{file}.data") if p.is_file())),
    }
