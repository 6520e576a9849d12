"""One ONNX graph of all the members of a model folder (and an fp16 copy of it): a benchmark case, not the runtime.

The single graph takes the members' shared input (float32 NCHW, already normalised) once, runs every member on it,
and returns the mean of the members' sigmoids: P(atypical), shape (N, 1). The fp16 copy keeps float32 input and
output (onnxruntime's own float16 converter), for CUDA. All members must share input size, mean, std and resize
method. write_single_graph puts merged.onnx (and merged-fp16.onnx) beside the members after checking the graph
against the member loop on random patches (within 1e-5); Merged runs it the way the container runs the members
(its chunks, its test-time augmentation), for bench/stages.py's -merged and -fp16 cases. The container itself runs
the members only (fp32, or fp16 members of training.export --precision fp16): the merged graph won nothing measured
(BENCHMARKS.md, run D; fp16 on a GPU not measured), and amf.manifest refuses a manifest that declares one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from amf import AmfError, one_line
from amf.manifest import Manifest
from amf.manifest import load as load_manifest
from training.export.onnxfile import save_onnx, to_fp16

MERGED_FILE = "merged.onnx"
FP16_FILE = "merged-fp16.onnx"
INPUT_NAME = "input"
OUTPUT_NAME = "prob"


def build_single_graph(models: list, input_name: str = INPUT_NAME, output_name: str = OUTPUT_NAME):
    """ONNX member models (one input, first output = one logit) -> one ModelProto: mean of sigmoids."""
    import onnx
    from onnx import compose, helper, inliner, version_converter

    opset = max(next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) for m in models)
    nodes, inits, sparse, value_info, functions, opsets = [], [], [], [], [], {}
    first_input = None
    probs = []
    for i, model in enumerate(models):
        model = inliner.inline_local_functions(model)  # exported graphs may carry local functions
        own = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        if own != opset:
            model = version_converter.convert_version(model, opset)
        model = compose.add_prefix(model, f"m{i}_")
        g = model.graph
        feeds = [x for x in g.input if x.name not in {t.name for t in g.initializer}]
        if len(feeds) != 1:
            raise AmfError(f"cannot build the single graph: member {i} has {len(feeds)} inputs, expected 1")
        if first_input is None:  # the first member's input type, static sizes and all (they help the optimiser)
            first_input = onnx.ValueInfoProto()
            first_input.CopyFrom(feeds[0])
            first_input.name = input_name
        nodes.append(helper.make_node("Identity", [input_name], [feeds[0].name], name=f"m{i}_feed"))
        nodes.extend(g.node)
        nodes.append(helper.make_node("Sigmoid", [g.output[0].name], [f"m{i}_sigmoid"], name=f"m{i}_sigmoid"))
        # (N,) or (N, 1) logits -> (N, 1) probabilities
        nodes.append(helper.make_node("Flatten", [f"m{i}_sigmoid"], [f"m{i}_prob"], axis=1, name=f"m{i}_flat"))
        probs.append(f"m{i}_prob")
        inits.extend(g.initializer)
        sparse.extend(g.sparse_initializer)
        value_info.extend(g.value_info)
        functions.extend(model.functions)
        for o in model.opset_import:
            opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    nodes.append(helper.make_node("Mean", probs, [output_name], name="ensemble_mean"))
    graph = helper.make_graph(
        nodes,
        "amf_merged_ensemble",
        [first_input],
        [helper.make_tensor_value_info(output_name, onnx.TensorProto.FLOAT, ["batch", 1])],
        initializer=inits,
        value_info=value_info,
        sparse_initializer=sparse,
    )
    single = helper.make_model(
        graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()], functions=functions
    )
    single.ir_version = max(m.ir_version for m in models)  # what onnxruntime already reads
    single.producer_name = "amf bench.single_graph"
    return single


def member_loop(manifest: Manifest, x: np.ndarray) -> np.ndarray:
    """Mean of the members' sigmoids on one prepared batch, one session per member (the reference)."""
    import onnxruntime as ort

    from amf.ensemble import sigmoid

    total = np.zeros(len(x))
    for m in manifest.members:
        s = ort.InferenceSession(str(manifest.path(m.file)), providers=["CPUExecutionProvider"])
        total += sigmoid(np.asarray(s.run(None, {s.get_inputs()[0].name: x})[0]).reshape(len(x)))
    return total / len(manifest.members)


def run_single_graph(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(s.run(None, {s.get_inputs()[0].name: x})[0], dtype=np.float64).reshape(len(x))


def check_batch(manifest: Manifest, n: int = 4, seed: int = 0) -> np.ndarray:
    """Random patches through the members' own preprocessing: a prepared float32 batch."""
    size = shared_preprocessing(manifest)[0]
    rng = np.random.default_rng(seed)
    return manifest.members[0].prepare(list(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)))


def load_member(path):
    """One member's ONNX graph; a file that is not one is an AmfError naming it."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        return onnx.load(str(path))
    except (OSError, ValueError, DecodeError) as e:
        raise AmfError(f"member {path} is not a readable ONNX model ({one_line(e)[:200]})") from None


def shared_preprocessing(manifest: Manifest) -> tuple:
    """The one Member.preprocessing of all members (a merged graph takes one input), or an AmfError."""
    specs = {m.preprocessing for m in manifest.members}
    if len(specs) != 1:
        raise AmfError(f"cannot build the single graph: members differ in preprocessing {sorted(specs)}")
    return specs.pop()


def write_single_graph(model_dir, out_dir=None, fp16: bool = False, atol: float = 1e-5) -> float:
    """OUT_DIR (default MODEL_DIR)/merged.onnx (and merged-fp16.onnx) of MODEL_DIR's members, checked against the
    member loop; returns the largest difference found."""
    import onnx

    model_dir = Path(model_dir)
    out_dir = Path(out_dir or model_dir)
    mf = load_manifest(model_dir)
    shared_preprocessing(mf)
    single = build_single_graph([load_member(mf.path(m.file)) for m in mf.members])
    path = out_dir / MERGED_FILE
    save_onnx(single, path)
    onnx.checker.check_model(str(path))  # by path: works for graphs with external weights too
    x = check_batch(mf)
    gap = float(np.max(np.abs(run_single_graph(path, x) - member_loop(mf, x))))
    if gap > atol:
        path.unlink()
        raise AmfError(f"the single graph differs from the member loop by {gap:.2e} (> {atol})")
    if fp16:
        save_onnx(to_fp16(single), out_dir / FP16_FILE)
    return gap


class Merged:
    """MODEL_DIR's members as one merged graph (FILE: merged.onnx or merged-fp16.onnx, beside them), run as the
    container runs its members: chunks of amf.ensemble.chunk_size, the manifest's test-time augmentation averaged
    (the graph's output is already the members' mean probability). predict_proba, device, manifest and kind are
    what bench/stages.py reads of an amf.ensemble.Ensemble."""

    def __init__(self, model_dir, file: str = MERGED_FILE, device: str = "auto", chunk: int | None = None):
        import onnxruntime as ort

        from amf.ensemble import chunk_size, pick_providers

        self.manifest = load_manifest(model_dir)
        shared_preprocessing(self.manifest)
        self.chunk, self.kind = chunk_size(chunk), "merged-fp16" if file == FP16_FILE else "merged"
        self.session = ort.InferenceSession(str(self.manifest.path(file)), providers=pick_providers(device))
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"

    def _run(self, x: np.ndarray) -> np.ndarray:
        feed = {self.session.get_inputs()[0].name: np.ascontiguousarray(x)}
        return np.asarray(self.session.run(None, feed)[0], dtype=np.float64).reshape(len(x))

    def predict_proba(self, patches) -> np.ndarray:
        from amf.preprocess import as_stack, tta_views

        patches, mf = as_stack(patches), self.manifest
        out = np.empty(len(patches))
        for i in range(0, len(patches), self.chunk):
            x = mf.members[0].prepare(patches[i : i + self.chunk])  # the members' shared preprocessing
            out[i : i + len(x)] = np.mean([self._run(v) for v in tta_views(x, mf.tta)], 0)
        return out
