"""training.ownership, the one rule for writing into a folder a command did not create: the pipeline, the export, the
card and the model install, aimed at a folder of the user's own, the data folder, the project root or a run folder,
refuse in one line and leave every file byte-identical; --beside writes beside such files, never over them; an
existing model folder is replaced whole (what its manifest and card named goes, nothing else, nothing outside it);
do_save.sh refuses a model folder holding a file its manifest and card do not name, with the standard library
alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from test_card import export_of, make_run, table
from toy_models import make_toy_ensemble
from training_layout import make_layout

from amf import AmfError
from amf import manifest as manifest_io
from training import ownership
from training import pipeline as pipeline_cli
from training.card import __main__ as card_cli
from training.export import __main__ as export_cli
from training.export import fingerprint
from training.export import install as install_cli
from training.ownership import CARD_JSON, MODEL, README

USERS = {"README.md": b"# my project\n", "oof.csv": b"mine,1\n", "predictions/mine.csv": b"a,b\n", "fold7.onnx": b"x"}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {n: (folder / n).read_bytes() for n in ownership.files_under(folder, temporaries=True)}


def write_files(folder: Path, files: dict) -> Path:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def model_with_card(folder: Path, members: int = 2, seed: int = 0, reported=("loso",)) -> Path:
    """A toy model folder with an expected output, a fingerprint file and a card naming its predictions/ files."""
    make_toy_ensemble(folder, members=members, seed=seed)
    predictions = {f"predictions/{name}.csv": f"runs/{name}" for name in reported}
    card = {"card_version": 2, "runs": {}, "ensemble": {}, "predictions": predictions}
    write_files(folder, {name: f"{seed}\n".encode() for name in [*predictions, "expected_output.json", "oof.csv"]})
    write_files(folder, {CARD_JSON: json.dumps(card).encode(), README: b"# the card\n", fingerprint.FILE: b"fp"})
    return folder


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """The folders no command may write into unasked: the user's own, a data folder, the project root (its
    top-level files, copied), a finished run folder; and a recipe run with a toy export standing in."""
    base = tmp_path_factory.mktemp("places")
    data = make_layout(base / "data", n_slides=4, per_slide=4)
    project = base / "project"
    project.mkdir()
    for p in ROOT.iterdir():
        if p.is_file():
            shutil.copy2(p, project / p.name)
    recipe = make_run(base / "recipe", table(), 0.6)
    export_of(recipe, base / "exported")
    return {
        "user": write_files(base / "user", USERS),
        "data": data,
        "project": project,
        "run": make_run(base / "run", table(), 0.4),
        "recipe": recipe,
        "base": base,
    }


def refuses(capsys, code: int, folder: Path, before: dict, *shown) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert snapshot(folder) == before  # nothing written, nothing removed
    assert all(s in err[0] for s in shown), err[0]
    return err[0]


COMMANDS = ["pipeline", "export", "card", "install"]


def run_command(command: str, target: Path, places, *extra) -> int:
    base = places["base"]
    if command == "pipeline":
        argv = ["smoke", "--data", str(places["data"]), "--runs", str(base / "runs"), "--model-out", str(target)]
        return pipeline_cli.main([*argv, "--device", "cpu", "--no-progress", *extra])
    if command == "export":
        return export_cli.main([str(places["recipe"]), "--out", str(target), *extra])
    if command == "card":
        return card_cli.main(["--model", str(target), "--recipe", str(places["recipe"]), "--n-boot", "20", *extra])
    source = base / "source"
    if not source.exists():
        model_with_card(source)
    return install_cli.main([str(source), "--to", str(target), *extra])


@pytest.mark.parametrize("place", ["user", "data", "project", "run"])
@pytest.mark.parametrize("command", COMMANDS)
def test_no_command_writes_into_a_folder_that_is_not_the_toolkits(places, capsys, command, place):
    target = places[place]
    before = snapshot(target)
    code = run_command(command, target, places)
    first = ownership.entries(target)[0]
    line = refuses(capsys, code, target, before, str(target), *([first] if command != "card" else []))
    if command == "card":  # the card writes only into a model folder holding the recipe's export
        assert "no manifest" in line
    else:
        assert "is not empty and is not the toolkit's model folder" in line and "--beside" in line
    assert not (places["base"] / "runs").exists()  # the pipeline refused before it trained anything


@pytest.mark.parametrize("place", ["user", "project", "run"])
@pytest.mark.parametrize("command", ["pipeline", "install"])
def test_beside_never_writes_over_a_users_file(places, capsys, command, place):
    """The pipeline's card and the installed card would write README.md and oof.csv: each of these folders holds
    one of the user's, so even --beside refuses, before anything is done."""
    target = places[place]
    before = snapshot(target)
    code = run_command(command, target, places, "--beside")
    way = [n for n in ("README.md", "oof.csv") if n in before]
    line = refuses(capsys, code, target, before, *way)
    assert "which the toolkit did not write" in line and "never written over" in line


@pytest.mark.parametrize("place", ["user", "data", "project", "run"])
def test_beside_installs_a_model_beside_the_users_files(places, tmp_path, place, capsys):
    target = tmp_path / place
    shutil.copytree(places[place], target, symlinks=True)
    before = snapshot(target)
    source = make_toy_ensemble(tmp_path / "new", members=2).parent
    assert install_cli.main([str(source), "--to", str(target), "--beside"]) == 0
    after = snapshot(target)
    assert {n: after[n] for n in before} == before  # every file of theirs byte-identical
    assert set(after) - set(before) == {"ensemble.json", "toy0.onnx", "toy1.onnx"}
    manifest_io.load(target)
    # now a model folder: a second install replaces the model, still beside (and never over) their files
    newer = make_toy_ensemble(tmp_path / "newer", members=1, seed=3).parent
    assert install_cli.main([str(newer), "--to", str(target)]) == 0
    after = snapshot(target)
    assert {n: after[n] for n in before} == before and set(after) - set(before) == {"ensemble.json", "toy0.onnx"}


def test_the_card_never_writes_over_a_readme_no_card_names(places, tmp_path, capsys):
    model = export_of(places["recipe"], tmp_path / "model")
    write_files(model, {README: b"# our own notes\n"})
    before = snapshot(model)
    code = card_cli.main(["--model", str(model), "--recipe", str(places["recipe"]), "--n-boot", "20"])
    refuses(capsys, code, model, before, "README.md", "which the toolkit did not write")
    (model / README).unlink()
    assert card_cli.main(["--model", str(model), "--recipe", str(places["recipe"]), "--n-boot", "20"]) == 0
    assert ownership.unnamed(model) == []  # the card wrote its files, and names each


def test_an_existing_model_folder_is_replaced_whole_and_nothing_else_goes(tmp_path, capsys):
    model = model_with_card(tmp_path / "model", members=3, reported=("loso", "plain"))
    theirs = {"notes.txt": b"ours", "predictions/mine.csv": b"a,b\n", "fold7.onnx": b"x", "sub/keep.bin": b"k"}
    write_files(model, theirs)
    source = model_with_card(tmp_path / "source", members=1, seed=4, reported=("recipe_tta_d4",))
    write_files(source, {"scratch.txt": b"not the model's"})
    new = snapshot(source)
    assert install_cli.main([str(source), "--to", str(model)]) == 0
    out = capsys.readouterr().out
    assert "left out scratch.txt" in out and "removed the earlier" in out
    after = snapshot(model)
    assert {n: after[n] for n in theirs} == theirs
    assert {n: after[n] for n in new if n != "scratch.txt"} == {n: b for n, b in new.items() if n != "scratch.txt"}
    assert set(after) == set(theirs) | set(new) - {"scratch.txt"}  # toy1, toy2, loso.csv, plain.csv went
    assert ownership.unnamed(model) == sorted(theirs)  # what do_save.sh would refuse: theirs only
    assert snapshot(source) == new  # the source is copied, not moved


def test_the_export_replaces_the_old_model_and_its_card_but_not_their_files(tmp_path):
    """training.export's install: the old card goes (training.card writes this model's), old members the new model
    lacks go, the expected output is replaced; files no manifest or card named stay, predictions/ ones included."""
    from training.export import folder

    model = model_with_card(tmp_path / "model", members=3, reported=("loso",))
    theirs = write_files(tmp_path / "theirs", {"predictions/mine.csv": b"a\n", "notes.md": b"n"})
    shutil.copytree(theirs, model, dirs_exist_ok=True)
    new = make_toy_ensemble(tmp_path / "new", members=1, seed=9).parent
    write_files(new, {"expected_output.json": b"[]\n"})
    folder.install(new, model, log=lambda *a: None)
    assert sorted(ownership.files_under(model)) == sorted(
        ["ensemble.json", "expected_output.json", "toy0.onnx", "predictions/mine.csv", "notes.md"]
    )
    after = snapshot(model)
    assert {n: after[n] for n in snapshot(theirs)} == snapshot(theirs)


def test_names_leading_outside_the_folder_are_never_the_toolkits(tmp_path):
    outside = write_files(tmp_path / "outside", {"x.onnx": b"outside", "p/x.csv": b"outside"})
    model = make_toy_ensemble(tmp_path / "model", members=1).parent
    m = json.loads((model / "ensemble.json").read_text())
    m["members"] += [{"file": "../outside/x.onnx"}, {"file": str(outside / "x.onnx")}, {"file": "link.onnx"}]
    (model / "ensemble.json").write_text(json.dumps(m))
    (model / "link.onnx").symlink_to(outside / "x.onnx")
    card = {"runs": {}, "ensemble": {}, "predictions": {"../outside/p/x.csv": "r", "pred/x.csv": "r"}}
    write_files(model, {CARD_JSON: json.dumps(card).encode()})
    (model / "pred").symlink_to(outside / "p")
    mine = ownership.owned(model, MODEL)
    assert "toy0.onnx" in mine and not {"../outside/x.onnx", str(outside / "x.onnx"), "link.onnx", "pred/x.csv"} & mine
    before = snapshot(outside)
    new = make_toy_ensemble(tmp_path / "new", members=1, seed=2).parent
    ownership.install(new, model, MODEL)
    assert snapshot(outside) == before and (model / "link.onnx").is_symlink()
    with pytest.raises(AmfError, match=r"holds pred, which the toolkit did not write"):
        ownership.claim(model, ["pred/x.csv"], MODEL)  # a link where a folder would be written: it may lead out


def test_a_killed_commands_temporaries_do_not_make_a_folder_the_users(tmp_path):
    folder = tmp_path / "out"
    write_files(folder, {".export.123.abcd.tmp/fold0.onnx": b"half", ".ensemble.json.123.x.tmp": b"half"})
    ownership.claim(folder, ["ensemble.json"], MODEL)  # no refusal: nothing there is anyone's
    write_files(folder, {".notes": b"theirs"})
    with pytest.raises(AmfError, match=r"not empty .*: \.notes: choose"):
        ownership.claim(folder, ["ensemble.json"], MODEL)


def test_the_record_names_agree_with_their_writers():
    assert ownership.MANIFEST == manifest_io.MANIFEST_NAME and ownership.FINGERPRINTS == fingerprint.FILE


FAKE_DOCKER = """#!/bin/sh
echo "$@" >> "{log}"
"""


def test_do_save_refuses_a_file_the_manifest_and_card_do_not_name(tmp_path):
    """do_save.sh checks model/ before it builds anything, with any python3 (the standard library alone)."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("do_save.sh", "do_save_model.sh", "do_build.sh", "amf", "training"):
        (project / name).symlink_to(ROOT / name)
    model = model_with_card(project / "model")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "docker.log"
    (bin_dir / "docker").write_text(FAKE_DOCKER.format(log=log))
    (bin_dir / "docker").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    write_files(model, {"predictions/old.csv": b"stale", "notes.txt": b"n"})
    p = subprocess.run(["bash", str(project / "do_save.sh")], capture_output=True, text=True, env=env)
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(err) == 1 and "notes.txt, predictions/old.csv" in err[0], p.stderr
    assert "make install-model FROM=DIR" in err[0] and not log.exists()  # refused before the build
    for name in ("notes.txt", "predictions/old.csv"):
        (model / name).unlink()
    p = subprocess.run(["bash", str(project / "do_save.sh")], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    assert [c.split()[0] for c in log.read_text().splitlines()][:2] == ["info", "build"]  # asks for an engine first
    assert list((project / "out").glob("model_*.tar.gz"))
    # no site-packages at all: the check is the standard library's
    p = subprocess.run([sys.executable, "-S", "-m", "training.ownership", "model"], cwd=ROOT, capture_output=True)
    assert p.returncode == 0, p.stderr
