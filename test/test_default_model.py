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
from training.results import threshold
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
    # the threshold's source is the run whose rule won; the out-of-fold rule's predictions are the run's own or
    # the recipe run re-predicted under the shipped TTA (one of the card's TTA runs, that mode, that base)
    source, shift = card["ensemble"]["threshold_predictions"], card.get("threshold_for_shift")
    assert source == threshold.source(m.provenance) and source["rule"] == (shift["chosen"] if shift else "oof")
    assert source["run"] == (shift[f"{shift['chosen']}_run"] if shift else source["run"])
    oof_on = threshold.oof_predictions(
        m.provenance.get("threshold_predictions"), m.provenance.get("threshold_for_shift")
    )
    if oof_on == m.provenance["run"]:  # the run's own one-view predictions
        assert shipped["at_threshold"] == m.provenance["oof_metrics"]["at_threshold"]
    else:
        tta_run = next(r for r in card["tta"]["runs"] if r["run"] == oof_on)
        assert source["tta"] == tta_run["mode"] == m.tta != "none" and tta_run["base"] == "recipe"
        auc = tta_run["compare"]["metrics"]["roc_auc"]["b"]  # all folds' figures
        assert auc == pytest.approx(m.provenance["oof_metrics"]["at_threshold"]["roc_auc"])
    assert [x["file"] for x in card["ensemble"]["members"]] == [x.file for x in m.members]
    assert card["ensemble"]["total_bytes"] == sum((MODEL / x.file).stat().st_size for x in m.members)
    # the recipe run ships by decision, not by its figures
    assert card["shipped"] == "recipe"
    assert m.provenance["run"] == card["runs"]["recipe"]["run"]


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
    checked = 0
    for member in m.members:
        if member.fold is None:  # trained on all figures: no held-out figure; oof.csv is its cross-validated run's
            continue
        checked += 1
        held_out = shipped_oof[shipped_oof["fold"] == member.fold]
        pick = held_out.iloc[np.sort(rng.choice(len(held_out), min(16, len(held_out)), replace=False))]
        stack = jobs.write_job(tmp_path / f"job{member.fold}", [decode(paths[i]) for i in pick["image_id"]], "s.mha")
        pages = jobs.read_stack(stack)  # the container's reader
        x = prepare(pages, member.input_size, member.mean, member.std, member.resize)
        sess = ort.InferenceSession(str(m.path(member.file)), providers=["CPUExecutionProvider"])
        p = sigmoid(sess.run(None, {sess.get_inputs()[0].name: x})[0].reshape(-1))
        # an fp16 member moves P(atypical) by up to export.fp16_tol from the fp32 model that predicted oof.csv
        tol = 1e-3 + (float(m.provenance["config"]["export"]["fp16_tol"]) if member.precision == "fp16" else 0.0)
        np.testing.assert_allclose(
            p,
            pick["probability"].to_numpy(),
            atol=tol,
            rtol=0,
            err_msg=f"member {member.file} on its held-out fold {member.fold}",
        )
    if not checked:
        pytest.skip("one member trained on all figures: it has no out-of-fold predictions of its own to be checked on")


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

    m, source = load_manifest(MODEL), card["ensemble"]["threshold_predictions"]
    files = {run: MODEL / name for name, run in (card.get("predictions") or {}).items()}
    files[card["runs"]["recipe"]["run"]] = MODEL / OOF_CSV
    p = pd.read_csv(files[source["run"]], dtype={"image_id": str, "slide": str})
    merged = p.merge(card_table[["image_id", "label"]], on="image_id", how="left", validate="1:1")
    assert merged["label"].notna().all() and len(merged) == card["data"]["figures"]
    assert best_threshold(merged["label"].to_numpy(int), merged["probability"].to_numpy()) == pytest.approx(
        m.threshold, abs=1e-6
    )


def test_no_file_of_the_model_folder_names_a_path_of_the_machine_that_made_it():
    """The folder goes into the image and the model tarball: its runs are named relative to the runs folder, its
    data as given relative to the project or by name (training.export.paths)."""
    from training.export.paths import absolute_paths

    found = {}
    for f in sorted(MODEL.rglob("*")):
        if f.is_file() and f.suffix in (".json", ".md", ".csv"):
            found |= {f"{f.relative_to(MODEL)}: {p}": 1 for p in absolute_paths(f.read_text())}
    assert not found, sorted(found)[:10]


def test_the_card_states_the_fold_algorithm_that_made_the_folds(card, shipped_oof, card_table):
    """The card names the algorithm and its strata from training.splits, and says the code makes these folds of
    these figures today: recomputed here from the data, they are oof.csv's."""
    from training import splits

    f, cfg = card["data"]["folds"], card["runs"]["recipe"]["config"]["splits"]
    if cfg["kind"] != "kfold":
        pytest.skip("the model's folds leave a domain out: no fold algorithm")
    assert f["by"] == "training.splits.kfold_assign" and f["strata"] == list(splits.STRATA)
    table = card_table.drop(columns=["slide"]).merge(shipped_oof, on="image_id", validate="1:1")
    again = splits.make_splits(table, "kfold", cfg["folds"], cfg["seed"], cfg["tries"])
    same = again.set_index("image_id")["fold"].loc[table["image_id"]].to_numpy() == table["fold"].to_numpy()
    assert f["recomputed"] == bool(same.all())
    text = (MODEL / README).read_text()
    assert f"{cfg['folds']} folds by `training.splits.kfold_assign`" in text and "StratifiedGroupKFold" not in text
    assert ("the code makes the same folds of these figures today" in text) == f["recomputed"]


@pytest.mark.slow  # decodes every figure of the data folders the card checked
def test_the_cards_overlap_with_other_data_recomputes_from_the_fingerprints(card):
    """Each data folder the card checked against the training figures (--overlap): its figures and how many the
    model trained on, by content; where a benchmark says a layout holds part of its test split, the card's count of
    those figures is the folder's figures the model never trained on."""
    from conftest import SHARED, need

    from training.card.build import overlap_facts

    if not card.get("overlap"):
        pytest.skip("the card checked no other data")
    text = (MODEL / README).read_text()
    for o in card["overlap"]:
        folder = need(Path(o["dir"]) if Path(o["dir"]).exists() else SHARED / Path(o["dir"]).name)
        (got,) = overlap_facts(MODEL, [folder])
        assert (got["figures"], got["trained_on"], got["layout"]) == (o["figures"], o["trained_on"], o["layout"])
        assert (
            f"`{o['dir']}` ({o['layout']} layout): {o['figures']} figures, {o['trained_on']} of them trained on" in text
        )
        held = ((card.get("benchmark") or {}).get("test_split") or {}).get("held")
        if held and held["layout"] == o["layout"] and o["trained_on"] == card["data"]["sources"][held["source"]]:
            n = o["figures"] - o["trained_on"]
            assert f"the other {n} are the {held['source']} part of the benchmark's in-domain test split" in text
            assert "which this project does not hold" not in text
