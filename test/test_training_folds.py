"""training.train with the device data path forced on (data.device_augment=true, on the CPU) and with
--parallel (several folds at once, one process each): the run folder is the one sequential CPU-path training
gives, in form (and, for --parallel, in value up to float rounding)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from training_layout import make_layout

from training.train import __main__ as train

pytestmark = pytest.mark.slow  # trains whole runs, folds in parallel (make test-fast leaves it out)

RUN_FILES = ["config.yaml", "splits.csv", "oof.csv", "oof_metrics.json", "curves.png"]
EVENTS = "events.out.tfevents."  # TensorBoard's, named by time, host and process
FOLD_FILES = ["best.pt", "last.pt", "epochs.csv", "oof.csv", "done.json"]
SMALL = ["--config", "smoke", "--device", "cpu", "--no-progress", "--set", "data.input_size=32"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_layout(tmp_path_factory.mktemp("folds") / "data", n_slides=8, per_slide=8)


@pytest.fixture(scope="module")
def sequential(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("seq") / "run"
    assert train.main([*SMALL, "--data", str(data), "--out", str(run)]) == 0
    return run


def files(run):
    names = (str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    return sorted(n.split(EVENTS)[0] + EVENTS + "*" if EVENTS in n else n for n in names)


def check_run_folder(run):
    for f in RUN_FILES:
        assert (run / f).is_file(), f
    for k in (0, 1):
        for f in FOLD_FILES:
            assert (run / f"fold{k}" / f).is_file(), (k, f)


def test_device_augment_forced_on_gives_a_valid_run_folder(data, sequential, tmp_path, capsys):
    run = tmp_path / "run"
    assert train.main([*SMALL, "data.device_augment=true", "--data", str(data), "--out", str(run)]) == 0
    assert "training batches augmented on cpu" in capsys.readouterr().out
    check_run_folder(run)
    assert files(run) == files(sequential)
    assert (run / "splits.csv").read_text() == (sequential / "splits.csv").read_text()
    oof, ref = pd.read_csv(run / "oof.csv"), pd.read_csv(sequential / "oof.csv")
    assert list(oof.columns) == list(ref.columns) and sorted(oof["image_id"]) == sorted(ref["image_id"])
    assert oof["probability"].between(0, 1).all()


def test_device_augment_true_without_preload_is_one_error(data, tmp_path, capsys):
    code = train.main(
        [*SMALL, "data.device_augment=true", "data.preload=false", "--data", str(data), "--out", str(tmp_path / "run")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and "device_augment" in err[-1]
    assert not (tmp_path / "run" / "fold0" / "best.pt").exists()


def test_parallel_folds_equal_sequential_training(data, sequential, tmp_path, capsys):
    run = tmp_path / "run"
    assert train.main([*SMALL, "--data", str(data), "--out", str(run), "--parallel", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    # one header (the parent's), each child's lines prefixed by its fold, one "next:" once every child has ended
    assert sum(line.startswith("kfold splits") for line in out) == 1
    for k in (0, 1):
        mine = [line for line in out if line.startswith(f"[fold {k}] ")]
        assert f"[fold {k}] fold {k}, epoch 1 of 1: loss" in "\n".join(mine)
        assert mine[-1].startswith(f"[fold {k}] fold {k} done in ")
        assert not any("splits" in line or "next:" in line or "not done" in line for line in mine)
    assert sum("next: python -m training.export" in line for line in out) == 1
    assert out[-1].startswith("run folder") and "next:" in out[-1]
    check_run_folder(run)
    assert files(run) == files(sequential)
    for f in ("config.yaml", "splits.csv"):
        assert (run / f).read_text() == (sequential / f).read_text(), f
    oof, ref = pd.read_csv(run / "oof.csv"), pd.read_csv(sequential / "oof.csv")
    assert list(oof.columns) == list(ref.columns)
    text = [c for c in ref.columns if ref[c].dtype == object]
    assert oof[text].equals(ref[text]) and oof["fold"].equals(ref["fold"])
    # the same seeds: the same training; only the CPU threads (and so float summation order) differ
    np.testing.assert_allclose(oof["logit"], ref["logit"], atol=1e-3)


def test_parallel_fold_failure_is_reported(data, tmp_path, capsys):
    code = train.main(
        [
            *SMALL,
            "--data",
            str(data),
            "--out",
            str(tmp_path / "run"),
            "--parallel",
            "2",
            "--set",
            "data.input_size=32",
            "train.batch_size=100000",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: fold(s) failed: 0 (exit status 2), 1 (exit status 2)")
    assert not (tmp_path / "run" / "oof.csv").exists()


def test_a_run_is_tracked_and_plotted(sequential):
    """TensorBoard event files per fold (with the epoch's metrics and one grid of patches) and curves.png."""
    import pytest
    from PIL import Image

    with Image.open(sequential / "curves.png") as im:
        assert im.format == "PNG"
    pytest.importorskip("tensorboard", reason="requirements-dev.txt installs it")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for k in (0, 1):
        ea = EventAccumulator(str(sequential / f"fold{k}"))
        ea.Reload()
        epochs = pd.read_csv(sequential / f"fold{k}" / "epochs.csv")
        got = [(e.step, e.value) for e in ea.Scalars("val/roc_auc")]
        assert got == [(1, pytest.approx(epochs["val_roc_auc"].iloc[0]))]
        assert len(ea.Images("train/patches_as_fed")) == 1
