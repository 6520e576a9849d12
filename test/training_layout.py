"""Generated data in the official MIDOG 2025 Track 2 layout, for the training tests (no real data needed).

make_layout(dir) writes MIDOG25_Atypical_Classification_Train_Set.csv and the PNG folder: slides on two
scanners (one spelled 'Hamammatsu XR', the alias), two tumour types, atypical figures drawn as a dark
irregular blob and normal ones as a compact round one, so that a tiny model can learn something.
make_amibr(dir, official_csv) writes a set in AMi-Br's layout that repeats the official figures as its MIDOG21
part and adds TUPAC16 slides; make_extra(dir, official_csv) writes an extra set that repeats some official
figures (same slide and coordinates, other image names) and adds new ones; make_synthetic(dir) a folder of
synthetic atypicals; make_split_run(dir, data) a run folder holding only the splits.csv training would write for
that data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from training.data import OFFICIAL_CSV, OFFICIAL_IMAGES


def patch(rng: np.random.Generator, atypical: bool, size: int = 128) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] - size / 2
    img = np.stack([np.full((size, size), v, np.float64) for v in (225, 170, 205)], -1)
    img += rng.normal(0, 6, img.shape)
    if atypical:
        for _ in range(4):
            cy, cx = rng.normal(0, 10, 2)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(20, 60)] = (70, 40, 110)
    else:
        img[yy**2 / 90 + xx**2 / 250 < 1] = (80, 50, 120)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_layout(root, n_slides: int = 8, per_slide: int = 8, seed: int = 0, start_id: int = 1) -> Path:
    root = Path(root)
    (root / OFFICIAL_IMAGES).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows, i = [], start_id
    for s in range(n_slides):
        scanner = "Hamammatsu XR" if s % 2 else "Aperio CS2"
        tumor = "human breast cancer" if s % 4 < 2 else "canine lymphoma"
        for j in range(per_slide):
            atyp = j % 3 == 0
            name = f"{i}.png"
            Image.fromarray(patch(rng, atyp)).save(root / OFFICIAL_IMAGES / name)
            vote = "AMF" if atyp else "NMF"
            rows.append(
                {
                    "image_id": name,
                    "filename": f"{s:03d}.tiff",
                    "coordinateX": 100 + 50 * j,
                    "coordinateY": 200 + 30 * j,
                    "Tumor": tumor,
                    "Scanner": scanner,
                    "Origin": "UMC Utrecht" if s % 4 < 2 else "VMU Vienna",
                    "Species": "Human" if s % 4 < 2 else "Canine",
                    "expert1": vote,
                    "expert2": vote,
                    "expert3": "NMF",
                    "majority": vote,
                }
            )
            i += 1
    pd.DataFrame(rows).to_csv(root / OFFICIAL_CSV, index=False)
    return root


def make_extra(root, official_csv, n_repeat: int = 5, n_new: int = 6, seed: int = 1) -> Path:
    """An extra set: n_repeat figures of the official table (coordinates moved by 2 px) + n_new new ones."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    off = pd.read_csv(official_csv).head(n_repeat).copy()
    off["coordinateX"] += 2
    new = off.head(0).copy()
    for j in range(n_new):
        atyp = j % 2 == 0
        vote = "AMF" if atyp else "NMF"
        new.loc[j] = {
            "image_id": "",
            "filename": f"tupac_{j % 3}.svs",
            "coordinateX": 10 * j,
            "coordinateY": 5,
            "Tumor": "human breast cancer",
            "Scanner": "Aperio CS2",
            "Origin": "TUPAC",
            "Species": "Human",
            "expert1": vote,
            "expert2": vote,
            "expert3": vote,
            "majority": vote,
        }
    table = pd.concat([off, new], ignore_index=True)
    table["image_id"] = [f"x{k}.png" for k in range(len(table))]
    for name, vote in zip(table["image_id"], table["majority"]):
        Image.fromarray(patch(rng, vote == "AMF")).save(root / "images" / name)
    table.to_csv(root / "extra.csv", index=False)
    return root


def make_synthetic(root, n: int = 4, seed: int = 2) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(n):
        Image.fromarray(patch(rng, True)).save(root / f"syn{k}.png")
    return root


def make_amibr(root, official_csv=None, n_tupac_slides: int = 3, per_slide: int = 6, seed: int = 3) -> Path:
    """AMi-Br's layout (AMI-BR.csv with its unnamed index column, patches/{atypical,normal}/<dataset>_<uid>.png):
    MIDOG21 rows that repeat the figures of OFFICIAL_CSV (same slide and coordinates) where it is given, and TUPAC16
    rows on slides whose names could clash with another dataset's."""
    root = Path(root)
    for cls in ("atypical", "normal"):
        (root / "patches" / cls).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    if official_csv is not None:
        off = pd.read_csv(official_csv)
        for uid, r in enumerate(off.itertuples(), start=1):
            votes = [getattr(r, e) == "AMF" for e in ("expert1", "expert2", "expert3")]
            rows.append(("MIDOG21", uid, r.filename, r.coordinateX, r.coordinateY, votes, r.majority == "AMF"))
    for s in range(n_tupac_slides):
        for j in range(per_slide):
            atyp = j % 3 == 0
            votes = [atyp, atyp, j % 2 == 0]
            rows.append(("TUPAC16", 1000 + s * per_slide + j, f"{s:03d}.tiff", 40 * j, 60, votes, atyp))
    table = []
    for dataset, uid, slide, x, y, votes, atyp in rows:
        name = f"{dataset}_{uid}.png"
        Image.fromarray(patch(rng, atyp)).save(root / "patches" / ("atypical" if atyp else "normal") / name)
        table.append(
            {
                "slide": slide,
                "dataset": dataset,
                "uid": uid,
                "x": x,
                "y": y,
                "expert1_label": "AMF x" if votes[0] else "NMF y",
                "expert2_label": "AMF x" if votes[1] else "NMF y",
                "expert1_atypical": votes[0],
                "expert2_atypical": votes[1],
                "expert3_atypical": votes[2],
                "majority_atypical": atyp,
            }
        )
    pd.DataFrame(table).to_csv(root / "AMI-BR.csv")  # the unnamed row index, as AMi-Br writes it
    return root


def make_split_run(root, data, folds: int = 2, seed: int = 0):
    """A run folder holding only splits.csv, made by training's own splitter from the layout at DATA; returns the
    RunDir and the data's table (training.data.read_table)."""
    from training import splits as splits_io
    from training.data import read_table
    from training.rundir import RunDir

    table = read_table(Path(data) / OFFICIAL_CSV, Path(data) / OFFICIAL_IMAGES, "official")
    run = RunDir(Path(root))
    run.path.mkdir(parents=True)
    run.write_splits(splits_io.make_splits(table, "kfold", folds=folds, seed=seed))
    return run, table
