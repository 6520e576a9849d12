"""The container's entrypoint, inference.py, as the platform runs it and on every kind of bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image, ImageSequence

import inference
from amf import jobs
from amf.ensemble import Ensemble, sigmoid
from amf.manifest import load as load_manifest
from amf.manifest import save as save_manifest
from amf.preprocess import canonical_patch, prepare, resize
from amf.results import validate
from conftest import ROOT
from make_sample_input import make_job, write_job
from training.toy_onnx import make_toy_ensemble, toy_model

SAMPLE = ROOT / "test" / "input"
EXPECTED = ROOT / "test" / "expected_output.json"
RESULT = jobs.OUTPUT_FILE
RNG = np.random.default_rng(7)


def cli(*args, env_extra=None, cwd=None):
    """inference.py in a fresh process; returns (exit code, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if k not in ("AMF_MODEL_DIR", "PYTHONPATH")}
    env.update(env_extra or {})
    p = subprocess.run([sys.executable, str(ROOT / "inference.py"), *map(str, args)],
                       capture_output=True, text=True, env=env, cwd=cwd)
    return p.returncode, p.stdout, p.stderr


def run_probs(input_dir, model_dir, tmp_path) -> np.ndarray:
    out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
    results = inference.run(input_dir, out, model_dir)
    on_disk = json.loads((out / RESULT).read_text())
    assert on_disk == results
    return np.array([r["confidence"] for r in results])


def stack_pages(path) -> list[np.ndarray]:
    """Read a multi-page TIFF with Pillow: an independent check of what SimpleITK reads."""
    with Image.open(path) as im:
        return [np.asarray(page.convert("RGB")) for page in ImageSequence.Iterator(im)]


def patches(n, h=128, w=128):
    return list(RNG.integers(0, 256, (n, h, w, 3), dtype=np.uint8))


# -- the platform interface ------------------------------------------------------------------------

def test_sample_job_gives_the_expected_output(tmp_path):
    from compare_output import compare

    rc, out, err = cli("--input", SAMPLE, "--output", tmp_path)
    assert rc == 0, err
    results = json.loads((tmp_path / RESULT).read_text())
    validate(results, 16)
    assert compare(results, json.loads(EXPECTED.read_text())) == []
    assert "16 patches" in out
    device_lines = [line for line in err.splitlines() if line.startswith("amf: onnxruntime")]
    assert len(device_lines) == 1 and (" on CPU" in device_lines[0] or " on CUDA" in device_lines[0])
    # onnxruntime's own multi-line complaint about a CUDA provider that does not load is folded into
    # one amf warning: nothing else reaches stderr
    assert all(line.startswith("amf: ") for line in err.splitlines()), err
    assert len([line for line in err.splitlines() if "CUDA provider failed" in line]) <= 1
    assert [p.name for p in tmp_path.iterdir()] == [RESULT]  # nothing but the result (no temp files)


def test_a_cuda_provider_that_does_not_load_is_told_in_one_line():
    from amf.ensemble import cuda_failure

    printed = ("\x1b[1;31m2026-11-22 07:58:18.025 [E:onnxruntime:Default, provider_bridge_ort.cc:2195 "
               "TryGetProviderInfo_CUDA] /onnxruntime_src/onnxruntime/core/session/provider_bridge_ort.cc:1778 "
               "onnxruntime::Provider& onnxruntime::ProviderLibrary::Get() [ONNXRuntimeError] : 1 : FAIL : "
               "Failed to load library libonnxruntime_providers_cuda.so with error: libcublasLt.so.12: cannot "
               "open shared object file: No such file or directory\n\x1b[m\n")
    assert cuda_failure(printed) == ("libonnxruntime_providers_cuda.so: libcublasLt.so.12: cannot open shared "
                                     "object file: No such file or directory")
    assert cuda_failure("") == "driver or CUDA/cuDNN libraries"
    assert "\n" not in cuda_failure("some\nother\ntext")


def test_organisers_sample_gives_16_valid_entries(gc_sample, tmp_path):
    rc, _, err = cli("--input", gc_sample, "--output", tmp_path)
    assert rc == 0, err
    text = (tmp_path / RESULT).read_text()
    results = json.loads(text)
    n_pages = len(stack_pages(jobs.find_stack(gc_sample)))
    assert n_pages == 16
    validate(results, n_pages, "gc-sample")
    assert all(0.0 <= r["confidence"] <= 1.0 for r in results)
    threshold = load_manifest(ROOT / "model").threshold
    assert all((r["class"] == "atypical") == (r["confidence"] >= threshold) for r in results)


def sources():
    yield SAMPLE
    gc = ROOT.parent / "shared" / "data" / "gc-sample" / "input"
    yield pytest.param(gc, marks=pytest.mark.skipif(not gc.exists(), reason=f"{gc} is not here"))


@pytest.mark.parametrize("source", sources(), ids=["project-sample", "gc-sample"])
def test_the_same_stack_as_mha_and_tiff_gives_the_same_output(source, tmp_path):
    tiff = jobs.find_stack(source)
    pages = jobs.read_stack(tiff)
    np.testing.assert_array_equal(np.stack(pages), np.stack(stack_pages(tiff)))  # SimpleITK reads TIFF right
    write_job(tmp_path / "mha", pages, fmt="mha", name="stack.mha")
    write_job(tmp_path / "tiff", pages, fmt="tiff", name="stack.tif")
    model = ROOT / "model"
    from_source = run_probs(source, model, tmp_path)
    np.testing.assert_array_equal(run_probs(tmp_path / "mha", model, tmp_path), from_source)
    np.testing.assert_array_equal(run_probs(tmp_path / "tiff", model, tmp_path), from_source)


def test_with_no_arguments_it_uses_the_platform_paths():
    rc, out, _ = cli("--help")
    assert rc == 0 and "default /input" in out and "default /output" in out


# -- model folder: --model, $AMF_MODEL_DIR, /opt/ml/model (with a manifest), model/ --------------------

@pytest.fixture
def three_models(tmp_path):
    return {name: make_toy_ensemble(tmp_path / name, members=1, seed=seed).parent
            for name, seed in (("cli", 101), ("env", 202), ("platform", 303))}


def test_model_dir_resolution_order(three_models, monkeypatch):
    monkeypatch.setattr(inference, "PLATFORM_MODEL_DIR", three_models["platform"])
    monkeypatch.setenv("AMF_MODEL_DIR", str(three_models["env"]))
    assert inference.resolve_model_dir(str(three_models["cli"])) == three_models["cli"]
    assert inference.resolve_model_dir(None) == three_models["env"]
    monkeypatch.delenv("AMF_MODEL_DIR")
    assert inference.resolve_model_dir(None) == three_models["platform"]
    (three_models["platform"] / "ensemble.json").unlink()  # an /opt/ml/model without a manifest is skipped
    assert inference.resolve_model_dir(None) == ROOT / "model"


def test_env_model_dir_is_used_end_to_end(three_models, tmp_path):
    rc, _, err = cli("--input", SAMPLE, "--output", tmp_path / "o", env_extra={"AMF_MODEL_DIR": three_models["env"]})
    assert rc == 0, err
    got = [r["confidence"] for r in json.loads((tmp_path / "o" / RESULT).read_text())]
    np.testing.assert_array_equal(got, run_probs(SAMPLE, three_models["env"], tmp_path))
    assert not np.allclose(got, [r["confidence"] for r in json.loads(EXPECTED.read_text())])


def test_faked_platform_model_dir_is_used(three_models, monkeypatch, tmp_path):
    monkeypatch.delenv("AMF_MODEL_DIR", raising=False)
    monkeypatch.setattr(inference, "PLATFORM_MODEL_DIR", three_models["platform"])
    assert inference.main(["--input", str(SAMPLE), "--output", str(tmp_path / "o"), "--quiet"]) == 0
    got = [r["confidence"] for r in json.loads((tmp_path / "o" / RESULT).read_text())]
    np.testing.assert_array_equal(got, run_probs(SAMPLE, three_models["platform"], tmp_path))


# -- what the input may be -------------------------------------------------------------------------

def test_gray_rgba_16bit_and_other_sizes_follow_the_documented_rule(tmp_path):
    model = ROOT / "model"
    rgb = patches(3, 150, 200)
    square = [p[:, 25:175] for p in rgb]  # rule 3: centre square of the shorter side
    want = run_probs(write_job(tmp_path / "rgb", square, "mha").parents[2], model, tmp_path)
    variants = {
        "other-size": rgb,
        "rgba": [np.dstack([p, RNG.integers(0, 256, p.shape[:2], dtype=np.uint8)]) for p in rgb],
        "16-bit": [p.astype(np.uint16) * 257 for p in rgb],
    }
    for name, stack in variants.items():
        got = run_probs(write_job(tmp_path / name, stack, "mha").parents[2], model, tmp_path)
        np.testing.assert_array_equal(got, want, err_msg=name)
    gray = [p[..., 1] for p in square]
    import SimpleITK as sitk
    job = write_job(tmp_path / "gray", square, "mha").parents[2]  # then overwrite with a scalar image
    sitk.WriteImage(sitk.GetImageFromArray(np.stack(gray)), str(jobs.find_stack(job)), True)
    got = run_probs(job, model, tmp_path)
    rgb_of_gray = run_probs(write_job(tmp_path / "gray3", [np.dstack([g] * 3) for g in gray], "mha").parents[2],
                            model, tmp_path)
    np.testing.assert_array_equal(got, rgb_of_gray)


def test_small_patches_and_a_single_2d_image_work(tmp_path):
    job = write_job(tmp_path / "small", patches(2, 64, 64), "tiff").parents[2]
    assert len(run_probs(job, ROOT / "model", tmp_path)) == 2
    one = tmp_path / "one"
    write_job(one, patches(1), "tiff")
    results = inference.run(one, tmp_path / "o1", ROOT / "model")
    validate(results, 1)


def test_many_patches_chunked_equal_one_by_one(tmp_path):
    stack = patches(40)
    job = write_job(tmp_path / "job", stack, "mha").parents[2]
    through_cli = run_probs(job, ROOT / "model", tmp_path)
    assert len(through_cli) == 40
    one_by_one = Ensemble(ROOT / "model", device="cpu", chunk=1).predict_proba(stack)
    for chunk in (7, 16, 64):
        np.testing.assert_allclose(Ensemble(ROOT / "model", device="cpu", chunk=chunk).predict_proba(stack),
                                   one_by_one, atol=1e-7, rtol=0, err_msg=f"chunk {chunk}")
    np.testing.assert_allclose(through_cli, one_by_one, atol=1e-7, rtol=0)


# -- the ensemble: mixed members, tta, threshold, confidences ----------------------------------------

def member_probs(model_dir, stack, view=lambda p: p):
    """Each member's sigmoid on the viewed patches (viewed at the member's input size, as the runtime's
    test-time augmentation does), computed here without amf.ensemble."""
    import onnxruntime as ort

    mf = load_manifest(model_dir)
    out = []
    for m in mf.members:
        s = ort.InferenceSession(str(mf.path(m.file)), providers=["CPUExecutionProvider"])
        sized = [np.ascontiguousarray(view(resize(canonical_patch(p), m.input_size, m.resize))) for p in stack]
        x = prepare(sized, m.input_size, m.mean, m.std, m.resize)
        out.append(sigmoid(s.run(None, {s.get_inputs()[0].name: x})[0].reshape(-1)))
    return np.array(out)


@pytest.fixture
def mixed(tmp_path):
    """A ConvNeXt-like 128 px member and a ViT-like 224 px member with their own mean, std and resize."""
    folder = tmp_path / "mixed"
    make_toy_ensemble(folder, members=2, sizes=(128, 224), seed=4)
    mf = load_manifest(folder)
    mf.members[1].mean, mf.members[1].std, mf.members[1].resize = [0.5] * 3, [0.5] * 3, "bicubic"
    mf.members[1].backbone = "vit-like"
    save_manifest(mf, folder)
    return folder


def test_mixed_size_members_each_get_their_own_preprocessing(mixed, tmp_path):
    stack = patches(5, 140, 140)
    want = member_probs(mixed, stack).mean(0)
    np.testing.assert_allclose(Ensemble(mixed, device="cpu").predict_proba(stack), want, atol=1e-7, rtol=0)
    job = write_job(tmp_path / "job", stack, "tiff").parents[2]
    np.testing.assert_allclose(run_probs(job, mixed, tmp_path), want, atol=1e-7, rtol=0)


D4 = [lambda p, k=k, f=f: np.rot90(p[:, ::-1] if f else p, k) for k in range(4) for f in (0, 1)]
FLIPS = [lambda p: p, lambda p: p[:, ::-1], lambda p: p[::-1]]


@pytest.mark.parametrize("mode,views", [("flips", FLIPS), ("d4", D4)])
def test_tta_averages_each_member_over_the_views(mixed, mode, views):
    stack = patches(4)
    mf = load_manifest(mixed)
    mf.tta = mode
    save_manifest(mf, mixed)
    want = np.mean([member_probs(mixed, stack, v) for v in views], axis=0).mean(0)
    got = Ensemble(mixed, device="cpu").predict_proba(stack)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert not np.allclose(got, member_probs(mixed, stack).mean(0), atol=1e-4)  # the views did change it


def test_threshold_comes_from_the_manifest(tmp_path):
    folder = make_toy_ensemble(tmp_path / "m", members=2, seed=9).parent
    stack = patches(12)
    job = write_job(tmp_path / "job", stack, "tiff").parents[2]
    probs = Ensemble(folder, device="cpu").predict_proba(stack)
    cut = float(np.median(probs))
    for threshold, n_atypical in ((cut, int((probs >= cut).sum())), (0.0, 12), (1.0, 0)):
        mf = load_manifest(folder)
        mf.threshold = threshold
        save_manifest(mf, folder)
        results = inference.run(job, tmp_path / f"o{threshold}", folder)
        assert sum(r["class"] == "atypical" for r in results) == n_atypical
        assert all((r["class"] == "atypical") == (r["confidence"] >= threshold) for r in results)
    assert 0 < int((probs >= cut).sum()) < 12


def constant_model(path, logit: float):
    """An ONNX member that returns LOGIT for every patch (0 * mean(input) + logit)."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input"], ["m"], axes=[1, 2, 3], keepdims=0),
         helper.make_node("Mul", ["m", "zero"], ["z"]),
         helper.make_node("Add", ["z", "logit"], ["s"]),
         helper.make_node("Unsqueeze", ["s", "one"], ["out"])],
        "constant", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 128, 128])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(np.array(0, np.float32), "zero"),
         numpy_helper.from_array(np.array(logit, np.float32), "logit"),
         numpy_helper.from_array(np.array([1], np.int64), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def constant_ensemble(folder, logit):
    make_toy_ensemble(folder, members=2)
    for f in ("toy0.onnx", "toy1.onnx"):
        constant_model(folder / f, logit)
    return folder


@pytest.mark.parametrize("logit,value,cls", [(1e3, 1.0, "atypical"), (-1e3, 0.0, "normal")])
def test_saturated_confidences_are_json_floats_exactly_0_or_1(tmp_path, logit, value, cls):
    folder = constant_ensemble(tmp_path / "m", logit)
    rc, _, err = cli("--input", SAMPLE, "--output", tmp_path / "o", "--model", folder)
    assert rc == 0, err
    text = (tmp_path / "o" / RESULT).read_text()
    results = json.loads(text)
    validate(results, 16)
    assert all(type(r["confidence"]) is float and r["confidence"] == value and r["class"] == cls for r in results)
    assert f'"confidence": {value}' in text and '"confidence": 1,' not in text and '"confidence": 0,' not in text


# -- bad input: exit 2, one line naming the problem, no output file ------------------------------------

def good_job(d):
    make_job(d, n=3)
    return d


def job_with(d, name, content: bytes):
    good_job(d)
    folder = d / "images" / jobs.INPUT_SLUG
    for p in folder.iterdir():
        p.unlink()
    (folder / name).write_bytes(content)
    return d


def inputs_json(d, value):
    good_job(d)
    (d / "inputs.json").write_text(value if isinstance(value, str) else json.dumps(value))
    return d


def socket(slug):
    return {"image": {"name": "x"}, "interface": {"slug": slug, "kind": "Image"}}


def mha_header(dims, channels=3):
    return (f"ObjectType = Image\nNDims = {len(dims)}\nDimSize = {' '.join(map(str, dims))}\n"
            f"ElementType = MET_UCHAR\nElementNumberOfChannels = {channels}\nElementDataFile = LOCAL\n").encode()


def array_mha(d, array, is_vector=True):
    import SimpleITK as sitk

    good_job(d)
    folder = d / "images" / jobs.INPUT_SLUG
    for p in folder.iterdir():
        p.unlink()
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=is_vector), str(folder / "s.mha"))
    return d


def broken_model(d, change):
    folder = make_toy_ensemble(d / "model", members=2).parent
    change(folder)
    return folder


def set_manifest(folder, text):
    (folder / "ensemble.json").write_text(text)


def two_logit_model(folder):
    toy_model(folder / "toy1.onnx", size=128, seed=1)
    m = onnx.load(str(folder / "toy1.onnx"))
    fc = next(t for t in m.graph.initializer if t.name == "fc")
    fc.CopyFrom(numpy_helper.from_array(np.ones((2, 8), np.float32), "fc"))
    fcb = next(t for t in m.graph.initializer if t.name == "fcb")
    fcb.CopyFrom(numpy_helper.from_array(np.zeros(2, np.float32), "fcb"))
    m.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 2
    onnx.save(m, str(folder / "toy1.onnx"))


BAD_INPUTS = {
    # name: (make the input folder, make the model folder or None for model/, words the line must hold)
    "no inputs.json": (lambda d: (good_job(d) / "inputs.json").unlink() or d, None, "inputs.json"),
    "malformed inputs.json": (lambda d: inputs_json(d, "[{oops"), None, "not valid JSON"),
    "inputs.json not a list": (lambda d: inputs_json(d, {"slug": jobs.INPUT_SLUG}), None, "list of socket values"),
    "socket without slug": (lambda d: inputs_json(d, [{"interface": {}}]), None, "interface.slug"),
    "unknown interface": (lambda d: inputs_json(d, [socket("some-other-image")]), None, "unknown interface"),
    "extra interface": (lambda d: inputs_json(d, [socket(jobs.INPUT_SLUG), socket("another")]), None,
                        "unknown interface"),
    "no image folder": (lambda d: inputs_json(d / "x", [socket(jobs.INPUT_SLUG)]) and
                        (d / "x" / "images" / jobs.INPUT_SLUG / "stack_0.tiff").unlink() or
                        (d / "x" / "images" / jobs.INPUT_SLUG).rmdir() or d / "x", None, "no image folder"),
    "no image": (lambda d: job_with(d, ".hidden", b"") , None, "no .mha/.tif/.tiff image"),
    "unsupported file": (lambda d: job_with(d, "stack.png", b"\x89PNG"), None, "found stack.png"),
    "two images": (lambda d: (write_job(good_job(d), patches(2), "mha", name="b.mha"), d)[1], None,
                   "expected one image"),
    "corrupt tiff": (lambda d: job_with(d, "stack.tiff", b"II*\x00" + b"garbage" * 50), None,
                     "cannot read image stack.tiff"),
    "truncated mha": (lambda d: job_with(d, "stack.mha", mha_header((128, 128, 4)) + b"abc"), None,
                      "cannot read image stack.mha"),
    "empty stack": (lambda d: job_with(d, "stack.mha", mha_header((128, 128, 0))), None, "empty stack"),
    "five channels": (lambda d: array_mha(d, np.zeros((2, 16, 16, 5), np.uint8)), None, "1 to 4 channels"),
    "4-D image": (lambda d: array_mha(d, np.zeros((2, 2, 16, 16, 3), np.uint8)), None, "4 dimensions"),
    "no model folder": (good_job, lambda d: d / "nowhere", "no manifest"),
    "missing manifest": (good_job, lambda d: broken_model(d, lambda f: (f / "ensemble.json").unlink()),
                         "no manifest"),
    "malformed manifest": (good_job, lambda d: broken_model(d, lambda f: set_manifest(f, "{")), "not valid JSON"),
    "invalid manifest": (good_job, lambda d: broken_model(
        d, lambda f: set_manifest(f, (f / "ensemble.json").read_text().replace('"threshold": 0.5', '"threshold": 7'))),
        "'threshold'"),
    "missing onnx": (good_job, lambda d: broken_model(d, lambda f: (f / "toy1.onnx").unlink()),
                     "model file toy1.onnx is missing"),
    "broken onnx": (good_job, lambda d: broken_model(d, lambda f: (f / "toy1.onnx").write_bytes(b"\x08garbage" * 9)),
                    "cannot load model toy1.onnx"),
    "empty onnx": (good_job, lambda d: broken_model(d, lambda f: (f / "toy0.onnx").write_bytes(b"")),
                   "toy0.onnx: empty file"),
    "model with two outputs per patch": (good_job, lambda d: broken_model(d, two_logit_model), "one value per patch"),
    "model returning NaN": (good_job, lambda d: constant_ensemble(d / "nan", float("nan")), "NaN"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_and_no_output(case, tmp_path):
    make_input, make_model, words = BAD_INPUTS[case]
    input_dir = make_input(tmp_path / "input")
    args = ["--input", input_dir, "--output", tmp_path / "output"]
    if make_model is not None:
        args += ["--model", make_model(tmp_path)]
    rc, out, err = cli(*args)
    assert rc == 2, (case, out, err)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert errors[0] == err.strip().splitlines()[-1]  # the last thing said, and said once
    assert all(line.startswith(("error: ", "amf: ")) for line in err.splitlines()), err  # no native noise
    assert words in errors[0], errors[0]
    assert not (tmp_path / "output").exists() or not any((tmp_path / "output").iterdir())
