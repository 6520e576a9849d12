"""Issue 11: the published stain matrix, a fresh view per draw, the configured EMA decay, selection that never
sees the held-out fold, nested thresholds, vote-agreement metrics and slide-level intervals."""

from __future__ import annotations

import numpy as np
import pytest

from training.augment import HED_FROM_RGB, RGB_FROM_HED, hed_jitter, hed_to_rgb, rgb_to_hed

# ---- stain matrix (item 3) ----------------------------------------------------------------------


def test_stain_matrix_is_scikit_images_published_one():
    # skimage.color.colorconv: rgb_from_hed as published (Ruifrok & Johnston), hed_from_rgb = its inverse
    published = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
    assert np.array_equal(RGB_FROM_HED, published)
    # skimage's hed_from_rgb, as printed by skimage (8 digits)
    assert np.allclose(
        HED_FROM_RGB,
        [
            [1.87798274, -1.00767869, -0.55611582],
            [-0.06590806, 1.13473037, -0.1355218],
            [-0.60190736, -0.48041419, 1.57358807],
        ],
        atol=1e-8,
    )


def test_rgb_to_hed_by_hand():
    # a pixel of pure haematoxylin density 0.1: optical density (-log(rgb)/-log(1e-6)) = 0.1 * the H row
    od = 0.1 * np.array([0.65, 0.70, 0.29])
    rgb = np.exp(od * np.log(1e-6))  # (0.407, 0.380, 0.670)
    assert np.allclose(rgb_to_hed(rgb), [0.1, 0.0, 0.0], atol=1e-12)
    assert np.allclose(hed_to_rgb(np.array([0.1, 0.0, 0.0])), rgb, atol=1e-12)
    assert np.allclose(rgb_to_hed(np.ones(3)), 0.0)  # white: no stain


def test_dab_shift_moves_rgb_as_in_scikit_image():
    # the example: +0.01 DAB moves this pixel by (-7.0, -10.1, -20.5) in scikit-image;
    # the old cross-product third row moved it by (+9.0, +1.5, -24.5): red and green the wrong way
    px = np.array([191.0, 133.0, 201.0])
    hed = rgb_to_hed(px / 255)
    moved = hed_to_rgb(hed + [0, 0, 0.01]) * 255 - px
    assert np.allclose(moved, [-7.0, -10.1, -20.5], atol=0.05)
    old = RGB_FROM_HED.copy()
    old[2] = np.cross(old[0], old[1])
    old /= np.linalg.norm(old, axis=1, keepdims=True)
    la = np.log(1e-6)
    old_moved = np.exp(-((np.log(px / 255) / la) @ np.linalg.inv(old) + [0, 0, 0.01]) * -la @ old) * 255 - px
    assert old_moved[0] > 0 and old_moved[1] > 0 and np.allclose(old_moved, [9.0, 1.5, -24.5], atol=0.1)


def test_hed_jitter_round_trips_and_moves_all_three_densities():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    assert np.array_equal(hed_jitter(img, np.random.default_rng(0), 0.0, 0.0), img)
    f = img.astype(float) / 255
    out = hed_jitter(img, np.random.default_rng(1), 0.0, 0.02).astype(float) / 255
    shift = rgb_to_hed(np.maximum(out, 1 / 255)) - rgb_to_hed(np.maximum(f, 1 / 255))
    inside = (img > 20).all(-1) & (img < 235).all(-1)  # away from the 0/255 clipping
    beta = np.random.default_rng(1).uniform(-0.02, 0.02, 6)[3:]  # alpha draws first, then beta
    assert np.allclose(np.median(shift[inside], 0), beta, atol=2e-3)


# ---- a fresh view per draw (item 2) ------------------------------------------------------------------


def _draw_loader(workers: int, epoch: int = 0):
    import pandas as pd
    import torch

    from training import config as config_io
    from training.augment import Augment
    from training.data import PatchDataset
    from training.train.kfold import EpochSampler

    rng = np.random.default_rng(0)
    labels = np.array([1] + [0] * 11)
    patches = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in labels]
    df = pd.DataFrame({"path": [""] * len(labels), "label": labels, "soft": labels.astype(float)})
    cfg = config_io.load("smoke")
    ds = PatchDataset(
        df, np.arange(len(labels)), 32, [0.5] * 3, [0.25] * 3, "bilinear", Augment(cfg["augment"]), patches, seed=7
    )
    weights = 1.0 / np.bincount(labels)[labels]  # class-balanced with replacement: row 0 drawn ~6 times of 12
    sampler = EpochSampler(len(labels), weights, seed=7)
    sampler.set_epoch(epoch)
    ds.set_epoch(epoch)
    dl = torch.utils.data.DataLoader(ds, batch_size=4, sampler=sampler, num_workers=workers)
    return [(x.clone(), r.clone()) for x, _, r in dl]


@pytest.mark.slow
def test_two_draws_of_one_figure_in_an_epoch_differ_and_runs_repeat():
    import torch

    batches = _draw_loader(0)
    x = torch.cat([b[0] for b in batches])
    rows = torch.cat([b[1] for b in batches]).numpy()
    assert len(rows) == 12 and (rows == 0).sum() >= 3  # the atypical figure drawn several times
    for r in set(rows.tolist()):
        views = x[rows == r]
        for a in range(len(views)):
            for b in range(a + 1, len(views)):
                assert not torch.equal(views[a], views[b]), f"row {r}: two draws gave the same view"
    again = _draw_loader(2)  # a re-run, with another worker layout: the same batches bit for bit
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))
    other = _draw_loader(0, epoch=1)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(batches, other))


# ---- EMA decay (item 4) -----------------------------------------------------------------------------


@pytest.mark.slow
def test_effective_ema_decay_is_the_configured_one_after_the_warmup():
    import torch
    from timm.utils import ModelEmaV3

    from training.train.recipe import make_teacher

    model = torch.nn.Linear(3, 1, bias=False)
    teacher = make_teacher(model, {"decay": 0.99, "warmup": True, "warmup_epochs": 1.0}, steps_per_epoch=20)
    assert teacher.warmup_steps == 20
    decays = []
    for step in range(1, 41):
        before = teacher.module.weight.detach().clone()
        with torch.no_grad():
            model.weight.add_(1.0)
        teacher.update(model, step=step)
        # the update that was applied: teacher = d * teacher + (1 - d) * student
        d = float(((model.weight - teacher.module.weight) / (model.weight - before))[0, 0].detach())
        assert d == pytest.approx(teacher.last_decay, abs=1e-5)
        decays.append(teacher.last_decay)
    assert decays[0] < 0.1 and all(a <= b for a, b in zip(decays, decays[1:]))  # a ramp during the first epoch
    assert decays[19:] == [0.99] * 21  # from the end of the warm-up on: the configured decay itself
    # timm's own warm-up (the old behaviour) stays below the configured decay for the whole of such a run
    timm_ema = ModelEmaV3(model, decay=0.99, use_warmup=True)
    assert timm_ema.get_decay(24 * 21) < 0.985
    off = make_teacher(model, {"decay": 0.99, "warmup": False}, steps_per_epoch=20)
    off.update(model, step=1)
    assert off.last_decay == 0.99 and off.warmup_steps == 0


# ---- selection that never sees the held-out fold (item 1) ------------------------------------------


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    from training_layout import make_layout

    return make_layout(tmp_path_factory.mktemp("sel") / "data", n_slides=10, per_slide=8)


def _train_fold0(data, out, selection, splits_from=None):
    import shutil

    from training.train import __main__ as train

    out.mkdir(parents=True, exist_ok=True)
    if splits_from is not None:  # the same folds (they are stratified by label, so permuted labels would move them)
        shutil.copy(splits_from / "splits.csv", out / "splits.csv")
    args = [
        "--config",
        "smoke",
        "--data",
        str(data),
        "--out",
        str(out),
        "--fold",
        "0",
        "--epochs",
        "4",
        "--set",
        "data.input_size=32",
        "train.batch_size=8",
        f"train.selection={selection}",
        "train.inner_folds=4",
        "train.select=roc_auc",
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert train.main(args) == 0
    import json

    import pandas as pd

    done = json.loads((out / "fold0" / "done.json").read_text())
    oof = pd.read_csv(out / "fold0" / "oof.csv", dtype={"image_id": str}).sort_values("image_id")
    return done, oof


def _relabel_held_out(data, run, dest, flip: bool):
    """A copy of the data whose held-out (fold 0) labels are random (seeded), or those random labels flipped."""
    import shutil

    import pandas as pd

    from training.data import OFFICIAL_CSV

    shutil.copytree(data, dest)
    held = set(pd.read_csv(run / "splits.csv", dtype={"image_id": str}).query("fold == 0")["image_id"])
    table = pd.read_csv(dest / OFFICIAL_CSV, dtype={"image_id": str})
    at = table["image_id"].isin(held).to_numpy()
    random = np.random.default_rng(0).random(int(at.sum())) < 0.5
    table.loc[at, "majority"] = np.where(random != flip, "AMF", "NMF")
    table.to_csv(dest / OFFICIAL_CSV, index=False)
    return dest


def _planted_pair(layout, tmp_path, selection):
    """Fold 0 trained twice on the same folds, once with random held-out labels, once with them flipped: the
    held-out ROC AUC of every epoch becomes 1 - AUC, so a choice made on it moves from argmax to argmin."""
    first = _relabel_held_out(layout, _split_only(layout, tmp_path), tmp_path / "data_a", flip=False)
    second = _relabel_held_out(layout, tmp_path / "split", tmp_path / "data_b", flip=True)
    a = _train_fold0(first, tmp_path / "a", selection, splits_from=tmp_path / "split")
    b = _train_fold0(second, tmp_path / "b", selection, splits_from=tmp_path / "split")
    return a, b


def _split_only(data, tmp_path):
    from training import config as config_io
    from training import splits as splits_io
    from training.data import load_dataset

    cfg = config_io.load("smoke")
    df, _ = load_dataset(data, cfg, log=lambda *a: None)
    (tmp_path / "split").mkdir()
    splits_io.write(splits_io.make_splits(df, "kfold", 2, 0), tmp_path / "split" / "splits.csv")
    return tmp_path / "split"


@pytest.mark.slow
@pytest.mark.parametrize("selection", ["last", "inner"])
def test_selection_never_sees_the_held_out_labels(layout, tmp_path, selection):
    """With held-out labels flipped, a selection that looked at them would pick another epoch (shown with
    train.selection=validation below). The honest ones keep the same epoch and the same held-out probabilities."""
    (done, oof), (done_f, oof_f) = _planted_pair(layout, tmp_path, selection)
    assert (oof["label"].to_numpy() != oof_f["label"].to_numpy()).all()  # the planted held-out signal
    assert done["best_epoch"] == done_f["best_epoch"]
    assert np.array_equal(oof["probability"].to_numpy(), oof_f["probability"].to_numpy())
    if selection == "last":
        assert done["best_epoch"] == 4
    else:
        assert done["n_inner"] > 0 and done["selection"] == "inner"


@pytest.mark.slow
def test_validation_selection_does_see_them(layout, tmp_path):
    """The check above can fail: with the old selection on the held-out fold, flipped labels move the epoch."""
    import pandas as pd

    (done, _), (done_f, _) = _planted_pair(layout, tmp_path, "validation")
    auc = pd.read_csv(tmp_path / "a" / "fold0" / "epochs.csv")["val_roc_auc"]
    assert auc.nunique() > 1  # the epochs differ on the held-out fold, so the choice depends on its labels
    assert done["best_epoch"] == int(auc.idxmax()) + 1 and done_f["best_epoch"] == int(auc.idxmin()) + 1
    assert done["best_epoch"] != done_f["best_epoch"]


def test_inner_split_keeps_slides_and_the_held_out_fold_apart():
    import pandas as pd

    from training import splits as splits_io

    rng = np.random.default_rng(0)
    n = 200
    df = pd.DataFrame(
        {
            "image_id": [f"{i}" for i in range(n)],
            "slide": [f"s{i % 20}" for i in range(n)],
            "label": rng.integers(0, 2, n),
            "synthetic": False,
            "Tumor": "breast",
            "Scanner": [f"sc{(i % 20) // 7}" for i in range(n)],
        }
    )
    for c in ("Origin", "Species"):
        df[c] = "x"
    splits = splits_io.make_splits(df, "leave_scanner_out")
    train_rows, held = splits_io.fold_rows(splits, 0)
    rest, inner = splits_io.inner_split(splits, train_rows, 4, seed=3)
    assert not set(inner) & set(held) and not set(rest) & set(held) and not set(rest) & set(inner)
    assert sorted(np.concatenate([rest, inner])) == sorted(train_rows)
    assert not set(splits["slide"].iloc[inner]) & set(splits["slide"].iloc[rest])
    assert set(splits["Scanner"].iloc[inner]) <= set(splits["Scanner"].iloc[train_rows])  # training domains only


# ---- out-of-fold figures: nested threshold, slide bootstrap, vote agreement, sources (items 1, 5, 6) ----


def _oof_table(seed=0, n_slides=30, per_slide=10):
    import pandas as pd

    rng = np.random.default_rng(seed)
    n = n_slides * per_slide
    y = (rng.random(n) < 0.3).astype(int)
    return pd.DataFrame(
        {
            "image_id": [f"{i}" for i in range(n)],
            "slide": np.repeat(np.arange(n_slides), per_slide).astype(str),
            "fold": np.repeat(np.arange(n_slides) % 5, per_slide),
            "label": y,
            "probability": np.round(np.clip(0.35 + 0.3 * y + rng.normal(0, 0.2, n), 0, 1), 2),
            "soft": np.where(rng.random(n) < 0.25, np.where(y == 1, 2 / 3, 1 / 3), y.astype(float)),
            "source": "official",
            "Scanner": "a",
            "Tumor": "human breast cancer",
        }
    )


def test_slide_bootstrap_equals_recomputing_training_metrics_on_each_slide_resample():
    from training import metrics
    from training.metrics import slide_bootstrap_ci

    t = _oof_table()
    y, p, s = t["label"].to_numpy(), t["probability"].to_numpy(), t["slide"].to_numpy()
    pred = (p >= 0.5).astype(int)
    fast = slide_bootstrap_ci(y, p, s, pred, n_boot=150, seed=3)
    draws = {k: [] for k in fast}
    for idx in metrics.slide_draws(s, 150, 3):
        m = metrics.summary(y[idx], p[idx], y_pred=pred[idx])
        for k in draws:
            draws[k].append(m[k])
    for k, v in draws.items():
        assert fast[k] == pytest.approx([np.percentile(v, 2.5), np.percentile(v, 97.5)], abs=1e-12), k
    # figures of one slide move together: with a strong slide effect (all of a slide's figures called alike) the
    # slide-level interval is much wider than the figure-level one
    called = np.repeat(np.arange(30) % 2, 10)
    slide_ci = slide_bootstrap_ci(y, p, s, called, 300, 0)["sensitivity"]
    figure_ci = slide_bootstrap_ci(y, p, np.arange(len(y)).astype(str), called, 300, 0)["sensitivity"]  # each alone
    assert slide_ci[1] - slide_ci[0] > 1.3 * (figure_ci[1] - figure_ci[0])


def test_nested_threshold_never_uses_the_folds_own_figures():
    from training.results import threshold
    from training.results.oof import compute

    t = _oof_table()
    res = compute(t, n_boot=20)
    for k, thr in res["nested"]["thresholds"].items():
        other = t[t["fold"] != int(k)]
        assert thr == threshold.best_threshold(other["label"], other["probability"])
    # planting: changing fold 0's labels moves the pooled threshold's figures on fold 0 but not fold 0's threshold
    planted = t.copy()
    planted.loc[planted["fold"] == 0, "label"] = 1 - planted.loc[planted["fold"] == 0, "label"]
    res2 = compute(planted, n_boot=20)
    assert res2["nested"]["thresholds"]["0"] == res["nested"]["thresholds"]["0"]
    pred = np.array([p >= res["nested"]["thresholds"][str(k)] for p, k in zip(t["probability"], t["fold"])])
    assert res["nested"]["at_nested_threshold"]["tp"] == int((pred & (t["label"] == 1)).sum())


def test_vote_agreement_and_sources_are_reported_and_extra_sets_do_not_choose_the_threshold():
    from training import metrics
    from training.results import threshold
    from training.results.oof import compute

    t = _oof_table()
    extra = _oof_table(seed=5).assign(
        image_id=lambda d: "x/" + d["image_id"], source="amibr", probability=lambda d: 1 - d["probability"]
    )  # would pull the threshold
    both = __import__("pandas").concat([t, extra], ignore_index=True)
    res = compute(both, n_boot=20)
    assert res["threshold"] == threshold.best_threshold(t["label"], t["probability"])  # official figures only
    assert set(res["per_source"]) == {"official", "amibr"}
    assert res["per_source"]["amibr"]["at_threshold"]["n"] == len(extra)
    votes = compute(t, n_boot=20)["by_vote"]
    split = ~np.isin(t["soft"], [0.0, 1.0])
    assert votes["split"]["at_threshold"]["n"] == int(split.sum()) and votes["unanimous"]["at_threshold"]["n"] == int(
        (~split).sum()
    )
    assert votes["split"]["at_threshold"]["roc_auc"] == pytest.approx(
        metrics.roc_auc(t["label"][split], t["probability"][split])
    )


# ---- leave-one-domain-out folds never split a slide (item 6) -----------------------------------------


def _full_table(labels_full):
    import pandas as pd

    from training.data import slide_key
    from training.domains import DOMAIN_COLUMNS, canonical

    t = pd.read_csv(labels_full, dtype={"image_id": str})
    t["slide"] = [slide_key(f) for f in t["filename"]]
    t["label"] = (t["majority"].str.upper() == "AMF").astype(int)
    for c in DOMAIN_COLUMNS:
        t[f"raw_{c}"] = t[c]
        t[c] = [canonical(c, v) for v in t[c]]
    t["synthetic"] = False
    return t


@pytest.mark.parametrize("kind", ["leave_scanner_out", "leave_tumor_out", "kfold"])
def test_folds_of_the_full_official_set_never_split_a_slide(labels_full, kind):
    from training import splits as splits_io

    splits = splits_io.make_splits(_full_table(labels_full), kind, 5, 0, tries=2)
    assert splits.groupby("slide")["fold"].nunique().max() == 1
    assert len(splits_io.folds_of(splits)) >= 3


def test_a_slide_with_two_scanners_is_refused():
    import pandas as pd

    from amf import AmfError
    from training import splits as splits_io

    df = pd.DataFrame(
        {
            "image_id": list("abcd"),
            "slide": ["s1", "s1", "s2", "s3"],
            "label": [0, 1, 0, 1],
            "synthetic": False,
            "Scanner": ["A", "B", "A", "B"],
            "Tumor": "t",
            "Origin": "o",
            "Species": "h",
        }
    )
    with pytest.raises(AmfError, match="s1 fall in two folds"):
        splits_io.make_splits(df, "leave_scanner_out")
    assert splits_io.make_splits(df.assign(Scanner=["A", "A", "A", "B"]), "leave_scanner_out")["fold"].tolist() == [
        0,
        0,
        0,
        1,
    ]
