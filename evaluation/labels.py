"""Labelled sets -> the one table that pack packs, and the selections that pick figures from it.

The table: figure (its name in figures.csv), path (its image), label ('atypical'/'normal'), tumordomain (an
integer of training.domains.TUMOR_DOMAINS), and, where the set has them, slide (a slide key,
training.data.slide_key), Scanner, Origin, Species and source (OPTIONAL). Sources:
  csv_table(CSV, IMAGE_DIR)      the official CSV (read by training.data.read_table, training's own reader) or a
                                 plain one: image,label[,domain][,slide][,scanner][,origin][,source]; labels AMF/NMF,
                                 atypical/normal or 1/0; domain a tumour type (any alias) or its integer
  layout_table(DATA_DIR)         a data folder in a known layout (LAYOUTS): those training reads (the official
                                 one, AMi-Br's: training.data.read_labelled) and AtNorM's (Atypical/, Normal/,
                                 optional votes; training.data.read_atnorm: no slides or tumour types, so --tumor)
  run_fold_table(RUN, K)         fold K's held-out figures of a training run (its splits.csv, training.rundir.RunDir):
                                 the figures the member of that fold never saw
  from_training_table(TABLE)     any table in training's columns (image_id, path, label 0/1, Tumor, and slide,
                                 source, Scanner, Origin, Species where known) -> this table
Image names in a CSV or a layout are paths inside its image folder: an absolute name, a `..` part, or a name that
resolves (through a link) outside it is refused. Selections, applied in this order:
  on_slides(TABLE, FILE)         the figures of the slides FILE lists (one a line; "002.tiff" and "002" name one
                                 slide; blank lines and lines starting with # are skipped); every slide must exist
  limit(TABLE, N, SEED)          N figures drawn without replacement, stratified by label (each class gets its share
                                 of N, rounded by largest remainder), seeded; the whole table when N >= its size
Torch-free.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from amf import AmfError, one_line
from amf.results import CLASSES
from training.data import (
    AMIBR_IMAGES,
    LABEL_CODES,
    OFFICIAL_IMAGES,
    find_layout,
    image_path,
    inside,
    is_atnorm,
    layout_of,
    read_atnorm,
    read_csv,
    read_labelled,
    read_table,
    slide_key,
)
from training.domains import TUMOR_DOMAINS, canonical, tumor_domain

OPTIONAL = ("slide", "Scanner", "Origin", "Species", "source")
# every accepted spelling of a label (lower case) -> its class: the official codes (AMF/NMF), the class
# names and the class ids
LABEL_SPELLINGS = {
    **{code.lower(): CLASSES[i] for code, i in LABEL_CODES.items()},
    **{name: name for name in CLASSES},
    **{str(i): name for i, name in enumerate(CLASSES)},
}
# a plain CSV's optional column -> the table's
PLAIN_OPTIONAL = {"slide": "slide", "scanner": "Scanner", "origin": "Origin", "source": "source"}


def _domain(value, where: str) -> int:
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        if int(text) not in TUMOR_DOMAINS.values():
            raise AmfError(f"{where}: tumour domain {text} is not one of {sorted(TUMOR_DOMAINS.values())}")
        return int(text)
    try:
        return tumor_domain(text)
    except KeyError as e:
        raise AmfError(f"{where}: {e.args[0]}") from None


def from_training_table(df, tumor: str | None = None, image_dir=None):
    """Training's table (training.data: image_id, path, label 0/1, Tumor, and OPTIONAL columns where known) ->
    pack's table. TUMOR stands in where a figure's tumour type is unknown; IMAGE_DIR, when given, is the folder
    every path must lie inside."""
    import pandas as pd

    missing = {"image_id", "path", "label"} - set(df.columns)
    if missing:
        raise AmfError(f"a labelled set needs the columns image_id, path, label; it lacks {', '.join(sorted(missing))}")
    out = pd.DataFrame({"figure": df["image_id"].astype(str).to_numpy(), "path": df["path"].astype(str).to_numpy()})
    labels = pd.to_numeric(df["label"], errors="coerce").to_numpy()
    bad = ~np.isin(labels, [0, 1])
    if bad.any():
        raise AmfError(f"figure {out.figure[bad.argmax()]}: label {df['label'].iloc[bad.argmax()]!r} is not 0 or 1")
    out["label"] = [CLASSES[int(v)] for v in labels]
    tumors = df["Tumor"].astype(str).to_numpy() if "Tumor" in df else np.full(len(df), "unknown")
    if tumor is not None:
        tumors = np.where(tumors == "unknown", tumor, tumors)
    hint = "" if tumor is not None else " (name it with --tumor)"
    out["tumordomain"] = [_domain(t, f"figure {f}{hint}") for f, t in zip(out.figure, tumors)]
    for col in OPTIONAL:
        if col in df:
            out[col] = df[col].astype(str).to_numpy()
    if image_dir is not None:
        for name in df["image_id"].astype(str):
            inside(Path(image_dir), name)
    return _checked(out, "the labelled set")


def _checked(table, what: str):
    dup = table.figure[table.figure.duplicated()]
    if len(dup):
        raise AmfError(f"{what}: {len(dup)} images listed twice, e.g. {dup.iloc[0]}")
    return table.reset_index(drop=True)


def plain_table(raw, csv_path, image_dir: Path, tumor: str | None):
    """A plain CSV (image,label[,domain][,slide][,scanner][,origin][,source]) -> pack's table."""
    import pandas as pd

    if "domain" not in raw.columns and tumor is None:
        raise AmfError(f"{csv_path} has no domain column: name the tumour type with --tumor")
    rows = []
    for i, r in enumerate(raw.to_dict("records"), start=2):  # row 1 is the header
        name = r["image"].strip()
        lab = LABEL_SPELLINGS.get(r["label"].strip().lower())
        if not name or lab is None:
            raise AmfError(
                f"row {i}: need an image name and a label in {sorted(LABEL_SPELLINGS)}, got {r['image']!r}, "
                f"{r['label']!r}"
            )
        row = {
            "figure": name,
            "path": str(inside(image_dir, name)),
            "label": lab,
            "tumordomain": _domain(r["domain"] if "domain" in raw.columns else tumor, f"row {i}"),
        }
        for col, to in PLAIN_OPTIONAL.items():
            if col in raw.columns:
                v = r[col].strip()
                if to == "slide":
                    row[to] = slide_key(v) if v else ""
                elif to == "source":
                    row[to] = v
                else:  # a domain column: its canonical spelling (training.domains)
                    row[to] = canonical(to, v or None)
        rows.append(row)
    return _checked(pd.DataFrame(rows), str(csv_path))


def csv_table(csv_path, image_dir, tumor: str | None = None):
    """A CSV in the official columns (image_id, filename, majority, Tumor, ...) or a plain one -> pack's table."""
    image_dir = Path(image_dir)
    raw = read_csv(csv_path, dtype=str, keep_default_na=False)
    if {"image_id", "majority"} <= set(raw.columns):
        return from_training_table(read_table(csv_path, image_dir, "official"), tumor, image_dir)
    if {"image", "label"} <= set(raw.columns):
        return plain_table(raw, csv_path, image_dir, tumor)
    raise AmfError(
        f"{csv_path}: need the official columns (image_id, filename, majority, Tumor) or "
        f"image,label[,domain]; found {', '.join(raw.columns)}"
    )


def training_layout(data_dir: Path):
    """A layout training reads (training.data.read_labelled: the official one, AMi-Br's), and its images' folder."""
    images = data_dir / (OFFICIAL_IMAGES if layout_of(data_dir) == "official" else AMIBR_IMAGES)
    return read_labelled(data_dir), images


def is_training_layout(data_dir: Path) -> bool:
    return find_layout(data_dir) is not None


# name -> (does DATA_DIR hold this layout?, its reader: DATA_DIR -> (training's table, the images' folder))
LAYOUTS = {
    "official or AMi-Br": (is_training_layout, training_layout),
    "AtNorM": (is_atnorm, lambda d: (read_atnorm(d), d)),
}


def layout_table(data_dir, tumor: str | None = None):
    """A data folder in one of LAYOUTS -> pack's table."""
    data_dir = Path(data_dir)
    for is_layout, reader in LAYOUTS.values():
        if is_layout(data_dir):
            table, images = reader(data_dir)
            return from_training_table(table, tumor, images)
    raise AmfError(f"{data_dir} is not a data folder in a known layout ({', '.join(LAYOUTS)}); give CSV IMAGE_DIR")


def run_fold_table(run, fold: int, data_dir=None, tumor: str | None = None):
    """Fold FOLD's held-out figures of the training run RUN (its splits.csv); DATA_DIR where the official images
    moved since training (training.data.image_path)."""
    from training.rundir import RunDir
    from training.splits import folds_of

    run = RunDir(run)
    splits = run.read_splits()
    folds = folds_of(splits)
    if fold not in folds:
        raise AmfError(f"{run} has no fold {fold} (its folds: {', '.join(map(str, folds)) or 'none'})")
    rows = splits[splits["fold"] == fold]
    return from_training_table(rows.assign(path=[str(image_path(r, data_dir)) for _, r in rows.iterrows()]), tumor)


def on_slides(table, slides_file):
    """The figures of the slides SLIDES_FILE lists (see the module docstring)."""
    path = Path(slides_file)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise AmfError(f"cannot read the slide list {path}: {one_line(getattr(e, 'strerror', None) or e)}") from None
    wanted = {slide_key(s) for s in (line.strip() for line in lines) if s and not s.startswith("#")}
    if not wanted:
        raise AmfError(f"the slide list {path} names no slide")
    if "slide" not in table or (table["slide"] == "").any():
        raise AmfError("--slides needs the slide of every figure; these labels do not give one (a slide column)")
    unknown = sorted(wanted - set(table["slide"]))
    if unknown:
        raise AmfError(f"{len(unknown)} slide(s) of {path} hold no figure of the labels, e.g. {unknown[0]}")
    return table[table["slide"].isin(wanted)].reset_index(drop=True)


def limit(table, n: int, seed: int = 0):
    """N figures, stratified by label and seeded (see the module docstring); the table's order is kept."""
    if n < 1:
        raise AmfError(f"--limit must be at least 1, got {n}")
    if n >= len(table):
        return table
    classes = sorted(table["label"].unique())
    sizes = np.array([(table["label"] == c).sum() for c in classes])
    exact = n * sizes / sizes.sum()
    quota = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - quota), kind="stable")[: n - quota.sum()]:  # largest remainders get the rest
        quota[i] += 1
    rng = np.random.default_rng(seed)
    picked = np.concatenate(
        [rng.choice(np.flatnonzero(table["label"] == c), q, replace=False) for c, q in zip(classes, quota)]
    )
    return table.iloc[np.sort(picked)].reset_index(drop=True)
