"""The model card's account of how a model was chosen (issue 21) on made-up runs: each fold's figure at its nested
threshold first; a published protocol stated and its table printed as the paper's (refused for runs that trained on
another number of figures); the other recipes tried, counted and paired; every run's predictions the card reports
shipped in the model folder; a leave-one-source-out run named as such; a plain control with the recipe's network."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from test_card import export_of, make_run, table, tta_of

from amf import AmfError
from amf.manifest import load as load_manifest
from training import config as config_io
from training import metrics, ownership
from training.card import build as card_build
from training.card.render import render
from training.ownership import CARD_JSON, MODEL, OOF_CSV, PREDICTIONS, README
from training.results import oof as oof_io
from training.results import threshold
from training.rundir import PLAIN_SETS, RunDir, plain_sets

SOURCES = ("MIDOG21", "TUPAC16")


def by_source(df: pd.DataFrame) -> pd.DataFrame:
    """The table with a source per slide and one fold per source (a leave-one-source-out split)."""
    source = np.where(df["slide"].str[-1].astype(int) % 2 == 0, *SOURCES)
    return df.assign(source=source, fold=(source == SOURCES[1]).astype(int))


def named_by_source(run):
    """A leave-one-source-out run's fold names (COLUMN=VALUE, as training.splits writes them)."""
    splits = pd.read_csv(run / "splits.csv", dtype={"slide": str})
    splits["fold_name"] = "source=" + splits["source"]
    splits.to_csv(run / "splits.csv", index=False)
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base, df = tmp_path_factory.mktemp("protocol"), table()
    loso = ["splits.kind=leave_source_out"]
    out = {
        "recipe": make_run(base / "v_recipe", df.assign(source=by_source(df)["source"]), 0.6),
        "loso": named_by_source(make_run(base / "v_loso", by_source(df), 0.5, overrides=loso)),
        "soft": named_by_source(
            make_run(base / "B_loso", by_source(df), 0.4, overrides=[*loso, "data.soft_labels=true"])
        ),
    }
    out["loso_d4"] = tta_of(out["loso"], base / "v_loso_tta_d4", "d4", shift=0.1)
    out["recipe_d4"] = tta_of(out["recipe"], base / "v_recipe_tta_d4", "d4", shift=0.1)
    return out


def oofs(runs, *names) -> dict:
    return {n: RunDir(runs[n]).read_oof() for n in names}


def benchmark_file(folder, figures: int) -> str:
    b = yaml.safe_load((card_build.BENCHMARKS / "amibr.yaml").read_text()) | {"training_figures": figures}
    (folder / "bench.yaml").write_text(yaml.safe_dump(b))
    return str(folder / "bench.yaml")


def test_each_fold_is_reported_at_its_nested_threshold_first(runs):
    oof = RunDir(runs["recipe"]).read_oof()
    result = oof_io.compute(oof, n_boot=20)
    y, p, folds = oof["label"].to_numpy(), oof["probability"].to_numpy(), oof["fold"].to_numpy()
    classes, thresholds = threshold.nested_classes(y, p, folds, threshold.choosing(oof))
    for k, thr in thresholds.items():
        at = folds == k
        assert result["nested"]["thresholds"][str(k)] == thr
        expected = metrics.summary(y[at], p[at], y_pred=(p[at] >= thr).astype(int))["balanced_accuracy"]
        assert result["per_fold_nested"][str(k)]["balanced_accuracy"] == pytest.approx(expected)
    differs = [k for k in thresholds if f"{thresholds[k]:.3f}" != f"{result['threshold']:.3f}"]
    assert differs  # else the two columns could not be told apart


def test_the_fold_table_names_the_threshold_of_every_balanced_accuracy(runs, tmp_path):
    model = export_of(runs["recipe"], tmp_path / "model")
    card, _ = card_build.build(model, runs["recipe"], n_boot=20)
    text, o = render(card), card["runs"]["recipe"]["oof"]
    head = next(line for line in text.splitlines() if line.startswith("| fold |"))
    assert head.index("nested threshold") < head.index("balanced accuracy, nested") < head.index("at pooled")
    assert f"balanced accuracy at pooled {o['threshold']:.3f}" in head
    for k, m in o["per_fold_nested"].items():
        row = next(line for line in text.splitlines() if line.startswith(f"| {k} | "))
        nested_cells = f"| {o['nested']['thresholds'][k]:.3f} | {metrics.fmt(m['balanced_accuracy'])} |"
        assert nested_cells + f" {metrics.fmt(o['per_fold'][k]['balanced_accuracy'])} |" in row


def test_a_benchmark_protocol_is_stated_and_its_table_printed_as_the_papers(runs, tmp_path):
    shipped = card_build.load_benchmark("amibr")
    assert shipped["training_figures"] == 2894 and len(shipped["rows"]) == 5
    assert shipped["rows"][2]["figures"][0] == [0.805, 0.903]  # Swin-B on the AMi-Br test split, issue 21's table
    model = export_of(runs["recipe"], tmp_path / "model")
    card, _ = card_build.build(model, runs["recipe"], n_boot=20, benchmark=benchmark_file(tmp_path, 300))
    text = render(card)
    assert "## Protocol: the AMi-Br benchmark" in text and "trained on the benchmark's patient-level" in text
    assert "it scored none of the benchmark's test figures and makes no claim on them" in text
    assert "The paper's figures, as published" in text
    assert (
        "Whether the project's data holds figures of the benchmark's in-domain test split (826 figures, 56 slides) "
        "was not checked" in text
    )  # no --overlap: nothing is claimed either way
    assert "| model (the paper's) | AMi-Br test | AtNorM-Br | AtNorM-MD |" in text
    assert "| Swin-B, end to end (its best end-to-end) | 0.805 / 0.903 | 0.775 / 0.868 | 0.772 / 0.881 |" in text
    scanners_only = "gave only the scanner of the figures it also holds"
    assert scanners_only not in text  # the run named no official table
    card["runs"]["recipe"]["config"]["data"]["official_labels"] = "labels.csv"
    assert scanners_only in render(card)
    with pytest.raises(AmfError, match="trained on 300 figures; the AMi-Br benchmark's training split has 2894"):
        card_build.build(model, runs["recipe"], n_boot=20, benchmark="amibr")
    bad = yaml.safe_load((card_build.BENCHMARKS / "amibr.yaml").read_text())
    bad["rows"][0]["figures"] = [[0.7, 0.8]]  # one pair for three sets
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(AmfError, match="one \\[balanced accuracy, ROC AUC\\] pair per set"):
        card_build.load_benchmark(tmp_path / "bad.yaml")
    held = yaml.safe_load((card_build.BENCHMARKS / "amibr.yaml").read_text())
    held["test_split"]["held"] = {"layout": "official"}  # where, without which source or why
    (tmp_path / "held.yaml").write_text(yaml.safe_dump(held))
    with pytest.raises(AmfError, match="test_split wants exactly"):
        card_build.load_benchmark(tmp_path / "held.yaml")
    with pytest.raises(AmfError, match="no such file.*known: amibr"):
        card_build.load_benchmark("no_such_benchmark")
    # read as a config is: text in another encoding, a YAML tag, a non-list of sets: one error line each
    shipped_bytes = (card_build.BENCHMARKS / "amibr.yaml").read_bytes()
    (tmp_path / "cp1252.yaml").write_bytes(shipped_bytes + "# caf\xe9\n".encode("cp1252"))
    with pytest.raises(AmfError, match="is not UTF-8 text"):
        card_build.load_benchmark(tmp_path / "cp1252.yaml")
    (tmp_path / "tag.yaml").write_text("name: !!python/name:os.system x\n")
    with pytest.raises(AmfError, match="YAML tags"):
        card_build.load_benchmark(tmp_path / "tag.yaml")
    bad["rows"][0]["figures"], bad["sets"] = [[0.7, 0.8]] * 3, 3
    (tmp_path / "sets.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(AmfError, match="sets and rows are lists"):
        card_build.load_benchmark(tmp_path / "sets.yaml")


def test_the_other_recipes_tried_are_counted_and_paired_with_the_run_of_their_split(runs, tmp_path):
    model = export_of(runs["recipe"], tmp_path / "model", shift_run=runs["loso"])
    rule = 'B only if it raises both "nested" balanced accuracy and ROC AUC'
    card, tables = card_build.build(
        model, runs["recipe"], loso=runs["loso"], n_boot=30, candidates=[runs["soft"]], candidate_rule=rule
    )
    (c,) = card["candidates"]["runs"]
    assert c["base"] == "loso" and c["compare"]["folds"] == [0, 1]
    m = c["compare"]["metrics"]["roc_auc"]
    auc = {n: metrics.summary(o["label"], o["probability"])["roc_auc"] for n, o in oofs(runs, "loso", "soft").items()}
    assert (m["a"], m["b"]) == pytest.approx((auc["loso"], auc["soft"]))
    card_build.write(model, card, tables)
    text = (model / README).read_text()
    assert "2 recipes were trained for this model and are counted here" in text and rule in text
    assert "| `B_loso` | `--set data.soft_labels=true` | leave-one-source-out run |" in text
    assert f"--candidates $R/B_loso --candidate-rule '{rule}'" in text
    assert "--out $R/B_loso --set data.soft_labels=true splits.kind=leave_source_out" in text
    with pytest.raises(AmfError, match="give --candidate-rule"):
        card_build.build(model, runs["recipe"], loso=runs["loso"], n_boot=20, candidates=[runs["soft"]])
    with pytest.raises(AmfError, match="split its figures by leave_source_out, none of"):
        card_build.build(model, runs["recipe"], n_boot=20, candidates=[runs["soft"]], candidate_rule=rule)


def test_every_run_the_card_reports_ships_its_predictions_and_a_stale_one_goes(runs, tmp_path):
    model = export_of(
        runs["recipe"],
        tmp_path / "model",
        shift_run=runs["loso_d4"],
        threshold_predictions={"run": str(runs["recipe_d4"].resolve()), "tta": "d4"},
    )
    tta = [runs["loso_d4"], runs["recipe_d4"]]
    card, tables = card_build.build(model, runs["recipe"], loso=runs["loso"], n_boot=20, tta=tta)
    card_build.write(model, card, tables)
    shipped = {p.name for p in (model / PREDICTIONS).glob("*.csv")}
    assert shipped == {"loso.csv", "loso_tta_d4.csv", "recipe_tta_d4.csv"}
    for name, run in [("loso", "loso"), ("loso_tta_d4", "loso_d4"), ("recipe_tta_d4", "recipe_d4")]:
        got = pd.read_csv(model / PREDICTIONS / f"{name}.csv")
        want = RunDir(runs[run]).read_oof()
        assert list(got.columns) == ["image_id", "slide", "fold", "probability"]  # no labels leave the data
        assert np.allclose(got["probability"], want["probability"], atol=1e-6)
    # the shipped threshold recomputed from the folder's own file: the out-of-fold rule on the d4 predictions
    labels = RunDir(runs["recipe"]).read_oof()[["image_id", "label"]]  # the data's labels
    d4 = pd.read_csv(model / PREDICTIONS / "recipe_tta_d4.csv").merge(labels, on="image_id")
    assert threshold.best_threshold(d4["label"], d4["probability"]) == pytest.approx(
        RunDir(runs["recipe_d4"]).read_oof_metrics()["threshold"], abs=1e-6
    )
    # the threshold's source is the run whose rule won, in the manifest, on the card and in its Files list
    text, shift, source = (
        (model / README).read_text(),
        card["threshold_for_shift"],
        card["ensemble"]["threshold_predictions"],
    )
    files, other = {"oof": "recipe_tta_d4", "loso": "loso_tta_d4"}, {"oof": "loso", "loso": "oof"}[shift["chosen"]]
    assert source == {"run": f"v_{files[shift['chosen']]}", "tta": "d4", "rule": shift["chosen"]}
    assert load_manifest(model).provenance["threshold_predictions"] == source
    won = pd.read_csv(model / PREDICTIONS / f"{files[shift['chosen']]}.csv").merge(labels, on="image_id")
    assert threshold.best_threshold(won["label"], won["probability"]) == pytest.approx(card["ensemble"]["threshold"])
    assert (
        f"`predictions/{files[shift['chosen']]}.csv`: the out-of-fold probabilities of `{source['run']}` (the shipped "
        f"threshold is their optimum: the {shift['chosen']} rule's)" in text
    )
    assert (
        f"`predictions/{files[other]}.csv`: the out-of-fold probabilities of `v_{files[other]}` (the {other} rule's "
        "predictions in the threshold for source shift)" in text
    )
    assert f"predictions of `{source['run']}` (TTA d4)" in text.split("## Threshold\n", 1)[1]
    assert "## Threshold for source shift" in text and "leave-one-source-out predictions over one view" in text
    assert "On the table's leave-one-source-out rows (modes none, d4)" in text
    assert ownership.named(model, MODEL)[CARD_JSON] >= {f"{PREDICTIONS}/{n}.csv" for n in ("loso", "recipe_tta_d4")}
    card, tables = card_build.build(model, runs["recipe"], n_boot=20)  # a card without the other runs
    card_build.write(model, card, tables)
    assert not list((model / PREDICTIONS).glob("*.csv")) and (model / OOF_CSV).is_file()
    assert json.loads((model / CARD_JSON).read_text())["predictions"] == {}


@pytest.mark.parametrize(
    ("sets", "pinned"),
    [
        ([], "model.attention=true"),
        (["model.attention=false"], None),
        (["align.enabled=false"], "model.attention=false"),
    ],
)
def test_the_plain_control_keeps_the_recipes_network(sets, pinned):
    cfg = config_io.load("default_model", sets)
    words = plain_sets(cfg)
    assert words[: len(PLAIN_SETS)] == list(PLAIN_SETS)
    assert words[len(PLAIN_SETS) :] == ([pinned] if pinned else [])
    from training.train.models import has_attention

    assert has_attention(config_io.load("default_model", [*sets, *words])) == has_attention(cfg)
