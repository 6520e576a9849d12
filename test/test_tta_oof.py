"""training.results.tta_oof: a finished run's held-out predictions again under the container's test-time augmentation.

Without views it must give the run's own out-of-fold probabilities (same member, same preprocessing); with
the eight dihedral views (d4) it must not care how the patches are turned, which plain predictions do.
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from training_layout import make_layout

from amf import AmfError
from training.data import OFFICIAL_IMAGES
from training.results import tta_oof
from training.train import __main__ as train

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


@pytest.fixture(scope="module")
def loso(run):
    """The same smoke run, leave one scanner out (the layout has two scanners: 2 folds)."""
    data, run_dir = run
    train_smoke(data, run_dir.with_name("loso"), "splits.kind=leave_scanner_out")
    return run_dir.with_name("loso")


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


def test_export_with_a_leave_one_scanner_out_run_ships_the_chosen_threshold(run, loso, tmp_path):
    """training.export --shift-run: the manifest's threshold is training.results.threshold's choice, and the whole
    comparison is in the provenance (the layout has two scanners, so a leave-one-scanner-out run has 2 folds)."""
    import json

    from training.export import __main__ as export
    from training.results import threshold
    from training.rundir import RunDir

    data, run_dir = run
    assert export.main([str(run_dir), "--out", str(tmp_path / "model"), "--shift-run", str(loso)]) == 0
    manifest = json.loads((tmp_path / "model" / "ensemble.json").read_text())
    expected = threshold.choose(RunDir(run_dir).read_oof(), RunDir(loso).read_oof())
    shift = manifest["provenance"]["threshold_for_shift"]
    assert manifest["threshold"] == expected["threshold"] == shift["threshold"]
    assert shift["chosen"] == expected["chosen"] and set(shift["rules"]) == {"oof", "loso"}
    assert manifest["provenance"]["threshold_note"].startswith(f"the {expected['chosen']} rule")
    assert export.main([str(run_dir), "--out", str(tmp_path / "m2")]) == 0  # without it: no such key
    assert "threshold_for_shift" not in json.loads((tmp_path / "m2" / "ensemble.json").read_text())["provenance"]


def test_export_under_tta_chooses_the_threshold_on_that_modes_predictions(run, loso, tmp_path, capsys):
    """--tta d4 --threshold-run RUN_tta_d4 --shift-run LOSO_tta_d4: the threshold is chosen on the predictions the
    container makes; predictions of another mode, or of another run, are refused before anything is written."""
    import json

    from training.export import __main__ as export
    from training.export.folder import export_run
    from training.results import threshold
    from training.rundir import RunDir

    data, run_dir = run
    quiet = dict(log=lambda *_: None)
    run_d4 = tta_oof.tta_run(run_dir, "d4", tmp_path / "run_d4", data, **quiet)
    loso_d4 = tta_oof.tta_run(loso, "d4", tmp_path / "loso_d4", data, **quiet)
    model = tmp_path / "model"
    args = [str(run_dir), "--out", str(model), "--tta", "d4"]
    assert export.main([*args, "--threshold-run", str(run_d4), "--shift-run", str(loso_d4)]) == 0
    manifest = json.loads((model / "ensemble.json").read_text())
    expected = threshold.choose(RunDir(run_d4).read_oof(), RunDir(loso_d4).read_oof())
    assert manifest["tta"] == "d4" and manifest["threshold"] == expected["threshold"]
    # the threshold's source is the run whose rule won; both rules' runs recorded, by name: no path of this machine
    shift, names = manifest["provenance"]["threshold_for_shift"], {"oof": "run_d4", "loso": "loso_d4"}
    want = {"run": names[expected["chosen"]], "tta": "d4", "rule": expected["chosen"]}
    assert manifest["provenance"]["threshold_predictions"] == want
    assert (shift["oof_run"], shift["loso_run"], manifest["provenance"]["run"]) == ("run_d4", "loso_d4", "run")
    from training.export.paths import absolute_paths

    for f in model.iterdir():  # every file an export writes
        if f.suffix == ".json":
            assert not absolute_paths(f.read_text()), f.name
    refused = {
        "--shift-run .* test-time augmentation none": ["--tta", "d4", "--threshold-run", run_d4, "--shift-run", loso],
        "holds predictions of .*loso, not of": ["--tta", "d4", "--threshold-run", loso_d4],
        "predicted with test-time augmentation d4, the container runs none": ["--threshold-run", run_d4],
    }
    capsys.readouterr()
    for message, extra in refused.items():
        assert export.main([str(run_dir), "--out", str(tmp_path / "refused"), *map(str, extra)]) == 2
        assert re.search(message, capsys.readouterr().err.strip().splitlines()[-1])
    assert not (tmp_path / "refused").exists()
    without = json.loads(export_run(run_dir, tmp_path / "m1", tta="d4", **quiet).read_text())
    assert without["provenance"]["threshold_predictions"]["tta"] == "none"
    assert "an estimate" in without["provenance"]["threshold_note"]
