"""training.ablate and its report (training/results/ablation.py): the arms' overrides, the interval's two variance
terms on constructed predictions whose answer is known, and the command end to end on a small two-source set."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from amf import AmfError
from training import ablate
from training.results import ablation
from training.results.compare import NESTED


def test_an_arm_is_a_name_and_its_overrides():
    arm = ablate.parse_arm("both=mixstyle.enabled=true,align.columns=[Scanner,source],align.weight=2")
    assert arm.name == "both"
    assert arm.sets == ["mixstyle.enabled=true", "align.columns=[Scanner,source]", "align.weight=2"]
    for bad in ("base=ema.enabled=true", "x", "x=", "../up=ema.enabled=true", "x=ema.enabled"):
        with pytest.raises(AmfError):
            ablate.parse_arm(bad)


def table(p, y, fold, slides):
    return pd.DataFrame(
        {"image_id": [f"{i}.png" for i in range(len(y))], "probability": p, "label": y, "fold": fold, "slide": slides}
    ).set_index("image_id")


def figures(n_slides=40, per=10, seed=0):
    rng = np.random.default_rng(seed)
    slides = np.repeat([f"s{i}" for i in range(n_slides)], per)
    y = rng.integers(0, 2, len(slides))
    y[:2] = [0, 1]
    fold = np.repeat(np.arange(n_slides) % 2, per)
    return y, fold, slides


def test_the_seed_term_where_the_answer_is_known():
    """Base: two seeds that rank every atypical figure above every normal one (ROC AUC 1 in every resample). Arm:
    one seed as perfect, one exactly inverted (ROC AUC 0 in every resample). So the slide term is 0, the seeds'
    variance is (1 - 0)^2 / 2 = 0.5, V_seeds = 0.5 / 2 + 0 and the interval is -0.5 +- 1.96 * 0.5."""
    y, fold, slides = figures()
    good = y * 0.5 + 0.25 + np.linspace(0, 0.01, len(y))
    preds = {
        "base": {0: table(good, y, fold, slides), 1: table(good, y, fold, slides)},
        "flip": {0: table(good, y, fold, slides), 1: table(1 - good, y, fold, slides)},
    }
    t = ablation.analyse(preds, "base", n_boot=200)
    auc = t[(t["arm"] == "flip") & (t["metric"] == ablation.METRICS["roc_auc"])].iloc[0]
    assert auc["mean"] == pytest.approx(0.5) and auc["minus_base"] == pytest.approx(-0.5)
    assert auc["v_slides"] == pytest.approx(0.0, abs=1e-12) and auc["v_seeds"] == pytest.approx(0.25)
    assert (auc["ci_low"], auc["ci_high"]) == pytest.approx((-0.5 - 1.96 * 0.5, -0.5 + 1.96 * 0.5), abs=1e-3)


def test_identical_seeds_leave_the_slide_term_alone():
    """Seeds that predict alike: V_seeds is 0 and the interval is the paired slide bootstrap's, +- 1.96 sd."""
    y, fold, slides = figures(seed=1)
    rng = np.random.default_rng(2)
    a = np.clip(y * 0.3 + rng.normal(0.35, 0.2, len(y)), 0, 1)
    b = np.clip(y * 0.1 + rng.normal(0.45, 0.2, len(y)), 0, 1)
    preds = {
        "base": {s: table(a, y, fold, slides) for s in (0, 1)},
        "worse": {s: table(b, y, fold, slides) for s in (0, 1)},
    }
    t = ablation.analyse(preds, "base", n_boot=300, seed=5)
    for label in ablation.METRICS.values():
        r = t[(t["arm"] == "worse") & (t["metric"] == label)].iloc[0]
        assert r["v_seeds"] == 0.0 and r["v_slides"] > 0
        assert r["ci_high"] - r["ci_low"] == pytest.approx(2 * 1.959964 * np.sqrt(r["v_slides"]))
        assert r["minus_base"] < 0


def rows(*intervals, seed_term="yes"):
    """An arm's rows of analyse's table: one (low, high) interval a metric."""
    return pd.DataFrame(
        [{"ci_low": lo, "ci_high": hi, "minus_base": (lo + hi) / 2, "seed_term": seed_term} for lo, hi in intervals]
    )


def test_the_verdict_follows_the_rule_written_before_the_figures():
    assert ablation.verdict(rows((0.01, 0.05), (-0.01, 0.02))) == "helps"
    assert ablation.verdict(rows((0.01, 0.05), (0.001, 0.02))) == "helps"
    assert ablation.verdict(rows((-0.05, -0.01), (-0.02, 0.01))) == "hurts"
    assert ablation.verdict(rows((-0.01, 0.05), (-0.02, 0.01))) == "no evidence"
    assert ablation.verdict(rows((0.01, 0.05), (-0.05, -0.01))) == "no evidence"  # opposite ways
    assert ablation.verdict(rows((0.01, 0.05), (0.01, 0.02), seed_term="partial")) == "undecided"


def test_the_best_arm_has_the_largest_mean_difference():
    t = pd.DataFrame(
        [
            {"arm": "a", "minus_base": 0.02},
            {"arm": "a", "minus_base": -0.016},  # mean 0.002: its larger part does not decide
            {"arm": "b", "minus_base": 0.004},
            {"arm": "b", "minus_base": 0.004},
            {"arm": "c", "minus_base": 0.5},
        ]
    )
    assert ablation.best_arm(t, ["a", "b"]) == "b"
    with pytest.raises(AmfError, match="none of"):
        ablation.best_arm(t, ["z"])


def test_runs_with_other_figures_or_folds_are_refused():
    y, fold, slides = figures()
    p = np.full(len(y), 0.5)
    with pytest.raises(AmfError, match="different folds"):
        ablation.analyse({"base": {0: table(p, y, fold, slides)}, "x": {0: table(p, y, 1 - fold, slides)}}, "base")
    with pytest.raises(AmfError, match="different figures"):
        ablation.analyse({"base": {0: table(p, y, fold, slides)}, "x": {0: table(p, y, fold, slides).iloc[1:]}}, "base")
    with pytest.raises(AmfError, match="base arm"):
        ablation.analyse({"x": {0: table(p, y, fold, slides)}}, "base")
    assert NESTED in ablation.METRICS


@pytest.mark.slow
def test_the_command_trains_every_arm_and_seed_and_writes_the_report(tmp_path, capsys):
    """The smoke config, 2 arms x 2 seeds, leaving one source out of a small two-source set (AMi-Br's layout):
    every run trained on the same folds, the report written; a rerun trains nothing."""
    from training_layout import make_amibr, make_layout

    official = make_layout(tmp_path / "official", n_slides=6, per_slide=8)
    data = make_amibr(tmp_path / "amibr", official / "MIDOG25_Atypical_Classification_Train_Set.csv", 4, 10)
    runs = tmp_path / "runs"
    argv = ["smoke", "--data", str(data), "--runs", str(runs), "--split", "leave_source_out", "--seeds", "2"]
    argv += ["--arms", "soft=data.soft_labels=true", "--parallel", "2", "--n-boot", "50", "--no-progress"]
    assert ablate.main(argv) == 0
    out = capsys.readouterr().out
    assert "0 fold(s) done, 8 to train" in out
    splits = {(runs / arm / f"seed{s}" / "splits.csv").read_text() for arm in ("base", "soft") for s in (0, 1)}
    assert len(splits) == 1  # one split for every run
    seeds = {arm: [yaml_of(runs / arm / f"seed{s}") for s in (0, 1)] for arm in ("base", "soft")}
    assert [c["train"]["seed"] for c in seeds["soft"]] == [0, 1]
    assert [c["data"]["soft_labels"] for c in seeds["base"] + seeds["soft"]] == [False, False, True, True]
    table = pd.read_csv(runs / "ablation.csv")
    assert set(table["arm"]) == {"base", "soft"} and (table["seeds"] == 2).all()
    soft = table[table["arm"] == "soft"]
    assert soft["ci_low"].le(soft["minus_base"]).all() and soft["minus_base"].le(soft["ci_high"]).all()
    report = (runs / "ablation.md").read_text()
    assert "| soft | `data.soft_labels=true` | 2 |" in report
    said = ablation.verdict(table[table["arm"] == "soft"])
    assert said in {"helps", "hurts", "no evidence"} and any(
        line.startswith("| soft |") and line.endswith(f"| {said} |") for line in report.splitlines()
    )
    assert "## Does each part act?" in report and "| soft | 1 |" in report
    acting = ablation.terms({"base": {0: runs / "base" / "seed0"}})  # smoke's recipe: distillation on
    assert len(acting) == 2 and (acting["train_share_kd"] > 0).all()
    assert (runs / "ablation.png").stat().st_size > 0
    assert ablate.main(argv) == 0
    assert "8 fold(s) done, 0 to train" in capsys.readouterr().out
    assert ablate.main([*argv, "--report-only", "--parts", "soft"]) == 0
    assert "The best part of soft (the largest mean of its two differences; best_arm): soft." in capsys.readouterr().out
    assert ablate.main([*argv, "--report-only", "--parts", "nope"]) == 2


def yaml_of(run):
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())
