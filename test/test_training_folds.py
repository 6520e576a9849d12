"""training.train with the device data path forced on (data.device_augment=true, on the CPU) and with
--parallel (several folds at once, one process each): the run folder is the one sequential CPU-path training
gives, in form (and, for --parallel, in value up to float rounding)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from training_layout import make_layout

from training import train

pytestmark = pytest.mark.slow  # trains whole runs, folds in parallel (make test-fast leaves it out)

RUN_FILES = ["config.yaml", "splits.csv", "oof.csv", "oof_metrics.json"]
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
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())


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


def test_parallel_folds_equal_sequential_training(data, sequential, tmp_path):
    run = tmp_path / "run"
    assert train.main([*SMALL, "--data", str(data), "--out", str(run), "--parallel", "2"]) == 0
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
