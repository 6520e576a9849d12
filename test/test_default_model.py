"""The model in model/ (the shipped default, or any model training.export or training.pipeline wrote there): trained,
within its size budget, its card true to its files and to the data it names.

The size budget is the default model's (training/configs/default_model.yaml: 40 MB, at least 3 members); any other
model is held to the platform's real limit (an image of at most 10 GB holds it). A model without a card (a bare
export) skips the card's checks. The data checks read the labels and PNGs of the folder the card names (skipped
where it is absent; the default model's: ../shared/data/midog25-breast) and hold the container's path (SimpleITK
stack reading, amf.preprocess, onnxruntime) against what training measured (PIL decoding, the same preprocessing,
torch).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from conftest import ROOT

from amf import jobs
from amf.ensemble import sigmoid
from amf.manifest import load as load_manifest
from amf.preprocess import prepare
from training.card.render import CARD_VERSION, SHOWN, render, verdict
from training.data import decode, read_labelled
from training.ownership import CARD_JSON, OOF_CSV, README
from training.results.oof import compute

MODEL = ROOT / "model"
BUDGETS = {name: (40 * 10**6, 3) for name in ("default_model", "default_model_v3")}  # config name -> (bytes, members)
PLATFORM_BYTES = 10 * 10**9  # Grand Challenge's image limit: the model (in the image or its tarball) must fit in it


@pytest.fixture(scope="module")
def card() -> dict:
    if not (MODEL / CARD_JSON).is_file():
        pytest.skip("model/ has no card (a bare export): python -m training.card, or training.pipeline, writes one")
    card = json.loads((MODEL / CARD_JSON).read_text())
    assert card.get("card_version") == CARD_VERSION, "model/card.json is of an older layout: rebuild it (training.card)"
    return card


@pytest.fixture(scope="module")
def shipped_oof(card) -> pd.DataFrame:
    return pd.read_csv(MODEL / OOF_CSV, dtype={"image_id": str, "slide": str})


@pytest.fixture(scope="module")
def card_table(card):
    """The labelled table of the data folder the card names, in its layout (v2: the breast slice, official; v3:
    amibr-train, AMi-Br's), here or under ../shared/data."""
    from conftest import model_data_dir

    table = read_labelled(model_data_dir(card))
    if set(card["data"].get("sources") or {"official": 0}) != set(table["source"]):
        pytest.skip("the card's figures include extra sets: their labels are not in the data folder's table")
    return table


def test_the_model_is_trained_and_within_its_size_budget():
    m = load_manifest(MODEL)
    assert m.trained
    total = sum(f.stat().st_size for f in MODEL.rglob("*") if f.is_file())
    limit, members = BUDGETS.get(m.provenance.get("config", {}).get("name"), (PLATFORM_BYTES, 1))
    assert len(m.members) >= members
    assert total <= limit, f"model/ is {total / 1e6:.1f} MB, over {limit / 1e6:.0f} MB"


def test_the_card_is_rendered_from_card_json_and_matches_the_manifest(card):
    assert (MODEL / README).read_text() == render(card)
    m = load_manifest(MODEL)
    shipped = card["runs"][card["shipped"]]["oof"]
    # the shipped threshold: training.results.threshold's choice for scanner shift where the export made one, else the
    # shipped run's pooled out-of-fold threshold
    chosen = card.get("threshold_for_shift", {}).get("threshold", shipped["threshold"])
    assert m.threshold == pytest.approx(chosen) == pytest.approx(m.provenance["threshold"])
    assert m.threshold == pytest.approx(card["ensemble"]["threshold"]) and m.tta == card["ensemble"]["tta"]
    chosen_on = m.provenance.get("threshold_predictions") or {"run": m.provenance["run"], "tta": "none"}
    if Path(chosen_on["run"]).resolve() == Path(m.provenance["run"]).resolve():  # the run's own one-view predictions
        assert shipped["at_threshold"] == m.provenance["oof_metrics"]["at_threshold"]
    else:  # the recipe run re-predicted under the shipped TTA: one of the card's TTA runs, that mode, that base
        assert chosen_on["tta"] == m.tta != "none"
        tta_runs = {Path(r["run"]).resolve(): r for r in card["tta"]["runs"]}
        assert tta_runs[Path(chosen_on["run"]).resolve()]["base"] == "recipe"
        assert tta_runs[Path(chosen_on["run"]).resolve()]["mode"] == m.tta
        auc = tta_runs[Path(chosen_on["run"]).resolve()]["compare"]["metrics"]["roc_auc"]["b"]  # all folds' figures
        assert auc == pytest.approx(m.provenance["oof_metrics"]["at_threshold"]["roc_auc"])
    assert [x["file"] for x in card["ensemble"]["members"]] == [x.file for x in m.members]
    assert card["ensemble"]["total_bytes"] == sum((MODEL / x.file).stat().st_size for x in m.members)
    # the recipe run ships by decision, not by its figures
    assert card["shipped"] == "recipe"
    assert Path(m.provenance["run"]).resolve() == Path(card["runs"]["recipe"]["run"]).resolve()


def test_the_card_says_plainly_how_the_recipe_did_against_plain_and_why_it_ships(card):
    if "compare" not in card:
        pytest.skip("no plain control run: nothing compared")
    text = verdict(card)  # the verdict reports the difference; the run shipped was decided before
    v = (
        card["compare"]["metrics"].get("balanced_accuracy@nested_thresholds")
        or card["compare"]["metrics"]["balanced_accuracy@0.5"]
    )
    assert f"{v['b_minus_a']:+.3f}" in text and card["shipped_rule"] in text
    assert text in (MODEL / README).read_text()


def test_the_cards_figures_recompute_from_oof_csv_and_the_official_labels(card, shipped_oof, card_table):
    merged = shipped_oof.merge(card_table.drop(columns=["slide"]), on="image_id", how="left", validate="1:1")
    assert merged["label"].notna().all() and len(merged) == card["data"]["figures"] == len(card_table)
    got = compute(merged, n_boot=10)
    want = card["runs"][card["shipped"]]["oof"]
    assert got["threshold"] == pytest.approx(want["threshold"])
    for key in SHOWN:
        assert got["at_threshold"][key] == pytest.approx(want["at_threshold"][key], abs=1e-6), key
    assert sorted(merged["fold"].unique()) == [x.fold for x in load_manifest(MODEL).members]
    # member k held out fold k, and no slide is in two folds
    assert merged.groupby("slide")["fold"].nunique().max() == 1


def test_each_member_gives_its_out_of_fold_probabilities_through_the_container_path(shipped_oof, card_table, tmp_path):
    m = load_manifest(MODEL)
    paths = dict(zip(card_table["image_id"], card_table["path"]))
    rng = np.random.default_rng(0)
    for member in m.members:
        held_out = shipped_oof[shipped_oof["fold"] == member.fold]
        pick = held_out.iloc[np.sort(rng.choice(len(held_out), min(16, len(held_out)), replace=False))]
        stack = jobs.write_job(tmp_path / f"job{member.fold}", [decode(paths[i]) for i in pick["image_id"]], "s.mha")
        pages = jobs.read_stack(stack)  # the container's reader
        x = prepare(pages, member.input_size, member.mean, member.std, member.resize)
        sess = ort.InferenceSession(str(m.path(member.file)), providers=["CPUExecutionProvider"])
        p = sigmoid(sess.run(None, {sess.get_inputs()[0].name: x})[0].reshape(-1))
        np.testing.assert_allclose(
            p,
            pick["probability"].to_numpy(),
            atol=1e-3,
            rtol=0,
            err_msg=f"member {member.file} on its held-out fold {member.fold}",
        )


def test_the_selection_free_figures_recompute_from_oof_csv_and_the_official_votes(card, shipped_oof, card_table):
    """The shipped members' nested-threshold and by-vote figures: each fold's threshold from the other folds only."""
    from training.metrics import roc_auc, summary
    from training.results.threshold import best_threshold

    sf = card["runs"][card["shipped"]]["oof"]
    merged = shipped_oof.merge(card_table.drop(columns=["slide"]), on="image_id", how="left", validate="1:1")
    y, p, fold = merged["label"].to_numpy(int), merged["probability"].to_numpy(), merged["fold"].to_numpy()
    thr = {k: best_threshold(y[fold != k], p[fold != k]) for k in np.unique(fold)}
    assert {str(k): v for k, v in thr.items()} == pytest.approx(sf["nested"]["thresholds"])
    pred = (p >= np.array([thr[k] for k in fold])).astype(int)
    assert summary(y, p, y_pred=pred)["balanced_accuracy"] == pytest.approx(
        sf["nested"]["at_nested_threshold"]["balanced_accuracy"], abs=1e-9
    )
    unanimous = merged["soft"].isin([0.0, 1.0]).to_numpy()
    assert roc_auc(y[unanimous], p[unanimous]) == pytest.approx(sf["by_vote"]["unanimous"]["at_threshold"]["roc_auc"])
    assert roc_auc(y[~unanimous], p[~unanimous]) == pytest.approx(sf["by_vote"]["split"]["at_threshold"]["roc_auc"])
    text = (MODEL / README).read_text()
    assert (
        "## Out-of-fold figures" in text and f"{sf['nested']['at_nested_threshold']['balanced_accuracy']:.3f}" in text
    )


def test_the_shipped_threshold_recomputes_from_the_predictions_the_folder_ships(card, shipped_oof, card_table):
    """The rule that chose the threshold, re-run on the model folder's own files and the data's labels: the
    out-of-fold rule on the predictions it names (the re-prediction under the shipped TTA), or, where the threshold
    for shift chose the loso rule, on the leave-one-out predictions."""
    from training.results.threshold import best_threshold

    m, e, shift = load_manifest(MODEL), card["ensemble"], card.get("threshold_for_shift")
    files = {Path(run).resolve(): MODEL / name for name, run in (card.get("predictions") or {}).items()}
    files[Path(card["runs"]["recipe"]["run"]).resolve()] = MODEL / OOF_CSV
    chosen_on = (e.get("threshold_predictions") or {}).get("run") or card["runs"]["recipe"]["run"]
    if shift and shift["chosen"] == "loso":
        chosen_on = shift["loso_run"]
    if Path(chosen_on).resolve() not in files:
        pytest.skip("the model folder does not ship the predictions its threshold was chosen on (a card before v3)")
    p = pd.read_csv(files[Path(chosen_on).resolve()], dtype={"image_id": str, "slide": str})
    merged = p.merge(card_table[["image_id", "label"]], on="image_id", how="left", validate="1:1")
    assert merged["label"].notna().all() and len(merged) == card["data"]["figures"]
    assert best_threshold(merged["label"].to_numpy(int), merged["probability"].to_numpy()) == pytest.approx(
        m.threshold, abs=1e-6
    )
