"""What the evaluation report tells a reviewer: which model it scored (manifest, members, toolkit), whether that
model trained on these figures (a warning and every metric again on the unseen ones; or that it could not check),
one interval story (the table's intervals and the ROC band from training's slide resampler, or from figures, said),
and breakdowns per scanner and source. Drawn patches and a toy model, except the shipped model's two tests."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from make_sample_input import draw_patch
from PIL import Image
from sklearn.metrics import balanced_accuracy_score, recall_score, roc_auc_score

from evaluation import __main__ as cli
from evaluation.run import run_jobs
from evaluation.score import score
from training.data import decode
from training.export import fingerprint
from training.metrics import roc_band, slide_draws

ROOT = Path(__file__).resolve().parents[1]
N_BOOT = 200
SEEN = 10  # the toy model "trained on" the first SEEN figures of the set


def labelled_set(folder: Path, n: int = 40, seed: int = 3, slides: bool = True) -> Path:
    """N drawn PNGs and a plain CSV with tumour, slide (5 figures each), scanner and source columns."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        name = f"fig{i:03d}.png"
        Image.fromarray(draw_patch(rng, i % 3 == 0)).save(folder / name)
        slide = f",S{i // 5}.svs" if slides else ""
        rows.append(f"{name},{'AMF' if i % 3 == 0 else 'NMF'},1{slide},{'XR' if i < 20 else 'GT450'},set{i % 2}")
    (folder / "labels.csv").write_text(
        "image,label,domain" + (",slide" if slides else "") + ",scanner,source\n" + "\n".join(rows) + "\n"
    )
    return folder / "labels.csv"


def pack_run(out: Path, csv: Path, model: Path) -> Path:
    assert cli.main(["pack", str(csv), str(csv.parent), str(out)]) == 0
    assert all(r["ok"] for r in run_jobs(out / "jobs", model, in_process=True, progress=False))
    return out


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A toy model whose fingerprint file names the set's first SEEN figures; the set packed, run and scored."""
    from toy_models import make_toy_ensemble

    root = tmp_path_factory.mktemp("report")
    csv = labelled_set(root / "set")
    model = make_toy_ensemble(root / "model", members=2).parent
    fingerprint.write(
        model / fingerprint.FILE, fingerprint.digests(decode(root / "set" / f"fig{i:03d}.png") for i in range(SEEN))
    )
    out = pack_run(root / "packed", csv, model)
    metrics = score(out / "jobs", out / "ground_truth.json", root / "report", n_boot=N_BOOT)
    table = pd.read_csv(root / "report" / "predictions.csv", dtype={"slide": str, "figure": str})
    return root, model, out, metrics, table


def test_the_report_warns_first_and_scores_the_unseen_figures_apart(scored):
    root, _, _, m, table = scored
    trained = {f"fig{i:03d}.png" for i in range(SEEN)}
    assert m["seen"] | {"fingerprint": None} == {
        "checked": True,
        "fingerprint": None,
        "figures": 40,
        "seen": SEEN,
        "unseen": 40 - SEEN,
    }
    assert set(table.figure[table.seen]) == trained  # each figure by content, wherever its stack put it
    lines = (root / "report" / "report.md").read_text().splitlines()
    assert lines[2].startswith(f"> **Warning: the model trained on {SEEN} of these 40 figures**")
    # every metric again on the unseen figures only, as computed from them alone
    unseen = table[~table.seen]
    u = m["unseen_only"]
    y, p, pred = unseen.label, unseen.p_atypical, (unseen["class"] == "atypical").astype(int)
    assert u["counts"]["figures"] == 40 - SEEN and u["aggregates"]["overall_roc_auc"] == pytest.approx(
        roc_auc_score(y, p)
    )
    assert u["aggregates"]["overall_balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert u["breakdowns"]["Scanner"]["XR"]["n"] == int((unseen.Scanner == "XR").sum())
    assert f"unseen only ({40 - SEEN})" in "\n".join(lines) and "## Unseen only" in "\n".join(lines)


def test_the_report_names_the_model_and_the_toolkit(scored):
    import onnx

    root, model, _, m, _ = scored
    mm = m["model"]
    assert mm["folder"] == str(model.resolve())
    assert mm["manifest_sha256"] == hashlib.sha256((model / "ensemble.json").read_bytes()).hexdigest()
    assert mm["tta"] == "none" and mm["threshold"] == 0.5 and mm["trained"] is False
    for member in mm["members"]:
        graph = onnx.load(str(model / member["file"])).graph
        assert member["parameters"] == sum(int(np.prod(t.dims)) for t in graph.initializer) == 8 * 27 + 8 + 8 + 1
        assert member["sha256"] == hashlib.sha256((model / member["file"]).read_bytes()).hexdigest()
        assert member["input_size"] == 128
    assert mm["fingerprint"]["file"] == fingerprint.FILE
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert m["toolkit"]["git_commit"] == commit and m["toolkit"]["version"]
    report = (root / "report" / "report.md").read_text()
    assert mm["manifest_sha256"] in report and "untrained placeholder" in report and commit in report
    saved = json.loads((root / "report" / "metrics.json").read_text())
    assert saved["model"] == mm and saved["seen"] == m["seen"]


def test_intervals_and_the_roc_band_are_one_slide_resampling(scored):
    """The table's intervals are percentiles over training's slide_draws of the metrics sklearn computes on each
    resample; the ROC band is built on those same resamples and carries the table's AUC interval."""
    _, _, _, m, table = scored
    ci = m["confidence_intervals"]
    assert ci["unit"] == "slide" and "over slides" in ci["method"] and m["counts"]["slides"] == 8
    y, p, pred = table.label.to_numpy(), table.p_atypical.to_numpy(), (table["class"] == "atypical").to_numpy(int)
    draws = list(slide_draws(table.slide.to_numpy(), N_BOOT, 0))
    bal = [balanced_accuracy_score(y[i], pred[i]) for i in draws if len(set(y[i])) == 2]
    sens = [recall_score(y[i], pred[i]) for i in draws if y[i].any()]
    auc = [roc_auc_score(y[i], p[i]) for i in draws if len(set(y[i])) == 2]
    assert ci["overall"]["balanced_accuracy"] == pytest.approx(np.percentile(bal, [2.5, 97.5]), abs=1e-12)
    assert ci["overall"]["sensitivity"] == pytest.approx(np.percentile(sens, [2.5, 97.5]), abs=1e-12)
    assert ci["overall"]["roc_auc"] == pytest.approx(np.percentile(auc, [2.5, 97.5]), abs=1e-12)
    band = m["roc_band"]
    assert band["roc_auc"] == ci["overall"]["roc_auc"] and band["unit"] == "slide"
    assert band | {"roc_auc": None, "unit": None} == roc_band(y, p, draws) | {"roc_auc": None, "unit": None}


def test_breakdowns_per_scanner_and_source(scored):
    root, _, _, m, table = scored
    b = m["breakdowns"]
    assert set(b) == {"tumordomain", "Scanner", "source"}
    for col, values in (("Scanner", ("XR", "GT450")), ("source", ("set0", "set1"))):
        for v in values:
            rows = table[table[col] == v]
            g = b[col][v]
            assert (g["n"], g["n_atypical"], g["n_units"]) == (len(rows), int(rows.label.sum()), rows.slide.nunique())
            assert g["roc_auc"] == pytest.approx(roc_auc_score(rows.label, rows.p_atypical))
            lo, hi = g["ci95"]["balanced_accuracy"]
            assert lo <= g["balanced_accuracy"] <= hi
    report = (root / "report" / "report.md").read_text()
    assert "## Per scanner" in report and "| GT450 | 20 |" in report and "## Per source" in report


def test_without_slides_the_intervals_say_they_resample_figures(tmp_path):
    from toy_models import make_toy_ensemble

    csv = labelled_set(tmp_path / "set", n=16, slides=False)
    model = make_toy_ensemble(tmp_path / "model", members=1).parent
    out = pack_run(tmp_path / "packed", csv, model)
    m = score(out / "jobs", out / "ground_truth.json", tmp_path / "r", n_boot=50)
    assert m["confidence_intervals"]["unit"] == "figure" and "over figures" in m["confidence_intervals"]["method"]
    assert m["roc_band"]["unit"] == "figure" and "slides" not in m["counts"]
    lines = (tmp_path / "r" / "report.md").read_text().splitlines()
    assert lines[2].startswith("> **Not checked whether the model trained on these figures**")
    assert "has no training_fingerprints.bin" in lines[2] and "unseen_only" not in m


def test_a_model_nobody_named_is_not_guessed(scored, tmp_path):
    root, model, out, _, _ = scored
    jobs = tmp_path / "jobs"
    shutil.copytree(out / "jobs", jobs)
    for record in jobs.glob("*/run.json"):
        record.unlink()  # jobs run elsewhere (say in Docker): nothing names the model
    m = score(jobs, out / "ground_truth.json", tmp_path / "r", n_boot=20)
    assert m["model"] is None and not m["seen"]["checked"] and "--model" in m["seen"]["reason"]
    m = score(jobs, out / "ground_truth.json", tmp_path / "r2", n_boot=20, model=model)  # named by hand
    assert m["model"]["folder"] == str(model.resolve()) and m["seen"]["seen"] == SEEN


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_a_broken_or_foreign_fingerprint_file_is_one_error_and_no_result(scored, tmp_path, capsys):
    _, model, out, _, _ = scored
    jobs, copy = tmp_path / "jobs", tmp_path / "model"
    shutil.copytree(out / "jobs", jobs, ignore=shutil.ignore_patterns("run.json"))  # --model alone names it
    shutil.copytree(model, copy)
    argv = ["score", str(jobs), "--ground-truth", str(out / "ground_truth.json"), "--model", str(copy)]
    argv += ["--out", str(tmp_path / "r")]
    good = (copy / fingerprint.FILE).read_bytes()
    for data, message in ((good[:-5], "truncated"), (b"not a fingerprint file", "not a fingerprint file")):
        (copy / fingerprint.FILE).write_bytes(data)
        assert cli.main(argv) == 2
        assert message in error_line(capsys)
        assert not (tmp_path / "r" / "metrics.json").exists()
    # a valid file, but not the one the manifest records
    doc = json.loads((copy / "ensemble.json").read_text())
    doc["provenance"]["training_figures"] = fingerprint.describe(model / fingerprint.FILE)
    (copy / "ensemble.json").write_text(json.dumps(doc))
    fingerprint.write(copy / fingerprint.FILE, [1, 2, 3])
    assert cli.main(argv) == 2
    assert "not the fingerprint file the manifest records" in error_line(capsys)
    shutil.copy(model / fingerprint.FILE, copy / fingerprint.FILE)  # the recorded one
    assert cli.main(argv) == 0
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["seen"]["seen"] == SEEN
    capsys.readouterr()


def test_a_model_changed_since_the_run_is_refused(scored, tmp_path, capsys):
    root, model, out, _, _ = scored
    jobs = tmp_path / "jobs"
    shutil.copytree(out / "jobs", jobs)
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    for path in jobs.glob("*/run.json"):  # the jobs ran with the copy...
        record = json.loads(path.read_text())
        path.write_text(json.dumps(record | {"model": str(copy)}))
    doc = json.loads((copy / "ensemble.json").read_text())
    (copy / "ensemble.json").write_text(json.dumps(doc | {"threshold": 0.3}))  # ...which changed since
    argv = ["score", str(jobs), "--ground-truth", str(out / "ground_truth.json"), "--out", str(tmp_path / "r")]
    assert cli.main(argv) == 2
    assert "not the manifest the jobs ran with" in error_line(capsys)


@pytest.mark.slow
def test_the_shipped_model_on_figures_it_trained_on_and_on_new_ones(tmp_path, capsys):
    """24 figures of the data folder the shipped model's card names (all in its training data; v3: amibr-train) and
    16 drawn ones (not): a warning with the count on the first, none on the second."""
    from conftest import model_data_dir

    model = ROOT / "model"
    card = json.loads((model / "card.json").read_text())
    data = model_data_dir(card)
    breast = tmp_path / "trained_on"
    assert cli.main(["pack", str(data), str(breast), "--limit", "24"]) == 0
    assert all(r["ok"] for r in run_jobs(breast / "jobs", model, in_process=True, progress=False))
    drawn = pack_run(tmp_path / "drawn", labelled_set(tmp_path / "set", n=16), model)
    capsys.readouterr()
    for out, seen in ((breast, 24), (drawn, 0)):
        m = score(out / "jobs", out / "ground_truth.json", out / "report", n_boot=100)
        assert m["seen"]["checked"] and m["seen"]["seen"] == seen and m["model"]["folder"] == str(model.resolve())
        first = (out / "report" / "report.md").read_text().splitlines()[2]
        if seen:
            assert first.startswith("> **Warning: the model trained on 24 of these 24 figures**")
            assert m["unseen_only"] is None and "nothing here estimates performance on new data" in first
        else:
            assert first.startswith("None of these 16 figures is among the model's training figures")
            assert "unseen_only" not in m
    assert m["model"]["tta"] == "d4" and len(m["model"]["members"]) == 5
    assert m["model"]["training_data"]["figures"] == card["data"]["figures"]
