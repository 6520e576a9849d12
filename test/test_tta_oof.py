"""training.tta_oof: a finished run's held-out predictions again under the container's test-time augmentation.

Without views it must give the run's own out-of-fold probabilities (same member, same preprocessing); with
the eight dihedral views (d4) it must not care how the patches are turned, which plain predictions do.
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from training_layout import make_layout

from amf import AmfError
from training import train, tta_oof
from training.data import OFFICIAL_IMAGES

pytestmark = pytest.mark.slow  # trains a model


def train_smoke(data, out, *overrides) -> None:
    """The smoke config on the CPU at 128 px: the patches' own size, so no resize stands between a turned patch
    and a turned input."""
    args = ["--config", "smoke", "--data", data, "--out", out, "--device", "cpu", "--no-progress"]
    assert train.main([str(a) for a in [*args, "--set", "data.input_size=128", *overrides]]) == 0


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tta")
    data = make_layout(root / "data")
    train_smoke(data, root / "run")
    return data, root / "run"


def probabilities(run_dir) -> pd.Series:
    oof = pd.read_csv(run_dir / "oof.csv", dtype={"image_id": str})
    return oof.set_index("image_id")["probability"].sort_index()


def test_no_views_reproduces_the_runs_own_out_of_fold_probabilities(run, tmp_path):
    data, run_dir = run
    out = tta_oof.tta_run(run_dir, "none", tmp_path / "none", log=lambda *_: None)
    assert np.abs(probabilities(out) - probabilities(run_dir)).max() < 1e-5
    assert (out / "oof_metrics.json").is_file() and "tta: none" in (out / "config.yaml").read_text()


def test_d4_views_do_not_care_how_the_patches_are_turned(run, tmp_path):
    data, run_dir = run
    turned = tmp_path / "turned"
    shutil.copytree(data, turned)
    for png in (turned / OFFICIAL_IMAGES).glob("*.png"):
        Image.fromarray(np.rot90(np.asarray(Image.open(png))).copy()).save(png)
    quiet = dict(log=lambda *_: None)
    d4 = probabilities(tta_oof.tta_run(run_dir, "d4", tmp_path / "d4", data, **quiet))
    d4_turned = probabilities(tta_oof.tta_run(run_dir, "d4", tmp_path / "d4t", turned, **quiet))
    plain = probabilities(tta_oof.tta_run(run_dir, "none", tmp_path / "n", data, **quiet))
    plain_turned = probabilities(tta_oof.tta_run(run_dir, "none", tmp_path / "nt", turned, **quiet))
    assert np.abs(d4 - d4_turned).max() < 1e-5
    assert np.abs(plain - plain_turned).max() > 1e-3  # the views are doing the work
    assert np.abs(d4 - plain).max() > 1e-3


def test_an_unfinished_run_and_the_run_itself_as_output_are_refused(run, tmp_path):
    data, run_dir = run
    with pytest.raises(AmfError, match="must not be the run folder"):
        tta_oof.tta_run(run_dir, "d4", run_dir)
    partial = tmp_path / "partial"
    shutil.copytree(run_dir, partial)
    (partial / "fold1" / "done.json").unlink()
    with pytest.raises(AmfError, match=r"fold\(s\) 1 .* not finished"):
        tta_oof.tta_run(partial, "d4", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_with_a_leave_one_scanner_out_run_ships_the_chosen_threshold(run, tmp_path):
    """training.export --shift-run: the manifest's threshold is training.threshold's choice, and the whole
    comparison is in the provenance (the layout has two scanners, so a leave-one-scanner-out run has 2 folds)."""
    import json

    from training import export, threshold
    from training.run import RunDir

    data, run_dir = run
    loso = tmp_path / "loso"
    train_smoke(data, loso, "splits.kind=leave_scanner_out")
    assert export.main([str(run_dir), "--out", str(tmp_path / "model"), "--shift-run", str(loso)]) == 0
    manifest = json.loads((tmp_path / "model" / "ensemble.json").read_text())
    expected = threshold.choose(RunDir(run_dir).read_oof(), RunDir(loso).read_oof())
    shift = manifest["provenance"]["threshold_for_shift"]
    assert manifest["threshold"] == expected["threshold"] == shift["threshold"]
    assert shift["chosen"] == expected["chosen"] and set(shift["rules"]) == {"oof", "loso"}
    assert manifest["provenance"]["threshold_note"].startswith(f"the {expected['chosen']} rule")
    assert export.main([str(run_dir), "--out", str(tmp_path / "m2")]) == 0  # without it: no such key
    assert "threshold_for_shift" not in json.loads((tmp_path / "m2" / "ensemble.json").read_text())["provenance"]
