"""The ONNX ensemble: onnxruntime sessions on CUDA where it loads, else on the CPU.

Each member sees the whole stack (in chunks, so memory stays bounded), with its own input size,
mean, std and resize method. The result is the mean of the members' P(atypical); test-time
augmentation, when the manifest asks for it, averages each member over flipped/rotated views.
A derived variant (one merged graph, or its fp16 copy on CUDA) replaces the member loop only on
the devices where the manifest's benchmark says it wins.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from amf import AmfError
from amf import manifest as manifest_io
from amf.preprocess import prepare

log = logging.getLogger("amf")

CHUNK = int(os.environ.get("AMF_CHUNK", "16"))


def tta_views(x: np.ndarray, mode: str) -> list[np.ndarray]:
    """NCHW -> the list of augmented views (identity first)."""
    if mode == "none":
        return [x]
    if mode == "flips":
        return [x, x[..., ::-1], x[..., ::-1, :]]
    if mode == "d4":
        rots = [np.rot90(x, k, axes=(2, 3)) for k in range(4)]
        return rots + [r[..., ::-1] for r in rots]
    raise AmfError(f"unknown tta mode {mode!r}")


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z.astype(np.float64)))  # overflow-free logistic


def pick_providers(device: str = "auto") -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        log.warning("amf: CUDA asked for but onnxruntime has no CUDA provider; using the CPU")
    return ["CPUExecutionProvider"]


class Ensemble:
    def __init__(self, model_dir, device: str = "auto", chunk: int = CHUNK):
        import onnxruntime as ort

        ort.set_default_logger_severity(3)  # we say in one line of our own when CUDA does not load
        self.manifest = manifest_io.load(model_dir)
        self.chunk = max(1, int(chunk))
        providers = pick_providers(device)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # onnxruntime's own warnings would break the one-line rule

        def session(file: str):
            path = self.manifest.path(file)
            if not path.stat().st_size:
                raise AmfError(f"cannot load model {path.name}: empty file")
            try:
                return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
            except Exception as e:  # onnxruntime raises its own exception types
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise AmfError(f"cannot load model {path.name}: {msg}") from None

        first = session(self.manifest.members[0].file)
        self.device = "cuda" if first.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        if providers[0] == "CUDAExecutionProvider" and self.device == "cpu":
            log.warning("amf: the CUDA provider failed to load (driver or CUDA/cuDNN libraries); "
                        "running on the CPU")
            providers = ["CPUExecutionProvider"]  # the other sessions need not try again
        # manifest validation keeps fp16 variants off the CPU
        variant = next((v for v in self.manifest.variants if self.device in v.use_on), None)
        if variant is not None:
            m0 = self.manifest.members[0]
            if any((m.input_size, m.mean, m.std, m.resize) != (m0.input_size, m0.mean, m0.std, m0.resize)
                   for m in self.manifest.members):
                raise AmfError(f"manifest variant {variant.file}: members differ in preprocessing")
            self.variant = variant
            self.sessions = [session(variant.file)]
        else:
            self.variant = None
            self.sessions = [first] + [session(m.file) for m in self.manifest.members[1:]]
        for s, m in zip(self.sessions, self.manifest.members):
            self._check_io(s, m.input_size)
        log.info("amf: onnxruntime %s on %s, %d member(s)%s, tta=%s", ort.__version__,
                 self.device.upper(), len(self.manifest.members),
                 f" as one {self.variant.kind} graph" if self.variant else "", self.manifest.tta)

    @staticmethod
    def _check_io(sess, size: int) -> None:
        inp, out = sess.get_inputs(), sess.get_outputs()
        if len(inp) != 1 or len(inp[0].shape) != 4 or inp[0].shape[1] not in (3, "3"):
            raise AmfError(f"model input must be one Nx3xHxW tensor, got {[i.shape for i in inp]}")
        for dim in inp[0].shape[2:]:
            if isinstance(dim, int) and dim != size:
                raise AmfError(f"model input is {inp[0].shape[2:]} but the manifest says {size}")
        if len(out) < 1 or (isinstance(out[0].shape[-1], int) and out[0].shape[-1] != 1):
            raise AmfError(f"model output must be one value per patch, got {out[0].shape}")

    def _run(self, sess, x: np.ndarray) -> np.ndarray:
        name = sess.get_inputs()[0].name
        y = sess.run(None, {name: np.ascontiguousarray(x)})[0]
        return np.asarray(y, dtype=np.float64).reshape(len(x))

    def predict_proba(self, patches) -> np.ndarray:
        """List of HxWxC patches -> P(atypical) per patch, float64, in input order."""
        n = len(patches)
        if n == 0:
            raise AmfError("the stack has no patches")
        mf = self.manifest
        if self.variant is not None:
            m = mf.members[0]
            out = np.empty(n)
            for i in range(0, n, self.chunk):
                x = prepare(patches[i:i + self.chunk], m.input_size, m.mean, m.std, m.resize)
                # a merged graph outputs the members' mean probability directly
                out[i:i + len(x)] = np.mean([self._run(self.sessions[0], v) for v in tta_views(x, mf.tta)], 0)
            return out
        total = np.zeros(n)
        for i in range(0, n, self.chunk):
            chunk, prepared = patches[i:i + self.chunk], {}
            for sess, m in zip(self.sessions, mf.members):
                key = (m.input_size, tuple(m.mean), tuple(m.std), m.resize)  # shared by same-spec members
                if key not in prepared:
                    prepared[key] = prepare(chunk, m.input_size, m.mean, m.std, m.resize)
                views = [sigmoid(self._run(sess, v)) for v in tta_views(prepared[key], mf.tta)]
                total[i:i + len(chunk)] += np.mean(views, axis=0)
        return total / len(mf.members)
