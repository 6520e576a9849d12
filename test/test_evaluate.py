"""Offline evaluation: pack (stacks, ground truth, every figure once), run (a process per job and
in-process give the same files; a failed job is named and the rest run), score (the organisers'
checks name the bad stack; the two confidence readings; metrics.json and the report), no torch on
the way, and pack -> run -> score on the MIDOG 2025 breast slice (.mha and .tiff give the same numbers)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from make_sample_input import draw_patch
from PIL import Image
from sklearn.metrics import accuracy_score, balanced_accuracy_score, recall_score, roc_auc_score

from amf import AmfError, jobs
from evaluation import __main__ as cli
from evaluation.pack import pack
from evaluation.run import run_jobs
from evaluation.score import score

ROOT = Path(__file__).resolve().parents[1]
ORGANISERS_OVERALL = {
    "overall_sensitivity",
    "overall_specificity",
    "overall_balanced_accuracy",
    "overall_roc_auc",
    "overall_accuracy",
}
SPELLINGS = {1: ("AMF", "atypical", "1"), 0: ("NMF", "normal", "0")}


def make_labelled_set(folder: Path, n: int = 40, seed: int = 0) -> tuple[Path, dict]:
    """n drawn patches as PNGs and a plain CSV (every label spelling; a tumour name and an integer)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows, truth = [], {}
    for i in range(n):
        atypical = int(i % 4 == 3)
        name = f"fig{i:03d}.png"
        Image.fromarray(draw_patch(rng, bool(atypical))).save(folder / name)
        domain = "human breast carcinoma" if i < 24 else "3"  # an alias of tumour 1, and tumour 3 by number
        rows.append(f"{name},{SPELLINGS[atypical][i % 3]},{domain}")
        truth[name] = ("atypical" if atypical else "normal", 1 if i < 24 else 3)
    csv = folder / "labels.csv"
    csv.write_text("image,label,domain\n" + "\n".join(rows) + "\n")
    return csv, truth


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("labelled")
    csv, truth = make_labelled_set(folder)
    return csv, folder, truth


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    from toy_models import make_toy_ensemble

    return make_toy_ensemble(tmp_path_factory.mktemp("toy") / "model", members=2).parent


# ---------------------------------------------------------------- pack


def test_pack_every_figure_once_in_platform_jobs(labelled, tmp_path):
    csv, images, truth = labelled
    summary = pack(csv, images, tmp_path / "a", fmt="mixed", seed=1, progress=False)
    assert summary["figures"] == 40 and summary["domains"] == [1, 3]
    gt = json.loads((tmp_path / "a" / "ground_truth.json").read_text())
    placed = pd.read_csv(tmp_path / "a" / "figures.csv")
    assert sorted(placed.figure) == sorted(truth)  # every figure exactly once
    assert sorted(len(s["labels"]) for s in gt) == [8, 16, 16]  # 24 of tumour 1, 16 of tumour 3
    suffixes = set()
    for stack in gt:
        assert len(set(stack["tumordomains"])) == 1 and len(stack["tumordomains"]) == len(stack["labels"])
        job = tmp_path / "a" / "jobs" / Path(stack["image"]).stem / "input"
        assert jobs.image_name(jobs.read_inputs(job)) == stack["image"]
        path = jobs.find_stack(job)
        assert path.name == stack["image"]
        suffixes.add(path.suffix)
        rows = placed[placed.image == stack["image"]].sort_values("index")
        assert [truth[f] for f in rows.figure] == list(zip(stack["labels"], stack["tumordomains"]))
        for page, figure in zip(jobs.read_stack(path), rows.figure, strict=True):  # lossless, in order
            assert np.array_equal(page, np.asarray(Image.open(images / figure)))
    assert suffixes == {".tiff", ".mha"}

    pack(csv, images, tmp_path / "b", fmt="mixed", seed=1, progress=False)
    pack(csv, images, tmp_path / "c", fmt="mixed", seed=2, progress=False)
    assert (tmp_path / "b" / "ground_truth.json").read_text() == (tmp_path / "a" / "ground_truth.json").read_text()
    order = lambda d: pd.read_csv(tmp_path / d / "figures.csv").figure.tolist()  # noqa: E731
    assert order("b") == order("a") != order("c")
    with pytest.raises(AmfError, match=r"not empty .* \(figures.csv, ground_truth.json, jobs would be in the way\)"):
        pack(csv, images, tmp_path / "a", progress=False)


def test_pack_reads_the_official_columns(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(3):
        Image.fromarray(draw_patch(rng, False)).save(folder / f"{i}.png")
    (tmp_path / "official.csv").write_text(
        "image_id,filename,coordinateX,coordinateY,Tumor,Scanner,Origin,Species,expert1,expert2,expert3,majority\n"
        "0.png,a.tiff,1,2,human melanoma,X,Y,Human,AMF,AMF,NMF,AMF\n"
        "1.png,a.tiff,1,2,canine lymphoma,X,Y,Dog,NMF,NMF,NMF,NMF\n"
        "2.png,a.tiff,1,2,human melanoma,X,Y,Human,NMF,NMF,NMF,NMF\n"
    )
    pack(tmp_path / "official.csv", folder, tmp_path / "out", progress=False)
    gt = json.loads((tmp_path / "out" / "ground_truth.json").read_text())
    by_domain = {s["tumordomains"][0]: sorted(s["labels"]) for s in gt}
    assert by_domain == {3: ["normal"], 7: ["atypical", "normal"]}


def test_the_sample_job_is_what_the_job_writer_makes(tmp_path):
    """test/input comes out byte for byte from test/make_sample_input.py, through amf.jobs.write_job."""
    from make_sample_input import make_job

    stack = make_job(tmp_path)
    committed = ROOT / "test" / "input"
    assert stack == tmp_path / "images" / jobs.INPUT_SLUG / "stack_0.tiff"
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert made == sorted(p.relative_to(committed) for p in committed.rglob("*") if p.is_file())
    for rel in made:
        assert (tmp_path / rel).read_bytes() == (committed / rel).read_bytes(), rel


def odd_pngs(folder: Path) -> dict[str, np.ndarray]:
    """PNGs in the modes Pillow opens other than 8-bit RGB, each with the patch the input rule makes of it."""
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    grey16 = rng.integers(0, 65536, (32, 32), dtype=np.uint16)
    grey = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    images = {
        "grey16.png": Image.fromarray(grey16),  # opens as I;16
        "palette.png": Image.fromarray(rgb).quantize(8),  # opens as P
        "grey.png": Image.fromarray(grey),  # L
        "rgba.png": Image.fromarray(np.dstack([rgb, rng.integers(0, 256, (32, 32), dtype=np.uint8)])),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, im in images.items():
        im.save(folder / name)
    scaled = np.rint(grey16 * (255 / 65535)).astype(np.uint8)  # rule 1: 16 bits scaled, not clipped
    return {
        "grey16.png": np.dstack([scaled] * 3),
        "palette.png": np.asarray(images["palette.png"].convert("RGB")),
        "grey.png": np.dstack([grey] * 3),
        "rgba.png": rgb,
    }


def test_pack_reads_pngs_as_training_does(tmp_path):
    """One PNG reader (training.data.decode, the README's input rule) for training and evaluation:
    a 16-bit, palette, grey and RGBA PNG give the same patch in the packed stack as in training, and
    the 16-bit one is scaled by 255/65535 (Pillow's convert("RGB") would saturate it at 255)."""
    from training.data import decode

    want = odd_pngs(tmp_path / "imgs")
    (tmp_path / "labels.csv").write_text("image,label\n" + "".join(f"{n},NMF\n" for n in want))
    pack(tmp_path / "labels.csv", tmp_path / "imgs", tmp_path / "out", fmt="mha", tumor="1", progress=False)
    placed = pd.read_csv(tmp_path / "out" / "figures.csv").sort_values("index")
    stack = jobs.read_stack(jobs.find_stack(tmp_path / "out" / "jobs" / "stack_0001" / "input"))
    for figure, packed in zip(placed.figure, stack, strict=True):
        trained = decode(tmp_path / "imgs" / figure)
        assert np.array_equal(trained, want[figure]), figure
        assert np.array_equal(packed, trained), figure
    (tmp_path / "imgs" / "grey.png").write_bytes(b"not a png")
    with pytest.raises(AmfError, match="cannot read image .*grey.png"):
        pack(tmp_path / "labels.csv", tmp_path / "imgs", tmp_path / "again", tumor="1", progress=False)
    assert not (tmp_path / "again" / "jobs").exists()


@pytest.mark.parametrize(
    "csv_text, message",
    [
        ("image,label,domain\nfig000.png,maybe,1\n", "row 2"),
        ("image,label,domain\nfig000.png,AMF,1\nnot_there.png,NMF,1\n", "not_there.png"),
        ("image,label,domain\nfig000.png,AMF,1\nfig000.png,NMF,1\n", "listed twice"),
        ("image,label\nfig000.png,AMF\n", "--tumor"),
        ("image,label,domain\nfig000.png,AMF,feline fibrosarcoma\n", "unknown tumour type"),
        ("name,class\nfig000.png,AMF\n", "columns"),
    ],
)
def test_pack_rejects_bad_input_in_one_line(labelled, tmp_path, capsys, csv_text, message):
    _, images, _ = labelled
    (tmp_path / "bad.csv").write_text(csv_text)
    assert cli.main(["pack", str(tmp_path / "bad.csv"), str(images), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err
    assert not (tmp_path / "out" / "jobs").exists() and not (tmp_path / "out" / "ground_truth.json").exists()


def figures_of(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "figures.csv", dtype=str, keep_default_na=False)


def test_pack_limit_keeps_the_label_balance_and_the_seed(breast_dir, tmp_path, capsys):
    """--limit 100 of the breast slice: 100 figures, its atypical share (404 of 1,721: 23.5 -> 23), the same ones for
    the same seed; the slide and the scanner of each figure go into figures.csv."""
    out = {}
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        argv = ["pack", str(breast_dir), str(tmp_path / name), "--limit", "100", "--seed", seed]
        assert cli.main(argv) == 0
        out[name] = figures_of(tmp_path / name)
    capsys.readouterr()
    a = out["a"]
    assert len(a) == 100 and (a.label == "atypical").sum() == 23 and a.figure.is_unique
    assert set(out["b"].figure) == set(a.figure) != set(out["c"].figure)
    labels = pd.read_csv(breast_dir / "MIDOG25_Atypical_Classification_Train_Set.csv", dtype=str)
    truth = labels.set_index("image_id").loc[a.figure]
    assert (a.slide.to_numpy() == truth.filename.str.replace(".tiff", "").to_numpy()).all()
    assert set(a.Scanner) <= {"Aperio CS2", "Hamamatsu S360", "Hamamatsu XR"} and set(a.source) == {"official"}


def test_pack_a_runs_held_out_fold(tmp_path, capsys):
    """--run RUN --fold K packs exactly fold K's figures of the run's splits.csv, with their slides; --limit and
    --slides narrow them."""
    from training_layout import make_layout, make_split_run

    data = make_layout(tmp_path / "data", n_slides=6, per_slide=6)
    run, _ = make_split_run(tmp_path / "run", data, folds=3)
    splits = run.read_splits()
    for k in (0, 2):
        assert cli.main(["pack", "--run", str(run), "--fold", str(k), str(tmp_path / f"f{k}")]) == 0
        placed = figures_of(tmp_path / f"f{k}")
        fold = splits[splits.fold == k].set_index("image_id")
        assert sorted(placed.figure) == sorted(fold.index)
        assert (placed.slide.to_numpy() == fold.loc[placed.figure, "slide"].to_numpy()).all()
        assert (placed.label == np.where(fold.loc[placed.figure, "label"] == 1, "atypical", "normal")).all()
    one = splits[splits.fold == 0].slide.iloc[0]
    (tmp_path / "slides.txt").write_text(f"# one slide\n{one}.tiff\n\n")
    argv = ["pack", "--run", str(run), "--fold", "0", str(tmp_path / "s"), "--slides", str(tmp_path / "slides.txt")]
    assert cli.main(argv) == 0
    assert set(figures_of(tmp_path / "s").slide) == {one} and len(figures_of(tmp_path / "s")) == 6
    assert cli.main(["pack", "--run", str(run), "--fold", "0", str(tmp_path / "l"), "--limit", "4"]) == 0
    assert len(figures_of(tmp_path / "l")) == 4 and set(figures_of(tmp_path / "l").figure) <= set(splits.image_id)
    capsys.readouterr()


def make_atnorm(root, n: int = 6, votes: bool = True, seed: int = 4) -> Path:
    """AtNorM's layout: Atypical/ and Normal/ folders of patches and a votes table (Filename, Expert_1..5,
    Majority)."""
    from training_layout import patch

    rng = np.random.default_rng(seed)
    rows = []
    for cls in ("Atypical", "Normal"):
        (root / cls).mkdir(parents=True)
        for j in range(n):
            name = f"{cls[0]}{j:02d}.png"
            Image.fromarray(patch(rng, cls == "Atypical")).save(root / cls / name)
            experts = ["Atypical" if (cls == "Atypical") == (k < 3 + j % 3) else "Normal" for k in range(5)]
            rows.append({"Filename": name, **{f"Expert_{k + 1}": e for k, e in enumerate(experts)}, "Majority": cls})
    if votes:
        pd.DataFrame(rows).to_csv(root / "votes.csv", index=False)
    return root


def test_pack_reads_amibr_and_atnorm_layouts(tmp_path, capsys):
    """A data folder in AMi-Br's layout (training's reader: slides, sources) and in AtNorM's (labels from its
    folders, tumour type from --tumor; its votes checked against the folders) pack every figure once."""
    from training_layout import make_amibr, make_layout

    official = make_layout(tmp_path / "d", n_slides=2, per_slide=3) / "MIDOG25_Atypical_Classification_Train_Set.csv"
    amibr = make_amibr(tmp_path / "amibr", official, n_tupac_slides=2, per_slide=4)
    assert cli.main(["pack", str(amibr), str(tmp_path / "a")]) == 0
    placed, table = figures_of(tmp_path / "a"), pd.read_csv(amibr / "AMI-BR.csv")
    assert len(placed) == len(table) == 14 and set(placed.source) == {"MIDOG21", "TUPAC16"}
    assert (placed.label == "atypical").sum() == table["majority_atypical"].sum()
    assert set(placed.slide) == {"000", "001", "tupac16/000", "tupac16/001"}
    capsys.readouterr()  # pack's progress bar
    atnorm = make_atnorm(tmp_path / "atnorm")
    assert cli.main(["pack", str(atnorm), str(tmp_path / "n")]) == 2
    assert "--tumor" in error_line(capsys)
    assert cli.main(["pack", str(atnorm), str(tmp_path / "n"), "--tumor", "human breast cancer"]) == 0
    capsys.readouterr()
    placed = figures_of(tmp_path / "n")
    assert (
        len(placed) == 12
        and (placed.label == np.where(placed.figure.str.startswith("Atypical/"), "atypical", "normal")).all()
    )
    votes = pd.read_csv(atnorm / "votes.csv")
    votes.loc[0, "Majority"] = "Normal"
    votes.to_csv(atnorm / "votes.csv", index=False)
    assert cli.main(["pack", str(atnorm), str(tmp_path / "m"), "--tumor", "1"]) == 2
    assert "Majority of A00.png disagrees with its folder" in error_line(capsys)


def test_atnorm_votes_are_soft_labels(tmp_path):
    from training.data import read_atnorm

    t = read_atnorm(make_atnorm(tmp_path / "atnorm", n=3))
    assert sorted(t["soft"].round(2).unique()) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert (t["soft"][t["label"] == 1] > 0.5).all() and (t["soft"][t["label"] == 0] < 0.5).all()
    plain = read_atnorm(make_atnorm(tmp_path / "plain", n=3, votes=False))
    assert (plain["soft"] == plain["label"]).all() and (plain["slide"] == "").all()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["pack", "{data}", "{out}", "--limit", "0"], "--limit"),
        (["pack", "--run", "{run}", "--fold", "7", "{out}"], "has no fold 7 (its folds: 0, 1)"),
        (["pack", "--run", "{data}", "--fold", "0", "{out}"], "not a training run folder (no splits.csv)"),
        (["pack", "--run", "{run}", "{out}"], "--run and --fold go together"),
        (["pack", "--run", "{run}", "--fold", "0", "{data}", "{out}"], "give OUT alone"),
        (["pack", "{data}", "{out}", "--data", "{data}"], "--data goes with --run"),
        (["pack", "{out}"], "give CSV IMAGE_DIR OUT"),
        (["pack", "{run}", "{out}"], "not a data folder in a known layout"),
        (["pack", "{data}", "{out}", "--slides", "{slides}"], "hold no figure"),
    ],
)
def test_pack_selections_refuse_bad_input_in_one_line(tmp_path, capsys, argv, message):
    from training_layout import make_layout, make_split_run

    paths = {"data": make_layout(tmp_path / "data", n_slides=4, per_slide=2), "out": tmp_path / "out"}
    paths["run"], _ = make_split_run(tmp_path / "run", paths["data"])
    paths["slides"] = tmp_path / "slides.txt"
    paths["slides"].write_text("000\nno-such-slide\n")
    argv = [a.format(**paths) for a in argv]
    try:
        code = cli.main(argv)
    except SystemExit as done:  # argparse's own refusals
        code = done.code
    assert code == 2
    assert message in error_line(capsys)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- run


@pytest.mark.slow
def test_process_per_job_and_in_process_give_identical_outputs(labelled, toy, tmp_path, capsys):
    csv, images, _ = labelled
    pack(csv, images, tmp_path / "p", seed=0, progress=False)
    shutil.copytree(tmp_path / "p" / "jobs", tmp_path / "i" / "jobs")
    for side in ("p", "i"):  # the same broken job on both sides, with a result left from an earlier run
        job = tmp_path / side / "jobs" / "stack_0002"
        jobs.find_stack(job / "input").write_bytes(b"not an image")
        jobs.write_results(job / "output", [{"class": "normal", "confidence": 0.1}])

    per_process = run_jobs(tmp_path / "p" / "jobs", toy, in_process=False, python=sys.executable, progress=False)
    in_process = run_jobs(tmp_path / "i" / "jobs", toy, in_process=True, progress=False)

    for records, mode in ((per_process, "process"), (in_process, "in-process")):
        assert [r["job"] for r in records] == ["stack_0001", "stack_0002", "stack_0003"]
        assert [r["job"] for r in records if not r["ok"]] == ["stack_0002"]
        assert "cannot read image stack_0002.tiff" in records[1]["error"]
        assert {r["mode"] for r in records} == {mode}
    for name in ("stack_0001", "stack_0003"):
        a = (tmp_path / "p" / "jobs" / name / "output" / jobs.OUTPUT_FILE).read_bytes()
        b = (tmp_path / "i" / "jobs" / name / "output" / jobs.OUTPUT_FILE).read_bytes()
        assert a == b and len(json.loads(a)) == 16
    for side in ("p", "i"):  # the failed job's stale result is gone, so score cannot use it
        assert not (tmp_path / side / "jobs" / "stack_0002" / "output" / jobs.OUTPUT_FILE).exists()

    assert cli.main(["run", str(tmp_path / "i" / "jobs"), "--model", str(toy), "--in-process"]) == 1
    assert "failed: stack_0002" in capsys.readouterr().out


def test_the_evaluation_package_imports_without_torch():
    """Every module of evaluation (and the training modules it reads) imports in a fresh process
    without torch: the evaluation runs where only the container's packages and the metrics' are."""
    modules = ["evaluation"] + sorted(
        f"evaluation.{p.stem}" for p in (ROOT / "evaluation").glob("*.py") if p.stem != "__init__"
    )
    assert {
        "evaluation.pack",
        "evaluation.run",
        "evaluation.score",
        "evaluation.report",
        "evaluation.__main__",
    } <= set(modules)
    code = (
        f"import sys, importlib\nfor m in {modules!r}: importlib.import_module(m)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_evaluation_path_never_imports_torch(labelled, toy, tmp_path):
    csv, images, _ = labelled
    code = f"""
import json, sys
sys.path.insert(0, {str(ROOT)!r})
from evaluation import __main__ as cli
out = {str(tmp_path)!r}
assert cli.main(["pack", {str(csv)!r}, {str(images)!r}, out]) == 0
assert cli.main(["run", out + "/jobs", "--model", {str(toy)!r}, "--python", sys.executable]) == 0
assert cli.main(["run", out + "/jobs", "--model", {str(toy)!r}, "--in-process"]) == 0
assert cli.main(["score", out + "/jobs", "--ground-truth", out + "/ground_truth.json",
                      "--out", out + "/report", "--n-boot", "50"]) == 0
print("TORCH", json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "torch")))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("TORCH "))
    assert json.loads(line[6:]) == []
    assert (tmp_path / "report" / "metrics.json").is_file()


# ---------------------------------------------------------------- score


def hand_made_jobs(root: Path, stacks: list[tuple[str, list[str], int, object]]) -> Path:
    """Jobs with given results (no real images needed to score) and their ground_truth.json."""
    truth = []
    for name, labels, domain, results in stacks:
        job = root / "jobs" / Path(name).stem
        jobs.write_job(job / "input", [np.zeros((8, 8, 3), np.uint8)], name)
        (job / "output").mkdir()
        (job / "output" / jobs.OUTPUT_FILE).write_text(json.dumps(results))
        truth.append({"image": name, "labels": labels, "tumordomains": [domain] * len(labels)})
    (root / "ground_truth.json").write_text(json.dumps(truth))
    return root


GOOD = (
    "stack_0001.tiff",
    ["normal", "atypical"],
    1,
    [{"class": "normal", "confidence": 0.2}, {"class": "atypical", "confidence": 0.7}],
)


@pytest.mark.parametrize(
    "results, message",
    [
        ([{"class": "normal", "confidence": 0.2}, {"class": "atypical", "confidence": 1}], "not a float"),
        (
            [{"class": "normal", "confidence": 0.2}, {"class": "Atypical", "confidence": 0.9}],
            "not 'normal' or 'atypical'",
        ),
        ([{"class": "normal", "confidence": 0.2}] * 3, "length 3"),
        ({"class": "normal", "confidence": 0.2}, "must be a list"),
        ([{"class": "normal", "confidence": 0.2}, {"class": "normal"}], "needs 'class' and 'confidence'"),
        ([{"class": "normal", "confidence": 0.2}, [0.3]], "not a dictionary"),
    ],
)
def test_malformed_results_are_rejected_naming_the_stack(tmp_path, capsys, results, message):
    root = hand_made_jobs(tmp_path, [GOOD, ("stack_0002.tiff", ["normal", "normal"], 1, results)])
    with pytest.raises(AmfError, match=message) as err:
        score(root / "jobs", root / "ground_truth.json", tmp_path / "r", report=False)
    assert "stack_0002.tiff" in str(err.value) and "stack_0001" not in str(err.value)
    assert (
        cli.main(
            [
                "score",
                str(root / "jobs"),
                "--ground-truth",
                str(root / "ground_truth.json"),
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: ") and "\n" not in line and "stack_0002.tiff" in line
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_score_needs_a_result_and_ground_truth_for_every_stack(tmp_path):
    root = hand_made_jobs(tmp_path / "a", [GOOD])
    truth = json.loads((root / "ground_truth.json").read_text())
    (root / "ground_truth.json").write_text(
        json.dumps(truth + [{"image": "stack_9.tiff", "labels": ["normal"], "tumordomains": [1]}])
    )
    with pytest.raises(AmfError, match="stack_9.tiff"):
        score(root / "jobs", root / "ground_truth.json", tmp_path / "r", report=False)
    root = hand_made_jobs(tmp_path / "b", [GOOD])
    (root / "ground_truth.json").write_text("[]")
    with pytest.raises(AmfError, match="no ground truth for stack stack_0001.tiff"):
        score(root / "jobs", root / "ground_truth.json", tmp_path / "r", report=False)


@pytest.mark.slow
def test_confidence_readings_differ_and_match_sklearn(tmp_path):
    root = hand_made_jobs(
        tmp_path,
        [
            (
                "stack_0001.tiff",
                ["normal", "normal", "atypical", "atypical"],
                1,
                [
                    {"class": "normal", "confidence": 0.9},
                    {"class": "normal", "confidence": 0.8},
                    {"class": "atypical", "confidence": 0.7},
                    {"class": "normal", "confidence": 0.6},
                ],
            ),
            (
                "stack_0002.tiff",
                ["normal", "normal"],
                3,  # one class only
                [{"class": "normal", "confidence": 0.3}, {"class": "atypical", "confidence": 0.6}],
            ),
        ],
    )
    y, pred = [0, 0, 1, 1, 0, 0], [0, 0, 1, 0, 0, 1]
    conf = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.6])
    as_given = score(root / "jobs", root / "ground_truth.json", tmp_path / "p", n_boot=100)
    as_class = score(
        root / "jobs",
        root / "ground_truth.json",
        tmp_path / "c",
        n_boot=100,
        confidence="predicted-class",
        report=False,
    )
    a, c = as_given["aggregates"], as_class["aggregates"]
    assert a["overall_roc_auc"] == pytest.approx(roc_auc_score(y, conf))
    assert c["overall_roc_auc"] == pytest.approx(roc_auc_score(y, np.where(pred, conf, 1 - conf)))
    assert a["overall_roc_auc"] != pytest.approx(c["overall_roc_auc"])
    assert (a["domain_1"]["roc_auc"], c["domain_1"]["roc_auc"]) == (0.0, 1.0)  # read one way, perfectly wrong
    for k in ("overall_sensitivity", "overall_specificity", "overall_balanced_accuracy", "overall_accuracy"):
        assert a[k] == c[k]  # the classes do not depend on the reading
    assert a["overall_balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert a["domain_3"]["roc_auc"] is None and a["domain_3"]["specificity"] == 0.5  # departure: null, no crash

    saved = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert set(saved["aggregates"]) == ORGANISERS_OVERALL | {"domain_1", "domain_3"}
    assert saved["confidence_semantics"]["mode"] == "p-atypical"
    other = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert other["confidence_semantics"]["mode"] == "predicted-class"
    assert set(saved["confidence_intervals"]["overall"]) == {
        "balanced_accuracy",
        "sensitivity",
        "specificity",
        "roc_auc",
    }
    report = (tmp_path / "p" / "report.md").read_text()
    assert "hindsight" in report.lower() and "predicted-class" in report
    for png in ("roc.png", "confusion.png", "breakdowns.png", "calibration.png"):
        assert f"({png})" in report
        with Image.open(tmp_path / "p" / png) as im:
            assert im.format == "PNG" and im.size[0] > 200


# ---------------------------------------------------------------- the breast slice, end to end


@pytest.mark.slow
def test_breast_pack_run_score_mha_and_tiff_agree(breast_dir, tmp_path):
    csv = breast_dir / "MIDOG25_Atypical_Classification_Train_Set.csv"
    images = breast_dir / "MIDOG25_Binary_Classification_Train_Set"
    labels = pd.read_csv(csv, dtype=str)
    metrics = {}
    for fmt in ("tiff", "mha"):
        out = tmp_path / fmt
        pack(csv, images, out, fmt=fmt, seed=0, progress=False)
        records = run_jobs(out / "jobs", ROOT / "model", in_process=True, progress=False)
        assert all(r["ok"] for r in records) and len(records) == 108
        metrics[fmt] = score(out / "jobs", out / "ground_truth.json", out / "report", n_boot=200, report=fmt == "tiff")
        assert {p.suffix for p in (out / "jobs").glob("*/input/images/*/*")} == {f".{fmt}"}
    assert metrics["tiff"]["aggregates"] == metrics["mha"]["aggregates"]
    assert metrics["tiff"]["confidence_intervals"] == metrics["mha"]["confidence_intervals"]

    table = pd.read_csv(tmp_path / "tiff" / "report" / "predictions.csv", dtype={"figure": str})
    assert len(table) == len(labels) == 1721 and sorted(table.figure) == sorted(labels.image_id)  # each once
    merged = table.merge(labels, left_on="figure", right_on="image_id")
    y = (merged.majority == "AMF").astype(int)
    pred = (merged["class"] == "atypical").astype(int)
    agg = metrics["tiff"]["aggregates"]
    assert set(agg) == ORGANISERS_OVERALL | {"domain_1"}
    assert agg["overall_sensitivity"] == pytest.approx(recall_score(y, pred))
    assert agg["overall_specificity"] == pytest.approx(recall_score(y, pred, pos_label=0))
    assert agg["overall_accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert agg["overall_roc_auc"] == pytest.approx(roc_auc_score(y, merged.confidence))
    assert metrics["tiff"]["counts"]["figures"] == 1721 and metrics["tiff"]["counts"]["atypical"] == 404
    assert (tmp_path / "tiff" / "report" / "report.md").is_file()


def test_one_class_set_scores_and_reports_with_null_auroc(tmp_path):
    root = hand_made_jobs(
        tmp_path,
        [
            (
                "stack_0001.tiff",
                ["normal"] * 3,
                2,
                [
                    {"class": "normal", "confidence": 0.1},
                    {"class": "atypical", "confidence": 0.9},
                    {"class": "normal", "confidence": 0.3},
                ],
            )
        ],
    )
    m = score(root / "jobs", root / "ground_truth.json", tmp_path / "r", n_boot=50)
    assert m["aggregates"]["overall_roc_auc"] is None and m["aggregates"]["domain_2"]["roc_auc"] is None
    assert m["aggregates"]["overall_specificity"] == pytest.approx(2 / 3) and m["roc_band"] is None
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["aggregates"]["overall_roc_auc"] is None
    assert (tmp_path / "r" / "roc.png").is_file()


# ---------------------------------------------------------------- hostile input: one line, exit 2, nothing written


def error_line(capsys) -> str:
    """stderr must be exactly one line, `error: ...` (no usage block, no traceback)."""
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["pack", "x.csv", "imgs", "out", "--seed", "-1"], "--seed"),
        (["pack", "x.csv", "imgs", "out", "--seed", "one"], "--seed"),
        (["run", "jobs", "--timeout", "0"], "--timeout"),
        (["score", "jobs", "--ground-truth", "gt.json", "--out", "r", "--n-boot", "0"], "--n-boot"),
        (["score", "jobs", "--ground-truth", "gt.json", "--out", "r", "--n-boot", "-5"], "--n-boot"),
        (["score", "jobs", "--ground-truth", "gt.json", "--out", "r", "--seed", "-1"], "--seed"),
        (["score", "jobs", "--out", "r"], "--ground-truth"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_are_one_line(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as done:
        cli.main(argv)
    assert done.value.code == 2
    assert message in error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_pack_refuses_a_file_as_out_and_images_outside_the_folder(labelled, tmp_path, capsys):
    csv, images, _ = labelled
    (tmp_path / "out").write_text("a file")
    assert cli.main(["pack", str(csv), str(images), str(tmp_path / "out")]) == 2
    assert "is a file" in error_line(capsys) and (tmp_path / "out").read_text() == "a file"

    outside = tmp_path / "secret.png"
    shutil.copy(images / "fig000.png", outside)
    (images / "link.png").symlink_to(outside)
    try:
        for name in ("../secret.png", str(outside), "link.png", "sub/../../secret.png"):
            (tmp_path / "bad.csv").write_text(f"image,label,domain\nfig001.png,AMF,1\n{name},NMF,1\n")
            assert cli.main(["pack", str(tmp_path / "bad.csv"), str(images), str(tmp_path / "p")]) == 2
            assert "outside the image folder" in error_line(capsys)
            assert not (tmp_path / "p" / "jobs").exists() and not (tmp_path / "p" / "ground_truth.json").exists()
    finally:
        (images / "link.png").unlink()


def test_run_records_a_job_that_cannot_start_and_runs_the_rest(labelled, toy, tmp_path, capsys):
    csv, images, _ = labelled
    pack(csv, images, tmp_path, progress=False)
    assert (
        cli.main(["run", str(tmp_path / "jobs"), "--model", str(toy), "--python", str(tmp_path / "no-such-python")])
        == 1
    )
    out = capsys.readouterr().out
    assert "3 jobs" in out and "failed: stack_0001, stack_0002, stack_0003" in out
    for job in ("stack_0001", "stack_0002", "stack_0003"):  # every job tried, each with its own record
        record = json.loads((tmp_path / "jobs" / job / "run.json").read_text())
        assert not record["ok"] and record["error"].startswith("cannot start") and "no-such-python" in record["error"]


def score_argv(root: Path, out: Path) -> list[str]:
    return [
        "score",
        str(root / "jobs"),
        "--ground-truth",
        str(root / "ground_truth.json"),
        "--out",
        str(out),
        "--n-boot",
        "20",
    ]


def test_a_confidence_outside_0_1_is_refused_before_anything_is_written(tmp_path, capsys):
    root = hand_made_jobs(
        tmp_path,
        [
            GOOD,
            (
                "stack_0002.tiff",
                ["normal", "atypical"],
                1,
                [{"class": "normal", "confidence": 0.2}, {"class": "atypical", "confidence": 5.0}],
            ),
        ],
    )
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.json").write_text(
        '{"aggregates": {}}'
    )  # an earlier run's: must not survive a failed one
    assert cli.main(score_argv(root, tmp_path / "r")) == 2
    line = error_line(capsys)
    assert "stack_0002.tiff" in line and "outside [0, 1]" in line
    assert list((tmp_path / "r").iterdir()) == []
    with pytest.raises(AmfError, match=r"outside \[0, 1\]"):
        from amf.results import validate

        validate([{"class": "normal", "confidence": -0.1}], 1)


def test_score_writes_only_its_own_files_and_replaces_only_them(tmp_path, capsys):
    """training.ownership's rule for --out: a folder of the user's own is refused (--beside: beside their files,
    never over one); the report's files are those metrics.json names, and a later score replaces them whole."""
    root = hand_made_jobs(tmp_path / "set", [GOOD])
    theirs = {"README.md": b"# my notes\n", "predictions.csv": b"theirs\n", "old/report.md": b"mine\n"}
    out = tmp_path / "r"
    for name, data in theirs.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)

    def files() -> dict:
        return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    assert cli.main(score_argv(root, out)) == 2
    assert "is not empty and is not the toolkit's report folder" in error_line(capsys) and files() == theirs
    assert cli.main([*score_argv(root, out), "--beside"]) == 2
    assert "holds predictions.csv, which the toolkit did not write" in error_line(capsys) and files() == theirs
    (out / "predictions.csv").unlink()
    del theirs["predictions.csv"]
    assert cli.main([*score_argv(root, out), "--beside", "--no-report"]) == 0
    assert json.loads((out / "metrics.json").read_text())["files"] == ["predictions.csv"]
    assert cli.main(score_argv(root, out)) == 0  # a report folder now: no --beside needed
    named = json.loads((out / "metrics.json").read_text())["files"]
    assert named == sorted(
        ["predictions.csv", "report.md", "roc.png", "confusion.png", "breakdowns.png", "calibration.png"]
    )
    assert cli.main([*score_argv(root, out), "--no-report"]) == 0  # the earlier report goes, theirs stays
    assert set(files()) == {*theirs, "metrics.json", "predictions.csv"}
    assert {n: files()[n] for n in theirs} == theirs


def test_pack_never_writes_over_a_users_ground_truth(labelled, tmp_path, capsys):
    csv, images, _ = labelled
    out = tmp_path / "out"
    out.mkdir()
    (out / "ground_truth.json").write_text("my own")
    assert cli.main(["pack", str(csv), str(images), str(out)]) == 2
    assert "is not empty and is not the toolkit's pack folder" in error_line(capsys)
    assert cli.main(["pack", str(csv), str(images), str(out), "--beside"]) == 2
    assert "holds ground_truth.json, which the toolkit did not write" in error_line(capsys)
    assert [p.name for p in out.iterdir()] == ["ground_truth.json"] and (
        out / "ground_truth.json"
    ).read_text() == "my own"
    (out / "ground_truth.json").rename(out / "mine.json")
    assert cli.main(["pack", str(csv), str(images), str(out), "--beside"]) == 0
    assert (out / "mine.json").read_text() == "my own" and (out / "jobs").is_dir()


def test_score_refuses_a_file_as_out(tmp_path, capsys):
    root = hand_made_jobs(tmp_path, [GOOD])
    (tmp_path / "r").write_text("a file")
    assert cli.main(score_argv(root, tmp_path / "r")) == 2
    assert "is a file" in error_line(capsys) and (tmp_path / "r").read_text() == "a file"


@pytest.mark.parametrize(
    "file, text, message",
    [
        ("jobs/stack_0001/run.json", "{not json", "run record"),
        ("jobs/stack_0001/run.json", '{"ok": true}', "needs 'seconds'"),
        ("jobs/stack_0001/run.json", '{"seconds": "fast", "mode": "process"}', "needs 'seconds'"),
        ("figures.csv", 'image,index,figure\nstack_0001.tiff,0,a.png,extra,fields\n"unclosed', "figure table"),
        ("figures.csv", "image,figure\nstack_0001.tiff,a.png\n", "lacks the columns index"),
        ("figures.csv", "image,index,figure\nstack_0001.tiff,first,a.png\n", "integers"),
        ("figures.csv", "image,index,figure\nstack_0001.tiff,0,a.png\nstack_0001.tiff,0,b.png\n", "listed twice"),
        ("figures.csv", b"\xff\xfe\x00broken", "figure table"),
    ],
)
def test_broken_run_records_and_figure_tables_are_one_line(tmp_path, capsys, file, text, message):
    root = hand_made_jobs(tmp_path, [GOOD])
    write = (tmp_path / file).write_bytes if isinstance(text, bytes) else (tmp_path / file).write_text
    write(text)
    assert cli.main(score_argv(root, tmp_path / "r")) == 2
    line = error_line(capsys)
    assert message in line and str(tmp_path / file) in line
    assert not (tmp_path / "r").exists() or list((tmp_path / "r").iterdir()) == []


def test_a_ground_truth_stack_without_labels_is_named(tmp_path, capsys):
    root = hand_made_jobs(tmp_path, [GOOD, ("stack_0002.tiff", [], 1, [])])
    assert cli.main(score_argv(root, tmp_path / "r")) == 2
    assert "entry 1 (stack stack_0002.tiff) has no labels" in error_line(capsys)


def test_a_ground_truth_domain_of_true_is_refused(tmp_path, capsys):
    root = hand_made_jobs(tmp_path, [GOOD])
    truth = json.loads((root / "ground_truth.json").read_text())
    truth[0]["tumordomains"] = [True] * len(truth[0]["labels"])  # JSON true is no tumour domain number
    (root / "ground_truth.json").write_text(json.dumps(truth))
    assert cli.main(score_argv(root, tmp_path / "r")) == 2
    assert "entry 0 must be" in error_line(capsys)
