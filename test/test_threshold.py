"""training.results.threshold: the shipped threshold chosen between the out-of-fold and the leave-one-scanner-out rule,
on nested figures (no held-out scanner chooses its own threshold)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from amf import AmfError
from training import metrics
from training.results import threshold


def tables(shift: float, seed: int = 0, n_slides: int = 60, per_slide: int = 12):
    """An out-of-fold and a leave-one-scanner-out table of the same figures; unseen scanners push the
    atypical probabilities down by SHIFT (what the issue saw: sensitivity lost under shift)."""
    rng = np.random.default_rng(seed)
    n = n_slides * per_slide
    slide = np.repeat(np.arange(n_slides), per_slide).astype(str)
    scanner = np.array(["A", "B", "C"])[np.repeat(np.arange(n_slides) % 3, per_slide)]
    y = (rng.random(n) < 0.25).astype(int)
    p_oof = 1 / (1 + np.exp(-(2.0 * y - 1 + rng.normal(0, 1.2, n))))
    p_loso = np.clip(p_oof - shift * y - 0.5 * shift * (1 - y) + rng.normal(0, 0.02, n), 0, 1)
    base = {
        "image_id": [f"{i:05d}" for i in range(n)],
        "label": y,
        "slide": slide,
        "Scanner": scanner,
        "source": "official",
    }
    fold_of_scanner = np.unique(scanner, return_inverse=True)[1]  # a leave-one-scanner-out run: a fold per scanner
    loso = pd.DataFrame({**base, "probability": p_loso, "fold": fold_of_scanner})
    return pd.DataFrame({**base, "probability": p_oof, "fold": np.arange(n) % 5}), loso


def test_shifted_unseen_scanners_choose_the_loso_rule_and_a_lower_threshold():
    oof, loso = tables(shift=0.2)
    res = threshold.choose(oof, loso, n_boot=50)
    assert res["chosen"] == "loso"
    assert res["threshold"] == res["rules"]["loso"]["threshold"] < res["rules"]["oof"]["threshold"]
    r = res["rules"]
    assert r["loso"]["nested_loso"]["balanced_accuracy"] > r["oof"]["nested_loso"]["balanced_accuracy"]
    # both thresholds reported on both sets, each pooled figure recomputable from the table
    y, p = loso["label"], loso["probability"]
    assert r["oof"]["on"]["loso"]["balanced_accuracy"] == pytest.approx(
        metrics.summary(y, p, threshold=r["oof"]["threshold"])["balanced_accuracy"]
    )
    assert r["loso"]["on"]["oof"]["sensitivity"] == pytest.approx(
        metrics.summary(oof["label"], oof["probability"], threshold=r["loso"]["threshold"])["sensitivity"]
    )


def test_nested_thresholds_never_see_the_held_out_scanner():
    oof, loso = tables(shift=0.2, seed=1)
    res = threshold.choose(oof, loso, n_boot=20)
    changed = loso.copy()
    changed.loc[changed["Scanner"] == "A", "label"] ^= 1  # relabel scanner A in both tables
    oof_changed = oof.copy()
    oof_changed["label"] = changed["label"]
    res2 = threshold.choose(oof_changed, changed, n_boot=20)
    for rule in threshold.RULES:  # scanner A's nested threshold is chosen on B and C only
        assert res2["rules"][rule]["nested_thresholds"]["A"] == res["rules"][rule]["nested_thresholds"]["A"]
        assert res2["rules"][rule]["nested_thresholds"]["B"] != res["rules"][rule]["nested_thresholds"]["B"]


def test_no_shift_is_a_tie_that_keeps_the_out_of_fold_rule():
    oof, _ = tables(shift=0.0)
    res = threshold.choose(oof, oof.assign(fold=oof["Scanner"].map({"A": 0, "B": 1, "C": 2})), n_boot=20)
    assert res["chosen"] == "oof" and res["threshold"] == res["rules"]["oof"]["threshold"]


def test_tables_of_other_figures_or_one_scanner_are_refused():
    oof, loso = tables(shift=0.1)
    with pytest.raises(AmfError, match="same figures of the main set"):
        threshold.choose(oof, loso.iloc[:-1])
    one = oof.assign(Scanner="A")
    with pytest.raises(AmfError, match="not a leave-one-domain-out run"):
        threshold.choose(one, one.copy())


def test_the_held_out_domain_is_read_off_the_loso_run():
    """A leave-one-source-out run (AMi-Br's MIDOG21 and TUPAC16) is held out by source, not by scanner: its nested
    thresholds are per source, each chosen on the other source's figures."""
    oof, loso = tables(shift=0.2, seed=2)
    source = np.where(oof["Scanner"] == "A", "TUPAC16", "MIDOG21")  # scanners B and C are one source
    oof, loso = oof.assign(source=source), loso.assign(source=source, fold=(source == "TUPAC16").astype(int))
    res = threshold.choose(oof, loso, n_boot=20)
    assert res["held_out"] == "source" and res["groups"] == ["MIDOG21", "TUPAC16"]
    assert set(res["rules"]["oof"]["nested_thresholds"]) == {"MIDOG21", "TUPAC16"}
    tupac = (source == "TUPAC16") & threshold.choosing(oof)
    assert res["rules"]["oof"]["nested_thresholds"]["MIDOG21"] == threshold.best_threshold(
        oof["label"][tupac], oof["probability"][tupac]
    )
