"""bench/single_graph.py: one graph of all members (and its fp16 copy) gives the member loop's probabilities, and
bench's Merged runs it as the container runs the members (the container itself runs the members only)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from toy_models import make_toy_ensemble

from amf import AmfError
from amf import manifest as manifest_io
from amf.ensemble import Ensemble
from bench.single_graph import (
    FP16_FILE,
    MERGED_FILE,
    Merged,
    build_single_graph,
    check_batch,
    member_loop,
    run_single_graph,
    write_single_graph,
)

RNG = np.random.default_rng(3)


def stack(n, size=128):
    return list(RNG.integers(0, 256, (n, size, size, 3), dtype=np.uint8))


@pytest.fixture
def toy3(tmp_path):
    return make_toy_ensemble(tmp_path / "m", members=3, seed=11).parent


def test_merged_graph_equals_member_loop(toy3, tmp_path):
    mf = manifest_io.load(toy3)
    merged = build_single_graph([onnx.load(str(mf.path(m.file))) for m in mf.members])
    onnx.checker.check_model(merged)
    assert [i.name for i in merged.graph.input] == ["input"]
    path = tmp_path / "merged.onnx"
    onnx.save(merged, str(path))
    x = check_batch(mf, n=8, seed=5)
    want = member_loop(mf, x)
    got = run_single_graph(path, x)
    assert want.std() > 0  # the members do tell the patches apart
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_merged_output_is_n_by_1_probability(toy3, tmp_path):
    import onnxruntime as ort

    mf = manifest_io.load(toy3)
    path = tmp_path / "m.onnx"
    onnx.save(build_single_graph([onnx.load(str(mf.path(m.file))) for m in mf.members]), str(path))
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y = s.run(None, {"input": check_batch(mf, n=5)})[0]
    assert y.shape == (5, 1) and y.dtype == np.float32 and ((y > 0) & (y < 1)).all()


def test_members_with_rank1_logits_and_older_opset_merge(tmp_path):
    """A member that returns (N,) logits at opset 13 merges with one that returns (N, 1) at 17."""
    from onnx import helper

    make_toy_ensemble(tmp_path / "m", members=2, seed=2)
    mf = manifest_io.load(tmp_path / "m")
    a = onnx.load(str(mf.path("toy0.onnx")))
    b = onnx.load(str(mf.path("toy1.onnx")))
    g = b.graph
    g.node.append(helper.make_node("Flatten", ["logit"], ["logit2d"], axis=0))  # (1, N)
    g.node.append(helper.make_node("Squeeze", ["logit2d", "zero"], ["logit1d"]))
    g.initializer.append(onnx.numpy_helper.from_array(np.array([0], np.int64), "zero"))
    g.output.pop()
    g.output.append(helper.make_tensor_value_info("logit1d", onnx.TensorProto.FLOAT, ["batch"]))
    b.opset_import[0].version = 13
    onnx.checker.check_model(b)
    onnx.save(b, str(mf.path("toy1.onnx")))
    path = tmp_path / "merged.onnx"
    onnx.save(build_single_graph([a, b]), str(path))
    x = check_batch(mf, n=6)
    np.testing.assert_allclose(run_single_graph(path, x), member_loop(mf, x), atol=1e-5, rtol=0)


def test_merged_runs_the_graph_as_the_container_runs_the_members(toy3):
    patches = stack(20)
    mf = manifest_io.load(toy3)
    for tta in ("none", "d4"):
        mf.tta = tta
        manifest_io.save(mf, toy3)
        loop = Ensemble(toy3, device="cpu").predict_proba(patches)
        assert write_single_graph(toy3) <= 1e-5
        merged = Merged(toy3, MERGED_FILE, device="cpu", chunk=7)  # chunks that do not divide the stack
        assert merged.kind == "merged" and merged.device == "cpu"
        np.testing.assert_allclose(merged.predict_proba(patches), loop, atol=1e-5, rtol=0)
    on_disk = json.loads((toy3 / "ensemble.json").read_text())
    assert len(on_disk["members"]) == 3 and on_disk["variants"] == []  # the manifest is the members' alone
    assert len(Ensemble(toy3, device="cpu").sessions) == 3  # the container runs the members, merged.onnx or not


def test_fp16_copy_keeps_float32_io_and_close_probabilities(toy3):
    import onnxruntime as ort

    write_single_graph(toy3, fp16=True)
    mf = manifest_io.load(toy3)
    model = onnx.load(str(toy3 / FP16_FILE))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    x = check_batch(mf, n=8)
    try:
        got = run_single_graph(toy3 / FP16_FILE, x)
    except ort.capi.onnxruntime_pybind11_state.NotImplemented:
        pytest.skip("this onnxruntime has no CPU kernels for the fp16 graph")
    np.testing.assert_allclose(got, member_loop(mf, x), atol=1e-2, rtol=0)


def test_members_with_different_preprocessing_are_refused(tmp_path):
    folder = make_toy_ensemble(tmp_path / "m", members=2, sizes=(128, 96)).parent
    with pytest.raises(AmfError, match="differ in preprocessing"):
        write_single_graph(folder)
    assert not (folder / MERGED_FILE).exists()
