"""training.rundir.RunDir: the run folder's names, readers and writers, the same for train, oof, export and compare."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from amf import AmfError
from training import config as config_io
from training import rundir as run_io
from training import splits as splits_io
from training.results import compare
from training.results import oof as oof_io
from training.rundir import RunDir

# image ids that a reader guessing types turns into numbers: 7.0, 7.0 (one id for two figures), 1000.0, 0.5, nan
AWKWARD_IDS = ["007", "7", "1e3", "0.50", "NA", "12"]


def hand_made_run(folder, ids=AWKWARD_IDS, slides=("NA", "s1", "007", "s3", "s4", "s5")) -> RunDir:
    """A finished two-fold run written through RunDir's writers, as training.train writes one."""
    run = RunDir(folder)
    run.path.mkdir(parents=True)
    n = len(ids)
    splits = pd.DataFrame(
        {
            "image_id": ids,
            "slide": list(slides),
            "fold": [k % 2 for k in range(n)],
            "fold_name": [f"fold{k % 2}" for k in range(n)],
            "label": [0, 0, 1, 1, 0, 1][:n],
            "source": "official",
            "synthetic": False,
            "path": [f"/x/{i}" for i in ids],
        }
    )
    run.write_config(config_io.load("smoke"))
    run.write_splits(splits)
    for k, g in splits.groupby("fold"):
        fold = run.fold(k)
        fold.path.mkdir()
        oof = g[["image_id", "slide", "fold", "label", "source"]].assign(probability=np.linspace(0.2, 0.8, len(g)))
        run_io.write_csv_atomic(oof, fold.oof)
        run_io.write_json_atomic({"fold": int(k), "selection": "last"}, fold.done)
    return run


def test_config_round_trips_and_complete_fills_what_an_old_run_lacks(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    cfg = config_io.load("smoke", ["train.lr=0.01"])
    run.write_config(cfg)
    assert run.read_config() == cfg and run.config.read_text() == config_io.dump(cfg)
    del cfg["train"]["selection"]  # a run from before train.selection existed
    run.write_config(cfg)
    assert "selection" not in run.read_config()["train"]  # as recorded (the card reads an old run as such)
    complete = run.read_config(complete=True)
    assert complete["train"]["selection"] == config_io.DEFAULTS["train"]["selection"]
    assert complete["train"]["lr"] == 0.01
    run.config.write_text("train: [unclosed\n")
    with pytest.raises(AmfError, match="not valid YAML"):
        run.read_config()


def test_pooled_predictions_keep_the_image_ids_as_written(tmp_path):
    run = hand_made_run(tmp_path / "run")
    oof, result = oof_io.pool(run, n_boot=20)
    assert sorted(oof["image_id"]) == sorted(AWKWARD_IDS)
    back = run.read_oof()
    assert back["image_id"].tolist() == oof["image_id"].tolist() and set(back["image_id"]) == set(AWKWARD_IDS)
    assert "NA" in set(back["slide"]) and "007" in set(back["slide"])
    assert np.array_equal(back["probability"].to_numpy(), oof["probability"].to_numpy())
    assert run.read_oof_metrics() == json.loads(json.dumps(result))
    # compare reads them the same way: "007" and "7" stay two figures (its old reader guessed floats, made them one
    # id 7.0, and the paired merge then refused a run compared with itself as covering other figures)
    table, done, folds = compare.finished_oof(run.path)
    assert table["image_id"].tolist() == back["image_id"].tolist() and done == folds == [0, 1]
    assert compare.compare(run.path, run.path, n_boot=5)["n_figures"] == len(AWKWARD_IDS)


def test_a_missing_file_is_one_error_naming_its_path(tmp_path):
    empty = RunDir(tmp_path / "empty")
    empty.path.mkdir()
    with pytest.raises(AmfError, match=re.escape(f"{empty.path} is not a training run folder (no config.yaml)")):
        empty.read_config()
    with pytest.raises(AmfError, match="no splits.csv"):
        empty.read_splits()
    with pytest.raises(AmfError, match=re.escape(f"no pooled out-of-fold results ({empty.oof}")):
        empty.read_oof()
    with pytest.raises(AmfError, match=re.escape(f"{empty.path} has no out-of-fold predictions")):
        compare.finished_oof(empty.path)
    fold = empty.fold(3)
    for read, name in (
        (fold.load_best, "best.pt"),
        (fold.load_last, "last.pt"),
        (fold.read_oof, "oof.csv"),
        (fold.read_done, "done.json"),
        (fold.read_epochs, "epochs.csv"),
    ):
        with pytest.raises(AmfError, match=re.escape(f"{fold.path / name} does not exist")):
            read()


def test_folds_done_and_missing(tmp_path):
    run = hand_made_run(tmp_path / "run")
    splits = run.read_splits()
    assert splits["image_id"].tolist() == AWKWARD_IDS  # splits.csv keeps its ids too
    assert run.missing_folds(splits) == [] and [f.k for f in run.fold_dirs()] == [0, 1]
    run.fold(1).done.write_text("")  # an empty marker still marks the fold done
    assert run.fold(1).read_done() == {} and run.fold(1).is_done()
    run.fold(1).done.unlink()
    assert run.missing_folds(splits) == [1]
    with pytest.raises(AmfError, match="fold\\(s\\) 1 .* not finished"):
        oof_io.pool(run)
    assert RunDir(run).path == run.path and str(run) == str(run.path)  # a RunDir is taken where a path is


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny real run (generated data, smoke config, 2 folds x 1 epoch at 32 px, CPU)."""
    from training_layout import make_layout

    from training.train import __main__ as train

    root = tmp_path_factory.mktemp("rundir")
    data = make_layout(root / "data", n_slides=8, per_slide=8)
    overrides = ["data.input_size=32", "train.batch_size=8"]
    assert (
        train.main(
            [
                "--config",
                "smoke",
                "--data",
                str(data),
                "--out",
                str(root / "run"),
                "--set",
                *overrides,
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    return RunDir(root / "run"), data, overrides


def test_training_writes_exactly_the_names_run_dir_defines(trained):
    run, _, _ = trained
    folds = splits_io.folds_of(run.read_splits())
    expected = {run.config, run.splits, run.oof, run.oof_metrics, run.curves, run.lock}
    for k in folds:
        f = run.fold(k)
        expected |= {f.last, f.best, f.epochs, f.oof, f.done, f.lock, *f.event_files()}
    written = {p for p in run.path.rglob("*") if p.is_file()}
    assert written == expected  # nothing written under a name that training/rundir.py does not define
    assert [f.k for f in run.fold_dirs()] == folds == [0, 1]


def test_what_training_wrote_reads_back_through_run_dir(trained):
    from training.train.kfold import resolve_normalisation

    run, data, overrides = trained
    assert run.read_config() == resolve_normalisation(config_io.load("smoke", overrides))  # the config that ran
    assert run.read_config(complete=True) == run.read_config()  # a current run lacks nothing
    splits = run.read_splits()
    oof = run.read_oof()
    assert sorted(oof["image_id"]) == sorted(splits["image_id"]) and oof["image_id"].map(type).eq(str).all()
    table = pd.read_csv(data / "MIDOG25_Atypical_Classification_Train_Set.csv", dtype=str)
    assert set(oof["image_id"]) == set(table["image_id"])
    for k in (0, 1):
        fold = run.fold(k)
        done, best = fold.read_done(), fold.load_best()
        assert done["fold"] == k and best["fold"] == k and best["epoch"] == done["best_epoch"] == 1
        assert fold.load_last()["epoch"] == 0 and len(fold.read_epochs()) == 1
        assert fold.read_oof()["image_id"].tolist() == oof.loc[oof["fold"] == k, "image_id"].tolist()
    table, done, folds = compare.finished_oof(run)  # the pooled table, as compare reads it
    assert table["image_id"].tolist() == oof["image_id"].tolist() and done == folds == [0, 1]


def test_a_run_started_before_a_key_existed_is_the_same_config(tmp_path):
    """training.train compares the run's config.yaml, completed with today's defaults, with the command's config: a
    key added since the run started (absent from its config.yaml, at its default) does not make it another config;
    a changed value does."""
    from types import SimpleNamespace

    from training_layout import make_layout

    from training.data import OFFICIAL_CSV, OFFICIAL_IMAGES, read_table
    from training.train.kfold import prepare_run

    data = make_layout(tmp_path / "d", n_slides=4, per_slide=3)
    cfg = config_io.load("smoke")
    df = read_table(data / OFFICIAL_CSV, data / OFFICIAL_IMAGES, "official")
    dist = SimpleNamespace(main=True, barrier=lambda: None)
    run = RunDir(tmp_path / "run")
    prepare_run(cfg, df, run, dist)
    old = config_io.yaml.safe_load(run.config.read_text())
    del old["model"]["attention"], old["log"]  # as written before model.attention and log existed
    run.config.write_text(config_io.dump(old))
    assert prepare_run(cfg, df, run, dist)["fold"].tolist() == run.read_splits()["fold"].tolist()
    prepare_run(config_io.load("smoke", ["log.wandb=true"]), df, run, dist)  # the log section changes no result
    with pytest.raises(AmfError, match=r"another config \(differs in train.lr"):
        prepare_run(config_io.load("smoke", ["train.lr=0.1"]), df, run, dist)
