"""The ONNX ensemble: onnxruntime sessions on CUDA where it loads, else on the CPU.

Each member sees the whole stack (in chunks, so memory stays bounded), with its own input size,
mean, std and resize method. The result is the mean of the members' P(atypical); test-time
augmentation, when the manifest asks for it, averages each member over flipped/rotated views.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np

from amf import AmfError, native_stderr
from amf.manifest import load as load_manifest
from amf.preprocess import as_stack, tta_views

log = logging.getLogger("amf")

CHUNK = 16  # patches per run of a session; $AMF_CHUNK overrides it


def chunk_size(value=None) -> int:
    """VALUE, else $AMF_CHUNK, else CHUNK: a whole number of patches >= 1 (one AmfError line if not)."""
    if value is None:
        if "AMF_CHUNK" not in os.environ:
            return CHUNK
        text = os.environ["AMF_CHUNK"].strip()
        if not text.isdigit() or int(text) < 1:
            raise AmfError(f"AMF_CHUNK={os.environ['AMF_CHUNK']!r} must be a whole number >= 1 (patches per run)")
        return int(text)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise AmfError(f"chunk={value!r} must be a whole number >= 1 (patches per run)")
    return int(value)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z.astype(np.float64)))  # overflow-free logistic


NVIDIA_DRIVER = Path("/proc/driver/nvidia/version")  # present when the NVIDIA kernel driver is loaded


def pick_providers(device: str = "auto", driver: Path = NVIDIA_DRIVER) -> list[str]:
    """CUDA then the CPU where onnxruntime has a CUDA provider; with "auto" only where an NVIDIA driver is loaded
    (a machine without one runs on the CPU and says so in the device line, without a failed CUDA load that reads
    like an error)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available and (device == "cuda" or (device == "auto" and driver.exists())):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        log.warning("amf: CUDA asked for but onnxruntime has no CUDA provider; using the CPU")
    return ["CPUExecutionProvider"]


def cuda_failure_reason(printed: str) -> str:
    """The reason in onnxruntime's provider-loading log (e.g. 'libcublasLt.so.12: cannot open
    shared object file'), or a generic one."""
    import re

    text = native_stderr.short_line(printed, 10_000)
    m = re.search(r"Failed to load library (\S+) with error: (.*?)(?= \[|$)", text)
    if m:
        return native_stderr.short_line(f"{m.group(1)}: {m.group(2)}", 200)
    return native_stderr.short_line(text, 200) if text else "driver or CUDA/cuDNN libraries"


class Ensemble:
    def __init__(self, model_dir, device: str = "auto", chunk: int | None = None):
        import onnxruntime as ort

        ort.set_default_logger_severity(3)  # we say in one line of our own when CUDA does not load
        self.chunk = chunk_size(chunk)
        self.manifest = load_manifest(model_dir)
        self.files = [m.file for m in self.manifest.members]
        providers = pick_providers(device)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # onnxruntime's own warnings would break the one-line rule
        # the first session finds the device: onnxruntime prints why CUDA did not load straight to fd 2, over
        # several lines; catch it and fold it into our one warning line
        with native_stderr.captured() as printed:
            first = self._session(self.files[0], opts, providers)
        self.device = "cuda" if first.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        if providers[0] == "CUDAExecutionProvider" and self.device == "cpu":
            why = cuda_failure_reason(printed[0])
            log.warning("amf: the CUDA provider failed to load (%s); running on the CPU", why)
            providers = ["CPUExecutionProvider"]  # the other sessions need not try again
        elif printed[0].strip():
            sys.stderr.write(printed[0])  # nothing to fold in: pass it on as it came
        self.sessions = [first] + [self._session(f, opts, providers) for f in self.files[1:]]
        for sess, m in zip(self.sessions, self.manifest.members):
            self._check_io(sess, m.input_size, m.file)
        self.run_options = ort.RunOptions()
        self.run_options.log_severity_level = 4  # a failing run is told in our one line, not ORT's log
        half = sum(m.precision == "fp16" for m in self.manifest.members)
        log.info(
            "amf: onnxruntime %s on %s, %d member(s)%s, tta=%s",
            ort.__version__,
            self.device.upper(),
            len(self.manifest.members),
            f" ({half} fp16{', cast to fp32 where the CPU has no fp16 kernel' if self.device == 'cpu' else ''})"
            if half
            else "",
            self.manifest.tta,
        )

    def _session(self, file: str, opts, providers):
        """An onnxruntime session of the model file FILE; a file it cannot load is one AmfError line."""
        import onnxruntime as ort

        path = self.manifest.path(file)
        if not path.stat().st_size:
            raise AmfError(f"cannot load model {path.name}: empty file")
        try:
            return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise AmfError(f"cannot load model {path.name}: {msg}") from None

    @staticmethod
    def _check_io(sess, size: int, name: str = "") -> None:
        """What the graph declares, checked at load: one float32 Nx3xSxS input, one value per patch out."""
        inp, out = sess.get_inputs(), sess.get_outputs()
        where = f"model {name}: " if name else "model "
        if len(inp) != 1 or len(inp[0].shape) != 4 or inp[0].shape[1] not in (3, "3"):
            raise AmfError(f"{where}input must be one Nx3xHxW tensor, got {[i.shape for i in inp]}")
        if inp[0].type != "tensor(float)":
            raise AmfError(f"{where}input must be float32 (tensor(float)), got {inp[0].type}")
        for dim in inp[0].shape[2:]:
            if isinstance(dim, int) and dim != size:
                raise AmfError(f"{where}input is {inp[0].shape[2:]} but the manifest says {size}")
        shape = out[0].shape if out else []
        if shape is not None and (not shape or any(isinstance(d, int) and d != 1 for d in shape[1:])):
            raise AmfError(f"{where}output must be one value per patch (N or Nx1), got {shape}")

    def _run_session(self, i: int, x: np.ndarray) -> np.ndarray:
        """Session I on the batch X -> one float64 logit (or probability) per patch; whatever goes
        wrong inside the member (an onnxruntime error, a wrong output size) is one AmfError line."""
        sess, file = self.sessions[i], self.files[i]
        try:
            y = sess.run(None, {sess.get_inputs()[0].name: np.ascontiguousarray(x)}, self.run_options)[0]
        except Exception as e:  # onnxruntime raises its own exception types
            why = native_stderr.short_line(str(e), 300) or type(e).__name__
            raise AmfError(f"model {file}: failed on a batch of {len(x)} patches: {why}") from None
        y = np.asarray(y)
        if y.ndim < 1 or y.shape[0] != len(x) or y.size != len(x) or not np.issubdtype(y.dtype, np.number):
            raise AmfError(
                f"model {file}: gave an output of shape {list(y.shape)} ({y.dtype}) for {len(x)} "
                f"patches; expected one number per patch"
            )
        return y.astype(np.float64).reshape(len(x))

    def predict_proba(self, patches) -> np.ndarray:
        """A stack (amf.preprocess.Stack, a list of HxWxC patches or an NxHxWxC array) -> P(atypical)
        per patch, float64, in input order; patches are made canonical chunk by chunk."""
        patches = as_stack(patches)
        n = len(patches)
        if n == 0:
            raise AmfError("the stack has no patches")
        mf = self.manifest
        total = np.zeros(n)
        for i in range(0, n, self.chunk):
            chunk, prepared = patches[i : i + self.chunk], {}
            for j, m in enumerate(mf.members):
                if m.preprocessing not in prepared:  # shared by same-spec members
                    prepared[m.preprocessing] = m.prepare(chunk)
                views = [sigmoid(self._run_session(j, v)) for v in tta_views(prepared[m.preprocessing], mf.tta)]
                total[i : i + len(chunk)] += np.mean(views, axis=0)
        return total / len(mf.members)
