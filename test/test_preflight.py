"""The preflight (evaluation/preflight.py): a model that says what its card says passes every line; a model folder
whose threshold was edited far off, whose members are fed another normalisation, or one of whose members gives
P(normal) fails on the line that says so; the shipped model passes on its own training set (a --limit sample);
do_save.sh runs it first where there is data, and says so in one line where there is none.

The toy model is made by hand so that it discriminates and its provenance is true: generated patches in the official
layout (test/training_layout.py's table) whose atypical figures carry a darker central disc; members of onnx.helper
that read that darkness (global average pool, one linear layer); a splits.csv made by training's splitter on nine of
the twelve slides, the members' out-of-fold predictions on them through onnxruntime, their metrics and threshold by
training.results.oof, the fingerprints of those nine slides' figures; the other three slides are figures the model
did not train on, for the ensemble's lines."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED, need
from PIL import Image
from training_layout import make_layout

from amf.manifest import Manifest, Member
from amf.manifest import load as load_manifest
from amf.manifest import save as save_manifest
from evaluation import __main__ as cli
from evaluation import preflight
from training.data import OFFICIAL_CSV, OFFICIAL_IMAGES

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
BACKGROUND, DARK = np.array([225.0, 170.0, 205.0]), np.array([70.0, 40.0, 110.0])
FOLDS, SEEN_SLIDES, N_BOOT = 3, 9, 200


def disc_patch(rng, darkness: float, size: int = 128) -> np.ndarray:
    """A patch with a central disc of DARKNESS (0: background, 1: the dark stain) over noise."""
    yy, xx = np.mgrid[:size, :size] - size / 2
    img = np.broadcast_to(BACKGROUND, (size, size, 3)).copy() + rng.normal(0, 6, (size, size, 3))
    img[yy**2 + xx**2 < 20**2] = BACKGROUND * (1 - darkness) + DARK * darkness
    return np.clip(img, 0, 255).astype(np.uint8)


def member_graph(path: Path, weight: float, bias: float, negate: bool = False) -> Path:
    """logit = weight * (sum of the normalised channels' means) + bias; NEGATE: minus that (P(normal))."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["z" if negate else "logit"], transB=1),
    ] + ([helper.make_node("Neg", ["z"], ["logit"])] if negate else [])
    weights = [np.full((1, 3), weight, np.float32), np.array([bias], np.float32)]
    graph = helper.make_graph(
        nodes,
        "preflight_toy",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(a, n) for a, n in zip(weights, ("fc", "fcb"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by onnxruntime 1.22
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def negated(path: Path) -> None:
    """The member graph at PATH with its logit negated (onnx.helper: a Neg node after the old output)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    out = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [f"{o}_before" if o == out else o for o in node.output]
    model.graph.node.append(helper.make_node("Neg", [f"{out}_before"], [out]))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """(the data folder, the run folder, a model folder that says what its card says)."""
    import onnxruntime as ort

    from amf.ensemble import sigmoid
    from amf.preprocess import prepare
    from training.data import decode, read_table
    from training.export import fingerprint
    from training.export.folder import write_expected_output
    from training.results.oof import compute
    from training.rundir import RunDir
    from training.splits import make_splits

    root = tmp_path_factory.mktemp("preflight")
    data = make_layout(root / "data", n_slides=12, per_slide=9, seed=0)
    rng = np.random.default_rng(1)
    labels = pd.read_csv(data / OFFICIAL_CSV)
    for name, vote in zip(labels["image_id"], labels["majority"]):  # the figures redrawn: darker when atypical
        darkness = rng.uniform(0.35, 1.0) if vote == "AMF" else rng.uniform(0.0, 0.65)
        Image.fromarray(disc_patch(rng, darkness)).save(data / OFFICIAL_IMAGES / name)

    table = read_table(data / OFFICIAL_CSV, data / OFFICIAL_IMAGES, "official")
    slides = sorted(table["slide"].unique())
    seen = table[table["slide"].isin(slides[:SEEN_SLIDES])].reset_index(drop=True)
    run = RunDir(root / "run")
    run.path.mkdir()
    splits = make_splits(seen, "kfold", folds=FOLDS, seed=0)
    run.write_splits(splits)

    # the weight that spans 8 logits from a background disc to a dark one, centred on darkness 0.5
    ends = prepare([disc_patch(np.random.default_rng(0), d) for d in (0.0, 1.0)], 128, MEAN, STD)
    g0, g1 = ends.mean(axis=(2, 3)).sum(axis=1)
    weight = -8 / (g0 - g1)
    model = root / "model"
    model.mkdir()
    members, oof = [], []
    for k in range(FOLDS):
        w = weight * (1 + 0.05 * k)  # members a little apart, each centred on darkness 0.5
        file = member_graph(model / f"fold{k}.onnx", w, -w * (g0 + g1) / 2)
        members.append(Member(file.name, 128, MEAN, STD, "bilinear", "toy-disc", k))
        rows = splits[splits["fold"] == k]
        x = prepare([decode(Path(p)) for p in rows["path"]], 128, MEAN, STD)
        sess = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        p = sigmoid(sess.run(None, {"input": x})[0].reshape(-1))
        oof.append(rows[["image_id", "slide", "fold", "label"]].assign(probability=p))
    oof = pd.concat(oof, ignore_index=True)
    result = compute(oof, n_boot=N_BOOT, seed=0)
    fingerprint.write(model / fingerprint.FILE, fingerprint.digests(decode(Path(p)) for p in splits["path"]))
    provenance = {
        "note": "hand-made by test/test_preflight.py: members that read a disc's darkness",
        "oof_metrics": result,
        "threshold_predictions": {"run": "run", "tta": "d4", "rule": "oof"},
        "training_figures": fingerprint.describe(model / fingerprint.FILE),
    }
    save_manifest(Manifest(members, result["threshold"], "d4", True, provenance), model)
    write_expected_output(model)
    oof[["image_id", "slide", "fold", "probability"]].to_csv(model / "oof.csv", index=False)
    (model / "card.json").write_text(json.dumps({"runs": {}, "ensemble": {}, "note": "hand-made"}) + "\n")
    (model / "README.md").write_text("A hand-made model for test_preflight.py.\n")
    return data, run.path, model


def copy_of(model: Path, where: Path, edit=None) -> Path:
    """MODEL copied to WHERE, its manifest changed by EDIT (a function of the manifest's dict)."""
    shutil.copytree(model, where)
    if edit is not None:
        path = where / "ensemble.json"
        d = json.loads(path.read_text())
        edit(d)
        path.write_text(json.dumps(d, indent=2) + "\n")
        load_manifest(where)  # still a manifest the container reads
    return where


def run_preflight(capsys, model: Path, data: Path, *more: str) -> tuple[int, dict[str, list[str]]]:
    """The command line's exit status and its lines by status (PASS, FAIL, SKIP, note, summary)."""
    code = cli.main(["preflight", str(model), "--data", str(data), "--in-process", "--n-boot", str(N_BOOT), *more])
    out = capsys.readouterr().out.splitlines()
    lines = {s: [ln for ln in out if ln.startswith(s)] for s in ("PASS", "FAIL", "SKIP", "note", "preflight ")}
    return code, lines


def failing(lines: dict, what: str) -> list[str]:
    return [ln for ln in lines["FAIL"] if what in ln]


def test_a_model_that_says_what_its_card_says_passes_every_line(toy, capsys, tmp_path):
    data, _, model = toy
    code, lines = run_preflight(capsys, model, data, "--out", str(tmp_path / "report"))
    assert code == 0 and not lines["FAIL"] and not lines["SKIP"], lines
    passed = "\n".join(lines["PASS"])
    for k in range(FOLDS):
        assert f"member fold{k}.onnx alone on its fold {k}: ROC AUC" in passed
    assert "balanced accuracy at the shipped threshold" in passed and "both d4: like with like" in passed
    assert "ensemble on DATA's figures it did not train on: ROC AUC" in passed  # the three unseen slides
    assert all(w in passed for w in ("model folder:", "absolute paths:", "size:", "GPU memory:", "seconds per stack:"))
    assert lines["preflight "][-1].startswith("preflight PASS")
    record = json.loads((tmp_path / "report" / "preflight.json").read_text())
    assert record["counts"] == {"PASS": len(lines["PASS"]), "FAIL": 0, "SKIP": 0}
    predictions = pd.read_csv(tmp_path / "report" / "predictions.csv")
    assert len(predictions) == 108  # 81 held-out figures, each by its member, and the 27 unseen by the ensemble


def test_the_held_out_folds_of_the_run_are_those_of_oof_csv(toy, capsys):
    data, run, model = toy
    code, lines = run_preflight(capsys, model, data, "--run", str(run))
    assert code == 0 and not lines["FAIL"], lines


def test_a_threshold_edited_far_off_fails_on_the_share_of_atypical_calls(toy, capsys, tmp_path):
    data, _, model = toy
    for threshold in (0.98, 0.02):
        edited = copy_of(model, tmp_path / str(threshold), lambda d, t=threshold: d.update(threshold=t))
        code, lines = run_preflight(capsys, edited, data)
        assert code == 1, lines
        (calls,) = failing(lines, "members pooled on their held-out folds: atypical calls")
        assert f"at the threshold {threshold:.3f}" in calls and "is the threshold the shipped one?" in calls
        (ba,) = failing(lines, "balanced accuracy at the shipped threshold")
        assert "not the shipped one" in ba  # the recorded figure was measured at another threshold
        assert not failing(lines, "ROC AUC ")  # the ranking is the same: only the calls moved


def test_members_fed_another_normalisation_fail_against_the_recorded_figures(toy, capsys, tmp_path):
    data, _, model = toy

    def unnormalised(d):
        for m in d["members"]:
            m["mean"], m["std"] = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]

    code, lines = run_preflight(capsys, copy_of(model, tmp_path / "m", unnormalised), data)
    assert code == 1, lines
    (ba,) = failing(lines, "balanced accuracy at the shipped threshold")
    assert "outside the recorded interval" in ba and lines["preflight "][-1].startswith("preflight FAIL")


def test_a_member_that_gives_p_normal_is_named_inverted(toy, capsys, tmp_path):
    data, _, model = toy
    inverted = copy_of(model, tmp_path / "m")
    negated(inverted / "fold1.onnx")
    code, lines = run_preflight(capsys, inverted, data)
    assert code == 1, lines
    (line,) = failing(lines, "member fold1.onnx")
    assert "inverted confidence? the container's confidence must be P(atypical)" in line
    assert not failing(lines, "member fold0.onnx") and not failing(lines, "member fold2.onnx")


def test_the_ensemble_on_its_own_training_figures_says_so_and_a_member_without_a_fold_is_skipped(toy, capsys, tmp_path):
    data, _, model = toy
    seen = tmp_path / "seen"  # the data folder less the three slides the model did not train on
    shutil.copytree(data, seen)
    labels = pd.read_csv(seen / OFFICIAL_CSV)
    keep = labels["filename"].isin(sorted(labels["filename"].unique())[:SEEN_SLIDES])
    labels[keep].to_csv(seen / OFFICIAL_CSV, index=False)
    no_fold = copy_of(model, tmp_path / "m", lambda d: d["members"][2].update(fold=None))
    code, lines = run_preflight(capsys, no_fold, seen)
    assert code == 0, lines
    skipped = "\n".join(lines["SKIP"])
    assert "member fold2.onnx alone: it names no held-out fold" in skipped
    assert "the model trained on all 81 figures of DATA" in skipped and "nothing left to check it on" in skipped
    assert "the ensemble timed on" in "\n".join(lines["PASS"])


def test_without_the_image_runtime_the_jobs_run_in_process_and_say_so(toy, capsys, monkeypatch):
    data, _, model = toy
    monkeypatch.setattr(preflight, "RUNTIME_PYTHON", Path("/nonexistent/.venv-runtime/bin/python"))
    code = cli.main(["preflight", str(model), "--data", str(data), "--n-boot", "50", "--limit", "9"])
    out = capsys.readouterr().out
    assert "note  the jobs run in-process: no .venv-runtime here (make runtime builds it)" in out
    assert code in (0, 1)  # nine figures a fold are too few for every interval: the note is what is checked


def test_a_model_folder_with_a_stray_file_or_an_absolute_path_fails(toy, tmp_path):
    _, _, model = toy
    stray = copy_of(model, tmp_path / "m")
    (stray / "notes.txt").write_text("trained on /home/me/data/set\n")
    (stray / "README.md").unlink()  # the card names it
    checks = {c.what: c for c in preflight.folder_checks(stray, load_manifest(stray))}
    assert checks["model folder"].status == "FAIL" and "notes.txt" in checks["model folder"].figure
    assert (
        checks["absolute paths"].status == "FAIL" and "notes.txt: /home/me/data/set" in checks["absolute paths"].figure
    )
    (stray / "notes.txt").unlink()
    checks = {c.what: c for c in preflight.folder_checks(stray, load_manifest(stray))}
    assert checks["model folder"].status == "FAIL" and "lacks what ensemble.json and card.json name (README.md)" in (
        checks["model folder"].figure
    )
    assert [c.status for w, c in checks.items() if w != "model folder"] == ["PASS"] * 3  # paths, size, GPU


@pytest.mark.parametrize(
    "argv, message",
    [
        (["preflight", "model"], "the following arguments are required: --data"),
        (["preflight", "model", "--data", "nowhere"], "nowhere is not a data folder in a known layout"),
        (["preflight", "nowhere", "--data", "."], "manifest"),
        (["preflight", "model", "--data", ".", "--limit", "0"], "--limit"),
    ],
)
def test_bad_input_is_one_line(argv, message, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own usage errors, one line too (amf.cli)
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


@pytest.mark.slow  # five members on 120 figures each, and DATA's fingerprints: about a minute on 2 cores
def test_the_shipped_model_passes_on_its_own_training_set(capsys):
    data = need(SHARED / "amibr-train")
    code, lines = run_preflight(capsys, ROOT / "model", data, "--limit", "120")
    assert code == 0, lines
    skipped = "\n".join(lines["SKIP"])
    assert "the model trained on all 120 figures of DATA" in skipped  # not a failure: said on one line
    assert "both d4: like with like" in "\n".join(lines["PASS"])


FAKE = """#!/bin/sh
echo "$(basename "$0") $*" >> "{log}"
{body}
"""


@pytest.mark.parametrize(
    "data, make_status, said, builds",
    [
        (None, 0, "=+= No preflight: no labelled data here", True),
        ("", 0, "=+= No preflight: PREFLIGHT_DATA is empty", True),
        ("{tmp}/nowhere", 0, "error: PREFLIGHT_DATA={tmp}/nowhere is not a folder", False),
        ("{tmp}/data", 2, "error: the preflight did not pass", False),
        ("{tmp}/data", 0, "=+= Preflight of model/ on {tmp}/data", True),
    ],
)
def test_do_save_runs_the_preflight_first_where_there_is_data(toy, tmp_path, data, make_status, said, builds):
    """do_save.sh: after the ownership check, make preflight on PREFLIGHT_DATA (a fake make records the call); a
    preflight that does not pass stops it before the build; no data is one line, and it goes on to the build (which
    stops here: the fake docker has no engine)."""
    import os
    import subprocess

    _, _, model = toy
    project = tmp_path / "project"
    project.mkdir()
    for name in ("do_save.sh", "do_save_model.sh", "do_build.sh", "amf", "training"):
        (project / name).symlink_to(ROOT / name)
    shutil.copytree(model, project / "model")
    (tmp_path / "data").mkdir()
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for tool, body in (("make", f"exit {make_status}"), ("docker", "exit 1")):
        (bin_dir / tool).write_text(FAKE.format(log=log, body=body))
        (bin_dir / tool).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PREFLIGHT_DATA"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    if data is not None:
        env["PREFLIGHT_DATA"] = data.format(tmp=tmp_path)
    p = subprocess.run(["bash", str(project / "do_save.sh")], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert p.returncode == 2 and said.format(tmp=tmp_path) in p.stdout + p.stderr, p.stdout + p.stderr
    calls = log.read_text().splitlines() if log.exists() else []
    made = [c for c in calls if c.startswith("make ")]
    ran = data and "nowhere" not in data
    assert made == (
        [f"make --no-print-directory -C {project} preflight MODEL=model DATA={tmp_path / 'data'}"] if ran else []
    )
    assert ("docker info" in calls) == builds
