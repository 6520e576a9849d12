"""training.train -> training.export -> inference.py, end to end with the smoke config on the CPU.

On the real breast slice (skipped where ../shared/data is absent) and on generated data in the
official layout (extra set with duplicates, synthetic atypicals, a tiny ViT with LoRA).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from training_layout import make_extra, make_layout, make_synthetic

from amf import AmfError
from amf import manifest as manifest_io
from amf.ensemble import Ensemble
from amf.preprocess import prepare
from amf.results import validate
from training.data import OFFICIAL_IMAGES, decode
from training.export import __main__ as export
from training.export import fingerprint
from training.export.folder import export_run
from training.train import __main__ as train
from training.train import kfold
from training.train.models import load_for_export

pytestmark = pytest.mark.slow  # trains models (make test-fast leaves it out)

ROOT_INPUT = __import__("pathlib").Path(__file__).resolve().parent / "input"
RUN_FILES = ["config.yaml", "splits.csv", "oof.csv", "oof_metrics.json"]
FOLD_FILES = ["best.pt", "last.pt", "epochs.csv", "oof.csv", "done.json"]


def run_train(*args) -> None:  # on the CPU, so a GPU host trains (and checks) the same thing
    assert train.main([*map(str, args), "--device", "cpu", "--no-progress"]) == 0


@pytest.fixture(scope="module")
def breast_run(tmp_path_factory):
    from conftest import BREAST, need

    data = need(BREAST)
    root = tmp_path_factory.mktemp("breast")
    run_train("--config", "smoke", "--data", data, "--out", root / "run")
    assert export.main([str(root / "run"), "--out", str(root / "model")]) == 0
    return data, root / "run", root / "model"


def check_run_folder(run, folds):
    for f in RUN_FILES:
        assert (run / f).is_file(), f
    for k in folds:
        for f in FOLD_FILES:
            assert (run / f"fold{k}" / f).is_file(), (k, f)


def test_breast_run_folder_and_oof(breast_run):
    data, run, _ = breast_run
    check_run_folder(run, [0, 1])
    table = pd.read_csv(data / "MIDOG25_Atypical_Classification_Train_Set.csv", dtype={"image_id": str})
    oof = pd.read_csv(run / "oof.csv", dtype={"image_id": str})
    assert sorted(oof["image_id"]) == sorted(table["image_id"])  # every figure once, out of fold
    assert set(oof["fold"]) == {0, 1}
    assert ((oof["probability"] >= 0) & (oof["probability"] <= 1)).all()
    assert {"Scanner", "raw_Scanner", "Tumor", "label"} <= set(oof.columns)
    assert "Hamammatsu XR" in set(oof["raw_Scanner"]) and "Hamammatsu XR" not in set(oof["Scanner"])
    m = json.loads((run / "oof_metrics.json").read_text())
    assert 0.0 <= m["threshold"] <= 1.0
    lo, hi = m["ci95"]["balanced_accuracy"]
    assert lo <= m["at_threshold"]["balanced_accuracy"] <= hi
    assert set(m["per_domain"]["Scanner"]) == {"Aperio CS2", "Hamamatsu S360", "Hamamatsu XR"}
    epochs = pd.read_csv(run / "fold0" / "epochs.csv")
    assert len(epochs) == 1 and {"train_loss", "train_kd", "train_align", "val_balanced_accuracy"} <= set(epochs)
    assert epochs["train_kd"].iloc[0] > 0 and epochs["train_align"].iloc[0] >= 0


def test_breast_run_logs_each_terms_share_and_the_alignments_shuffled_control(breast_run):
    """The smoke recipe (MixStyle, alignment on Scanner, EMA distillation): every epoch row and the fold's TensorBoard
    hold each loss term's share of the loss (adding up to 1) and the alignment beside its shuffled-domain control."""
    pytest.importorskip("tensorboard", reason="requirements-dev.txt installs it")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run, _ = breast_run
    for k in (0, 1):
        row = pd.read_csv(run / f"fold{k}" / "epochs.csv").iloc[-1]
        shares = [row[f"train_share_{key}"] for key in ("cls", "kd", "align")]
        assert sum(shares) == pytest.approx(1.0, abs=1e-6) and min(shares[:2]) > 0
        assert row["train_align_control"] >= 0 and row["train_share_align"] == pytest.approx(
            0.1 * row["train_align"] / row["train_loss"], rel=1e-4
        )
        ea = EventAccumulator(str(run / f"fold{k}"))
        ea.Reload()
        tags = set(ea.Tags()["scalars"])
        assert {"train/share_cls", "train/share_kd", "train/share_align", "train/align_control"} <= tags
        assert ea.Scalars("train/align_control")[-1].value == pytest.approx(row["train_align_control"], rel=1e-5)


def test_breast_export_manifest_and_inference(breast_run, tmp_path):
    data, run, model_dir = breast_run
    mf = manifest_io.load(model_dir)
    assert mf.trained and [m.fold for m in mf.members] == [0, 1]
    assert all(m.input_size == 64 and m.backbone == "test_convnext" for m in mf.members)
    prov = mf.provenance
    assert {"backbone", "config", "folds", "oof_metrics", "threshold", "parity"} <= set(prov)
    assert prov["threshold"] == mf.threshold == json.loads((run / "oof_metrics.json").read_text())["threshold"]
    assert "ci95" in prov["oof_metrics"]
    for k in ("0", "1"):
        assert prov["parity"][k]["max_abs_logit_diff_random"] <= 1e-3
        assert prov["parity"][k]["max_abs_logit_diff_real"] <= 1e-3
    for m in mf.members:
        assert (model_dir / m.file).stat().st_size < 3_000_000  # a tiny model's member stays small
    # the ONNX ensemble's mean probability equals torch's on real patches through amf.preprocess
    ids = pd.read_csv(run / "splits.csv", dtype={"image_id": str})["image_id"][:12]
    patches = [decode(data / OFFICIAL_IMAGES / i) for i in ids]
    ens = Ensemble(model_dir, device="cpu")
    got = ens.predict_proba(patches)
    cfg = prov["config"]
    x = torch.from_numpy(prepare(patches, 64, cfg["data"]["mean"], cfg["data"]["std"]))
    probs = []
    for k in (0, 1):
        model = load_for_export(cfg, torch.load(run / f"fold{k}" / "best.pt", weights_only=True)["state_dict"])
        with torch.no_grad():
            probs.append(torch.sigmoid(model(x)).view(-1).double().numpy())
    assert np.max(np.abs(got - np.mean(probs, 0))) < 1e-4
    # the container's entrypoint on the committed sample job
    import inference

    results = inference.run(ROOT_INPUT, tmp_path / "out", model_dir)
    validate(results, len(results))
    on_disk = json.loads((tmp_path / "out" / "multiple-mitotic-figure-classification.json").read_text())
    assert on_disk == results and all(r["class"] in ("normal", "atypical") for r in results)


def test_breast_fold_job_reuses_splits_and_skips_done(breast_run, capsys):
    data, run, _ = breast_run
    before = (run / "splits.csv").read_text()
    run_train("--config", "smoke", "--data", data, "--out", run, "--fold", "1")
    assert (run / "splits.csv").read_text() == before
    assert "already done" in capsys.readouterr().out


def test_other_config_is_refused_in_the_same_run(breast_run, capsys):
    data, run, _ = breast_run
    assert (
        train.main(
            [
                "--config",
                "smoke",
                "--data",
                str(data),
                "--out",
                str(run),
                "--set",
                "train.lr=0.1",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 2
    )
    assert "another config" in capsys.readouterr().err


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    data = make_layout(root / "data", n_slides=8, per_slide=8)
    extra = make_extra(root / "extra", data / "MIDOG25_Atypical_Classification_Train_Set.csv", n_repeat=5, n_new=6)
    syn = make_synthetic(root / "syn", n=4)
    return root, data, extra, syn


def test_generated_vit_lora_extra_synthetic_end_to_end(generated, tmp_path, capsys):
    root, data, extra, syn = generated
    extra_cfg = json.dumps([{"name": "amibr", "csv": str(extra / "extra.csv"), "images": str(extra / "images")}])
    run, model_dir = tmp_path / "run", tmp_path / "model"
    run_train(
        "--config",
        "smoke",
        "--data",
        data,
        "--out",
        run,
        "--set",
        "model.backbone=test_vit",
        "model.finetune=lora",
        "data.input_size=32",
        f"data.extra={extra_cfg}",
        f"data.synthetic={syn}",
        "train.batch_size=8",
    )
    out = capsys.readouterr().out
    assert "de-duplicated 5 figure(s)" in out and "4 synthetic atypical" in out
    splits = pd.read_csv(run / "splits.csv", dtype={"image_id": str})
    assert len(splits) == 64 + 6 + 4
    syn_rows = splits[splits["synthetic"]]
    assert len(syn_rows) == 4 and (syn_rows["fold"] == -1).all()
    oof = pd.read_csv(run / "oof.csv", dtype={"image_id": str})
    assert not oof["image_id"].str.startswith("synthetic/").any() and len(oof) == 70
    assert oof["image_id"].str.startswith("amibr/").sum() == 6
    state = torch.load(run / "fold0" / "best.pt", weights_only=True)["state_dict"]
    assert not any("lora" in key for key in state)  # adapters merged before saving the export weights
    last = torch.load(run / "fold0" / "last.pt", weights_only=True)["model"]
    assert any("lora" in key for key in last)  # ...while the training state keeps them for resuming
    assert export.main([str(run), "--out", str(model_dir)]) == 0
    mf = manifest_io.load(model_dir)
    assert mf.members[0].backbone == "test_vit" and mf.provenance["finetune"] == "lora"
    # the fingerprints of every figure any member trained on: official, extra and synthetic, all folds
    want = np.unique(fingerprint.digests(decode(path) for path in splits["path"]))
    assert np.array_equal(fingerprint.read(model_dir / fingerprint.FILE), want) and len(want) == 74
    assert mf.provenance["training_figures"] == fingerprint.describe(model_dir / fingerprint.FILE)
    import inference

    results = inference.run(ROOT_INPUT, tmp_path / "out", model_dir)
    validate(results, len(results))
    # into a folder of the user's own: refused in one line; --beside writes beside their files, never over them
    theirs = {"README.md": b"# mine\n", "oof.csv": b"mine\n", "predictions/mine.csv": b"a\n", "fold7.onnx": b"x"}
    user = tmp_path / "user"
    for name, content in theirs.items():
        (user / name).parent.mkdir(parents=True, exist_ok=True)
        (user / name).write_bytes(content)
    capsys.readouterr()
    assert export.main([str(run), "--out", str(user)]) == 2
    assert "is not empty and is not the toolkit's model folder" in capsys.readouterr().err
    assert export.main([str(run), "--out", str(user), "--beside"]) == 0
    assert all((user / name).read_bytes() == content for name, content in theirs.items())
    assert manifest_io.load(user).members[0].file == "fold0.onnx"


def test_export_refuses_missing_fold(generated, tmp_path, capsys):
    _, data, _, _ = generated
    run = tmp_path / "run"
    run_train(
        "--config",
        "smoke",
        "--data",
        data,
        "--out",
        run,
        "--fold",
        "0",
        "--set",
        "data.input_size=32",
        "train.batch_size=8",
    )
    assert not (run / "oof.csv").exists()  # pooled only when every fold is done
    assert export.main([str(run), "--out", str(tmp_path / "model")]) == 2
    assert "fold(s) 1" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()
    with pytest.raises(AmfError, match="fold"):
        export_run(run, tmp_path / "model", log=lambda *a: None)


def test_resume_gives_the_same_weights(generated, tmp_path, monkeypatch):
    """An interrupted fold resumes from last.pt and ends where an uninterrupted run ends."""
    _, data, _, _ = generated
    common = [
        "--config",
        "smoke",
        "--data",
        data,
        "--fold",
        "0",
        "--epochs",
        "2",
        "--set",
        "data.input_size=32",
        "train.batch_size=8",
    ]
    run_train(*common, "--out", tmp_path / "whole")
    real_predict, calls = kfold.predict, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed during the second epoch's validation
        return real_predict(*a, **k)

    monkeypatch.setattr(kfold, "predict", interrupted)  # where each epoch's validation calls it
    with pytest.raises(KeyboardInterrupt):
        run_train(*common, "--out", tmp_path / "cut")
    monkeypatch.setattr(kfold, "predict", real_predict)
    assert not (tmp_path / "cut" / "fold0" / "done.json").exists()
    run_train(*common, "--out", tmp_path / "cut")
    a = torch.load(tmp_path / "whole" / "fold0" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "fold0" / "last.pt", weights_only=True)
    for key in a["model"]:
        assert torch.allclose(a["model"][key].float(), b["model"][key].float(), atol=1e-6), key
    assert len(pd.read_csv(tmp_path / "cut" / "fold0" / "epochs.csv")) == 2


def test_missing_images_one_error_or_skipped(generated, tmp_path, capsys):
    _, data, _, _ = generated
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    (copy / OFFICIAL_IMAGES / "3.png").unlink()
    (copy / OFFICIAL_IMAGES / "5.png").write_bytes(b"not a png")
    args = [
        "--config",
        "smoke",
        "--data",
        str(copy),
        "--out",
        str(tmp_path / "run"),
        "--set",
        "data.input_size=32",
        "train.batch_size=8",
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert train.main(args) == 2
    err = capsys.readouterr().err
    assert "1 of 64 image(s) missing: 3.png (use --skip-missing" in err  # named before anything is decoded
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
    assert train.main(args + ["--skip-missing", "--fold", "0"]) == 0
    assert "skipped 2 missing or unreadable image(s)" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "run" / "splits.csv")) == 62
