"""training.card on made-up runs: it ships the better run, refuses a model folder that holds the other,
and renders every figure from card.json."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from toy_models import make_toy_ensemble

from amf import AmfError
from amf.manifest import load as load_manifest
from amf.manifest import save as save_manifest
from training import card as card_io
from training import config as config_io
from training import oof as oof_io

RNG = np.random.default_rng(1)
SCANNERS = ("Aperio ScanScope CS2", "Hamamatsu S360", "Hamamatsu XR")


def table(n_slides: int = 30, per_slide: int = 10) -> pd.DataFrame:
    slide = np.repeat([f"{i:03d}" for i in range(n_slides)], per_slide)
    scanner = np.repeat([SCANNERS[i % 3] for i in range(n_slides)], per_slide)
    return pd.DataFrame(
        {
            "image_id": [f"{i}.png" for i in range(len(slide))],
            "slide": slide,
            "fold": np.repeat(np.arange(n_slides) % 5, per_slide),
            "label": (RNG.random(len(slide)) < 0.3).astype(int),
            "Scanner": scanner,
            "raw_Scanner": [s.replace("Hamamatsu XR", "Hamammatsu XR") for s in scanner],
            "Origin": "somewhere",
            "Species": "Human",
            "Tumor": "human breast cancer",
        }
    )


def make_run(folder, df: pd.DataFrame, signal: float, kind: str = "kfold", overrides=()):
    folder.mkdir(parents=True)
    y = df["label"].to_numpy()
    p = np.clip(0.5 + signal * (y - 0.5) + RNG.normal(0, 0.2, len(y)), 0.001, 0.999)
    names = (
        df["fold"].map(lambda k: f"Scanner={SCANNERS[k % 3]}")
        if kind == "leave_scanner_out"
        else "fold" + df["fold"].astype(str)
    )
    df.assign(fold_name=names).to_csv(folder / "splits.csv", index=False)
    cfg = config_io.load("default_model", list(overrides))
    (folder / "config.yaml").write_text(config_io.dump(cfg))
    for k, g in df.assign(probability=p).groupby("fold"):
        (folder / f"fold{k}").mkdir()
        g.to_csv(folder / f"fold{k}" / "oof.csv", index=False)
        (folder / f"fold{k}" / "done.json").write_text("{}")
        pd.DataFrame({"epoch": [1, 2], "seconds": [30.0, 30.0]}).to_csv(folder / f"fold{k}" / "epochs.csv", index=False)
    oof_io.pool(folder, n_boot=50)
    return folder


def export_of(run, model_dir):
    """A toy ensemble standing in for `training.export RUN`: trained, threshold and provenance from RUN."""
    make_toy_ensemble(model_dir, members=2)
    result = json.loads((run / "oof_metrics.json").read_text())
    m = load_manifest(model_dir)
    save_manifest(
        dataclasses.replace(
            m,
            trained=True,
            threshold=result["threshold"],
            provenance={"run": str(run.resolve()), "threshold": result["threshold"], "oof_metrics": result},
        ),
        model_dir,
    )
    return model_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base, df = tmp_path_factory.mktemp("runs"), table()
    plain_off = ["mixstyle.enabled=false", "align.enabled=false", "ema.enabled=false"]
    return {
        "recipe": make_run(base / "recipe", df, 0.6),
        "plain": make_run(base / "plain", df, 0.1, overrides=plain_off),
        "loso": make_run(
            base / "loso",
            df.assign(fold=df["fold"] % 3),
            0.5,
            kind="leave_scanner_out",
            overrides=["splits.kind=leave_scanner_out"],
        ),
    }


def test_the_better_run_is_shipped_and_every_figure_lands_in_the_card(runs, tmp_path):
    model = export_of(runs["recipe"], tmp_path / "model")
    card, oof = card_io.build(model, runs["recipe"], runs["plain"], runs["loso"], n_boot=50)
    assert card["shipped"] == "recipe"
    card_io.write(model, card, oof)
    text = (model / card_io.README).read_text()
    assert text == card_io.render(json.loads((model / card_io.CARD_JSON).read_text()))
    recipe = card["runs"]["recipe"]["oof"]
    assert f"{recipe['at_threshold']['balanced_accuracy']:.3f}" in text and "The recipe beats" in text
    assert set(card["runs"]["recipe"]["per_scanner"]) == set(SCANNERS)
    assert set(card["loso"]["held_out"]) == {f"Scanner={s}" for s in SCANNERS}
    assert card["data"]["raw_scanner_values"] == sorted({"Aperio ScanScope CS2", "Hamamatsu S360", "Hamammatsu XR"})
    assert card["data"]["figures"] == len(oof) == 300
    assert list(oof.columns) == ["image_id", "slide", "fold", "probability"]  # no labels leave the data
    assert card["runs"]["recipe"]["train_minutes"] == 5.0  # 5 folds x 2 epochs x 30 s


def test_a_folder_holding_the_worse_run_is_refused(runs, tmp_path):
    model = export_of(runs["plain"], tmp_path / "model")
    with pytest.raises(AmfError, match=r"not hold the export of the better run \(recipe"):
        card_io.build(model, runs["recipe"], runs["plain"], n_boot=20)
    assert (
        card_io.main(
            ["--model", str(model), "--recipe", str(runs["recipe"]), "--plain", str(runs["plain"]), "--n-boot", "20"]
        )
        == 2
    )
    assert not (model / card_io.README).exists()


def test_when_the_baseline_wins_the_card_says_so_and_ships_it(runs, tmp_path):
    model = export_of(runs["recipe"], tmp_path / "model")
    # swap the roles: the strong run is now called the plain baseline
    card, _ = card_io.build(model, runs["plain"], runs["recipe"], n_boot=50)
    assert card["shipped"] == "plain"
    assert "**The recipe does not beat the plain baseline**" in card_io.render(card)


def honest_run(folder, df: pd.DataFrame, signal: float, folds_done, epochs=3):
    """A made-up run trained with train.selection=last: fold oof.csv, done.json and epochs.csv per finished fold."""
    folder.mkdir(parents=True)
    df.assign(fold_name="fold" + df["fold"].astype(str)).to_csv(folder / "splits.csv", index=False)
    (folder / "config.yaml").write_text(config_io.dump(config_io.load("default_model", ["train.selection=last"])))
    y = df["label"].to_numpy()
    p = np.clip(0.5 + signal * (y - 0.5) + RNG.normal(0, 0.2, len(y)), 0.001, 0.999)
    for k, g in df.assign(probability=p).groupby("fold"):
        if k not in folds_done:
            continue
        (folder / f"fold{k}").mkdir()
        g.to_csv(folder / f"fold{k}" / "oof.csv", index=False)
        (folder / f"fold{k}" / "done.json").write_text(
            json.dumps({"best_epoch": epochs, "selection": "last", "ema_decay": 0.99})
        )
        pd.DataFrame(
            {
                "epoch": range(1, epochs + 1),
                "seconds": 30.0,
                "val_balanced_accuracy": [0.6, 0.7, 0.65],
                "val_roc_auc": [0.7, 0.75, 0.72],
            }
        ).to_csv(folder / f"fold{k}" / "epochs.csv", index=False)
    return folder


def test_selection_free_figures_land_beside_the_old_ones(runs, tmp_path, monkeypatch):
    df = table()
    votes = df.drop(columns=["slide", "fold"]).assign(
        soft=np.where(RNG.random(len(df)) < 0.2, 2 / 3, df["label"]), source="official"
    )
    monkeypatch.setattr(card_io, "official_votes", lambda data_dir: votes)
    model = export_of(runs["recipe"], tmp_path / "model")
    card, oof = card_io.build(model, runs["recipe"], runs["plain"], runs["loso"], n_boot=50)
    card_io.write(model, card, oof)
    done = honest_run(tmp_path / "honest", df, 0.5, folds_done=range(5))
    part = honest_run(tmp_path / "part", df, 0.5, folds_done=[1, 3])
    before = json.loads((model / card_io.CARD_JSON).read_text())
    assert (
        card_io.main(
            [
                "--model",
                str(model),
                "--selection-free",
                "--data",
                "unused",
                "--honest-recipe",
                str(done),
                "--honest-plain",
                str(part),
                "--n-boot",
                "30",
            ]
        )
        == 0
    )
    after = json.loads((model / card_io.CARD_JSON).read_text())
    sf = after.pop("selection_free")
    assert after == before  # the old figures stay as they were
    text = (model / card_io.README).read_text()
    assert text == card_io.render({**after, "selection_free": sf})
    nested = sf["shipped"]["oof"]["nested"]
    assert f"{nested['at_nested_threshold']['balanced_accuracy']:.3f}" in text and "## Selection-free figures" in text
    assert "## Out-of-fold figures (optimistic)" in text and "selection-free" in text
    assert set(sf["shipped"]["oof"]["by_vote"]) == {"unanimous", "split"}
    assert sf["runs"]["recipe"]["oof"]["selection"] == ["last"] and "nested" in sf["runs"]["recipe"]["oof"]
    assert sf["runs"]["plain"]["folds_done"] == [1, 3] and set(sf["runs"]["plain"]["per_fold"]) == {"1", "3"}
    assert "2 of 5 folds finished" in text and sf["not_run"] == ["loso", "soft"]
    gap = sf["runs"]["recipe"]["epoch_choice"]["0"]
    assert gap["kept_epoch"] == 3 and gap["best_epoch_on_held_out"] == 2
    assert gap["best_balanced_accuracy@0.5"] - gap["kept_balanced_accuracy@0.5"] == pytest.approx(0.05)


def test_a_run_that_chose_epochs_on_its_held_out_folds_is_not_called_selection_free(tmp_path):
    old = make_run(tmp_path / "old", table(), 0.5, overrides=["train.selection=validation"])
    with pytest.raises(AmfError, match="not selection-free"):
        card_io.honest_run(old, pd.DataFrame(), pd.DataFrame(), 10)


def _figures(df: pd.DataFrame, images, px: int) -> pd.DataFrame:
    """DF with the columns splits.csv has for official figures: source, and a path whose first image exists."""
    from PIL import Image

    from training.data import OFFICIAL_IMAGES

    folder = images / OFFICIAL_IMAGES
    folder.mkdir(parents=True)
    Image.new("RGB", (px, px), (200, 120, 180)).save(folder / df["image_id"].iloc[0])
    return df.assign(source="official", path=[str(folder / i) for i in df["image_id"]])


TYPED = (
    "≈0.95",
    "11,937",
    "about 0.984",
    "best of 16 shuffles",
    "runs/default_",
    "128×128",
    "128 px",
    "early and mid stages",
    "random initialisation",
    "No pretrained weights",
    "demonstration",
    "train.selection: validation",
    "best epochs",
    "alignment of pooled features",
    "three experts",
)  # the last: EXPERTS has three columns


def test_a_pretrained_convnext_run_renders_a_card_true_to_its_config_and_data(tmp_path):
    """A made-up run whose config says a pretrained ConvNeXt-Small: every fact on the card comes from the run."""
    df = _figures(table(n_slides=20, per_slide=6), tmp_path / "data", px=64)
    convnext = [
        "model.backbone=convnext_small",
        "model.pretrained=true",
        "splits.tries=4",
        "train.selection=last",
        "mixstyle.where=[stages.1]",
        "align.enabled=false",
    ]
    recipe = make_run(tmp_path / "cnx_recipe", df, 0.6, overrides=convnext)
    plain = make_run(
        tmp_path / "cnx_plain", df, 0.1, overrides=convnext + ["mixstyle.enabled=false", "ema.enabled=false"]
    )
    model = export_of(recipe, tmp_path / "model")
    card, oof = card_io.build(model, recipe, plain, n_boot=20)
    card_io.write(model, card, oof)
    text = (model / card_io.README).read_text()
    assert text == card_io.render(json.loads((model / card_io.CARD_JSON).read_text()))
    assert "fine-tuned from timm's pretrained `convnext_small` weights" in text
    assert "backbone `convnext_small`, pretrained True" in text
    assert card["data"]["figures"] == 120 and "120 figures" in text
    assert card["data"]["patch_px"] == 64 and "64×64 PNGs" in text and "resize of the 64 px patch" in text
    assert f"`{tmp_path / 'data'}`" in text  # the data folder, from splits.csv's paths
    assert "best of 4 shuffles" in text and card["runs"]["recipe"]["mixstyle_at"] == [["stages.1", 192]]
    assert "MixStyle (p 0.5, α 0.1) after `stages.1`" in text
    assert "Each fold kept its last epoch (`train.selection: last`)" in text
    assert "`--set mixstyle.enabled=false ema.enabled=false`" in text and card["same_folds"] is True
    assert "Plain baseline: the same config, folds and epochs" in text
    assert f"--plain {plain}" in text  # the run paths given to the card, and what they set on default_model
    sets = "--set model.backbone=convnext_small model.pretrained=true splits.tries=4 mixstyle.where=[stages.1]"
    assert f"--out {recipe} {sets} align.enabled=false\n" in text
    assert f"{sets} align.enabled=false mixstyle.enabled=false ema.enabled=false\n" in text  # the plain run
    assert "## Leave one" not in text and "leave-one-scanner-out" not in text  # no --loso run
    for fact in TYPED[:-1]:
        assert fact not in text, fact


def test_each_conditional_fact_follows_card_json(runs, tmp_path):
    """The default (random-init, validation-selected) card says what the pretrained one must not; and each
    initialisation is rendered from the config's pretrained/weights, not typed."""
    model = export_of(runs["recipe"], tmp_path / "model")
    card, _ = card_io.build(model, runs["recipe"], runs["plain"], runs["loso"], n_boot=20)
    text = card_io.render(card)
    for fact in (
        "random initialisation",
        "No pretrained weights",
        "demonstration",
        "alignment of pooled features",
        "three experts",
        "early and mid stages (`blocks.0`, `blocks.1`)",
        "best of 16 shuffles",
        "## Leave one scanner out",
        "Each fold kept its last epoch",
    ):
        assert fact in text, fact
    assert "300 figures" in text and "11,937" not in text and "≈0.95" not in text and "best epochs" not in text
    old = json.loads(json.dumps(card))  # runs from before train.selection existed chose on validation
    for run in old["runs"].values():
        run["config"]["train"]["selection"] = None
    text = card_io.render(old)
    assert "the old `train.selection: validation`" in text and "Thresholds and best epochs" in text
    assert "the same holds for both runs" in text and "last epoch" not in text
    weights = json.loads(json.dumps(card))
    weights["runs"]["recipe"]["config"]["model"]["weights"] = "/w/cnx.safetensors"
    text = card_io.render(weights)
    assert "fine-tuned from the weights `/w/cnx.safetensors`" in text and "random initialisation" not in text
    off = json.loads(json.dumps(card))
    off["runs"]["recipe"]["config"]["ema"]["enabled"] = False
    assert "EMA teacher" not in card_io.render(off) and "EMA teacher" in card_io.render(card)


def test_the_shipped_predictions_keep_their_ids_and_slides_as_written(tmp_path):
    # model/oof.csv is read by training.run.read_predictions: "NA" is an id, not a missing value
    ids, slides = ["NA", "007.png", "1e3"], ["NA", "001", "002"]
    pd.DataFrame({"image_id": ids, "slide": slides, "fold": [0, 1, 2], "probability": [0.1, 0.6, 0.9]}).to_csv(
        tmp_path / card_io.OOF_CSV, index=False
    )
    votes = pd.DataFrame({"image_id": ids, "label": [0, 1, 1], "soft": [0.0, 1.0, 2 / 3]})
    merged = card_io.shipped_oof(tmp_path, votes)
    assert merged["image_id"].tolist() == ids and merged["slide"].tolist() == slides
    assert merged["label"].tolist() == [0, 1, 1]
