"""training.compare: the paired slide-level bootstrap that tells a recipe's gain from noise."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from amf import AmfError
from training import compare

RNG = np.random.default_rng(0)
N_SLIDES, PER_SLIDE = 40, 12


def figures() -> pd.DataFrame:
    slides = np.repeat([f"s{i:02d}" for i in range(N_SLIDES)], PER_SLIDE)
    label = (RNG.random(len(slides)) < 0.25).astype(int)
    return pd.DataFrame({"image_id": [f"{i}.png" for i in range(len(slides))], "slide": slides, "label": label})


def write_run(folder, df: pd.DataFrame, probability: np.ndarray, threshold: float = 0.5):
    folder.mkdir(parents=True)
    df.assign(probability=probability).to_csv(folder / "oof.csv", index=False)
    (folder / "oof_metrics.json").write_text(json.dumps({"threshold": threshold}))
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
    with pytest.raises(AmfError, match="no pooled out-of-fold results"):
        compare.compare(a, tmp_path / "missing", n_boot=10)
    assert compare.main([str(a), str(b), "--n-boot", "10"]) == 2


def test_json_report_is_written_whole_or_is_one_error(tmp_path, capsys):
    df = figures()
    a = write_run(tmp_path / "a", df, RNG.random(len(df)))
    b = write_run(tmp_path / "b", df, RNG.random(len(df)))
    assert compare.main([str(a), str(b), "--n-boot", "10", "--json", str(tmp_path / "no" / "such" / "x.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: cannot write") and not (tmp_path / "no").exists()
    assert compare.main([str(a), str(b), "--n-boot", "10", "--json", str(tmp_path / "x.json")]) == 0
    assert json.loads((tmp_path / "x.json").read_text())["n_boot"] == 10
