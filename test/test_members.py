"""Members that fit the platform: a subset of the folds, one member trained on all figures, fp16 members. Each is
exported from a run trained here (the smoke config's random-init ConvNeXt at 32 px on generated data), passes the
container's checks (inference.py on the sample job, against the model's own expected output) and gets its card; each
refusal is one line and writes nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pandas as pd
import pytest
import yaml
from compare_output import compare
from conftest import ROOT
from training_layout import make_layout

import inference
from amf import AmfError
from amf import manifest as manifest_io
from amf.ensemble import Ensemble
from amf.jobs import find_stack, read_stack
from amf.results import validate
from training.card import __main__ as card_cli
from training.export import __main__ as export
from training.export import fingerprint
from training.export.folder import export_run
from training.results.threshold import best_threshold
from training.rundir import RunDir
from training.train import __main__ as train

pytestmark = pytest.mark.slow  # trains two runs (about two minutes on 2 cores)

SAMPLE = ROOT / "test" / "input"
# plain training, 4 epochs: members that learn the generated figures' signal, so that the preflight's ROC AUC lines
# have something to pass on (the smoke config's EMA teacher, at its per-step decay, barely leaves its initialisation
# in 4 epochs of 4 steps)
SMALL = ["data.input_size=32", "train.batch_size=8", "train.epochs=4"]
SMALL += ["ema.enabled=false", "mixstyle.enabled=false", "align.enabled=false"]


def run_train(data, out, *sets) -> int:
    args = ["--config", "smoke", "--data", str(data), "--out", str(out), "--device", "cpu", "--no-progress"]
    return train.main([*args, "--set", *SMALL, *sets])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A cross-validated run (2 folds) and a run of splits.kind all of the same figures and config."""
    root = tmp_path_factory.mktemp("members")
    data = make_layout(root / "data", n_slides=8, per_slide=8)
    assert run_train(data, root / "runs" / "cv") == 0
    assert run_train(data, root / "runs" / "all", "splits.kind=all") == 0
    return data, root / "runs" / "cv", root / "runs" / "all"


def container_checks(model_dir, tmp_path) -> list[dict]:
    """The container's checks on MODEL_DIR: inference.py in a fresh process on the sample job, its result valid and
    equal to the model's own expected output (as do_test_run.sh compares), and inference.run in this one."""
    out = tmp_path / "job"
    cmd = [sys.executable, str(ROOT / "inference.py"), "--input", str(SAMPLE), "--output", str(out)]
    p = subprocess.run([*cmd, "--model", str(model_dir)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    written = json.loads((out / "multiple-mitotic-figure-classification.json").read_text())
    validate(written, 16)
    assert compare(written, json.loads((model_dir / "expected_output.json").read_text())) == []
    assert inference.run(SAMPLE, tmp_path / "again", model_dir) == written
    return written


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_a_subset_of_the_folds_ships_with_their_own_threshold_and_figures(runs, tmp_path, capsys):
    data, cv, _ = runs
    model = tmp_path / "model"
    assert export.main([str(cv), "--out", str(model), "--folds", "1"]) == 0
    m = manifest_io.load(model)
    assert [(x.file, x.fold) for x in m.members] == [("fold1.onnx", 1)]
    p = m.provenance
    assert (p["folds"], p["run_folds"]) == ([1], [0, 1])
    held_out = RunDir(cv).fold(1).read_oof()  # the threshold is fold 1's out-of-fold optimum, and its figures
    assert m.threshold == pytest.approx(best_threshold(held_out["label"], held_out["probability"]))
    assert p["oof_metrics"]["n"] == len(held_out) and set(p["oof_metrics"]["per_fold"]) == {"1"}
    # fold 1's member never trained on fold 1: the fingerprints are the other figures' only
    splits = RunDir(cv).read_splits()
    assert p["training_figures"]["figures"] == int((splits["fold"] != 1).sum())
    assert len(fingerprint.read(model / fingerprint.FILE)) == int((splits["fold"] != 1).sum())
    container_checks(model, tmp_path)
    # the card: the shipped fold's figures alone, and which folds of how many
    assert card_cli.main(["--model", str(model), "--recipe", str(cv), "--n-boot", "50"]) == 0
    card = json.loads((model / "card.json").read_text())
    assert card["shipped_folds"] == {"folds": [1], "of": 2}
    assert card["runs"]["recipe"]["oof"]["n"] == len(held_out)
    assert set(pd.read_csv(model / "oof.csv")["fold"]) == {1}
    readme = (model / "README.md").read_text()
    assert "members of fold 1 of 2" in readme and "Shipped: the members of fold 1 of 2" in readme
    assert "| 0 | 32 (12) | 4 | not shipped | not shipped |" in readme
    assert "python -m training.export $R/cv --out model --data $D --folds 1" in readme
    # a fold the run lacks: one line, nothing written
    capsys.readouterr()
    assert export.main([str(cv), "--out", str(tmp_path / "none"), "--folds", "0,7"]) == 2
    assert one_line_error(capsys) == f"error: --folds 7: {cv} has folds 0, 1"
    assert not (tmp_path / "none").exists()
    with pytest.raises(SystemExit) as stop:  # argparse's: the one-line rule, exit 2
        export.main([str(cv), "--out", str(tmp_path / "none"), "--folds", "one"])
    assert stop.value.code == 2 and "is not a comma-separated list of fold numbers" in one_line_error(capsys)


def test_a_member_trained_on_all_figures_takes_the_threshold_of_its_cross_validated_run(runs, tmp_path, capsys):
    data, cv, every = runs
    run = RunDir(every)
    splits = run.read_splits()
    assert set(splits["fold"]) == {0} and set(splits["fold_name"]) == {"all"}
    fold = run.fold(0)  # trained on every figure: no held-out figure, no out-of-fold file, nothing pooled
    assert fold.is_done() and fold.best.is_file() and not fold.oof.exists() and not run.is_pooled()
    assert fold.read_done()["selection"] == "last" and fold.read_done()["best_epoch"] == 4
    # without the cross-validated run it has no threshold: one line, nothing written
    capsys.readouterr()
    assert export.main([str(every), "--out", str(tmp_path / "none")]) == 2
    assert "give --threshold-from CV_RUN" in one_line_error(capsys) and not (tmp_path / "none").exists()
    model = tmp_path / "model"
    assert export.main([str(every), "--out", str(model), "--threshold-from", str(cv), "--precision", "fp16"]) == 0
    m = manifest_io.load(model)
    assert [(x.file, x.fold, x.precision) for x in m.members] == [("all.onnx", None, "fp16")]
    assert m.threshold == json.loads(RunDir(cv).oof_metrics.read_text())["threshold"]
    p = m.provenance
    assert p["all_figures"]["cv_run"] == "cv" and p["run"] == "all" and p["folds"] == []
    assert p["all_figures"]["figures"] == 64 and p["all_figures"]["epochs"] == 4
    assert p["oof_metrics"]["n"] == 64 and p["training_figures"]["figures"] == 64
    container_checks(model, tmp_path)
    # the card reports the cross-validated run, named as such; --recipe the all-figures run is refused
    assert card_cli.main(["--model", str(model), "--recipe", str(every), "--n-boot", "50"]) == 2
    assert "its card reports the cross-validated run its threshold came from, cv" in one_line_error(capsys)
    assert card_cli.main(["--model", str(model), "--recipe", str(cv), "--n-boot", "50"]) == 0
    card = json.loads((model / "card.json").read_text())
    assert card["all_figures"]["run"] == "all" and card["all_figures"]["cv_run"] == "cv"
    readme = (model / "README.md").read_text()
    assert "one member trained on all 64 figures (no fold, none held out)" in readme
    assert "whose 2 members are not shipped" in readme and "of the cross-validated run `cv`, not of" in readme
    assert "`all.onnx`: trained on all figures (no fold)" in readme
    assert "python -m training.export $R/all --out model --data $D --threshold-from $R/cv --precision fp16" in readme


def test_a_cross_validated_run_of_other_figures_or_config_is_refused(runs, tmp_path, capsys):
    _, cv, every = runs
    other_config = shutil.copytree(cv, tmp_path / "lr")
    cfg = yaml.safe_load((other_config / "config.yaml").read_text())
    cfg["train"]["lr"] = 0.5
    (other_config / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    other_figures = shutil.copytree(cv, tmp_path / "fewer")
    splits = pd.read_csv(other_figures / "splits.csv", dtype=str, keep_default_na=False)
    splits.iloc[1:].to_csv(other_figures / "splits.csv", index=False)
    for folder, says in ((other_config, "another config than"), (other_figures, "other figures than")):
        capsys.readouterr()
        assert export.main([str(every), "--out", str(tmp_path / "none"), "--threshold-from", str(folder)]) == 2
        line = one_line_error(capsys)
        assert says in line and "differs in train.lr" in line if folder == other_config else says in line
    assert export.main([str(cv), "--out", str(tmp_path / "none"), "--threshold-from", str(cv)]) == 2
    assert "--threshold-from is for a run of splits.kind all" in one_line_error(capsys)
    assert not (tmp_path / "none").exists()


def test_fp16_members_are_half_the_size_and_near_the_fp32_ones(runs, tmp_path):
    _, cv, _ = runs
    fp32, fp16 = tmp_path / "fp32", tmp_path / "fp16"
    export_run(cv, fp32, log=lambda *a: None)
    export_run(cv, fp16, precision="fp16", log=lambda *a: None)
    a, b = manifest_io.load(fp32), manifest_io.load(fp16)
    assert [x.precision for x in b.members] == ["fp16", "fp16"] and b.threshold == a.threshold
    for x, y in zip(a.members, b.members):
        assert (fp16 / y.file).stat().st_size < 0.6 * (fp32 / x.file).stat().st_size
        onnx.checker.check_model(str(fp16 / y.file))  # a valid graph: its nodes in topological order, typed
    for check in b.provenance["parity"].values():  # recorded at export, on the fold's real patches
        half = check["fp16"]
        assert half["n_real"] == 16 and half["tol"] == 1e-3 and half["half_activations_on"] in ("cpu", "cuda")
        assert 0 <= half["max_abs_prob_diff_real"] <= 1e-3
        assert 0 <= half["max_abs_prob_diff_real_half_activations"] <= 1e-3
        assert half["fp16_bytes"] < 0.6 * half["fp32_bytes"]
    written = container_checks(fp16, tmp_path)  # float32 in and out: the container's path is the same
    want = json.loads((fp32 / "expected_output.json").read_text())
    assert max(abs(r["confidence"] - e["confidence"]) for r, e in zip(written, want)) <= 1e-3
    ens = Ensemble(fp16, device="cpu")
    patches = read_stack(find_stack(SAMPLE))
    assert np.abs(ens.predict_proba(patches) - Ensemble(fp32, device="cpu").predict_proba(patches)).max() <= 1e-3
    # the card says so
    assert card_cli.main(["--model", str(fp16), "--recipe", str(cv), "--n-boot", "50"]) == 0
    readme = (fp16 / "README.md").read_text()
    assert "(fp16 weights)" in readme and "fp16 weights and compute (float32 input and output)" in readme
    assert "fp16 against fp32 on real patches, largest |P(atypical) difference|" in readme


def test_an_fp16_member_beyond_the_tolerance_is_refused_and_nothing_written(runs, tmp_path, capsys):
    _, cv, _ = runs
    strict = shutil.copytree(cv, tmp_path / "strict")
    cfg = yaml.safe_load((strict / "config.yaml").read_text())
    cfg["export"]["fp16_tol"] = 1e-12
    (strict / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    capsys.readouterr()
    assert export.main([str(strict), "--out", str(tmp_path / "model"), "--precision", "fp16"]) == 2
    line = one_line_error(capsys)
    assert "fold0.onnx: in fp16 P(atypical) moves by up to" in line and "export.fp16_tol 1e-12" in line
    assert not (tmp_path / "model").exists()
    with pytest.raises(AmfError, match="export.fp16_tol"):
        export_run(strict, tmp_path / "model", precision="fp16", log=lambda *a: None)


def test_all_figures_configs_that_would_choose_on_nothing_and_the_pipeline_refuse_in_one_line(runs, tmp_path, capsys):
    from training.pipeline import main as pipeline

    data, _, _ = runs
    capsys.readouterr()
    assert run_train(data, tmp_path / "inner", "splits.kind=all", "train.selection=inner") == 2
    assert "splits.kind all holds no figure out" in one_line_error(capsys) and not (tmp_path / "inner").exists()
    args = ["smoke", "--data", str(data), "--runs", str(tmp_path / "runs"), "--model-out", str(tmp_path / "m")]
    assert pipeline([*args, "--set", "splits.kind=all"]) == 2
    line = one_line_error(capsys)
    assert "training.export ALL_RUN --threshold-from CV_RUN" in line and not (tmp_path / "runs").exists()


def test_each_kind_of_member_passes_the_preflight(runs, tmp_path, capsys):
    """A subset, an fp16 export and a member trained on all figures, each through evaluation's preflight (the
    container on labelled figures, against the model's own record): no line fails. The subset's member is checked
    on its held-out fold; the all-figures member has no fold, so it is checked as the ensemble, on figures no run
    trained on."""
    from evaluation import __main__ as evaluation

    data, cv, every = runs
    unseen = make_layout(tmp_path / "unseen", n_slides=4, per_slide=8, seed=7, start_id=1000)
    models = {"subset": (tmp_path / "subset", data), "fp16": (tmp_path / "fp16", data)}
    models["all"] = (tmp_path / "all", unseen)
    assert export.main([str(cv), "--out", str(models["subset"][0]), "--folds", "1"]) == 0
    assert export.main([str(cv), "--out", str(models["fp16"][0]), "--precision", "fp16"]) == 0
    assert export.main([str(every), "--out", str(models["all"][0]), "--threshold-from", str(cv)]) == 0
    for name, (model, labelled) in models.items():
        capsys.readouterr()
        argv = ["preflight", str(model), "--data", str(labelled), "--in-process", "--n-boot", "200"]
        argv += [] if name == "all" else ["--run", str(cv)]
        code = evaluation.main(argv)
        said = capsys.readouterr()
        out = said.out.splitlines()
        assert code == 0, (name, said.out, said.err)
        passed = [ln for ln in out if ln.startswith("PASS")]
        assert any("ROC AUC" in ln for ln in passed), (name, "\n".join(out))
        assert "of unknown shape" not in "\n".join(out)  # the memory estimate saw every tensor
