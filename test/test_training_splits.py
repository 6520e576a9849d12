"""Splits on the full label table (11,937 figures) and on generated data; data reading rules."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from training_layout import make_amibr, make_extra, make_layout, make_synthetic

from amf import AmfError
from training import config as config_io
from training import splits as splits_io
from training.data import deduplicate, load_dataset, read_table, slide_key
from training.domains import DOMAIN_COLUMNS, canonical


def full_table(path) -> pd.DataFrame:
    t = pd.read_csv(path, dtype={"image_id": str, "filename": str})
    t["slide"] = [slide_key(f) for f in t["filename"]]
    t["label"] = (t["majority"].str.upper() == "AMF").astype(int)
    for c in DOMAIN_COLUMNS:
        t[f"raw_{c}"] = t[c]
        t[c] = [canonical(c, v) for v in t[c]]
    t["synthetic"], t["source"], t["path"] = False, "official", ""
    return t


@pytest.fixture(scope="module")
def full():
    from conftest import LABELS_FULL, need

    t = full_table(need(LABELS_FULL))
    assert len(t) == 11937
    return t, splits_io.make_splits(t, "kfold", 5, seed=0)


@pytest.mark.slow
def test_no_slide_in_two_folds(full):
    _, s = full
    assert (s.groupby("slide")["fold"].nunique() == 1).all()
    assert sorted(s["fold"].unique()) == [0, 1, 2, 3, 4]


@pytest.mark.slow
def test_every_fold_near_the_whole_atypical_share(full):
    t, s = full
    whole = t["label"].mean()
    for k in range(5):
        share = s.loc[s["fold"] == k, "label"].mean()
        assert abs(share - whole) <= 0.02, (k, share, whole)


@pytest.mark.slow
def test_same_seed_same_splits_other_seed_other_splits(full):
    t, s = full
    again = splits_io.make_splits(t, "kfold", 5, seed=0)
    assert s["fold"].tolist() == again["fold"].tolist()
    other = splits_io.make_splits(t, "kfold", 5, seed=1)
    assert s["fold"].tolist() != other["fold"].tolist()


@pytest.mark.slow
def test_leave_one_domain_out(full):
    t, _ = full
    loso = splits_io.make_splits(t, "leave_scanner_out", seed=0)
    assert loso["fold"].nunique() == 4  # Hamammatsu XR and Hamamatsu XR are one scanner
    assert (loso.groupby("fold")["Scanner"].nunique() == 1).all()
    assert (loso.groupby("Scanner")["fold"].nunique() == 1).all()
    loto = splits_io.make_splits(t, "leave_tumor_out")
    assert loto["fold"].nunique() == 7 and (loto.groupby("fold")["Tumor"].nunique() == 1).all()


@pytest.mark.slow
def test_synthetic_rows_never_validate_and_written_splits_are_checked(tmp_path):
    data = make_layout(tmp_path / "d", n_slides=6, per_slide=5)
    cfg = config_io.load("smoke", [f"data.synthetic={make_synthetic(tmp_path / 's', 3)}"])
    df, cache = load_dataset(data, cfg, log=lambda *a: None)
    assert len(cache) == len(df) == 33
    s = splits_io.make_splits(df, "kfold", 2, seed=0)
    assert (s.loc[s["synthetic"], "fold"] == -1).all()
    for k in (0, 1):
        train_rows, val_rows = splits_io.fold_rows(s, k)
        assert not s.iloc[val_rows]["synthetic"].any() and s.iloc[train_rows]["synthetic"].sum() == 3
    splits_io.write(s, tmp_path / "splits.csv")
    back = splits_io.read(tmp_path / "splits.csv")
    assert splits_io.matching(back, df)["fold"].tolist() == s["fold"].tolist()
    assert back["slide"].iloc[0] == "000"  # slide keys stay strings
    with pytest.raises(AmfError, match="does not match"):
        splits_io.matching(back, df.iloc[1:])


def test_kind_all_trains_every_figure_and_holds_none_out(tmp_path):
    """splits.kind all: one fold, named all, every real figure in it and in training, none held out (synthetic rows
    train too); a hand-edited splits.csv that mixes it with other folds is refused."""
    data = make_layout(tmp_path / "d", n_slides=6, per_slide=5)
    cfg = config_io.load("smoke", [f"data.synthetic={make_synthetic(tmp_path / 's', 3)}", "splits.kind=all"])
    df, _ = load_dataset(data, cfg, log=lambda *a: None)
    s = splits_io.make_splits(df, "all", 5, seed=0)
    real = s[~s["synthetic"]]
    assert splits_io.folds_of(s) == [0] and set(real["fold_name"]) == {"all"} and splits_io.is_all(s)
    train_rows, val_rows = splits_io.fold_rows(s, 0)
    assert len(train_rows) == len(s) == 33 and len(val_rows) == 0
    assert "every figure trains, none is held out: 30 figures" in splits_io.describe(s)
    splits_io.write(s, tmp_path / "splits.csv")
    assert splits_io.is_all(splits_io.read(tmp_path / "splits.csv"))
    torn = s.copy()
    torn.loc[torn.index[:5], "fold"] = 1  # one slide's figures moved to a second fold: "all" no longer holds all
    splits_io.write(torn, tmp_path / "torn.csv")
    with pytest.raises(AmfError, match="a fold named 'all' must be the only fold"):
        splits_io.read(tmp_path / "torn.csv")
    assert not splits_io.is_all(splits_io.make_splits(df, "kfold", 2, seed=0))
    with pytest.raises(AmfError, match="train.selection must be last"):
        config_io.load("smoke", ["splits.kind=all", "train.selection=validation"])


def test_aliases_raw_values_and_dedup(tmp_path):
    data = make_layout(tmp_path / "d", n_slides=4, per_slide=4)
    off = read_table(
        data / "MIDOG25_Atypical_Classification_Train_Set.csv",
        data / "MIDOG25_Binary_Classification_Train_Set",
        "official",
    )
    assert set(off["Scanner"]) == {"Aperio CS2", "Hamamatsu XR"}
    assert "Hamammatsu XR" in set(off["raw_Scanner"])
    extra_dir = make_extra(tmp_path / "x", data / "MIDOG25_Atypical_Classification_Train_Set.csv", 3, 4)
    extra = read_table(extra_dir / "extra.csv", extra_dir / "images", "amibr", id_prefix="amibr/")
    both, dropped = deduplicate([off, extra], radius=5)
    assert dropped == 3 and len(both) == len(off) + 4
    assert both["image_id"].str.startswith("amibr/").sum() == 4
    _, none_dropped = deduplicate([off, extra], radius=1)  # the copies sit 2 px away
    assert none_dropped == 0
    prefixed = read_table(
        extra_dir / "extra.csv", extra_dir / "images", "octo", id_prefix="octo/", slide_prefix="octo:"
    )
    assert deduplicate([off, prefixed], radius=5)[1] == 0  # other slides, though the file names match


def test_bad_labels_and_layout_are_one_clear_error(tmp_path):
    data = make_layout(tmp_path / "d", n_slides=2, per_slide=3)
    csv = data / "MIDOG25_Atypical_Classification_Train_Set.csv"
    t = pd.read_csv(csv)
    t.loc[1, "majority"] = "maybe"
    t.to_csv(csv, index=False)
    with pytest.raises(AmfError, match="other than AMF/NMF"):
        load_dataset(data, config_io.load("smoke"))
    with pytest.raises(AmfError, match="not a labelled data folder"):
        load_dataset(tmp_path, config_io.load("smoke"))


def test_fold_count_needs_enough_slides():
    t = pd.DataFrame(
        {
            "image_id": [f"{i}" for i in range(6)],
            "slide": ["a", "a", "b", "b", "a", "b"],
            "label": [0, 1, 0, 1, 0, 1],
            "Tumor": "t",
            "synthetic": False,
        }
    )
    with pytest.raises(AmfError, match="at least 3 slides"):
        splits_io.make_splits(t, "kfold", 3)
    two = splits_io.make_splits(t, "kfold", 2)
    assert np.unique(two["fold"]).tolist() == [0, 1]


@pytest.mark.slow
@pytest.mark.parametrize("which, folds", [("breast", 2), ("breast", 5), ("full", 5)])
def test_even_folds(which, folds, full):
    """Fold sizes within 10 % of each other, the atypical share within 3 points, slides whole (the breast slice's
    2 folds were 640 and 1,081 figures with StratifiedGroupKFold)."""
    from conftest import BREAST, need

    if which == "full":
        t, s = full
    else:
        t = read_table(
            need(BREAST) / "MIDOG25_Atypical_Classification_Train_Set.csv",
            BREAST / "MIDOG25_Binary_Classification_Train_Set",
            "official",
        )
        s = splits_io.make_splits(t, "kfold", folds, seed=0)
    sizes, shares = s.groupby("fold").size(), s.groupby("fold")["label"].mean()
    assert len(sizes) == folds and sizes.max() <= 1.10 * sizes.min(), sizes.tolist()
    assert shares.max() - shares.min() <= 0.03, shares.tolist()
    assert (s.groupby("slide")["fold"].nunique() == 1).all()


def test_amibr_layout_reads_as_one_table(tmp_path):
    """AMi-Br's layout: labels from majority_atypical, votes as soft labels, MIDOG21 slides on the official keys with
    the official scanners, TUPAC16 slides keyed by dataset, the dataset as source, leave-one-source-out folds."""
    data = make_layout(tmp_path / "d", n_slides=4, per_slide=4)
    official_csv = data / "MIDOG25_Atypical_Classification_Train_Set.csv"
    amibr = make_amibr(tmp_path / "amibr", official_csv, n_tupac_slides=3, per_slide=6)
    off = pd.read_csv(official_csv)
    alone = load_dataset(amibr, config_io.load("smoke"), log=lambda *a: None)[0]
    assert len(alone) == len(off) + 18 and alone["label"].sum() == (off["majority"] == "AMF").sum() + 6
    assert set(alone["source"]) == {"MIDOG21", "TUPAC16"} and not alone["extra"].any()
    assert (alone["Tumor"] == "human breast cancer").all() and (alone["Scanner"] == "unknown").all()
    tupac = alone[alone["source"] == "TUPAC16"]
    assert set(tupac["slide"]) == {"tupac16/000", "tupac16/001", "tupac16/002"}  # not the official "000"
    assert sorted(tupac["soft"].round(3).unique()) == [0.0, 0.333, 0.667, 1.0]
    assert set(alone.loc[alone["source"] == "MIDOG21", "slide"]) == {f"{s:03d}" for s in range(4)}
    # the official table names the MIDOG21 figures' scanners (raw spelling kept), TUPAC16 has none
    cfg = config_io.load("smoke", [f"data.official_labels={official_csv}"])
    named = load_dataset(amibr, cfg, log=lambda *a: None)[0]
    assert (named.loc[named["source"] == "MIDOG21", "Scanner"] != "unknown").all()
    assert set(named.loc[named["source"] == "MIDOG21", "raw_Scanner"]) == set(off["Scanner"])
    assert (named.loc[named["source"] == "TUPAC16", "Scanner"] == "unknown").all()
    s = splits_io.make_splits(named, "leave_source_out")
    assert sorted(s["fold_name"].unique()) == ["source=MIDOG21", "source=TUPAC16"]
    # as an extra set of the official one: its MIDOG21 figures are the official ones, de-duplicated
    both_cfg = config_io.load("smoke", [f"data.extra=[{{name: amibr, dir: {amibr}}}]"])
    both = load_dataset(data, both_cfg, log=lambda *a: None)[0]
    assert len(both) == len(off) + 18 and both["extra"].sum() == 18
    assert set(both.loc[both["extra"], "source"]) == {"amibr"}


def test_amibr_layout_errors(tmp_path):
    amibr = make_amibr(tmp_path / "amibr", n_tupac_slides=1, per_slide=3)
    t = pd.read_csv(amibr / "AMI-BR.csv", index_col=0, dtype=str)
    t.loc[1, "majority_atypical"] = "perhaps"
    t.to_csv(amibr / "AMI-BR.csv")
    with pytest.raises(AmfError, match="majority_atypical must be True or False"):
        load_dataset(amibr, config_io.load("smoke"))
    t.drop(columns=["dataset"]).to_csv(amibr / "AMI-BR.csv")
    with pytest.raises(AmfError, match="missing column"):
        load_dataset(amibr, config_io.load("smoke"))


def test_splits_of_a_data_folder_given_relative_to_the_working_directory_read_back(tmp_path, monkeypatch):
    """--data ../shared/data/... (the README's own example) puts '..' in every recorded image path: such a
    splits.csv is the one training wrote and reads back; a path that names another file is refused."""
    data = make_layout(tmp_path / "shared" / "d", n_slides=4, per_slide=2)
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    relative = f"../shared/{data.name}"
    df = load_dataset(relative, config_io.load("smoke"), log=lambda *a: None)[0]
    assert df["path"].str.startswith("../").all()
    s = splits_io.make_splits(df, "kfold", 2, seed=0)
    splits_io.write(s, tmp_path / "splits.csv")
    assert splits_io.read(tmp_path / "splits.csv")["path"].tolist() == s["path"].tolist()
    s.loc[0, "path"] = "../shared/elsewhere/other.png"
    splits_io.write(s, tmp_path / "bad.csv")
    with pytest.raises(AmfError, match="not written by training"):
        splits_io.read(tmp_path / "bad.csv")
