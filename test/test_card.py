"""training.card on made-up runs: it ships the recipe run (decided before the figures), refuses a model folder that
holds another run, compares a partial plain run on the folds both finished, and renders every figure from card.json:
nested thresholds, the threshold for scanner shift, test-time augmentation; a card.json of an older layout is refused
in one line. Run folders are named relative to the runs folder (the recipe run's parent), here tmp folders'
names."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from toy_models import make_toy_ensemble

from amf import AmfError
from amf.manifest import load as load_manifest
from amf.manifest import save as save_manifest
from training import config as config_io
from training.card import __main__ as card_cli
from training.card import build as card_build
from training.card.render import render, verdict
from training.export.paths import relocate
from training.ownership import CARD_JSON, OOF_CSV, README
from training.results import oof as oof_io
from training.results import threshold
from training.rundir import RunDir

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


def make_run(folder, df: pd.DataFrame, signal: float, kind: str = "kfold", overrides=(), done=None):
    """A made-up run folder: splits.csv, config.yaml, per finished fold (DONE, all by default) oof.csv, done.json and
    epochs.csv; pooled by training.results.oof when every fold is done."""
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
    done = sorted(df["fold"].unique()) if done is None else done
    for k, g in df.assign(probability=p).groupby("fold"):
        if k not in done:
            continue
        (folder / f"fold{k}").mkdir()
        g.to_csv(folder / f"fold{k}" / "oof.csv", index=False)
        (folder / f"fold{k}" / "done.json").write_text(json.dumps({"selection": cfg["train"]["selection"]}))
        pd.DataFrame({"epoch": [1, 2], "seconds": [30.0, 30.0]}).to_csv(folder / f"fold{k}" / "epochs.csv", index=False)
    if set(done) == set(df["fold"]):
        oof_io.pool(folder, n_boot=50)
    return folder


def tta_of(run, folder, mode: str = "d4", shift: float = 0.05):
    """A run as training.results.tta_oof writes it: RUN's folds re-predicted (here: probabilities moved), from_run in
    each done.json, export.tta in the config."""
    src = RunDir(run)
    folder.mkdir(parents=True)
    cfg = src.read_config()
    cfg["export"]["tta"] = mode
    (folder / "config.yaml").write_text(config_io.dump(cfg))
    (folder / "splits.csv").write_text(src.splits.read_text())
    for f in src.fold_dirs():
        (folder / f.path.name).mkdir()
        oof = f.read_oof()
        oof["probability"] = np.clip(oof["probability"] + shift * (oof["label"] - 0.5), 0.001, 0.999)
        oof.to_csv(folder / f.path.name / "oof.csv", index=False)
        (folder / f.path.name / "done.json").write_text(json.dumps({"tta": mode, "from_run": str(src.path.resolve())}))
    oof_io.pool(folder, n_boot=20)
    return folder


def export_of(run, model_dir, shift_run=None, tta: str = "none", **provenance):
    """A toy ensemble standing in for `training.export RUN [--threshold-run R] [--shift-run LOSO] [--tta MODE]`:
    trained, threshold and provenance from RUN (with SHIFT_RUN: training.results.threshold's choice on the
    out-of-fold predictions it names, threshold_predictions' run or RUN, as export makes it), every path relocated
    as export relocates it."""
    make_toy_ensemble(model_dir, members=2)
    result = json.loads((run / "oof_metrics.json").read_text())
    chosen = result["threshold"]
    if shift_run is not None:
        oof_run = Path(provenance.get("threshold_predictions", {}).get("run") or run)
        mode = RunDir(oof_run).predicted_tta()
        made = threshold.for_export(RunDir(oof_run).read_oof(), result, mode, mode, shift_run, 0, oof_run)
        provenance |= {"threshold_for_shift": made["shift"], "threshold_predictions": made["source"]}
        chosen = made["threshold"]
    m = load_manifest(model_dir)
    provenance = {"run": str(run), "threshold": chosen, "oof_metrics": result, **provenance}
    save_manifest(
        dataclasses.replace(m, trained=True, threshold=chosen, tta=tta, provenance=relocate(provenance, run.parent)),
        model_dir,
    )
    return model_dir


PLAIN_OFF = ["mixstyle.enabled=false", "align.enabled=false", "ema.enabled=false"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base, df = tmp_path_factory.mktemp("runs"), table()
    out = {
        "recipe": make_run(base / "recipe", df, 0.6),
        "plain": make_run(base / "plain", df, 0.1, overrides=PLAIN_OFF),
        "partial": make_run(base / "partial", df, 0.1, overrides=PLAIN_OFF, done=[0, 1]),
        "loso": make_run(
            base / "loso",
            df.assign(fold=df["Scanner"].map({s: k for k, s in enumerate(SCANNERS)})),  # a fold per scanner
            0.5,
            kind="leave_scanner_out",
            overrides=["splits.kind=leave_scanner_out"],
        ),
    }
    out["loso_d4"] = tta_of(out["loso"], base / "loso_tta_d4", "d4", shift=0.1)
    out["recipe_flips"] = tta_of(out["recipe"], base / "recipe_tta_flips", "flips", shift=-0.05)
    return out


def test_every_figure_lands_in_the_card_and_the_readme_renders_from_card_json_alone(runs, tmp_path):
    model = export_of(runs["recipe"], tmp_path / "model")
    card, tables = card_build.build(model, runs["recipe"], runs["plain"], runs["loso"], n_boot=50)
    assert card["shipped"] == "recipe" and card["card_version"] == 3
    card_build.write(model, card, tables)
    oof = tables[OOF_CSV]
    text = (model / README).read_text()
    assert text == render(json.loads((model / CARD_JSON).read_text()))
    recipe = card["runs"]["recipe"]["oof"]
    nested = recipe["nested"]["at_nested_threshold"]
    assert recipe["folds"] == recipe["folds_done"] == [0, 1, 2, 3, 4] and recipe["selection"] == ["last"]
    for value in (nested["balanced_accuracy"], recipe["at_threshold"]["balanced_accuracy"], recipe["threshold"]):
        assert f"{value:.3f}" in text
    assert set(card["runs"]["recipe"]["per_scanner"]) == set(SCANNERS)
    assert "at_nested_threshold" in card["runs"]["recipe"]["per_scanner"][SCANNERS[0]]
    held = card["loso"]["held_out"]
    assert set(held) == {f"Scanner={s}" for s in SCANNERS}
    # each held-out scanner at the threshold the other scanners chose (training.results.oof's nested thresholds)
    loso = card["loso"]["pooled"]
    for k, s in enumerate(SCANNERS):
        assert held[f"Scanner={s}"]["nested_threshold"] == loso["nested"]["thresholds"][str(k)]
        assert f"| {s} | " in text and f"{held[f'Scanner={s}']['nested_threshold']:.3f}" in text
    assert card["compare"]["folds"] == [0, 1, 2, 3, 4] and "balanced_accuracy@nested_thresholds" in text
    assert card["data"]["raw_scanner_values"] == sorted({"Aperio ScanScope CS2", "Hamamatsu S360", "Hamammatsu XR"})
    assert card["data"]["figures"] == len(oof) == 300
    assert list(oof.columns) == ["image_id", "slide", "fold", "probability"]  # no labels leave the data
    assert card["runs"]["recipe"]["train_minutes"] == 5.0  # 5 folds x 2 epochs x 30 s
    assert "## Threshold for scanner shift" not in text and "## Test-time augmentation" not in text  # not given


def test_the_recipe_ships_even_when_the_plain_run_scores_higher(runs, tmp_path):
    # the strong run is given as the plain baseline: the card still ships the recipe run and says by how much it lost
    model = export_of(runs["plain"], tmp_path / "model")
    card, _ = card_build.build(model, runs["plain"], runs["recipe"], n_boot=30)
    bal = {n: r["oof"]["nested"]["at_nested_threshold"]["balanced_accuracy"] for n, r in card["runs"].items()}
    assert bal["plain"] > bal["recipe"] and card["shipped"] == "recipe"
    diff = card["compare"]["metrics"]["balanced_accuracy@nested_thresholds"]["b_minus_a"]
    assert diff < 0 and f"{diff:+.3f}" in verdict(card) and "decided before the figures" in render(card)
    assert "ship the better" not in render(card) and "does not beat" not in render(card)


def test_a_folder_not_holding_the_recipe_runs_export_is_refused(runs, tmp_path, capsys):
    model = export_of(runs["plain"], tmp_path / "model")
    with pytest.raises(AmfError, match=rf"not hold the export of the recipe run .*training.export {runs['recipe']}"):
        card_build.build(model, runs["recipe"], runs["plain"], n_boot=20)
    args = ["--model", str(model), "--recipe", str(runs["recipe"]), "--plain", str(runs["plain"]), "--n-boot", "20"]
    assert card_cli.main(args) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: ")
    assert not (model / README).exists() and not (model / CARD_JSON).exists()


def test_a_partial_plain_run_is_compared_on_the_folds_both_finished(runs, tmp_path):
    model = export_of(runs["recipe"], tmp_path / "model")
    card, tables = card_build.build(model, runs["recipe"], runs["partial"], n_boot=30, plain_partial_reason="CPU time")
    oof = tables[OOF_CSV]
    c, plain = card["compare"], card["runs"]["plain"]
    assert c["folds"] == [0, 1] and c["complete"] == {"a": False, "b": True}
    assert c["n_figures"] == int(oof["fold"].isin([0, 1]).sum()) == plain["oof"]["n"] < len(oof)
    assert plain["oof"]["folds_done"] == [0, 1] and plain["oof"]["folds"] == [0, 1, 2, 3, 4]
    assert set(plain["oof"]["per_fold"]) == {"0", "1"} and card["runs"]["recipe"]["oof"]["n"] == len(oof)
    card_build.write(model, card, tables)
    text = (model / README).read_text()
    assert text == render(json.loads((model / CARD_JSON).read_text()))
    assert (
        "trained on folds 0, 1 of 5 only (CPU time)" in text and "on folds 0, 1, the folds both runs finished" in text
    )
    assert text.count("| not trained | not trained |") == 3  # folds 2-4 of the fold table
    assert plain["run"] == "partial" and card["runs_dir"] == runs["recipe"].parent.name  # relative to the runs folder
    assert f"--out $R/{plain['run']} --set mixstyle.enabled=false" in text and "# folds 0, 1: one --fold K each" in text
    assert f"python -m training.results.oof $R/{plain['run']}" not in text  # a partial run is not pooled


def test_the_wording_follows_each_runs_selection(runs, tmp_path):
    model = export_of(runs["recipe"], tmp_path / "model")
    card, _ = card_build.build(model, runs["recipe"], runs["plain"], n_boot=20)
    text = render(card)
    assert "chosen on that fold" not in text and "Each fold kept its last epoch (`train.selection: last`)" in text
    assert "selection-free in the epoch" in text and "optimistic (chosen on the figures it is reported on)" in text
    df = table()
    old = make_run(tmp_path / "old", df, 0.6, overrides=["train.selection=validation"])
    old_plain = make_run(tmp_path / "old_plain", df, 0.1, overrides=["train.selection=validation", *PLAIN_OFF])
    card, _ = card_build.build(export_of(old, tmp_path / "m2"), old, old_plain, n_boot=20)
    text = render(card)
    assert card["runs"]["recipe"]["oof"]["selection"] == ["validation"]
    assert "The best epoch of each fold was chosen on that fold's validation" in text
    assert "selection-free in the epoch" not in text and "no (epoch chosen on the fold)" in text


def test_the_threshold_for_scanner_shift_is_rendered_with_the_rule_that_shipped(runs, tmp_path):
    model = export_of(runs["recipe"], tmp_path / "model", shift_run=runs["loso"])
    card, _ = card_build.build(model, runs["recipe"], runs["plain"], runs["loso"], n_boot=20)
    shift = card["threshold_for_shift"]
    assert shift == load_manifest(model).provenance["threshold_for_shift"]
    assert card["ensemble"]["threshold"] == shift["threshold"] == shift["rules"][shift["chosen"]]["threshold"]
    text = render(card)
    assert "## Threshold for scanner shift" in text
    assert f"Shipped: the {shift['chosen']} rule (chosen between the two on this table's nested column" in text
    assert f"threshold {shift['threshold']:.3f}. The rule: {shift['rule']}" in text
    for rule, r in shift["rules"].items():
        assert f"| {rule}{' (shipped)' if rule == shift['chosen'] else ''} | {r['threshold']:.3f} | " in text
        assert f"{r['nested_loso']['balanced_accuracy']:.3f}" in text
    assert "--shift-run $R/loso" in text and shift["loso_run"] == "loso" and shift["oof_run"] == "recipe"


def test_each_tta_run_is_paired_with_the_run_it_re_predicted(runs, tmp_path):
    chosen_on = {"run": "runs/v2_recipe_tta_d4", "tta": "d4"}  # training.export's provenance
    model = export_of(runs["recipe"], tmp_path / "model", tta="d4", threshold_predictions=chosen_on)
    tta = [runs["loso_d4"], runs["recipe_flips"]]
    card, _ = card_build.build(model, runs["recipe"], runs["plain"], runs["loso"], n_boot=20, tta=tta)
    got = [(r["base"], r["mode"], r["base_run"]) for r in card["tta"]["runs"]]
    assert got == [("loso", "d4", "loso"), ("recipe", "flips", "recipe")]
    d4 = card["tta"]["runs"][0]["compare"]
    assert d4["run_a"] == "loso" and d4["folds"] == [0, 1, 2]
    assert d4["metrics"]["roc_auc"]["b_minus_a"] > 0  # the made-up d4 run separates the classes more
    text = render(card)
    assert "## Test-time augmentation" in text and "Shipped: TTA `d4`" in text
    assert "all the pooled out-of-fold predictions of `runs/v2_recipe_tta_d4` (TTA d4)" in text
    assert f"--tta d4 --threshold-run $R/{chosen_on['run']}" in text  # the export line of Reproduce
    assert "| leave-one-scanner-out (`loso`) | d4 | 0, 1, 2 | " in text
    assert "--tta $R/loso_tta_d4 $R/recipe_tta_flips" in text and "--out $R/loso_tta_d4" in text
    with pytest.raises(AmfError, match="none of the runs given"):  # its base run was not given
        card_build.build(model, runs["recipe"], runs["plain"], n_boot=20, tta=[runs["loso_d4"]])


def test_a_card_json_of_the_older_layout_is_refused_in_one_line(runs, tmp_path, capsys):
    model = export_of(runs["recipe"], tmp_path / "model")
    card_build.write(model, *card_build.build(model, runs["recipe"], runs["plain"], n_boot=20))
    readme = (model / README).read_text()
    old = json.loads((model / CARD_JSON).read_text())
    del old["card_version"]  # the layout from before card_version 2 had no such key; 2 is refused too
    with pytest.raises(AmfError, match="older layout"):
        render(old | {"card_version": 2})
    (model / CARD_JSON).write_text(json.dumps(old))
    with pytest.raises(AmfError, match="older layout"):
        render(old)
    assert card_cli.main(["--model", str(model), "--render"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and err[0].startswith("error: card.json of an older layout")
        and "python -m training.card" in err[0]
    )
    assert (model / README).read_text() == readme  # the card it had, not a half-rendered one


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
    "best of 16 seeded orders",
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
        "data.input_size=224",  # not default_model's 128: the card must say what the run used
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
    card, tables = card_build.build(model, recipe, plain, n_boot=20)
    card_build.write(model, card, tables)
    text = (model / README).read_text()
    assert text == render(json.loads((model / CARD_JSON).read_text()))
    assert "fine-tuned from timm's pretrained `convnext_small` weights" in text
    assert "backbone `convnext_small`, pretrained True" in text
    assert card["data"]["figures"] == 120 and "120 figures" in text
    assert card["data"]["patch_px"] == 64 and "64×64 PNGs" in text and "resize of the 64 px patch" in text
    assert "`data`" in text and str(tmp_path) not in text  # the data folder, from splits.csv's paths: by its name
    assert "best of 4 seeded orders" in text and card["runs"]["recipe"]["mixstyle_at"] == [["stages.1", 192]]
    assert "MixStyle (p 0.5, α 0.1) after `stages.1`" in text
    assert "Each fold kept its last epoch (`train.selection: last`)" in text
    assert "`--set mixstyle.enabled=false ema.enabled=false`" in text and card["same_folds"] is True
    assert "Plain baseline: the same config, folds and epochs" in text
    assert "--plain $R/cnx_plain" in text  # the run paths given to the card, and what they set on default_model
    sets = (
        "--set model.backbone=convnext_small model.pretrained=true data.input_size=224 splits.tries=4 "
        "mixstyle.where=[stages.1]"
    )
    assert f"--out $R/cnx_recipe {sets} align.enabled=false\n" in text
    plain_sets = (  # the plain run: what it set on default_model, in the config's key order
        "--set model.backbone=convnext_small model.pretrained=true data.input_size=224 splits.tries=4 "
        "mixstyle.enabled=false "
        "mixstyle.where=[stages.1] align.enabled=false ema.enabled=false"
    )
    assert f"--out $R/cnx_plain {plain_sets}\n" in text
    assert "## Leave one" not in text and "leave-one-scanner-out" not in text  # no --loso run
    for fact in TYPED[:-1]:
        assert fact not in text, fact


def test_each_conditional_fact_follows_card_json(runs, tmp_path):
    """The default (random-init) card says what the pretrained one must not; and each
    initialisation is rendered from the config's pretrained/weights, not typed."""
    model = export_of(runs["recipe"], tmp_path / "model")
    card, _ = card_build.build(model, runs["recipe"], runs["plain"], runs["loso"], n_boot=20)
    text = render(card)
    for fact in (
        "random initialisation",
        "No pretrained weights",
        "demonstration",
        "alignment of pooled features",
        "three experts",
        "early and mid stages (`blocks.0`, `blocks.1`)",
        "best of 16 seeded orders",
        "## Leave one scanner out",
        "Each fold kept its last epoch",
    ):
        assert fact in text, fact
    assert "300 figures" in text and "11,937" not in text and "≈0.95" not in text and "best epochs" not in text
    old = json.loads(json.dumps(card))  # runs from before train.selection existed chose on validation
    for run in old["runs"].values():
        run["config"]["train"]["selection"] = None
    text = render(old)
    assert "the old `train.selection: validation`" in text and "Thresholds and best epochs" in text
    assert "the same holds for both runs" in text and "last epoch" not in text
    weights = json.loads(json.dumps(card))
    weights["runs"]["recipe"]["config"]["model"]["weights"] = "/w/cnx.safetensors"
    text = render(weights)
    assert "fine-tuned from the weights `/w/cnx.safetensors`" in text and "random initialisation" not in text
    off = json.loads(json.dumps(card))
    off["runs"]["recipe"]["config"]["ema"]["enabled"] = False
    assert "EMA teacher" not in render(off) and "EMA teacher" in render(card)


def test_expert_votes_from_data_give_the_figures_by_agreement(runs, tmp_path, monkeypatch):
    df = table()  # the made-up runs' tables have no `soft`: the votes come from --data, as for runs from before it
    soft = np.where(RNG.random(len(df)) < 0.3, 2 / 3, df["label"])
    votes = df.drop(columns=["slide", "fold"]).assign(soft=soft, source="official")
    monkeypatch.setattr(card_build, "official_votes", lambda data_dir: votes)
    model = export_of(runs["recipe"], tmp_path / "model")
    card, _ = card_build.build(model, runs["recipe"], runs["partial"], n_boot=20, data_dir="DATA")
    by_vote = card["runs"]["recipe"]["oof"]["by_vote"]
    unanimous = np.isin(soft, [0.0, 1.0])
    assert by_vote["unanimous"]["at_threshold"]["n"] == int(unanimous.sum())
    assert card["runs"]["plain"]["oof"]["by_vote"]["split"]["at_threshold"]["n"] == int(
        (~unanimous & df["fold"].isin([0, 1]).to_numpy()).sum()
    )
    assert "By expert agreement" in render(card)
    card, _ = card_build.build(model, runs["recipe"], runs["partial"], n_boot=20)
    assert "by_vote" not in card["runs"]["recipe"]["oof"] and "By expert agreement" not in render(card)


def test_the_augmentation_line_names_every_step_that_acts_with_its_values(runs, tmp_path):
    from training import augment

    model = export_of(runs["recipe"], tmp_path / "model")
    card, _ = card_build.build(model, runs["recipe"], runs["plain"], n_boot=20)
    a = card["runs"]["recipe"]["config"]["augment"]
    assert set(a) == set(augment.DEFAULTS)  # every setting recorded, not only some
    line = next(x for x in render(card).splitlines() if x.startswith("- Augmentation: "))
    for step in augment.STEPS:  # the default config switches every step on
        assert step.on(a) and step.card(a) in line, step.name
    assert "random affine (p 0.5: rotation ±15°" in line and "Gaussian blur (p 0.2" in line
    assert "defaults" not in line  # nothing on is left unnamed
    card["runs"]["recipe"]["config"]["augment"] |= {"hed_scale": 0.42, "rot90": False, "affine_p": 0.0, "blur_p": 0}
    line = next(x for x in render(card).splitlines() if x.startswith("- Augmentation: "))
    assert line.startswith("- Augmentation: flips, HED stain jitter (scale 0.42,")
    assert "affine" not in line and "blur" not in line
    card["runs"]["recipe"]["config"]["augment"]["enabled"] = False
    assert "- Augmentation: none." in render(card)


def test_a_card_without_a_plain_run_holds_the_recipe_alone(runs, tmp_path, capsys):
    """A team's pipeline may train no control: the card is the recipe run's, with no comparison and no verdict."""
    model = export_of(runs["recipe"], tmp_path / "model", shift_run=runs["loso"])
    args = ["--model", str(model), "--recipe", str(runs["recipe"]), "--loso", str(runs["loso"]), "--n-boot", "20"]
    assert card_cli.main(args) == 0
    assert "No plain control run" in capsys.readouterr().out
    card = json.loads((model / CARD_JSON).read_text())
    assert set(card["runs"]) == {"recipe"} and "compare" not in card and card["shipped"] == "recipe"
    text = (model / README).read_text()
    assert text == render(card)
    assert "Plain baseline: none was trained" in text and "## Recipe against the plain baseline" not in text
    assert "| plain" not in text and "plain balanced accuracy" not in text and "--plain" not in text
    assert "## Threshold for scanner shift" in text and "## Leave one scanner out" in text
    assert "# Model card: the shipped default ensemble" in text  # the made-up runs' config is default_model's
    card["runs"]["recipe"]["config"]["name"] = "convnext_small"  # a team's config: not the toolkit's default
    text = render(card)
    assert "# Model card: the ensemble in this folder" in text and "The shipped default of the toolkit" not in text


def test_reproduce_is_the_one_pipeline_command_that_made_the_runs(tmp_path):
    """Runs named as training.pipeline names them (NAME_recipe, NAME_plain, NAME_loso, RUN_tta_MODE) render as
    its one command; the step list stays for runs made otherwise (the tests above)."""
    from training.rundir import RunDir, pipeline_run, plain_sets

    df, base = table(), tmp_path / "runs"
    recipe = make_run(pipeline_run(base, "v9", "recipe"), df, 0.6)
    control = plain_sets(config_io.load("default_model"))  # the pipeline's: the attention gate kept
    plain = make_run(pipeline_run(base, "v9", "plain"), df, 0.1, overrides=control, done=[0, 1])
    loso = make_run(
        pipeline_run(base, "v9", "leave_scanner_out"),
        df.assign(fold=df["Scanner"].map({s: k for k, s in enumerate(SCANNERS)})),  # a fold per scanner
        0.5,
        kind="leave_scanner_out",
        overrides=["splits.kind=leave_scanner_out"],
    )
    assert loso.name == "v9_loso"
    tta = [tta_of(r, RunDir(r).tta_dir(m), m) for r in (loso, recipe) for m in ("flips", "d4")]
    chosen_on = {"run": str(RunDir(recipe).tta_dir("d4")), "tta": "d4"}
    model = export_of(
        recipe, tmp_path / "model", shift_run=RunDir(loso).tta_dir("d4"), tta="d4", threshold_predictions=chosen_on
    )
    card, _ = card_build.build(
        model, recipe, plain, loso, n_boot=20, tta=tta, plain_partial_reason="CPU time", trained_on="a CPU"
    )
    text = render(card)
    want = (
        "python -m training.pipeline default_model --data $D --runs $R --name v9 --model-out model --tta d4 "
        '--compare-tta flips --shift leave_scanner_out --plain --plain-folds 0,1 --plain-partial-reason "CPU time" '
        '--trained-on "a CPU"'
    )
    assert (
        want in text
        and "\nR=runs\n" in text
        and "python -m training.train" not in text
        and "python -m training.export" not in text
    )
    card["tta"]["runs"].pop()  # a re-prediction the pipeline would have made is missing: the steps, one by one
    assert "python -m training.pipeline default_model" not in render(card)
    assert "python -m training.export $R/v9_recipe --out model" in render(card)


def test_an_export_removes_the_card_of_the_model_it_replaces(runs, tmp_path):
    """What described the old model (its card, its expected output) goes before the new model is installed; the new
    expected output is the container's result with the new model; a README no card names stays."""
    from compare_output import compare

    from training.export import folder as model_folder

    model = export_of(runs["recipe"], tmp_path / "model")
    card_build.write(model, *card_build.build(model, runs["recipe"], n_boot=20))
    model_folder.write_expected_output(model)
    old_expected = json.loads((model / model_folder.EXPECTED_OUTPUT).read_text())
    new = make_toy_ensemble(tmp_path / "new", members=3, seed=5).parent
    model_folder.write_expected_output(new)
    model_folder.install(new, model, log=lambda *a: None)
    assert sorted(p.name for p in model.iterdir()) == ["ensemble.json", "expected_output.json"] + [
        f"toy{i}.onnx" for i in range(3)
    ]
    import inference

    got = inference.run(model_folder.SAMPLE_JOB, tmp_path / "out", model)
    assert compare(got, json.loads((model / model_folder.EXPECTED_OUTPUT).read_text())) == []
    assert compare(got, old_expected) != []
    (model / README).write_text("# our own notes\n")  # no card names it: it stays
    newer = make_toy_ensemble(tmp_path / "newer", members=1, seed=6).parent
    model_folder.install(newer, model, log=lambda *a: None)
    assert (model / README).read_text() == "# our own notes\n" and not (model / "toy2.onnx").exists()


def test_the_tta_sentence_says_what_set_the_mode_and_what_the_rule_picks(runs, tmp_path):
    """The mode shipped is set by --tta or the config's export.tta, never by the rule: the card says which, and what
    the rule picks on the table's rows: the same mode, another, or none (then the setting overrode it)."""
    model = export_of(runs["recipe"], tmp_path / "model", tta="d4")  # the toy's config says export.tta: none
    card, _ = card_build.build(model, runs["recipe"], runs["plain"], runs["loso"], n_boot=20, tta=[runs["loso_d4"]])
    assert card["ensemble"]["tta_given"] == "--tta" and card["tta"]["choice"]["on"] == "loso"
    assert card["tta"]["choice"]["pick"] == "d4"  # the made-up d4 run separates the classes more
    text = render(card)
    assert "Shipped: TTA `d4`, set by the command line's `--tta d4`; no rule chose it." in text
    assert "leave-one-scanner-out rows (modes none, d4) it picks `d4` as well" in text and "overrode" not in text
    worse = json.loads(json.dumps(card))  # d4 lowers ROC AUC on the leave-one-out rows: the rule ships none
    worse["tta"]["runs"][0]["compare"]["metrics"]["roc_auc"]["b_minus_a"] = -0.004
    worse["tta"]["choice"] = card_build.tta_choice(worse["tta"]["runs"])
    assert worse["tta"]["choice"] == {
        "on": "loso",
        "modes": {
            "d4": {
                "raises_both": False,
                "balanced_accuracy": pytest.approx(worse["tta"]["choice"]["modes"]["d4"]["balanced_accuracy"]),
            }
        },
        "pick": "none",
    }
    text = render(worse)
    assert "no mode raises both, so the rule would ship none: the command line's `--tta d4` overrode it" in text
    assert "it picks `d4` as well" not in text
    worse["ensemble"]["tta_given"] = "export.tta"
    assert "Shipped: TTA `d4`, set by the config's `export.tta: d4`; no rule chose it." in render(worse)


def test_the_folds_are_named_by_the_code_that_made_them_and_recomputed(tmp_path):
    """The card names training.splits' algorithm and strata, and says whether it makes the run's folds of these
    figures today: folds it made are recomputed the same; folds made otherwise are not."""
    from training import splits

    df = table().assign(source="official").drop(columns=["fold"])
    made = splits.make_splits(df, "kfold", 5, 0, 4)
    cfg = {"kind": "kfold", "folds": 5, "seed": 0, "tries": 4}
    facts = card_build.fold_facts(made, cfg)
    assert facts == {
        "kind": "kfold",
        "by": "training.splits.kfold_assign",
        "strata": ["label", "Tumor", "source"],
        "tries": 4,
        "recomputed": True,
    }
    other = made.assign(fold=(made["slide"].astype(int) % 5))  # a slide-grouped split of another algorithm
    assert card_build.fold_facts(other, cfg)["recomputed"] is False
    assert card_build.fold_facts(made, {"kind": "leave_scanner_out"}) == {"kind": "leave_scanner_out"}
    recipe = make_run(tmp_path / "x_recipe", made.drop(columns=["path"]), 0.6, overrides=["splits.tries=4"])
    card, _ = card_build.build(export_of(recipe, tmp_path / "model"), recipe, n_boot=20)
    text = render(card)
    assert (
        "5 folds by `training.splits.kfold_assign` (grouped by slide; the folds balanced in size, in atypical " in text
    )
    assert "label × tumour type × source strata; the best of 4 seeded orders); the code makes the same folds" in text
    card["data"]["folds"]["recomputed"] = False
    assert "not the folds it makes of these figures today: an earlier `training/splits.py` made them" in render(card)


def test_other_data_is_counted_against_the_training_figures_and_the_test_split_named(runs, tmp_path):
    """--overlap: a data folder's figures, by content against training_fingerprints.bin; with a benchmark whose test
    split a layout holds, the figures the model did not train on are named as the test split's only when the model
    trained on exactly its training figures of that source."""
    import yaml
    from training_layout import make_layout

    from training.data import decode, read_labelled
    from training.export import fingerprint

    data = make_layout(tmp_path / "other", n_slides=4, per_slide=5)
    model = export_of(runs["recipe"], tmp_path / "model")
    paths = read_labelled(data)["path"]
    fingerprint.write(model / fingerprint.FILE, fingerprint.digests(decode(p) for p in paths[:12]))
    bench = yaml.safe_load((card_build.BENCHMARKS / "amibr.yaml").read_text()) | {"training_figures": 300}
    bench["test_split"]["held"]["source"] = "official"
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(bench))
    card, _ = card_build.build(model, runs["recipe"], n_boot=20, overlap=[data], benchmark=str(tmp_path / "bench.yaml"))
    assert card["overlap"] == [{"dir": "other", "layout": "official", "figures": 20, "trained_on": 12}]
    text = render(card)
    assert "`other` (official layout): 20 figures, 12 of them trained on, 8 not." in text
    assert "(by content, `training_fingerprints.bin`): which of its figures are the test split's cannot be told" in text
    card["data"]["sources"] = {"official": 300}  # the model trained on more official figures than these 12
    assert "trained on 12 of them (by content, `training_fingerprints.bin`), not its 300 official training" in render(
        card
    )
    card["data"]["sources"] = {"official": 12}  # exactly its training figures: the rest are the test split's
    text = render(card)
    assert "so the other 8 are the official part of the benchmark's in-domain test split (826 figures in all)" in text
    assert "--benchmark bench.yaml --overlap other --data $D" in text  # by name: no path of this machine


def test_the_shipped_predictions_are_written_at_full_precision(runs, tmp_path):
    model = export_of(runs["recipe"], tmp_path / "model")
    card, tables = card_build.build(model, runs["recipe"], runs["plain"], n_boot=20)
    card_build.write(model, card, tables)
    for name, table in tables.items():
        back = pd.read_csv(model / name, dtype={"image_id": str, "slide": str})
        assert np.array_equal(back["probability"].to_numpy(), table["probability"].to_numpy()), name
    assert (RunDir(runs["recipe"]).read_oof()["probability"].round(7) != tables[OOF_CSV]["probability"]).any()


def test_refresh_upgrades_a_card_without_its_runs(runs, tmp_path):
    """--refresh: a card_version 2 card.json, with the absolute paths it used to record, is measured again from
    the model folder (manifest, oof.csv) alone: the new facts added, every path made portable, the runs' figures
    kept; the tables there stay."""
    model = export_of(runs["recipe"], tmp_path / "model", shift_run=runs["loso"])
    card, tables = card_build.build(model, runs["recipe"], runs["plain"], runs["loso"], n_boot=20)
    card_build.write(model, card, tables)
    old = json.loads((model / CARD_JSON).read_text())
    v2 = json.loads(json.dumps(old)) | {"card_version": 2}
    for key in ("runs_dir", "config_note"):
        del v2[key]
    del v2["data"]["folds"], v2["ensemble"]["tta_given"]
    for name, r in v2["runs"].items():
        r["run"] = str(runs[name].resolve())
    v2["threshold_for_shift"]["loso_run"] = str(runs["loso"].resolve())
    (model / CARD_JSON).write_text(json.dumps(v2))
    oof_bytes = (model / OOF_CSV).read_bytes()
    assert card_cli.main(["--model", str(model), "--refresh", "--config-note", "chosen before any figure"]) == 0
    new = json.loads((model / CARD_JSON).read_text())
    assert new["card_version"] == 3 and new["runs"]["recipe"]["run"] == "recipe" and new["runs_dir"] == "runs0"
    assert new["runs"]["recipe"]["oof"] == old["runs"]["recipe"]["oof"] and new["ensemble"] == old["ensemble"]
    assert new["data"]["folds"] == {**old["data"]["folds"], "recomputed": None}  # no data folder to recompute on
    text = (model / README).read_text()
    assert text == render(new) and "- How the values were chosen: chosen before any figure." in text
    assert "(not recomputed for this card)" in text and str(tmp_path) not in text
    assert (model / OOF_CSV).read_bytes() == oof_bytes
