"""training.pipeline end to end: a team's own model replaces the shipped one in a copy of the project, and the
project's own checks (the container's test, the model's tests, make demo, do_test_run.sh's comparison) follow it; a
second run trains nothing; a pipeline killed mid-run and run again ends with the files of an uninterrupted one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from compare_output import compare
from conftest import ROOT
from training_layout import make_layout

from amf.manifest import load as load_manifest
from training import config as config_io
from training import ownership

pytestmark = pytest.mark.slow  # trains models, runs the project's checks in a copy of it
THEIRS = {"notes.txt": b"ours\n", "predictions/mine.csv": b"a,b\n"}

FAKE_DOCKER = '''#!{python}
"""A stand-in for docker: `run` of the image runs the copy's inference.py on the mounted /input and /output."""
import subprocess, sys
args = sys.argv[1:]
if args[:1] == ["run"] and "--entrypoint" not in args:
    mounts = dict(reversed(a.rsplit(":", 2)[:2]) for a in args if a.endswith((":/input:ro", ":/output")))
    sys.exit(subprocess.call([{python!r}, {inference!r}, "--input", mounts["/input"], "--output", mounts["/output"]]))
'''


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_") and k not in ("AMF_MODEL_DIR",)}
    return {**env, **extra}


def pipeline(cwd: Path, *args, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(
        [sys.executable, "-m", "training.pipeline", "smoke", "--no-progress", "--device", "cpu", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=1200,  # a hang guard, not a measure
    )
    assert not check or p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def project_copy(dest: Path) -> Path:
    """The project's files (tracked, and untracked ones git does not ignore), as a fresh clone has them; the
    runtime environment linked in when there is one (its stamp kept newer than requirements.txt: no rebuild)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: the project's files are not listed")
    for name in listed.stdout.splitlines():
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    runtime = ROOT / ".venv-runtime"
    if (runtime / "bin" / "python").exists():
        (dest / ".venv-runtime").symlink_to(runtime.resolve())
        for req in ("requirements.txt", "requirements-dev.txt"):
            os.utime(dest / req, (0, 0))
    return dest


@pytest.fixture(scope="module")
def swapped(tmp_path_factory):
    """A copy of the project whose model/ the pipeline replaced with a smoke model trained on generated data."""
    root = tmp_path_factory.mktemp("swap")
    data = make_layout(root / "data", n_slides=8, per_slide=8)
    project = project_copy(root / "project")
    default_expected = json.loads((project / "model" / "expected_output.json").read_text())
    for name, content in THEIRS.items():  # files of the team's own in model/: no manifest or card names them
        (project / "model" / name).write_bytes(content)
    first = pipeline(project, "--data", data, "--runs", root / "runs", "--model-out", "model", "--n-boot", "50")
    return project, root / "runs" / "smoke_recipe", default_expected, first


def test_the_pipeline_writes_a_submission_ready_model_folder(swapped):
    project, run, default_expected, first = swapped
    model = project / "model"
    m = load_manifest(model)
    assert m.trained and [x.backbone for x in m.members] == ["test_convnext"] * 2
    files = {p.name for p in model.iterdir()}
    assert {"fold0.onnx", "fold1.onnx", "expected_output.json", "README.md", "card.json", "oof.csv"} <= files
    # the default model replaced whole: its other members and the predictions its card named went; theirs stayed
    assert not {"fold2.onnx", "fold3.onnx", "fold4.onnx"} & files
    assert ownership.unnamed(model) == sorted(THEIRS)
    assert all((model / name).read_bytes() == content for name, content in THEIRS.items())
    card = json.loads((model / "card.json").read_text())
    assert card["runs"]["recipe"]["run"] == "smoke_recipe" and set(card["runs"]) == {"recipe"}
    assert compare(json.loads((model / "expected_output.json").read_text()), default_expected) != []  # its own
    text = (model / "README.md").read_text()
    assert "\nR=runs\npython -m training.pipeline smoke --data $D --runs $R --name smoke --model-out model" in text
    from training.export.paths import absolute_paths

    for f in model.rglob("*"):  # every file the export and the card wrote: no path of the machine that made them
        if f.suffix in (".json", ".md", ".csv"):
            assert not absolute_paths(f.read_text()) and str(run.parent) not in f.read_text(), f.name
    assert "./do_build.sh" in first.stdout and "./do_test_run.sh" in first.stdout and "./do_save.sh" in first.stdout


def test_the_projects_checks_follow_the_new_model(swapped, tmp_path):
    project = swapped[0]
    tests = [
        "test/test_container.py::test_sample_job_gives_the_expected_output",
        "test/test_container.py::test_organisers_sample_gives_16_valid_entries",
        "test/test_default_model.py",
    ]
    data = swapped[1].parents[1] / "data"  # outside the project: the card names it by name, AMF_DATA says where
    p = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *tests],
        cwd=project,
        capture_output=True,
        text=True,
        env=clean_env(AMF_DATA=str(data)),
    )
    assert p.returncode == 0, p.stdout[-4000:]
    assert "failed" not in p.stdout and " passed" in p.stdout
    skipped = [line for line in p.stdout.splitlines() if "SKIPPED" in line and "test_default_model" in line]
    assert not [line for line in skipped if "is not here" in line], skipped  # the data checks ran on the team's data
    demo = subprocess.run(["make", "demo"], cwd=project, capture_output=True, text=True, env=clean_env())
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    shown = json.loads((project / "out" / "demo" / "multiple-mitotic-figure-classification.json").read_text())
    assert compare(shown, json.loads((project / "model" / "expected_output.json").read_text())) == []
    # do_test_run.sh as the platform runs it, Docker replaced by the copy's inference.py on the same mounts
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = FAKE_DOCKER.format(python=sys.executable, inference=str(project / "inference.py"))
    (bin_dir / "docker").write_text(fake)
    (bin_dir / "docker").chmod(0o755)
    env = clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    run = subprocess.run(["bash", "do_test_run.sh"], cwd=project, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "OK: 16 results match" in run.stdout and "model/expected_output.json" in run.stdout


def test_a_second_run_trains_nothing(swapped):
    project, run, _, _ = swapped
    before = {p: p.stat().st_mtime_ns for p in [*run.rglob("*"), *(project / "model").iterdir()] if p.is_file()}
    again = pipeline(project, "--data", run.parents[1] / "data", "--runs", run.parent, "--model-out", "model")
    steps = [line for line in again.stdout.splitlines() if line.startswith("== pipeline")]
    assert steps[0].startswith("== pipeline plan: 1 training run(s), then the export, the card"), again.stdout
    assert "0 still to train" in again.stdout  # the plan found every fold done
    assert len(steps) == 4 and all(": skipped: " in line for line in steps[1:]), again.stdout
    assert "epoch 1 of" not in again.stdout  # no epoch trained
    assert before == {p: p.stat().st_mtime_ns for p in before}


def test_a_pipeline_killed_mid_run_ends_with_the_files_of_an_uninterrupted_one(tmp_path):
    data = make_layout(tmp_path / "data", n_slides=8, per_slide=16)
    common = ["--data", data, "--set", "train.epochs=3", "--n-boot", "50"]
    pipeline(ROOT, *common, "--runs", tmp_path / "whole", "--model-out", tmp_path / "whole_model")
    cut, started = tmp_path / "cut", time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "training.pipeline", "smoke", "--no-progress", "--device", "cpu", *map(str, common)]
        + ["--runs", str(cut), "--model-out", str(tmp_path / "cut_model")],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=clean_env(),
    )
    first_epoch = cut / "smoke_recipe" / "fold0" / "last.pt"
    while not first_epoch.exists() and proc.poll() is None and time.monotonic() - started < 1200:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # killed after fold 0's first epoch, before the run was pooled
    proc.wait()
    assert first_epoch.exists() and not (cut / "smoke_recipe" / "oof.csv").exists()
    resumed = pipeline(ROOT, *common, "--runs", cut, "--model-out", tmp_path / "cut_model")
    assert "resumed from" in resumed.stdout or "already done" in resumed.stdout
    a, b = tmp_path / "whole" / "smoke_recipe", cut / "smoke_recipe"
    for k in (0, 1):
        wa = torch.load(a / f"fold{k}" / "best.pt", weights_only=True)["state_dict"]
        wb = torch.load(b / f"fold{k}" / "best.pt", weights_only=True)["state_dict"]
        assert all(torch.equal(wa[key], wb[key]) for key in wa), k
    pd.testing.assert_frame_equal(pd.read_csv(a / "oof.csv"), pd.read_csv(b / "oof.csv"))
    assert json.loads((a / "oof_metrics.json").read_text()) == json.loads((b / "oof_metrics.json").read_text())
    for name in ("expected_output.json", "fold0.onnx", "fold1.onnx", "oof.csv"):
        assert (tmp_path / "whole_model" / name).read_bytes() == (tmp_path / "cut_model" / name).read_bytes(), name
    ca, cb = (json.loads((tmp_path / m / "card.json").read_text()) for m in ("whole_model", "cut_model"))
    assert (
        ca["runs"]["recipe"]["oof"] == cb["runs"]["recipe"]["oof"]
        and ca["ensemble"]["threshold"] == cb["ensemble"]["threshold"]
    )


def test_the_plan_names_every_run_its_folds_and_epochs_before_anything_trains(tmp_path):
    """The plan's parts, from the data alone: a --shift run has one fold per held-out scanner whatever
    splits.folds says; the control trains the folds asked; each fold's training steps are what training.train
    will count, and the ETA passes the later runs' to the earlier ones."""
    from training.data import load_table
    from training.pipeline import parser, plan_of, plan_text, stages, work

    data = make_layout(tmp_path / "data", n_slides=8, per_slide=8)  # two scanners
    a = ["smoke", "--data", data, "--runs", tmp_path / "runs", "--model-out", tmp_path / "m", "--shift", "--plain"]
    plan = plan_of(parser().parse_args([*map(str, a), "--plain-folds", "0", "--set", "splits.folds=3"]))
    table = load_table(plan.data, config_io.load("smoke", plan.sets))
    parts = [(step, run, work(plan, table, run, sets, folds)) for step, run, sets, folds in stages(plan)]
    assert [(s, w["kind"], w["folds"], w["of"]) for s, _, w in parts] == [
        ("train", "kfold", [0, 1, 2], 3),
        ("shift", "leave_scanner_out", [0, 1], 2),
        ("plain", "kfold", [0], 3),
    ]
    recipe = parts[0][2]
    batch, epochs = config_io.load("smoke")["train"]["batch_size"], config_io.load("smoke")["train"]["epochs"]
    assert recipe["steps"][0] > 0 and set(recipe["steps"]) == {0, 1, 2}
    assert all(n % epochs == 0 and n // epochs <= len(table) // batch for n in recipe["steps"].values())
    text = plan_text(plan, parts)
    assert "shift " in text and "2 folds, one per held-out Scanner (splits.folds does not apply) x 1 epochs" in text
    assert "folds 0 of 3 x 1 epochs" in text and text.count("none done yet") == 3
