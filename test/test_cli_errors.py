"""Every `python -m training.*` (and `python -m evaluation`) command fails the project's way: exit status 2, the
last stderr line `error: ...` naming the problem, no traceback; and config values (files and overrides) are checked
against their defaults' types, so a wrong one is that line instead of a traceback later."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT

from amf import AmfError
from training import config as config_io

MISSING, A_FILE = "{missing}", "{file}"  # a path that does not exist; an existing plain file

CASES = [  # module, arguments, a word the error line must hold
    ("training.inspect", ["config", MISSING], "not found"),
    ("training.inspect", ["config", "smoke", "train.epochs=ten"], "train.epochs"),
    ("training.results.oof", [MISSING], "no run folder"),
    ("training.inspect", ["splits", MISSING], "no label table"),
    ("training.inspect", ["splits", A_FILE, "--folds", "0"], "--folds"),
    ("training.inspect", ["models", MISSING], "not found"),
    ("training.inspect", ["models", "smoke", "model.backbone=no_such_net"], "no_such_net"),
    ("training.inspect", ["recipe", MISSING], "not found"),
    ("training.inspect", ["augment", MISSING, MISSING], "No such file"),
    ("training.inspect", ["augment", A_FILE, MISSING], "cannot identify image"),
    ("evaluation", ["score", MISSING, "--ground-truth", MISSING, "--out", MISSING], "ground truth"),
    ("evaluation", ["preflight", MISSING, "--data", MISSING, "--out", MISSING], "manifest"),
    ("evaluation", ["preflight", "model", "--data", A_FILE, "--out", MISSING], "not a data folder"),
    ("training.inspect", ["data", MISSING], "official layout"),
    ("training.export", [MISSING, "--out", MISSING], "run folder"),
    ("training.export", [MISSING, "--out", MISSING, "--n-real", "0"], "--n-real"),
    ("training.results.compare", [MISSING, MISSING], "out-of-fold"),
    ("training.results.threshold", [MISSING, MISSING], "out-of-fold"),
    ("training.results.tta_oof", [MISSING, "--tta", "d4"], "run folder"),
    ("training.results.tta_oof", [MISSING, "--tta", "d8"], "--tta"),
    ("training.threshold", [MISSING, MISSING], "out-of-fold"),  # the names the shipped card gives them
    ("training.tta_oof", [MISSING, "--tta", "d4"], "run folder"),
    ("training.export", [MISSING, "--out", MISSING, "--shift-run", MISSING], "run folder"),
    ("training.pipeline", [MISSING, "--data", MISSING, "--runs", MISSING, "--model-out", MISSING], "not found"),
    ("training.pipeline", ["smoke", "--data", MISSING, "--runs", MISSING, "--model-out", MISSING], "official layout"),
    (
        "training.pipeline",
        ["smoke", "--data", A_FILE, "--runs", MISSING, "--model-out", MISSING, "--plain-folds", "0"],
        "--plain",
    ),
    (
        "training.pipeline",
        ["smoke", "--data", A_FILE, "--runs", MISSING, "--model-out", MISSING, "--shift", "kfold"],
        "--shift",
    ),
    ("training.inspect", ["device", "gpu"], "gpu"),
    ("training.inspect", ["ddp", "smoke", "--world", "0"], "--world"),
    ("training.export.fingerprint", [MISSING, "--run", MISSING], "no manifest"),
    ("training.train.curves", [MISSING], "epoch log"),
    # usage errors (argparse's own) follow the rule too: amf.cli.ArgumentParser
    ("training.train", ["--config", "smoke"], "required"),
    ("training.train", ["--config", "smoke", "--data", MISSING, "--out", MISSING, "--parallel", "0"], "--parallel"),
    ("training.train", ["--config", "smoke", "--data", MISSING, "--out", MISSING, "--bogus"], "--bogus"),
    ("training.inspect", ["data"], "required"),
    ("training.card", ["--bogus"], "--bogus"),
    ("training.results.compare", [MISSING], "required"),
    ("training.inspect", ["gpu_augment"], "required"),
    ("training.inspect", ["gpu_augment", A_FILE, MISSING], "cannot identify image"),
    ("training.inspect", [], "required"),
    ("training.inspect", ["weights"], "invalid choice"),
]


@pytest.mark.slow
@pytest.mark.parametrize("module, args, word", CASES, ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(CASES)])
def test_module_cli_fails_in_one_line_with_status_2(tmp_path, module, args, word):
    (tmp_path / "file").write_text("image_id,filename,majority\n")
    args = [a.format(missing=tmp_path / "missing", file=tmp_path / "file") for a in args]
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and word in last, done.stderr[-2000:]
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.epochs=ten", ["train.epochs", "'ten'", "an integer"]),
        ("train.epochs=true", ["train.epochs", "True", "an integer"]),  # a bool is no integer
        ("train.epochs=2.5", ["train.epochs", "2.5", "an integer"]),
        ("train.lr=fast", ["train.lr", "'fast'", "a number"]),
        ("model.pretrained=yes please", ["model.pretrained", "true or false"]),
        ("model.backbone=3", ["model.backbone", "text"]),
        ("augment.scale=[a, b]", ["augment.scale", "a list of numbers"]),
        ("align.columns=Scanner", ["align.columns", "a list of texts"]),
        ("train.channels_last=3", ["train.channels_last", "true or false"]),
        ("data.mean=[0.5, x, 0.5]", ["data.mean", "a list of numbers"]),
        ("model.weights=3", ["model.weights", "text or null"]),
        ("train.max_steps_per_epoch=1.5", ["train.max_steps_per_epoch", "an integer or null"]),
        ("model.kwargs=[1]", ["model.kwargs", "a mapping"]),
        ("train=5", ["train", "a mapping"]),
        ("train.epochs=0", ["train.epochs", ">= 1"]),
        ("train.batch_size=-4", ["train.batch_size", ">= 1"]),
        ("train.lr=0", ["train.lr", "> 0"]),
        ("train.lr=-1e-4", ["train.lr", "> 0"]),
    ],
)
def test_an_override_of_the_wrong_type_or_range_is_named(override, words):
    with pytest.raises(AmfError) as err:
        config_io.load("smoke", [override])
    for w in words:
        assert w in str(err.value)


def test_a_config_file_value_is_checked_the_same_way(tmp_path):
    (tmp_path / "bad.yaml").write_text("train:\n  epochs: ten\n")
    with pytest.raises(AmfError, match="train.epochs = 'ten' is not an integer"):
        config_io.load(tmp_path / "bad.yaml")


def test_valid_values_of_another_spelling_are_kept():
    cfg = config_io.load(
        "smoke",
        [
            "train.lr=1e-4",
            "train.warmup_epochs=1",
            "train.channels_last=true",
            "data.mean=[0.5, 0.5, 0.5]",
            "model.weights=w.pth",
            "data.synthetic=null",
            "train.max_steps_per_epoch=3",
        ],
    )
    t = cfg["train"]
    assert t["lr"] == 1e-4 and isinstance(t["lr"], float)  # YAML reads 1e-4 as text
    assert t["warmup_epochs"] == 1 and t["channels_last"] is True and t["max_steps_per_epoch"] == 3
    assert cfg["data"]["mean"] == [0.5] * 3 and cfg["model"]["weights"] == "w.pth"
    for name in ("smoke", "cpu_small", "default_model", "convnext_small", "lunit_vit_small", "foundation_lora"):
        config_io.load(name)  # every shipped config passes


def test_a_new_default_is_checked_by_its_type(monkeypatch):
    monkeypatch.setitem(config_io.DEFAULTS["train"], "new_count", 3)  # what another change may add
    assert config_io.load("smoke", ["train.new_count=4"])["train"]["new_count"] == 4
    with pytest.raises(AmfError, match="train.new_count = 'four' is not an integer"):
        config_io.load("smoke", ["train.new_count=four"])


@pytest.mark.slow  # a process per command
@pytest.mark.parametrize("module", sorted({case[0] for case in CASES} | {"training.train", "training.card"}))
def test_help_opens_with_a_whole_sentence(module):
    """--help's description is the docstring's first sentence, whole (a line of it stopped mid-sentence)."""
    from amf.cli import first_sentence

    p = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    description = p.stdout.split("\n\n")[1].replace("\n", " ")
    assert description.endswith(".") and description == first_sentence(description), description


def test_first_sentence_reads_past_line_ends():
    from amf.cli import first_sentence

    doc = "One command from the data to a model folder: every step,\nin order. More.\n\nUsage."
    assert first_sentence(doc) == "One command from the data to a model folder: every step, in order."
    assert first_sentence("No full stop\nat all\n\nrest.") == "No full stop at all"
