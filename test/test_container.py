"""The container's entrypoint, inference.py, as the platform runs it and on every kind of bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
from compare_output import EXPECTED
from conftest import ROOT
from make_sample_input import make_job, write_job
from onnx import TensorProto, helper, numpy_helper
from PIL import Image, ImageSequence
from toy_models import make_toy_ensemble, toy_model

import inference
from amf import AmfError, jobs
from amf.ensemble import Ensemble, sigmoid
from amf.manifest import load as load_manifest
from amf.manifest import save as save_manifest
from amf.preprocess import canonical_patch, prepare, resize
from amf.results import validate

SAMPLE = ROOT / "test" / "input"
RESULT = jobs.OUTPUT_FILE
RNG = np.random.default_rng(7)


def cli(*args, env_extra=None, cwd=None):
    """inference.py in a fresh process; returns (exit code, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if k not in ("AMF_MODEL_DIR", "PYTHONPATH")}
    env.update(env_extra or {})
    p = subprocess.run(
        [sys.executable, str(ROOT / "inference.py"), *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd
    )
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
    from amf.ensemble import NVIDIA_DRIVER

    if not NVIDIA_DRIVER.exists():  # a machine without a GPU: the CPU, and no failed CUDA load to read as an error
        assert "CUDA" not in err and " on CPU" in device_lines[0], err
    assert [p.name for p in tmp_path.iterdir()] == [RESULT]  # nothing but the result (no temp files)


def test_without_an_nvidia_driver_auto_takes_the_cpu_without_trying_cuda(tmp_path):
    import onnxruntime as ort

    from amf.ensemble import pick_providers

    assert pick_providers("auto", tmp_path / "no_driver") == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():  # onnxruntime-gpu: CUDA where a driver is loaded
        (tmp_path / "version").write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06\n")
        assert pick_providers("auto", tmp_path / "version") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
        assert pick_providers("cuda", tmp_path / "no_driver")[0] == "CUDAExecutionProvider"  # asked for: tried


def test_a_cuda_provider_that_does_not_load_is_told_in_one_line():
    from amf.ensemble import cuda_failure_reason

    printed = (
        "\x1b[1;31m2026-11-22 07:58:18.025 [E:onnxruntime:Default, provider_bridge_ort.cc:2195 "
        "TryGetProviderInfo_CUDA] /onnxruntime_src/onnxruntime/core/session/provider_bridge_ort.cc:1778 "
        "onnxruntime::Provider& onnxruntime::ProviderLibrary::Get() [ONNXRuntimeError] : 1 : FAIL : "
        "Failed to load library libonnxruntime_providers_cuda.so with error: libcublasLt.so.12: cannot "
        "open shared object file: No such file or directory\n\x1b[m\n"
    )
    assert cuda_failure_reason(printed) == (
        "libonnxruntime_providers_cuda.so: libcublasLt.so.12: cannot open shared object file: No such file or directory"
    )
    assert cuda_failure_reason("") == "driver or CUDA/cuDNN libraries"
    assert "\n" not in cuda_failure_reason("some\nother\ntext")


def test_native_log_text_becomes_one_short_line():
    from amf.native_stderr import short_line

    assert short_line("\x1b[1;31mFAIL :\n  no   such\tfile\x1b[m\n") == "FAIL : no such file"
    assert short_line("x" * 50, 20) == "x" * 17 + "..."
    assert short_line("x" * 20, 20) == "x" * 20


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


@pytest.mark.slow
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
    return {
        name: make_toy_ensemble(tmp_path / name, members=1, seed=seed).parent
        for name, seed in (("cli", 101), ("env", 202), ("platform", 303))
    }


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


@pytest.mark.slow
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
    rgb_of_gray = run_probs(
        write_job(tmp_path / "gray3", [np.dstack([g] * 3) for g in gray], "mha").parents[2], model, tmp_path
    )
    np.testing.assert_array_equal(got, rgb_of_gray)


def test_small_patches_and_a_single_2d_image_work(tmp_path):
    job = write_job(tmp_path / "small", patches(2, 64, 64), "tiff").parents[2]
    assert len(run_probs(job, ROOT / "model", tmp_path)) == 2
    one = tmp_path / "one"
    write_job(one, patches(1), "tiff")
    results = inference.run(one, tmp_path / "o1", ROOT / "model")
    validate(results, 1)


@pytest.mark.slow
def test_many_patches_chunked_equal_one_by_one(tmp_path):
    stack = patches(40)
    job = write_job(tmp_path / "job", stack, "mha").parents[2]
    through_cli = run_probs(job, ROOT / "model", tmp_path)
    assert len(through_cli) == 40
    one_by_one = Ensemble(ROOT / "model", device="cpu", chunk=1).predict_proba(stack)
    for chunk in (7, 16, 64):
        np.testing.assert_allclose(
            Ensemble(ROOT / "model", device="cpu", chunk=chunk).predict_proba(stack),
            one_by_one,
            atol=1e-7,
            rtol=0,
            err_msg=f"chunk {chunk}",
        )
    np.testing.assert_allclose(through_cli, one_by_one, atol=1e-7, rtol=0)


@pytest.mark.parametrize("name,fmt", [("STACK.MHA", "mha"), ("Stack.Tif", "tif"), ("STACK.TIFF", "tiff")])
def test_upper_case_suffixes_are_read(name, fmt, tmp_path):
    stack = patches(3)
    want = run_probs(write_job(tmp_path / "lower", stack, fmt, name=name.lower()).parents[2], ROOT / "model", tmp_path)
    job = write_job(tmp_path / "upper", stack, fmt, name=name.lower()).parents[2]
    path = jobs.find_stack(job)
    path.rename(path.with_name(name))
    np.testing.assert_array_equal(np.stack(jobs.read_stack(path.with_name(name))), np.stack(stack))
    np.testing.assert_array_equal(run_probs(job, ROOT / "model", tmp_path), want)


def test_a_float_stack_in_0_255_keeps_its_dark_patch_dark(tmp_path):
    stack = patches(3)
    stack[1] = np.minimum(stack[1], 1)  # a dark patch: every value <= 1
    want = run_probs(write_job(tmp_path / "u8", stack, "mha").parents[2], ROOT / "model", tmp_path)
    job = array_mha(tmp_path / "float", np.stack(stack).astype(np.float32))
    pages = jobs.read_stack(jobs.find_stack(job))
    np.testing.assert_array_equal(np.stack(pages), np.stack(stack))  # decided once: 0..255 for every page
    np.testing.assert_array_equal(run_probs(job, ROOT / "model", tmp_path), want)


def test_read_stack_gives_views_of_the_decoded_pixels_not_copies(tmp_path):
    job = write_job(tmp_path / "job", patches(5), "mha").parents[2]
    pages = jobs.read_stack(jobs.find_stack(job))
    assert len(pages) == 5
    assert all(np.shares_memory(pages[i], pages.pages) for i in range(5))  # no second copy of every page


def test_caps_admit_the_platforms_stacks_with_room_to_spare():
    assert jobs.MAX_PATCHES >= 100 * 16 and jobs.MAX_SIDE >= 4 * 128
    assert jobs.MAX_BYTES >= jobs.MAX_PATCHES * 128 * 128 * 3 * 2  # 16-bit RGB at the patch cap


def test_an_over_cap_header_is_refused_before_anything_is_decoded(tmp_path):
    import resource

    job = compressed_mha(tmp_path / "job", claims((128, 128, 100_000), compressed_size=4096))
    path = jobs.find_stack(job)
    assert path.stat().st_size < 5000  # a small file claiming 4.9 GB of pixels
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(AmfError, match="holds 100000 patches; at most 10000 are read"):
        jobs.read_stack(path)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100, grown_mb  # the 4.9 GB buffer was never made


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
        [
            helper.make_node("ReduceMean", ["input"], ["m"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Mul", ["m", "zero"], ["z"]),
            helper.make_node("Add", ["z", "logit"], ["s"]),
            helper.make_node("Unsqueeze", ["s", "one"], ["out"]),
        ],
        "constant",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 128, 128])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 1])],
        [
            numpy_helper.from_array(np.array(0, np.float32), "zero"),
            numpy_helper.from_array(np.array(logit, np.float32), "logit"),
            numpy_helper.from_array(np.array([1], np.int64), "one"),
        ],
    )
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
    return (
        f"ObjectType = Image\nNDims = {len(dims)}\nDimSize = {' '.join(map(str, dims))}\n"
        f"ElementType = MET_UCHAR\nElementNumberOfChannels = {channels}\nElementDataFile = LOCAL\n"
    ).encode()


def array_mha(d, array, is_vector=True):
    import SimpleITK as sitk

    good_job(d)
    folder = d / "images" / jobs.INPUT_SLUG
    for p in folder.iterdir():
        p.unlink()
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=is_vector), str(folder / "s.mha"))
    return d


def compressed_mha(d, mangle):
    """A valid deflate-compressed .mha of 3 patches, its header and payload then passed through MANGLE."""
    import SimpleITK as sitk

    good_job(d)
    folder = d / "images" / jobs.INPUT_SLUG
    for p in folder.iterdir():
        p.unlink()
    path = folder / "stack.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.stack(patches(3)), isVector=True), str(path), True)
    data = path.read_bytes()
    end = data.index(b"ElementDataFile = LOCAL\n") + len(b"ElementDataFile = LOCAL\n")
    header, payload = data[:end].decode(), data[end:]
    assert "CompressedData = True" in header
    header, payload = mangle(header, payload)
    path.write_bytes(header.encode() + payload)
    return d


def corrupt_tiff() -> bytes:
    """A deflated 3-page TIFF whose compressed strips are overwritten with random bytes in the middle."""
    import io

    buf = io.BytesIO()
    pages = [Image.fromarray(p) for p in patches(3)]
    pages[0].save(buf, format="TIFF", save_all=True, append_images=pages[1:], compression="tiff_adobe_deflate")
    data = bytearray(buf.getvalue())
    data[2000:4000] = np.random.default_rng(2).bytes(2000)
    return bytes(data)


def random_payload(header, payload):
    return header, np.random.default_rng(1).bytes(len(payload))


def claims(dims, compressed_size=64):
    """A header that claims DIMS (x y z) over a tiny random payload."""

    def mangle(header, payload):
        header = re.sub(r"DimSize = .*", f"DimSize = {' '.join(map(str, dims))}", header)
        header = re.sub(r"CompressedDataSize = \d+", f"CompressedDataSize = {compressed_size}", header)
        return header, payload[:compressed_size]

    return mangle


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


def member(folder, nodes, inits=(), in_type=TensorProto.FLOAT, out_shape=("batch", 1), out_type=None):
    """Replace toy1.onnx by a tiny graph of NODES from 'input' (IN_TYPE, batch x 3 x 128 x 128) to 'out'."""
    graph = helper.make_graph(
        nodes,
        "bad_member",
        [helper.make_tensor_value_info("input", in_type, ["batch", 3, 128, 128])],
        [helper.make_tensor_value_info("out", out_type or in_type, out_shape)],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in inits],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / "toy1.onnx"))


MEAN = helper.make_node("ReduceMean", ["input"], ["m"], axes=[1, 2, 3], keepdims=0)  # one number per patch
ONE = ("one", np.array([1], np.int64))
BAD_MEMBERS = {  # a member whose input or output is wrong in the way named, and the words for it
    "float64 input": (
        [MEAN, helper.make_node("Unsqueeze", ["m", "one"], ["out"])],
        [ONE],
        dict(in_type=TensorProto.DOUBLE),
        "input must be float32",
    ),
    "float16 input": (
        [MEAN, helper.make_node("Unsqueeze", ["m", "one"], ["out"])],
        [ONE],
        dict(in_type=TensorProto.FLOAT16),
        "input must be float32",
    ),
    "reshape to a fixed batch": (
        [MEAN, helper.make_node("Reshape", ["m", "shape"], ["out"])],
        [("shape", np.array([16, 1], np.int64))],
        {},
        "model toy1.onnx: failed on a batch",
    ),
    "dynamic last dimension of 2": (
        [
            MEAN,
            helper.make_node("Unsqueeze", ["m", "one"], ["u"]),  # [N, 3 - 1]
            helper.make_node("Shape", ["input"], ["s"], start=0, end=2),
            helper.make_node("Sub", ["s", "minus"], ["s2"]),
            helper.make_node("Expand", ["u", "s2"], ["out"]),
        ],
        [ONE, ("minus", np.array([0, 1], np.int64))],
        dict(out_shape=("batch", "k")),
        "model toy1.onnx: gave an output of shape [3, 2]",
    ),
    "fixed last dimension of 2": (
        [
            MEAN,
            helper.make_node("Unsqueeze", ["m", "one"], ["u"]),
            helper.make_node("Concat", ["u", "u"], ["out"], axis=1),
        ],
        [ONE],
        dict(out_shape=("batch", 2)),
        "one value per patch (N or Nx1), got ['batch', 2]",
    ),
    "one row for the stack": (
        [
            helper.make_node("ReduceMean", ["input"], ["m"], axes=[0, 1, 2, 3], keepdims=0),
            helper.make_node("Reshape", ["m", "shape"], ["out"]),
        ],
        [("shape", np.array([1, 1], np.int64))],
        dict(out_shape=("rows", 1)),
        "model toy1.onnx: gave an output of shape [1, 1] (float32) for 3 patches",
    ),
    "rank-0 output declared": (
        [helper.make_node("ReduceMean", ["input"], ["out"], axes=[0, 1, 2, 3], keepdims=0)],
        [],
        dict(out_shape=[]),
        "one value per patch",
    ),
    "string output": (
        [MEAN, helper.make_node("Cast", ["m"], ["out"], to=TensorProto.STRING)],
        [],
        dict(out_shape=["batch"], out_type=TensorProto.STRING),
        "model toy1.onnx: gave an output",
    ),
}


def bad_member(d, case):
    nodes, inits, kw, _ = BAD_MEMBERS[case]
    return broken_model(d, lambda f: member(f, nodes, inits, **kw))


class Returns:
    """Stands for an onnxruntime session whose run returns VALUE (a shape no graph declares ahead)."""

    def __init__(self, session, value):
        self.session, self.value = session, value

    def get_inputs(self):
        return self.session.get_inputs()

    def run(self, *args):
        return [self.value]


@pytest.mark.parametrize(
    "value,shape",
    [
        (np.float32(0.3), "[]"),
        (np.zeros((4, 2), np.float32), "[4, 2]"),
        (np.zeros((1, 1), np.float32), "[1, 1]"),
        (np.zeros(2, np.float32), "[2]"),
    ],
)
def test_a_member_output_of_the_wrong_size_at_run_time_is_one_line(value, shape, toy_model):
    ens = Ensemble(toy_model, device="cpu")
    ens.sessions[1] = Returns(ens.sessions[1], value)
    with pytest.raises(AmfError, match=re.escape(f"model toy1.onnx: gave an output of shape {shape}")):
        ens.predict_proba(patches(4))


def manifest_file(d, file, make):
    """The toy ensemble with member 1 named FILE in the manifest; MAKE(folder) puts a model there."""

    def change(folder):
        make(folder)
        text = (folder / "ensemble.json").read_text()
        set_manifest(folder, text.replace('"file": "toy1.onnx"', json.dumps({"file": file})[1:-1]))

    return broken_model(d, change)


BAD_INPUTS = {
    # name: (make the input folder, make the model folder or None for model/, words the line must hold)
    "no inputs.json": (lambda d: (good_job(d) / "inputs.json").unlink() or d, None, "inputs.json"),
    "malformed inputs.json": (lambda d: inputs_json(d, "[{oops"), None, "not valid JSON"),
    "inputs.json not a list": (lambda d: inputs_json(d, {"slug": jobs.INPUT_SLUG}), None, "list of socket values"),
    "socket without slug": (lambda d: inputs_json(d, [{"interface": {}}]), None, "interface.slug"),
    "unknown interface": (lambda d: inputs_json(d, [socket("some-other-image")]), None, "unknown interface"),
    "extra interface": (
        lambda d: inputs_json(d, [socket(jobs.INPUT_SLUG), socket("another")]),
        None,
        "unknown interface",
    ),
    "no image folder": (
        lambda d: (
            inputs_json(d / "x", [socket(jobs.INPUT_SLUG)])
            and (d / "x" / "images" / jobs.INPUT_SLUG / "stack_0.tiff").unlink()
            or (d / "x" / "images" / jobs.INPUT_SLUG).rmdir()
            or d / "x"
        ),
        None,
        "no image folder",
    ),
    "no image": (lambda d: job_with(d, ".hidden", b""), None, "no .mha/.tif/.tiff image"),
    "unsupported file": (lambda d: job_with(d, "stack.png", b"\x89PNG"), None, "found stack.png"),
    "two images": (
        lambda d: (write_job(good_job(d), patches(2), "mha", name="b.mha"), d)[1],
        None,
        "expected one image",
    ),
    "corrupt tiff": (
        lambda d: job_with(d, "stack.tiff", b"II*\x00" + b"garbage" * 50),
        None,
        "cannot read image stack.tiff",
    ),
    "truncated mha": (
        lambda d: job_with(d, "stack.mha", mha_header((128, 128, 4)) + b"abc"),
        None,
        "cannot read image stack.mha",
    ),
    "empty stack": (lambda d: job_with(d, "stack.mha", mha_header((128, 128, 0))), None, "empty stack"),
    "five channels": (lambda d: array_mha(d, np.zeros((2, 16, 16, 5), np.uint8)), None, "1 to 4 channels"),
    "4-D image": (lambda d: array_mha(d, np.zeros((2, 2, 16, 16, 3), np.uint8)), None, "4 dimensions"),
    "no model folder": (good_job, lambda d: d / "nowhere", "no manifest"),
    "missing manifest": (good_job, lambda d: broken_model(d, lambda f: (f / "ensemble.json").unlink()), "no manifest"),
    "malformed manifest": (good_job, lambda d: broken_model(d, lambda f: set_manifest(f, "{")), "not valid JSON"),
    "invalid manifest": (
        good_job,
        lambda d: broken_model(
            d,
            lambda f: set_manifest(f, (f / "ensemble.json").read_text().replace('"threshold": 0.5', '"threshold": 7')),
        ),
        "'threshold'",
    ),
    "missing onnx": (
        good_job,
        lambda d: broken_model(d, lambda f: (f / "toy1.onnx").unlink()),
        "model file toy1.onnx is missing",
    ),
    "broken onnx": (
        good_job,
        lambda d: broken_model(d, lambda f: (f / "toy1.onnx").write_bytes(b"\x08garbage" * 9)),
        "cannot load model toy1.onnx",
    ),
    "empty onnx": (
        good_job,
        lambda d: broken_model(d, lambda f: (f / "toy0.onnx").write_bytes(b"")),
        "toy0.onnx: empty file",
    ),
    "model with two outputs per patch": (good_job, lambda d: broken_model(d, two_logit_model), "one value per patch"),
    "model returning NaN": (good_job, lambda d: constant_ensemble(d / "nan", float("nan")), "NaN"),
    # ITK prints these and (for the random payload) returns zeros with no exception
    "compressed mha, random payload": (
        lambda d: compressed_mha(d, random_payload),
        None,
        "cannot read image stack.mha: Uncompress failed",
    ),
    "compressed mha, truncated payload": (
        lambda d: compressed_mha(d, lambda h, p: (h, p[: len(p) // 2])),
        None,
        "cannot read image stack.mha",
    ),
    "tiff, corrupt deflate payload": (
        lambda d: job_with(d, "stack.tiff", corrupt_tiff()),
        None,
        "cannot read image stack.tiff",
    ),
    "tiff, truncated": (
        lambda d: job_with(d, "stack.tiff", corrupt_tiff()[:60_000]),
        None,
        "cannot read image stack.tiff",
    ),
    # caps, from the header alone, before a byte is decoded
    "header claims 100000 patches": (
        lambda d: compressed_mha(d, claims((128, 128, 100_000))),
        None,
        "holds 100000 patches; at most 10000 are read",
    ),
    "header claims 4096-pixel patches": (
        lambda d: compressed_mha(d, claims((4096, 4096, 2))),
        None,
        "a patch side is at most 1024",
    ),
    "header claims 2.3 GiB of pixels": (
        lambda d: compressed_mha(d, claims((1024, 1024, 800))),
        None,
        "decodes to 2.3 GiB of pixels; at most 1 GiB",
    ),
    "int32 pixels beyond 255": (
        lambda d: array_mha(d, np.full((2, 16, 16, 3), 255_000, np.int32)),
        None,
        "pixel type int32 holds values 255000..255000",
    ),
    "deeply nested inputs.json": (lambda d: inputs_json(d, "[" * 100_000), None, "nested too deeply"),
    "deeply nested manifest": (
        good_job,
        lambda d: broken_model(d, lambda f: set_manifest(f, "[" * 100_000)),
        "nested too deeply",
    ),
    **{
        f"member with {case}": (good_job, lambda d, case=case: bad_member(d, case), BAD_MEMBERS[case][3])
        for case in BAD_MEMBERS
    },
    "member outside the model folder": (
        good_job,
        lambda d: manifest_file(
            d, "../x/toy1.onnx", lambda f: (f.parent / "x").mkdir() or toy_model(f.parent / "x" / "toy1.onnx")
        ),
        "must be a path inside the model folder",
    ),
    "member at an absolute path": (
        good_job,
        lambda d: manifest_file(d, "/etc/passwd", lambda f: None),
        "must be a path inside the model folder",
    ),
    "member a symlink out of the folder": (
        good_job,
        lambda d: broken_model(
            d,
            lambda f: (
                toy_model(f.parent / "outside.onnx"),
                (f / "toy1.onnx").unlink(),
                (f / "toy1.onnx").symlink_to(f.parent / "outside.onnx"),
            ),
        ),
        "toy1.onnx leads outside the model folder",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_and_no_output(case, tmp_path):
    make_input, make_model, words = BAD_INPUTS[case]
    input_dir = make_input(tmp_path / "input")
    stale_result(tmp_path / "output")
    args = ["--input", input_dir, "--output", tmp_path / "output"]
    if make_model is not None:
        args += ["--model", make_model(tmp_path)]
    assert_failed(cli(*args), words, tmp_path / "output")


def stale_result(output_dir):
    """A result left by an earlier run: a failed run must not leave it behind."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / RESULT).write_text('[{"class": "normal", "confidence": 0.5}]\n')


def assert_failed(ran, words, output_dir):
    """Exit 2, one line 'error: ...' holding WORDS, said last, no traceback or native noise, and no
    result (nor temporary file) in OUTPUT_DIR."""
    rc, out, err = ran
    assert rc == 2, (out, err)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert errors[0] == err.strip().splitlines()[-1]  # the last thing said, and said once
    assert all(line.startswith(("error: ", "amf: ")) for line in err.splitlines()), err  # no native noise
    assert words in errors[0], errors[0]
    assert not output_dir.is_dir() or not any(p.is_file() for p in output_dir.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("value", ["abc", "", "1.5", "0", "-1", " "])
def test_a_bad_amf_chunk_is_one_line_naming_the_variable_and_rule(value, tmp_path):
    stale_result(tmp_path / "o")
    assert_failed(
        cli("--input", SAMPLE, "--output", tmp_path / "o", env_extra={"AMF_CHUNK": value}),
        f"AMF_CHUNK={value!r} must be a whole number >= 1",
        tmp_path / "o",
    )


@pytest.mark.slow
def test_a_good_amf_chunk_changes_nothing_but_the_chunk(tmp_path):
    rc, _, err = cli("--input", SAMPLE, "--output", tmp_path / "o", env_extra={"AMF_CHUNK": "3"})
    assert rc == 0, err
    got = [r["confidence"] for r in json.loads((tmp_path / "o" / RESULT).read_text())]
    np.testing.assert_allclose(got, run_probs(SAMPLE, ROOT / "model", tmp_path), atol=1e-7, rtol=0)


@pytest.mark.parametrize("where", ["a folder without a manifest", "a file", "nowhere"])
def test_a_bad_amf_model_dir_is_one_line_naming_the_variable(where, tmp_path):
    target = {
        "a folder without a manifest": tmp_path,
        "a file": SAMPLE / "inputs.json",
        "nowhere": tmp_path / "nowhere",
    }[where]
    stale_result(tmp_path / "o")
    assert_failed(
        cli("--input", SAMPLE, "--output", tmp_path / "o", env_extra={"AMF_MODEL_DIR": target}),
        f"AMF_MODEL_DIR={str(target)!r} must be a folder holding ensemble.json",
        tmp_path / "o",
    )


# -- where the result goes: every write failure is one line ------------------------------------------


def test_output_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "out").write_text("not a folder")
    assert_failed(
        cli("--input", SAMPLE, "--output", tmp_path / "out"),
        f"cannot write {tmp_path / 'out' / RESULT}: {tmp_path / 'out'} is a file, not a folder",
        tmp_path / "out",
    )
    assert (tmp_path / "out").read_text() == "not a folder"


def test_result_path_that_is_a_folder_is_one_line(tmp_path):
    (tmp_path / "out" / RESULT).mkdir(parents=True)
    assert_failed(
        cli("--input", SAMPLE, "--output", tmp_path / "out"),
        f"cannot write {tmp_path / 'out' / RESULT}: Is a directory",
        tmp_path / "out",
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_one_line(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out").chmod(0o555)
    try:
        assert_failed(
            cli("--input", SAMPLE, "--output", tmp_path / "out"),
            f"cannot write {tmp_path / 'out' / RESULT}: Permission denied",
            tmp_path / "out",
        )
    finally:
        (tmp_path / "out").chmod(0o755)


@pytest.mark.parametrize(
    "fault,reason",
    [("fsync", "No space left on device"), ("mkstemp", "Permission denied"), ("/dev/full", "No space left on device")],
)
def test_a_full_disk_or_read_only_folder_is_one_line(fault, reason, tmp_path, monkeypatch, capsys):
    import errno
    import tempfile

    code = errno.ENOSPC if reason.startswith("No space") else errno.EACCES

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    real_fdopen = os.fdopen

    def to_dev_full(fd, *args, **kwargs):  # the writer's temporary file, on a device that is always full
        if not os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            return real_fdopen(fd, *args, **kwargs)
        os.close(fd)
        return open("/dev/full", *args, **kwargs)

    if fault == "fsync":
        monkeypatch.setattr(os, "fsync", fail)
    elif fault == "mkstemp":
        monkeypatch.setattr(tempfile, "mkstemp", fail)
    elif os.path.exists("/dev/full"):
        monkeypatch.setattr(os, "fdopen", to_dev_full)
    else:
        pytest.skip("no /dev/full here")
    stale_result(tmp_path / "out")
    assert inference.main(["--input", str(SAMPLE), "--output", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == f"error: cannot write {tmp_path / 'out' / RESULT}: {reason}"
    assert list((tmp_path / "out").iterdir()) == []  # no result, no temporary file


def test_a_bad_argument_is_one_line_with_status_2(tmp_path):
    rc, out, err = cli("--input", tmp_path, "--bogus")
    assert rc == 2 and "Traceback" not in err, err
    assert err.strip().splitlines() == [err.strip().splitlines()[-1]]  # one line, no usage block
    assert err.startswith("error: inference.py: unrecognized arguments: --bogus"), err
