"""bench/: the timing wrapper does what inference.py does, and the table's arithmetic is right."""

from __future__ import annotations

import json
import subprocess
import sys

from compare_output import EXPECTED, compare
from conftest import ROOT

from bench.container import STAGES, report


def test_stage_wrapper_writes_what_inference_writes(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "bench.stages", "--input", "test/input", "--output", str(tmp_path), "--model", "model"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    stages = json.loads(p.stdout.strip().splitlines()[-1])
    assert stages["n"] == 16 and all(stages[s] >= 0 for s in STAGES[1:])
    written = json.loads((tmp_path / "multiple-mitotic-figure-classification.json").read_text())
    # same classes, confidences within the Docker test's 1e-3: another CPU differs at ~1e-9
    assert compare(written, json.loads(EXPECTED.read_text())) == []


def run(total, cpu=1.0, variant=None):
    return {
        "total": total,
        "cpu": cpu,
        "startup": 0.1,
        "imports": 0.2,
        "load": 0.3,
        "infer": total - 0.7,
        "write": 0.1,
        "n": 16,
        "device": "cpu",
        "variant": variant,
    }


def test_report_compares_medians_and_best_runs():
    runs = {
        "baseline": [run(10), run(8), run(30)],
        "convnext5-128": [run(4), run(5), run(6)],
        "convnext5-128-merged": [run(2, variant="merged")] * 3,
    }
    text = report(runs, "test/input", gpu=False, name="test machine")
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in text.splitlines() if line.startswith("| ")}
    assert rows["convnext5-128"][3:5] == ["5.00", "4.00"]  # median, best wall
    assert rows["convnext5-128"][10:12] == ["0.50", "0.50"]  # 5 / 10 (medians), 4 / 8 (best)
    assert "convnext5-128-merged / convnext5-128 (same round) = 0.40 wall" in text
    assert "fp16 on GPU: not measured" in text


def test_derived_folders_load_and_give_the_members_probabilities(tmp_path, monkeypatch):
    """A derived folder holds its members' files itself: the manifest refuses paths that leave its folder."""
    import numpy as np
    from toy_models import make_toy_ensemble

    from amf.ensemble import Ensemble
    from bench import models
    from bench.single_graph import Merged

    monkeypatch.setattr(models, "CACHE", tmp_path / "cache")
    src = make_toy_ensemble(tmp_path / "toy", members=3).parent
    patches = list(np.random.default_rng(0).integers(0, 256, (6, 128, 128, 3), dtype=np.uint8))
    want = Ensemble(src, device="cpu").predict_proba(patches)
    members = models.derived_folder(src, "toy_members", "members")
    np.testing.assert_allclose(Ensemble(members, device="cpu").predict_proba(patches), want, atol=1e-6, rtol=0)
    merged = models.derived_folder(src, "toy_merged", "merged")
    ran = Merged(merged, models.GRAPHS["merged"], device="cpu")
    np.testing.assert_allclose(ran.predict_proba(patches), want, atol=1e-6, rtol=0)
    # bench.stages times the merged graph in place of the members when told to, and says so
    cmd = [sys.executable, "-m", "bench.stages", "--input", "test/input", "--output", str(tmp_path / "o")]
    p = subprocess.run(
        [*cmd, "--model", str(merged), "--graph", "merged.onnx"], cwd=ROOT, capture_output=True, text=True
    )
    assert p.returncode == 0 and json.loads(p.stdout.strip().splitlines()[-1])["variant"] == "merged", p.stderr


def test_a_tta_case_runs_the_shipped_members_with_that_augmentation(tmp_path, monkeypatch):
    """bench's shipped-tta-<mode> cases time what the container does with that mode: same members, more views."""
    import numpy as np
    from toy_models import make_toy_ensemble

    from amf.ensemble import Ensemble
    from amf.manifest import load
    from bench import models

    monkeypatch.setattr(models, "CACHE", tmp_path / "cache")
    src = make_toy_ensemble(tmp_path / "toy", members=2).parent
    patches = list(np.random.default_rng(0).integers(0, 256, (4, 128, 128, 3), dtype=np.uint8))
    d4 = models.derived_folder(src, "toy_d4", "members", tta="d4")
    assert load(d4).tta == "d4" and load(src).tta == "none"
    got = Ensemble(d4, device="cpu").predict_proba(patches)
    turned = Ensemble(d4, device="cpu").predict_proba([np.rot90(p).copy() for p in patches])
    np.testing.assert_allclose(got, turned, atol=1e-5, rtol=0)  # the eight views are really run
    plain = Ensemble(src, device="cpu")
    assert (
        np.abs(plain.predict_proba(patches) - plain.predict_proba([np.rot90(p).copy() for p in patches])).max() > 1e-4
    )


def test_what_ships_is_members_times_parameters_in_each_precision():
    """bench.sizes' second table: every fold, a subset, one member; 4 and 2 bytes a parameter; the T4 estimate scales
    with the members and views (here a made-up backbone of 1 G parameters and 1 TFLOP a patch)."""
    from bench import sizes

    measured = {label: {"params": 1e9, "flops": 1e12, "size": 224} for label, _, _ in sizes.BACKBONES}
    rows = sizes.ship_table([5, 2, 1], 5, 16, measured)
    first = sizes.BACKBONES[0][0]
    assert rows[2] == f"| {first} | 5: every fold | 20.00 GB | 10.00 GB | 9.88 s / 79.01 s | 1.23 s / 9.85 s |"
    assert rows[3].startswith(f"| {first} | 2: a subset of the folds (--folds) | 8.00 GB | 4.00 GB |")
    assert rows[4].startswith(f"| {first} | 1: one member (all figures, or one fold) | 4.00 GB | 2.00 GB | 1.98 s")
    assert len(rows) == 2 + 3 * len(sizes.BACKBONES)
