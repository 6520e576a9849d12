"""Hostile input on the training side (python -m training.train, training.export): every damaged dataset, config,
run folder and checkpoint, and a second process on one fold, ends in one `error:` line (exit 2, no traceback, no
run folder written where the input was refused first) or in a valid result; no code runs from a checkpoint, no
image outside the data folder is read, and memory stays bounded (patch side, table size, config size).
The tests that damage a trained run folder, and two real trainings of one fold, train: marked slow."""

from __future__ import annotations

import ast
import json
import os
import pickle
import shutil
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT
from test_run_dir import hand_made_run
from training_layout import make_layout

from amf import AmfError
from training import config as config_io
from training.data import MAX_TABLE_BYTES, OFFICIAL_CSV, OFFICIAL_IMAGES, decode
from training.export import __main__ as export
from training.rundir import RunDir, load_checkpoint, save_atomic
from training.train import __main__ as train

SMALL = ["--set", "data.input_size=32", "train.batch_size=8"]


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """The generated official layout (64 figures on 8 slides), read-only to the tests: each copies what it damages."""
    return make_layout(tmp_path_factory.mktemp("layout") / "data")


def damaged_copy(layout, tmp_path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(layout, data)
    return data


def train_main(data, out, *flags, sets=()) -> int:
    args = ["--config", "smoke", "--data", data, "--out", out, *SMALL, *sets, "--device", "cpu", "--no-progress"]
    return train.main([str(a) for a in [*args, *flags]])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err[-3000:]
    assert err.startswith("error: "), err
    return err


class Marker:
    """Unpickling this calls Path.touch(MARKER): what a booby-trapped checkpoint does (any callable would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# ---- 1. no code runs from a checkpoint ------------------------------------------------------------------


def booby_trapped(path: Path, marker: Path, **content) -> None:
    torch.save({**content, "payload": Marker(marker)}, path)
    assert not marker.exists()


def test_a_last_pt_that_would_run_code_is_refused_on_resume_and_runs_nothing(layout, tmp_path, capsys):
    marker = tmp_path / "marker"
    run = RunDir(tmp_path / "run")
    run.fold(0).path.mkdir(parents=True)
    booby_trapped(run.fold(0).last, marker, model={}, epoch=0)
    assert train_main(layout, run, "--fold", "0") == 2
    err = one_error_line(capsys)
    assert str(run.fold(0).last) in err and "refused" in err and "--restart" in err
    assert not marker.exists()
    assert not run.fold(0).best.exists()  # nothing trained on top of it


def test_a_best_pt_that_would_run_code_is_refused_at_export_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "marker"
    run = hand_made_run(tmp_path / "run")
    booby_trapped(run.fold(0).best, marker, state_dict={})
    assert export.main([str(run), "--out", str(tmp_path / "model")]) == 2
    err = one_error_line(capsys)
    assert str(run.fold(0).best) in err and "refused" in err and "--fold 0 --restart" in err
    assert not marker.exists() and not (tmp_path / "model").exists()


def test_checkpoints_are_saved_plain_and_old_numpy_ones_still_load(tmp_path):
    state = {"best": np.float64(-np.inf), "history": [{"val_auc": np.float64(0.5), "best": np.bool_(True)}]}
    save_atomic(state, tmp_path / "last.pt")
    back = torch.load(tmp_path / "last.pt", weights_only=True)  # torch's safe set alone, no allowlist
    assert back == {"best": float("-inf"), "history": [{"val_auc": 0.5, "best": True}]}
    assert type(back["best"]) is float and type(back["history"][0]["best"]) is bool
    torch.save({"state_dict": {}, **state}, tmp_path / "old.pt")  # a run trained before checkpoints were plain
    old = load_checkpoint(tmp_path / "old.pt", "weights", ("state_dict",), "retrain")
    assert old["best"] == -np.inf and old["history"][0]["val_auc"] == 0.5


def project_python_files() -> list[Path]:
    return sorted(
        [*ROOT.glob("*.py"), *(p for d in ("amf", "training", "bench", "test") for p in (ROOT / d).rglob("*.py"))]
    )


def torch_load_calls():
    """Every torch.load(...) call in the project's Python files: (file, line, its weights_only keyword or None)."""
    for path in project_python_files():
        rel = path.relative_to(ROOT)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            func = getattr(node, "func", None)
            is_load = isinstance(node, ast.Call) and isinstance(func, ast.Attribute) and func.attr == "load"
            if is_load and isinstance(func.value, ast.Name) and func.value.id == "torch":
                kw = {k.arg: k.value for k in node.keywords}.get("weights_only")
                yield rel, node.lineno, kw.value if isinstance(kw, ast.Constant) else None


def test_every_torch_load_in_the_project_uses_the_safe_unpickler():
    calls = list(torch_load_calls())
    assert any(rel == Path("training/rundir.py") for rel, _, _ in calls)  # the search finds the run folder's reader
    unsafe = [f"{rel}:{line}" for rel, line, safe in calls if safe is not True]
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"
    text = "\n".join(p.read_text() for p in project_python_files())
    assert "weights_only" + "=False" not in text


# ---- 2. no image path leaves the data folder ------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../outside/secret.png", "{abs}", "link.png", "sub/../../../outside/secret.png"])
def test_an_image_id_outside_the_image_folder_is_refused(layout, tmp_path, capsys, name):
    data = damaged_copy(layout, tmp_path)
    secret = tmp_path / "outside" / "secret.png"
    secret.parent.mkdir()
    shutil.copy(data / OFFICIAL_IMAGES / "1.png", secret)
    (data / OFFICIAL_IMAGES / "link.png").symlink_to(secret)
    table = pd.read_csv(data / OFFICIAL_CSV, dtype=str)
    table.loc[0, "image_id"] = name.format(abs=secret)
    table.to_csv(data / OFFICIAL_CSV, index=False)
    assert train_main(data, tmp_path / "run") == 2
    assert "outside the image folder" in one_error_line(capsys)
    assert not (tmp_path / "run" / "splits.csv").exists()


# ---- 3. malformed tables and images ---------------------------------------------------------------------

TABLES = {  # name -> (bytes of the official CSV, or None: a patch, a word of the error line)
    "header only": (b"image_id,filename,majority\n", "has no rows"),
    "zero bytes": (b"", "is empty"),
    "cp1252": ("image_id,filename,majority,Scanner\n1.png,000.tiff,AMF,Caf\xe9\n".encode("cp1252"), "not UTF-8"),
    "not a table": (b'"unclosed,quote\n1,2\n', "not a CSV table"),
    "no image_id": (b"image_id,filename,majority\n,000.tiff,AMF\n", "without image_id"),
    "over the cap": (None, "larger than"),
    "a name of 5,000 characters": (b"image_id,filename,majority\n" + b"a" * 5000 + b",000.tiff,AMF\n", "missing: aaa"),
}


@pytest.mark.parametrize("case", list(TABLES))
def test_a_malformed_table_is_one_line_naming_it(layout, tmp_path, capsys, case):
    data = damaged_copy(layout, tmp_path)
    content, word = TABLES[case]
    if content is None:  # a sparse file just over the cap: refused after reading no more than the cap
        with open(data / OFFICIAL_CSV, "r+b") as f:
            f.truncate(MAX_TABLE_BYTES + 1)
    else:
        (data / OFFICIAL_CSV).write_bytes(content)
    assert train_main(data, tmp_path / "run") == 2
    err = one_error_line(capsys)
    assert word in err and (OFFICIAL_CSV in err or "missing" in word) and len(err) < 1000
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("preload", ["true", "false"])
def test_an_unreadable_png_is_one_line_with_or_without_preloading(layout, tmp_path, capsys, preload):
    data = damaged_copy(layout, tmp_path)
    (data / OFFICIAL_IMAGES / "5.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert train_main(data, tmp_path / "run", sets=["data.preload=" + preload, "data.num_workers=1"]) == 2
    err = one_error_line(capsys)
    assert "5.png (unreadable" in err and "--skip-missing" in err


def test_missing_images_are_counted_and_named_before_anything_is_decoded(layout, tmp_path, capsys, monkeypatch):
    data = damaged_copy(layout, tmp_path)
    table = pd.read_csv(data / OFFICIAL_CSV, dtype=str)
    many = pd.concat([table] * 40, ignore_index=True)  # 2,560 rows, 2,496 of them naming no file
    many["image_id"] = [f"{i}.png" if i <= 64 else f"gone{i}.png" for i in range(1, len(many) + 1)]
    many.to_csv(data / OFFICIAL_CSV, index=False)
    monkeypatch.setattr("training.data.decode", lambda p: pytest.fail("decoded before the missing were reported"))
    assert train_main(data, tmp_path / "run") == 2
    err = one_error_line(capsys)
    assert "2496 of 2560 image(s) missing: gone65.png, gone66.png" in err and "..." in err


# ---- 4. malformed configs -------------------------------------------------------------------------------


def alias_bomb(key: str, levels: int = 6) -> str:
    """Some 300 bytes of YAML under KEY whose aliases expand to 10**LEVELS leaves (10**6: 2 MiB, over the bound)."""
    lines = [f"  {key}:", "    l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


CONFIGS = {  # name -> (config file bytes, --set values, a word of the error line)
    "not UTF-8": ("model:\n  backbone: caf\xe9\n".encode("cp1252"), [], "not UTF-8"),
    "a list": (b"- model\n- data\n", [], "top level must be a mapping"),
    "nested 20,000 deep": (("train: " + "[" * 20_000 + "]" * 20_000 + "\n").encode(), [], "nested too deeply"),
    "alias bomb in model.lora": (("model:\n" + alias_bomb("lora")).encode(), [], "aliases are expanded"),
    "alias bomb in model.kwargs": (("model:\n" + alias_bomb("kwargs")).encode(), [], "aliases are expanded"),
    "a tag in --set": (b"", ["model.kwargs={a: !!python/object/apply:os.system [touch x]}"], "YAML tags"),
    "a tag in the file": (b"name: !!python/name:os.system\n", [], "YAML tags"),
    "a date": (b"model:\n  kwargs: {when: 2025-01-01}\n", [], "not a config value"),
    "py: outside timm": (b"model:\n  kwargs: {act_layer: 'py:os.system'}\n", [], "py: names an object of"),
    "unknown lora key": (b"model:\n  lora: {rank: 8}\n", [], "model.lora.rank"),
    "extra set entry": (b"data:\n  extra: [{name: a, csv: x.csv, images: x, password: y}]\n", [], "unknown key"),
    "extra set name": (b"data:\n  extra: [{name: official, csv: x.csv, images: x}]\n", [], "its own name"),
    "input size over the cap": (b"data:\n  input_size: 100000\n", [], "data.input_size must be from 8 to 1024"),
}


@pytest.mark.parametrize("case", list(CONFIGS))
def test_a_malformed_config_is_one_line_and_nothing_is_written(layout, tmp_path, capsys, case):
    content, sets, word = CONFIGS[case]
    config = tmp_path / "config.yaml"
    config.write_bytes(content or b"name: x\n")
    args = ["--config", config, "--data", layout, "--out", tmp_path / "run", "--device", "cpu"]
    assert train.main([str(a) for a in args] + (["--set", *sets] if sets else [])) == 2
    assert word in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_a_partial_lora_section_takes_the_other_values_from_the_defaults():
    cfg = config_io.load("smoke", ["model.lora={r: 4}"])
    assert cfg["model"]["lora"] == {**config_io.DEFAULTS["model"]["lora"], "r": 4}


# ---- 5. damaged run folders -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(layout, tmp_path_factory):
    """A finished smoke run (two folds, one epoch each), copied by each test that damages it."""
    root = tmp_path_factory.mktemp("trained")
    assert train_main(layout, root / "run") == 0
    return root / "run"


def damaged_run(trained, tmp_path) -> RunDir:
    shutil.copytree(trained, tmp_path / "run")
    return RunDir(tmp_path / "run")


@pytest.mark.slow  # trains (the trained fixture)
def test_a_truncated_last_pt_is_one_line_naming_it(layout, trained, tmp_path, capsys):
    run = damaged_run(trained, tmp_path)
    run.fold(0).done.unlink()  # not finished: the next job resumes from last.pt
    data = run.fold(0).last.read_bytes()
    run.fold(0).last.write_bytes(data[: len(data) // 2])
    assert train_main(layout, run, "--fold", "0") == 2
    err = one_error_line(capsys)
    assert f"{run.fold(0).last}: not a readable fold 0 training state" in err and "--restart" in err
    assert train_main(layout, run, "--fold", "0", "--restart") == 0  # what the line says to do works


@pytest.mark.slow  # trains (the trained fixture)
def test_a_last_pt_of_another_shape_is_one_line(layout, trained, tmp_path, capsys):
    run = damaged_run(trained, tmp_path)
    run.fold(0).done.unlink()
    saved = torch.load(run.fold(0).last, weights_only=True)
    saved["model"] = {"weight": torch.zeros(3)}
    torch.save(saved, run.fold(0).last)
    assert train_main(layout, run, "--fold", "0") == 2
    assert f"{run.fold(0).last} does not fit fold 0's model" in one_error_line(capsys)


def test_a_corrupt_best_pt_is_one_line_at_export(tmp_path, capsys):
    run = hand_made_run(tmp_path / "run")
    run.fold(0).best.write_bytes(b"PK\x03\x04 truncated zip")
    assert export.main([str(run), "--out", str(tmp_path / "model")]) == 2
    err = one_error_line(capsys)
    assert f"{run.fold(0).best}: not a readable fold 0 weights" in err and "--fold 0 --restart" in err


@pytest.mark.slow  # trains (the trained fixture)
@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'{"fold": [0]}', b"\xff\xfe"])
def test_a_corrupt_done_json_is_one_line_naming_it_at_train_and_export(layout, trained, tmp_path, capsys, content):
    run = damaged_run(trained, tmp_path)
    run.fold(0).done.write_bytes(content)
    assert train_main(layout, run, "--fold", "0") == 2
    assert str(run.fold(0).done) in one_error_line(capsys)
    assert export.main([str(run), "--out", str(tmp_path / "model")]) == 2
    assert str(run.fold(0).done) in one_error_line(capsys)


OOF_TABLES = {
    "zero bytes": (b"", "is empty"),
    "no probability column": (b"image_id,slide,fold,label\n7.png,007,0,1\n", "no column(s) probability"),
    "a probability that is text": (b"image_id,slide,fold,label,probability\n7.png,007,0,1,high\n", "[0, 1]"),
    "a label of 2": (b"image_id,slide,fold,label,probability\n7.png,007,0,2,0.5\n", "label must be 0 or 1"),
}


@pytest.mark.parametrize("case", list(OOF_TABLES))
def test_a_damaged_fold_oof_csv_is_one_line_naming_it_at_export(tmp_path, capsys, case):
    run = hand_made_run(tmp_path / "run")
    content, word = OOF_TABLES[case]
    run.fold(1).oof.write_bytes(content)
    assert export.main([str(run), "--out", str(tmp_path / "model")]) == 2
    err = one_error_line(capsys)
    assert word in err and str(run.fold(1).oof) in err


def edit_splits(run: RunDir, edit) -> None:
    splits = pd.read_csv(run.splits, dtype=str, keep_default_na=False)
    edit(splits)
    splits.to_csv(run.splits, index=False)


def move_one_figure(s):  # one figure of a fold-0 slide into fold 1: its slide is then in two folds
    s.loc[s.index[s["fold"] == "0"][0], "fold"] = "1"


def rename_its_slide_too(s):  # ... and its slide renamed, so that the splits alone look whole
    s.loc[s.index[s["fold"] == "0"][0], ["fold", "slide"]] = ["1", "elsewhere"]


def repeat_an_image_id(s):
    s.loc[0, "image_id"] = s.loc[1, "image_id"]


def fold_as_text(s):
    s["fold"] = "one"


def path_elsewhere(s):
    s["path"] = "/etc/passwd"


SPLIT_EDITS = {
    "a slide in two folds": (move_one_figure, "fall in two folds"),
    "its slide renamed": (rename_its_slide_too, "other slides than the data"),
    "a repeated image_id": (repeat_an_image_id, "repeated image_id"),
    "a fold that is text": (fold_as_text, "whole number"),
    "a path elsewhere": (path_elsewhere, "not written by training"),
}


@pytest.mark.slow  # trains (the trained fixture)
@pytest.mark.parametrize("case", list(SPLIT_EDITS))
def test_a_hand_edited_splits_csv_is_checked_as_fresh_splits_are(layout, trained, tmp_path, capsys, case):
    run = damaged_run(trained, tmp_path)
    edit, word = SPLIT_EDITS[case]
    edit_splits(run, edit)
    run.fold(1).done.unlink()  # fold 1 to train again: refused before it starts
    assert train_main(layout, run, "--fold", "1") == 2
    err = one_error_line(capsys)
    assert word in err and "splits.csv" in err
    assert not run.fold(1).done.exists()


# ---- 6. bounded memory: patch size (table size and config size above) -----------------------------------


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header declares WIDTH x HEIGHT grey pixels, followed by a few bytes of image data: what a
    decompression bomb looks like before it is decoded (a real one compresses 400 MB of zeros into 60 KB)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1) * 4)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_a_decompression_bomb_png_is_refused_from_its_header(layout, tmp_path, capsys):
    data = damaged_copy(layout, tmp_path)
    png_header_only(data / OFFICIAL_IMAGES / "7.png", 20_000, 20_000)
    with pytest.raises(AmfError, match="7.png: .*a patch side is at most 1024"):
        decode(data / OFFICIAL_IMAGES / "7.png")
    png_header_only(tmp_path / "big.png", 2000, 1000)  # under Pillow's own bomb limit: the input rule's cap
    with pytest.raises(AmfError, match="big.png: 2000x1000 pixels: a patch side is at most 1024"):
        decode(tmp_path / "big.png")
    assert train_main(data, tmp_path / "run") == 2
    assert "7.png (unreadable" in one_error_line(capsys)


# ---- 7. one process per fold ----------------------------------------------------------------------------


@pytest.mark.slow  # trains (the trained fixture)
def test_a_second_process_on_a_fold_refuses_naming_the_first(layout, trained, tmp_path, capsys):
    run = damaged_run(trained, tmp_path)
    run.fold(0).done.unlink()
    with run.fold(0).exclusive():  # this process holds fold 0, as a first training would
        assert train_main(layout, run, "--fold", "0") == 2
        err = one_error_line(capsys)
    assert f"in use by pid {os.getpid()} on {socket.gethostname()}" in err and str(run.fold(0).lock) in err
    assert train_main(layout, run, "--fold", "0") == 0  # released with the holder


def test_two_writers_of_one_checkpoint_never_share_a_temporary_name(tmp_path, monkeypatch):
    target, real_replace, renamed = tmp_path / "best.pt", os.replace, []

    def another_writer_first(src, dst):  # a second process saves the same file between this one's write and rename
        renamed.append(Path(src).name)
        if len(renamed) == 1:
            save_atomic({"by": "second"}, target)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", another_writer_first)
    save_atomic({"by": "first"}, target)
    assert torch.load(target, weights_only=True) == {"by": "first"}
    assert renamed[0] != renamed[1] and str(os.getpid()) in renamed[0]
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]


@pytest.mark.slow  # trains (the trained fixture)
def test_the_temporaries_of_a_killed_job_are_removed_when_the_fold_is_next_trained(layout, trained, tmp_path):
    run = damaged_run(trained, tmp_path)
    left = run.fold(0).path / f".last.pt.{os.getpid() + 1}.abc123.tmp"  # a write cut short by a kill
    left.write_bytes(b"half")
    assert train_main(layout, run, "--fold", "0") == 0 and not left.exists()


@pytest.mark.slow
def test_two_trainings_of_one_fold_started_together(layout, tmp_path):
    """Exactly one trains the fold; the other refuses, naming it (or, started late, finds the fold done)."""
    args = ["--config", "smoke", "--data", layout, "--out", tmp_path / "run", "--fold", "0", *SMALL, "--device", "cpu"]
    cmd = [sys.executable, "-m", "training.train", *map(str, args), "--no-progress"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    results = [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in procs]
    trained = [out for rc, out, _ in results if rc == 0 and "fold 0, epoch 1 of 1:" in out]
    assert len(trained) == 1, results
    for rc, out, err in results:
        assert "Traceback" not in err, err
        refused = rc == 2 and "is in use by pid" in err.strip().splitlines()[-1]
        assert refused or "fold 0, epoch 1 of 1:" in out or (rc == 0 and "already done" in out), (rc, out, err)
    fold = RunDir(tmp_path / "run").fold(0)
    assert json.loads(fold.done.read_text())["fold"] == 0 and "state_dict" in fold.load_best()
    assert not list(fold.path.glob(".*.tmp"))


def test_the_marker_class_really_runs_code_when_unpickled(tmp_path):
    """The booby trap above is real: plain unpickling (what the run folder's reader did before) creates the marker."""
    pickle.loads(pickle.dumps(Marker(tmp_path / "marker")))
    assert (tmp_path / "marker").exists()
