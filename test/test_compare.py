"""training.results.compare: the paired slide-level bootstrap that tells a recipe's gain from noise, on the folds both
runs finished, with each run's thresholds nested (chosen on its other compared folds)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from amf import AmfError
from training import metrics
from training.results import compare
from training.results.threshold import leave_one_group_out_thresholds

RNG = np.random.default_rng(0)
N_SLIDES, PER_SLIDE, N_FOLDS = 40, 12, 4


def figures() -> pd.DataFrame:
    slides = np.repeat([f"s{i:02d}" for i in range(N_SLIDES)], PER_SLIDE)
    label = (RNG.random(len(slides)) < 0.25).astype(int)
    fold = np.repeat(np.arange(N_SLIDES) % N_FOLDS, PER_SLIDE)
    return pd.DataFrame(
        {"image_id": [f"{i}.png" for i in range(len(slides))], "slide": slides, "fold": fold, "label": label}
    )


def write_run(folder, df: pd.DataFrame, probability: np.ndarray, done=None):
    """A run folder as training.train leaves it: splits.csv, fold<k>/oof.csv + done.json for the DONE folds (all by
    default), and the pooled oof.csv + oof_metrics.json when every fold is done (as training.results.oof writes
    them)."""
    folder.mkdir(parents=True)
    t = df.assign(probability=probability)
    df.assign(fold_name="fold" + df["fold"].astype(str)).to_csv(folder / "splits.csv", index=False)
    done = sorted(df["fold"].unique()) if done is None else done
    for k, g in t.groupby("fold"):
        if k in done:
            (folder / f"fold{k}").mkdir()
            g.to_csv(folder / f"fold{k}" / "oof.csv", index=False)
            (folder / f"fold{k}" / "done.json").write_text("{}")
    if set(done) == set(df["fold"]):
        t.to_csv(folder / "oof.csv", index=False)
        (folder / "oof_metrics.json").write_text(json.dumps({"threshold": 0.5}))
    return folder


@pytest.mark.slow
def test_a_clearly_better_run_has_an_interval_above_zero(tmp_path):
    df = figures()
    y = df["label"].to_numpy()
    weak = np.clip(0.5 + 0.1 * (y - 0.5) + RNG.normal(0, 0.25, len(y)), 0, 1)
    strong = np.clip(0.5 + 0.6 * (y - 0.5) + RNG.normal(0, 0.15, len(y)), 0, 1)
    res = compare.compare(write_run(tmp_path / "a", df, weak), write_run(tmp_path / "b", df, strong), n_boot=300)
    assert res["n_slides"] == N_SLIDES and res["n_figures"] == len(df)
    for key, m in res["metrics"].items():
        assert m["b_minus_a"] > 0 and m["ci95"][0] > 0, key
        assert m["p_b_not_better"] < 0.025, key


@pytest.mark.slow
def test_two_runs_of_noise_are_not_told_apart(tmp_path):
    df = figures()
    a, b = RNG.random(len(df)), RNG.random(len(df))
    res = compare.compare(write_run(tmp_path / "a", df, a), write_run(tmp_path / "b", df, b), n_boot=300)
    for key, m in res["metrics"].items():
        assert m["ci95"][0] < 0 < m["ci95"][1], key


def test_the_same_run_twice_differs_by_exactly_zero(tmp_path):
    df = figures()
    p = RNG.random(len(df))
    res = compare.compare(write_run(tmp_path / "a", df, p), write_run(tmp_path / "b", df, p), n_boot=50)
    for m in res["metrics"].values():
        assert m["b_minus_a"] == 0 and m["ci95"] == [0.0, 0.0] and m["p_b_not_better"] == 1.0


@pytest.mark.slow
def test_slides_not_figures_are_resampled(tmp_path):
    """Figures of one slide move together: with one informative slide per class the interval is wide."""
    df = figures()
    p = RNG.random(len(df))
    by_figure = compare.compare(
        write_run(tmp_path / "a", df, p), write_run(tmp_path / "b", df, p[::-1].copy()), n_boot=300
    )
    lumped = df.assign(slide="s00")  # one slide: every resample is the whole set, so no spread at all
    one = compare.compare(
        write_run(tmp_path / "c", lumped, p), write_run(tmp_path / "d", lumped, p[::-1].copy()), n_boot=50
    )
    for key in one["metrics"]:
        lo, hi = one["metrics"][key]["ci95"]
        assert lo == pytest.approx(hi) == pytest.approx(one["metrics"][key]["b_minus_a"])
        assert by_figure["metrics"][key]["ci95"][1] - by_figure["metrics"][key]["ci95"][0] > 0


def test_runs_over_different_figures_are_refused(tmp_path):
    df = figures()
    a = write_run(tmp_path / "a", df, RNG.random(len(df)))
    b = write_run(tmp_path / "b", df.iloc[:-5], RNG.random(len(df) - 5))
    with pytest.raises(AmfError, match="different figures"):
        compare.compare(a, b, n_boot=10)
    with pytest.raises(AmfError, match="has no out-of-fold predictions"):
        compare.compare(a, tmp_path / "missing", n_boot=10)
    assert compare.main([str(a), str(b), "--n-boot", "10"]) == 2


def test_a_partial_run_is_compared_on_the_folds_both_finished(tmp_path, capsys):
    df = figures()
    full = write_run(tmp_path / "full", df, RNG.random(len(df)))
    part = write_run(tmp_path / "part", df, RNG.random(len(df)), done=[0, 2])
    res = compare.compare(full, part, n_boot=20)
    assert res["folds"] == [0, 2] and res["complete"] == {"a": True, "b": False}
    assert res["folds_of_run"] == {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]}
    assert res["n_figures"] == int(df["fold"].isin([0, 2]).sum()) < len(df)
    assert res["n_slides"] == df.loc[df["fold"].isin([0, 2]), "slide"].nunique()
    assert compare.main([str(full), str(part), "--n-boot", "10"]) == 0
    assert "folds compared: 0, 2 (A complete (4 folds); B partial (4 folds))" in capsys.readouterr().out


def test_runs_with_no_common_fold_or_other_splits_are_refused(tmp_path):
    df = figures()
    a = write_run(tmp_path / "a", df, RNG.random(len(df)), done=[0, 1])
    b = write_run(tmp_path / "b", df, RNG.random(len(df)), done=[2, 3])
    with pytest.raises(AmfError, match=r"share no finished fold .*a: 0, 1; .*b: 2, 3\)"):
        compare.compare(a, b, n_boot=10)
    moved = df.assign(fold=np.roll(df["fold"].to_numpy(), PER_SLIDE))  # same figures, other folds
    c = write_run(tmp_path / "c", moved, RNG.random(len(df)))
    with pytest.raises(AmfError, match="splits differ"):
        compare.compare(write_run(tmp_path / "d", df, RNG.random(len(df))), c, n_boot=10)
    assert compare.main([str(a), str(b), "--n-boot", "10"]) == 2
    nothing = write_run(tmp_path / "e", df, RNG.random(len(df)), done=[])
    with pytest.raises(AmfError, match="no fold finished"):
        compare.compare(a, nothing, n_boot=10)


def test_nested_thresholds_are_each_folds_from_the_other_compared_folds(tmp_path):
    df = figures()
    y = df["label"].to_numpy()
    pa = np.clip(0.4 + 0.3 * y + RNG.normal(0, 0.2, len(y)), 0, 1)
    pb = np.clip(0.3 + 0.3 * y + RNG.normal(0, 0.2, len(y)), 0, 1)
    a = write_run(tmp_path / "a", df, pa)
    b = write_run(tmp_path / "b", df, pb, done=[0, 1, 3])
    res = compare.compare(a, b, n_boot=20)
    at = df["fold"].isin([0, 1, 3]).to_numpy()
    fold = df["fold"].to_numpy()[at]
    for name, p in (("a", pa[at]), ("b", pb[at])):
        thr = leave_one_group_out_thresholds(y[at], p, fold)  # run a's fold 2 chooses nothing: it is not compared
        assert res["nested_thresholds"][name] == pytest.approx({str(k): v for k, v in thr.items()}, abs=1e-12)
        pred = (p >= np.array([thr[k] for k in fold])).astype(int)
        want = metrics.summary(y[at], p, y_pred=pred)["balanced_accuracy"]
        assert res["metrics"][compare.NESTED][name] == pytest.approx(want, abs=1e-9)
    assert "balanced_accuracy@oof_threshold" not in res["metrics"] and "not_computed" not in res


def test_one_compared_fold_has_no_nested_threshold(tmp_path, capsys):
    df = figures()
    a = write_run(tmp_path / "a", df, RNG.random(len(df)))
    b = write_run(tmp_path / "b", df, RNG.random(len(df)), done=[1])
    res = compare.compare(a, b, n_boot=20)
    assert res["folds"] == [1] and res["nested_thresholds"] is None
    assert list(res["metrics"]) == ["balanced_accuracy@0.5", "roc_auc"] and compare.NESTED in res["not_computed"]
    assert compare.main([str(a), str(b), "--n-boot", "10"]) == 0
    assert f"{compare.NESTED}: not computed (one compared fold" in capsys.readouterr().out


def test_json_report_is_written_whole_or_is_one_error(tmp_path, capsys):
    df = figures()
    a = write_run(tmp_path / "a", df, RNG.random(len(df)))
    b = write_run(tmp_path / "b", df, RNG.random(len(df)))
    assert compare.main([str(a), str(b), "--n-boot", "10", "--json", str(tmp_path / "no" / "such" / "x.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: cannot write") and not (tmp_path / "no").exists()
    assert compare.main([str(a), str(b), "--n-boot", "10", "--json", str(tmp_path / "x.json")]) == 0
    assert json.loads((tmp_path / "x.json").read_text())["n_boot"] == 10
