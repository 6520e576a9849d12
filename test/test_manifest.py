"""amf.manifest: model/ensemble.json is validated on load (each error names its field) and round-trips."""

from __future__ import annotations

import copy
import json

import pytest

from amf import AmfError
from amf import manifest as mf
from amf.manifest import Manifest, Member

GOOD = {
    "schema": "amf-ensemble",
    "version": 1,
    "threshold": 0.4,
    "tta": "flips",
    "trained": True,
    "members": [
        {
            "file": "a.onnx",
            "input_size": 128,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.2, 0.2, 0.2],
            "resize": "bicubic",
            "backbone": "convnext_small",
            "fold": 0,
            "precision": "fp32",
        },
        {
            "file": "sub/b.onnx",
            "input_size": 224,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "resize": "bilinear",
            "backbone": "vit_small",
            "fold": None,  # a member trained on all figures: no fold
            "precision": "fp16",
        },
    ],
    "variants": [],
    "provenance": {"run": "r1", "oof": {"balanced_accuracy": 0.8}},
}


def with_change(path, value):
    """GOOD with one field changed (value None removes it); path like ('members', 0, 'std')."""
    d = copy.deepcopy(GOOD)
    node = d
    for key in path[:-1]:
        node = node[key]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return d


def test_the_good_manifest_validates():
    m = mf.from_dict(copy.deepcopy(GOOD))
    assert m.threshold == 0.4 and m.tta == "flips" and [x.input_size for x in m.members] == [128, 224]


@pytest.mark.parametrize(
    "path,value,field",
    [
        (("schema",), "something-else", "'schema'"),
        (("version",), 2, "version"),
        (("threshold",), 1.5, "'threshold'"),
        (("threshold",), True, "'threshold'"),
        (("threshold",), "0.5", "'threshold'"),
        (("tta",), "rotations", "'tta'"),
        (("members",), [], "'members'"),
        (("members",), None, "'members'"),
        (("members", 0), "a.onnx", "member 0"),
        (("members", 1, "file"), "", "member 1: 'file'"),
        (("members", 0, "input_size"), 4, "member 0: 'input_size'"),
        (("members", 0, "input_size"), 128.0, "member 0: 'input_size'"),
        (("members", 1, "resize"), "area", "member 1: 'resize'"),
        (("members", 0, "mean"), [0.5, 0.5], "member 0: 'mean'"),
        (("members", 0, "mean"), [0.5, float("nan"), 0.5], "member 0: 'mean'"),
        (("members", 1, "std"), [0.2, 0.0, 0.2], "member 1: 'std'"),
        (("members", 0, "fold"), "0", "member 0: 'fold'"),
        (("members", 1, "precision"), "bf16", "member 1: 'precision'"),
        (("members", 0, "precision"), 16, "member 0: 'precision'"),
        (("variants",), [{"file": "merged.onnx", "kind": "merged", "use_on": ["cpu"]}], "'variants' must be empty"),
        (("variants",), [{"file": "merged-fp16.onnx", "kind": "merged-fp16", "use_on": []}], "'variants'"),
        (("variants",), "merged.onnx", "'variants' must be empty"),
        (("variants",), {}, "'variants' must be empty"),
        (("provenance",), ["not", "a", "dict"], "'provenance'"),
        (("trained",), "yes", "'trained'"),
    ],
)
def test_each_error_names_its_field(path, value, field):
    with pytest.raises(AmfError) as e:
        mf.from_dict(with_change(path, value), where="ensemble.json")
    assert field in str(e.value) and "\n" not in str(e.value)


def test_defaults_for_optional_fields():
    d = {k: v for k, v in GOOD.items() if k in ("schema", "version")}
    d["members"] = [{"file": "a.onnx", "input_size": 64, "mean": [0, 0, 0], "std": [1, 1, 1]}]
    m = mf.from_dict(d)
    assert (m.threshold, m.tta, m.trained, m.members[0].resize) == (0.5, "none", True, "bilinear")
    assert (m.members[0].fold, m.members[0].precision) == (None, "fp32")  # a manifest from before fp16 members
    assert mf.from_dict({**d, "variants": None}).to_dict() == m.to_dict()  # no variants, however written


def test_a_declared_variant_is_refused_in_one_line_by_the_container(tmp_path):
    """A manifest that declares a merged or fp16 graph (the variants of version 1, now a benchmark's) is refused, not
    run otherwise than it says: one error line, exit 2, no result file."""
    import subprocess
    import sys

    from conftest import ROOT
    from toy_models import make_toy_ensemble

    model = make_toy_ensemble(tmp_path / "model", members=2).parent
    d = json.loads((model / "ensemble.json").read_text())
    assert d["variants"] == []  # a written manifest keeps the empty list where version 1 had it
    (model / "merged.onnx").write_bytes((model / d["members"][0]["file"]).read_bytes())
    d["variants"] = [{"file": "merged.onnx", "kind": "merged", "use_on": ["cpu"]}]
    (model / "ensemble.json").write_text(json.dumps(d))
    out = tmp_path / "out"
    cmd = [sys.executable, "inference.py", "--input", "test/input", "--output", str(out), "--model", str(model)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1 and err[0].startswith("error: manifest ") and "'variants'" in err[0]
    assert "Traceback" not in done.stderr and not (out / "multiple-mitotic-figure-classification.json").exists()


def write_files(folder, m: Manifest):
    for f in [x.file for x in m.members]:
        (folder / f).parent.mkdir(parents=True, exist_ok=True)
        (folder / f).write_bytes(b"onnx")


def test_save_then_load_round_trips(tmp_path):
    m = mf.from_dict(copy.deepcopy(GOOD))
    write_files(tmp_path, m)
    path = mf.save(m, tmp_path)
    assert json.loads(path.read_text()) == {**GOOD, "threshold": 0.4}
    back = mf.load(tmp_path)
    assert back.to_dict() == m.to_dict()
    assert back.root == tmp_path


def test_member_paths_are_relative_to_the_manifest(tmp_path, monkeypatch):
    m = mf.from_dict(copy.deepcopy(GOOD))
    write_files(tmp_path / "deep", m)
    mf.save(m, tmp_path / "deep")
    monkeypatch.chdir(tmp_path)  # somewhere else: paths still resolve beside ensemble.json
    back = mf.load("deep")
    assert back.path("sub/b.onnx").read_bytes() == b"onnx"


def test_load_names_a_missing_model_file(tmp_path):
    m = mf.from_dict(copy.deepcopy(GOOD))
    write_files(tmp_path, m)
    mf.save(m, tmp_path)
    (tmp_path / "sub" / "b.onnx").unlink()
    with pytest.raises(AmfError, match="model file sub/b.onnx is missing"):
        mf.load(tmp_path)


def test_load_names_a_missing_or_unparsable_manifest(tmp_path):
    with pytest.raises(AmfError, match="no manifest"):
        mf.load(tmp_path)
    (tmp_path / "ensemble.json").write_text("{not json")
    with pytest.raises(AmfError, match="not valid JSON"):
        mf.load(tmp_path)


def test_save_refuses_an_invalid_manifest_and_writes_nothing(tmp_path):
    bad = Manifest(members=[Member("a.onnx", 128, [0.5] * 3, [0.2] * 3)], threshold=2.0)
    with pytest.raises(AmfError, match="'threshold'"):
        mf.save(bad, tmp_path)
    assert not (tmp_path / "ensemble.json").exists()


@pytest.mark.parametrize(
    "file", ["../x/m.onnx", "/etc/passwd", "sub/../../m.onnx", "..\\m.onnx", "C:\\m.onnx", "\\\\host\\m.onnx", ".."]
)
def test_model_files_outside_the_model_folder_are_refused_both_ways(file, tmp_path):
    with pytest.raises(AmfError, match="must be a path inside the model folder"):
        mf.from_dict(with_change(("members", 1, "file"), file))
    m = mf.from_dict(copy.deepcopy(GOOD))
    m.members[1].file = file
    with pytest.raises(AmfError, match="must be a path inside the model folder"):
        mf.save(m, tmp_path)
    assert not (tmp_path / "ensemble.json").exists()


def test_a_symlink_out_of_the_model_folder_is_refused_and_one_inside_is_kept(tmp_path):
    m = mf.from_dict(copy.deepcopy(GOOD))
    write_files(tmp_path / "model", m)
    mf.save(m, tmp_path / "model")
    (tmp_path / "elsewhere.onnx").write_bytes(b"onnx")
    (tmp_path / "model" / "a.onnx").unlink()
    (tmp_path / "model" / "a.onnx").symlink_to(tmp_path / "model" / "sub" / "b.onnx")  # inside: fine
    assert mf.load(tmp_path / "model").members[0].file == "a.onnx"
    (tmp_path / "model" / "a.onnx").unlink()
    (tmp_path / "model" / "a.onnx").symlink_to(tmp_path / "elsewhere.onnx")
    with pytest.raises(AmfError, match="model file a.onnx leads outside the model folder"):
        mf.load(tmp_path / "model")
