"""Training data: the labelled layouts (the official one, AMi-Br's), extra labelled sets, synthetic atypicals.

DATA_DIR is one of two layouts (layout_of tells which; read_labelled reads either into one table):
  official   the organisers' files:
    MIDOG25_Atypical_Classification_Train_Set.csv   image_id, filename, coordinateX, coordinateY, Tumor, Scanner,
                                                    Origin, Species, expert1, expert2, expert3, majority (AMF|NMF)
    MIDOG25_Binary_Classification_Train_Set/        one PNG per figure, named by image_id
  amibr      AMi-Br's published layout (Bertram et al., BVM 2025; the AMi-Br benchmark's splits use it):
    AMI-BR.csv                                      an unnamed row index, slide, dataset, uid, x, y, expert1_label,
                                                    expert2_label, expert{1,2,3}_atypical, majority_atypical
    patches/{atypical,normal}/<dataset>_<uid>.png   one PNG per figure, in its majority class's folder
    Labels from majority_atypical; soft labels from the three experts' votes; the source (a weak domain label,
    and what splits.kind leave_source_out holds out) is the dataset (MIDOG21, TUPAC16). AMi-Br holds human
    breast cancer only (Tumor, Species). Its MIDOG21 figures are figures of the official set: they keep the
    official slide key and, where an official label table is given (data.official_labels, e.g. the full
    official CSV; or the official set itself when AMi-Br is an extra set of it), take its Scanner and Origin
    (matched on slide and coordinates). AMi-Br gives no scanner for TUPAC16: its Scanner stays "unknown", so its
    source is its domain.
  atnorm     AtNorM's layout (the AMi-Br benchmark's held-out sets AtNorM-Br and AtNorM-MD), for evaluation only
             (evaluation pack): Atypical/ and Normal/ folders of patches and an optional votes table
             (Filename, Expert_1..N, Majority); no slides, no domains (read_atnorm)
Extra sets (config data.extra): [{name, dir}] in either layout, or [{name, csv, images, slide_prefix?}] in the
official columns. Their image_ids are prefixed "<name>/" so that they never collide with the main set's, their
source is their name and they never choose a threshold (column extra: true).
- Slide key: the slide file's stem, lower case ("002.tiff" -> "002"), shared across sets, so AMi-Br's
  MIDOG21 part falls on the same slides as the official breast slice; AMi-Br's other datasets are keyed
  "<dataset>/<stem>" ("tupac16/01_stitched1": nothing promises that two datasets never reuse a name); an extra
  set in the official columns whose file names mean other slides sets slide_prefix (key "<prefix><stem>").
- De-duplication: a figure of a later set within data.dedup_radius px of a kept figure on the same
  slide is the same figure and is dropped (the official set comes first and always stays).
- Synthetic atypical images (config data.synthetic: a folder of PNGs): label 1, synthetic=True, slide
  "synthetic", domains "synthetic"; splits keep them out of every validation fold.
- Domains: canonical values through training.domains.canonical (one alias table); raw values kept as raw_<col>.
- Image names are paths inside the set's image folder (inside(): an absolute name, a '..' part or a link
  leading out is refused; offline evaluation's pack uses the same rule).
- Missing or unreadable images: one error listing them (missing ones before anything is decoded), or
  (data.skip_missing / --skip-missing) dropped with a count. Every image is decoded once before training,
  kept (data.preload) or not, so an unreadable one is found there and not in a loader's worker.
- Bounds: a label table is read by read_csv (at most MAX_TABLE_BYTES, UTF-8, one error line for anything it
  cannot parse); an image whose header declares a side over amf.jobs.MAX_SIDE (the container's cap) is refused
  before it is decoded.
The torch Dataset decodes PNG -> amf.preprocess.canonical_patch -> augment (training only) ->
amf.preprocess.resize -> amf.preprocess.normalize: at validation time exactly the container's prepare().
Look:  python -m training.inspect data DATA_DIR [--config CONFIG]   (the class and domain counts)
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from amf import AmfError, one_line
from amf.fileio import read_text
from amf.jobs import MAX_SIDE
from amf.preprocess import canonical_patch, normalize, resize
from amf.results import ATYPICAL, CLASS_ID, CLASSES, NORMAL
from training.domains import DOMAIN_COLUMNS, canonical

OFFICIAL_CSV = "MIDOG25_Atypical_Classification_Train_Set.csv"
OFFICIAL_IMAGES = "MIDOG25_Binary_Classification_Train_Set"
COLUMNS = (
    "image_id",
    "filename",
    "coordinateX",
    "coordinateY",
    "Tumor",
    "Scanner",
    "Origin",
    "Species",
    "expert1",
    "expert2",
    "expert3",
    "majority",
)
EXPERTS = ("expert1", "expert2", "expert3")
# the official CSVs' label codes (majority, expert1-3) -> class id (amf.results: atypical = 1)
LABEL_CODES = {"AMF": CLASS_ID[ATYPICAL], "NMF": CLASS_ID[NORMAL]}
SYNTHETIC = "synthetic"
AMIBR_CSV = "AMI-BR.csv"
AMIBR_IMAGES = "patches"
AMIBR_EXPERTS = ("expert1_atypical", "expert2_atypical", "expert3_atypical")
# AMi-Br's datasets whose slides are the official set's slides of the same name (AMi-Br's MIDOG21 part is the
# official human breast slice): they keep the official slide key, so a figure both sets hold is de-duplicated and
# its slide stays in one fold
AMIBR_OFFICIAL_DATASETS = ("MIDOG21",)
LAYOUTS = {"official": OFFICIAL_CSV, "amibr": AMIBR_CSV}  # layout -> the label table that marks it
BOOLEANS = {"true": 1, "false": 0, "1": 1, "0": 0}
ATNORM_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MAX_TABLE_BYTES = 16 * 2**20  # a label table (the full official one, 11,937 figures, is 1.1 MB)
# a run folder's tables (splits.csv, the out-of-fold predictions) hold more columns per figure than a label table
MAX_RUN_TABLE_BYTES = 4 * MAX_TABLE_BYTES


def slide_key(filename, prefix: str = "") -> str:
    return prefix + Path(str(filename).strip()).stem.lower()


def read_csv(path, what: str = "label table", limit: int = MAX_TABLE_BYTES, **kwargs) -> pd.DataFrame:
    """The one reader of the project's CSV tables (label tables, and a run folder's splits and predictions):
    pandas.read_csv(**KWARGS) on PATH's text (read_text: at most LIMIT bytes, UTF-8, a BOM dropped). A file that
    is empty, has a header and no rows, or does not parse is one AmfError line naming WHAT and PATH."""
    text = read_text(path, what, limit)
    try:
        table = pd.read_csv(io.StringIO(text), **kwargs)
    except pd.errors.EmptyDataError:
        raise AmfError(f"{what} {path} is empty (no header, no rows)") from None
    except (ValueError, pd.errors.ParserError) as e:  # ParserError is a ValueError; also dtype conversions
        raise AmfError(f"{what} {path} is not a CSV table ({one_line(e)[:200]})") from None
    if table.empty:
        raise AmfError(f"{what} {path} has no rows")
    return table


def inside(folder, name) -> Path:
    """FOLDER/NAME, refused (naming it) if NAME is empty, absolute, has a '..' part or resolves (through a link)
    outside FOLDER: the one rule for image names in label tables (training and offline evaluation)."""
    folder, name = Path(folder), str(name)
    path = folder / name
    try:
        out = not name or Path(name).is_absolute() or ".." in Path(name).parts
        out = out or not path.resolve().is_relative_to(folder.resolve())
    except (OSError, ValueError):  # a NUL byte, a link loop
        out = True
    if out:
        raise AmfError(
            f"image {shown(name)!r} is outside the image folder {folder}: name images by their path inside it"
        )
    return path


def shown(name: str, width: int = 80) -> str:
    """NAME as an error line shows it: at most WIDTH characters (an image name can be anything a table holds)."""
    return name if len(name) <= width else name[: width - 3] + "..."


def is_file(path) -> bool:
    """Path(PATH).is_file(), False for a name the system cannot even look up (too long, say)."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def read_table(
    csv, images, source: str, label_col: str = "majority", id_prefix: str = "", slide_prefix: str = ""
) -> pd.DataFrame:
    """One labelled set in the official columns -> the normalised table (one row per figure)."""
    csv, images = Path(csv), Path(images)
    if not csv.is_file():
        raise AmfError(f"no label table {csv}")
    if not images.is_dir():
        raise AmfError(f"no image folder {images}")
    raw = read_csv(csv, dtype={"image_id": str, "filename": str})
    missing_cols = [c for c in ("image_id", "filename", label_col) if c not in raw.columns]
    if missing_cols:
        raise AmfError(f"{csv.name}: missing column(s) {', '.join(missing_cols)}")
    for col in ("image_id", "filename"):
        empty = raw[col].isna() | (raw[col].astype(str).str.strip() == "")
        if empty.any():
            rows = [str(i + 2) for i in np.flatnonzero(empty)[:5]]  # row 1 is the header
            raise AmfError(f"{csv.name}: {int(empty.sum())} row(s) without {col}, e.g. row(s) {', '.join(rows)}")
    labels = raw[label_col].astype(str).str.strip().str.upper()
    bad = raw.loc[~labels.isin(list(LABEL_CODES)), "image_id"].tolist()
    if bad:
        raise AmfError(
            f"{csv.name}: {len(bad)} row(s) with a {label_col} other than AMF/NMF, "
            f"e.g. {', '.join(shown(str(b)) for b in bad[:5])}"
        )
    df = pd.DataFrame(
        {
            "image_id": id_prefix + raw["image_id"].astype(str).str.strip(),
            "path": [str(inside(images, str(i).strip())) for i in raw["image_id"]],
            "filename": raw["filename"].astype(str),
            "slide": [slide_key(f, slide_prefix) for f in raw["filename"]],
            "coordinateX": pd.to_numeric(raw.get("coordinateX", np.nan), errors="coerce"),
            "coordinateY": pd.to_numeric(raw.get("coordinateY", np.nan), errors="coerce"),
            "label": labels.map(LABEL_CODES).astype(int),
        }
    )
    votes = [raw[e].astype(str).str.strip().str.upper() for e in EXPERTS if e in raw.columns]
    if votes:  # share of the experts who voted AMF (soft label); NaN votes do not count
        amf_votes = sum((v == "AMF").astype(float) for v in votes)
        cast = sum(v.isin(list(LABEL_CODES)).astype(float) for v in votes)
        df["soft"] = np.where(cast > 0, amf_votes / cast.replace(0, 1), df["label"])
    else:
        df["soft"] = df["label"].astype(float)
    for col in DOMAIN_COLUMNS:
        values = raw[col] if col in raw.columns else pd.Series([None] * len(raw))
        df[f"raw_{col}"] = values.astype(object).where(values.notna(), "unknown").astype(str).values
        df[col] = [canonical(col, v) for v in values]
    df["source"] = source
    df["synthetic"] = False
    df["extra"] = False
    if df["image_id"].duplicated().any():
        dup = df.loc[df["image_id"].duplicated(), "image_id"].tolist()
        raise AmfError(f"{csv.name}: duplicate image_id(s) {', '.join(map(shown, dup[:5]))}")
    return df


def find_layout(data_dir) -> str | None:
    """'official' or 'amibr': which labelled layout DATA_DIR holds (module docstring); None for neither."""
    return next((name for name, marker in LAYOUTS.items() if (Path(data_dir) / marker).is_file()), None)


def layout_of(data_dir) -> str:
    """find_layout, or one error naming both layouts' label tables."""
    if layout := find_layout(data_dir):
        return layout
    raise AmfError(
        f"{data_dir} is not a labelled data folder: no {OFFICIAL_CSV} (the official layout) "
        f"and no {AMIBR_CSV} (AMi-Br's layout)"
    )


def _booleans(values: pd.Series, column: str, table: str) -> np.ndarray:
    """AMi-Br's True/False columns (any case; 1/0 too) -> 0/1; one error naming the rows of anything else."""
    text = values.astype(str).str.strip().str.lower()
    known = text.isin(list(BOOLEANS))
    if not known.all():
        rows = [str(i) for i in values.index[~known][:5]]
        raise AmfError(f"{table}: {column} must be True or False; row(s) {', '.join(rows)} are not")
    return text.map(BOOLEANS).to_numpy(int)


def read_amibr(data_dir, source: str | None = None, id_prefix: str = "", official: pd.DataFrame | None = None):
    """AMi-Br's layout (module docstring) -> the normalised table of read_table. SOURCE: the source of every row
    (an extra set's name), else each row's dataset. OFFICIAL: a normalised official table whose figures (same
    slide, same coordinates) give the MIDOG21 rows their Scanner and Origin."""
    data_dir = Path(data_dir)
    csv, images = data_dir / AMIBR_CSV, data_dir / AMIBR_IMAGES
    if not csv.is_file():
        raise AmfError(f"no label table {csv}")
    if not images.is_dir():
        raise AmfError(f"no image folder {images}")
    raw = read_csv(csv, dtype=str, keep_default_na=False, index_col=0)
    needed = ("slide", "dataset", "uid", "x", "y", "majority_atypical")
    missing_cols = [c for c in needed if c not in raw.columns]
    if missing_cols:
        raise AmfError(f"{csv.name}: missing column(s) {', '.join(missing_cols)}")
    for col in ("slide", "dataset", "uid"):
        empty = raw[col].str.strip() == ""
        if empty.any():
            raise AmfError(f"{csv.name}: {int(empty.sum())} row(s) without {col}")
    label = _booleans(raw["majority_atypical"], "majority_atypical", csv.name)
    dataset = raw["dataset"].str.strip()
    names = (dataset + "_" + raw["uid"].str.strip() + ".png").to_numpy()
    votes = [_booleans(raw[e], e, csv.name) for e in AMIBR_EXPERTS if e in raw.columns]
    shared = dataset.isin(AMIBR_OFFICIAL_DATASETS).to_numpy()
    df = pd.DataFrame(
        {
            "image_id": [id_prefix + n for n in names],
            "path": [str(inside(images / CLASSES[y], n)) for y, n in zip(label, names)],
            "filename": raw["slide"].to_numpy(),
            "slide": [
                slide_key(f) if own else f"{d.lower()}/{slide_key(f)}"
                for f, d, own in zip(raw["slide"], dataset, shared)
            ],
            "coordinateX": pd.to_numeric(raw["x"], errors="coerce").to_numpy(),
            "coordinateY": pd.to_numeric(raw["y"], errors="coerce").to_numpy(),
            "label": label,
            "soft": np.mean(votes, axis=0) if votes else label.astype(float),
        }
    )
    given = {"Tumor": "human breast cancer", "Species": "Human"}
    for col in DOMAIN_COLUMNS:
        df[f"raw_{col}"] = given.get(col, "unknown")
    if official is not None:  # the same figure in the official table: same slide key, same coordinates
        key = ["slide", "coordinateX", "coordinateY"]
        cols = [c for col in ("Scanner", "Origin") for c in (col, f"raw_{col}")]
        match = df[key].merge(official.drop_duplicates(key)[key + cols], on=key, how="left")
        for col in ("Scanner", "Origin"):
            found = shared & match[col].notna().to_numpy()
            df.loc[found, f"raw_{col}"] = match.loc[found, f"raw_{col}"].to_numpy()
    for col in DOMAIN_COLUMNS:
        df[col] = [canonical(col, v) for v in df[f"raw_{col}"]]
    df["source"] = dataset.to_numpy() if source is None else source
    df["synthetic"] = False
    df["extra"] = False
    if df["image_id"].duplicated().any():
        dup = df.loc[df["image_id"].duplicated(), "image_id"].tolist()
        raise AmfError(f"{csv.name}: duplicate figure(s) {', '.join(dup[:5])}")
    return df


def read_official_labels(csv, label_col: str = "majority") -> pd.DataFrame:
    """An official label table alone (data.official_labels: no images needed), normalised: what names the scanner
    and origin of AMi-Br's MIDOG21 figures."""
    return read_table(csv, Path(csv).parent, "official-labels", label_col)


def is_atnorm(data_dir) -> bool:
    """AtNorM's layout (AtNorM-Br, AtNorM-MD; evaluation only): Atypical/ and Normal/ folders of patches."""
    return all(_class_folder(Path(data_dir), cls) is not None for cls in CLASSES)


def _class_folder(data_dir: Path, cls: str) -> Path | None:
    """DATA_DIR's folder of class CLS, however its name is capitalised (AtNorM writes Atypical/, Normal/)."""
    found = [p for p in data_dir.iterdir() if p.is_dir() and p.name.lower() == cls] if data_dir.is_dir() else []
    return found[0] if len(found) == 1 else None


def read_atnorm(data_dir) -> pd.DataFrame:
    """AtNorM's layout -> the normalised table (slides and domains unknown: AtNorM names neither): one row per image
    in Atypical/ and Normal/ (.png, .jpg, .tif), labelled by its folder; image_id the path inside DATA_DIR. An
    optional votes table (one .csv at the top: Filename, Expert_1..N, Majority; votes AMF/NMF, atypical/normal,
    1/0 or true/false) gives the soft labels, and its Majority must agree with the folder."""
    data_dir = Path(data_dir)
    rows = []
    for cls in CLASSES:
        folder = _class_folder(data_dir, cls)
        if folder is None:
            raise AmfError(f"{data_dir} is not AtNorM's layout: no single {cls.capitalize()}/ folder")
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in ATNORM_SUFFIXES)
        rows += [(f"{folder.name}/{p.name}", str(p), p.name, CLASS_ID[cls]) for p in files]
    if not rows:
        raise AmfError(f"{data_dir}: no images in its Atypical/ and Normal/ folders")
    df = pd.DataFrame(rows, columns=["image_id", "path", "file", "label"])
    df["soft"] = df["label"].astype(float)
    votes = sorted(data_dir.glob("*.csv"))
    if len(votes) > 1:
        raise AmfError(f"{data_dir}: {len(votes)} CSV files; AtNorM's layout has at most one votes table")
    if votes:
        df["soft"] = _atnorm_votes(votes[0], df)
    df = df.drop(columns="file").assign(filename="unknown", slide="", coordinateX=np.nan, coordinateY=np.nan)
    for col in DOMAIN_COLUMNS:
        df[f"raw_{col}"] = df[col] = "unknown"
    return df.assign(source=data_dir.name, synthetic=False, extra=False)


def _atnorm_votes(csv: Path, df: pd.DataFrame) -> np.ndarray:
    """The experts' share of atypical votes per image of DF, from AtNorM's votes table (read_atnorm)."""
    raw = read_csv(csv, "AtNorM votes table", dtype=str, keep_default_na=False)
    experts = [c for c in raw.columns if c.lower().startswith("expert")]
    if "Filename" not in raw.columns or not experts:
        raise AmfError(f"{csv.name}: an AtNorM votes table needs Filename and Expert_1.. columns")
    spell = {**{k: v for k, v in BOOLEANS.items()}, "amf": 1, "nmf": 0, "atypical": 1, "normal": 0, "": -1}
    cast = raw[experts].apply(lambda c: c.str.strip().str.lower().map(spell))
    if cast.isna().any().any():
        bad = raw.loc[cast.isna().any(axis=1), "Filename"].iloc[0]
        raise AmfError(f"{csv.name}: a vote of {bad} is not atypical/normal, AMF/NMF, 1/0 or true/false")
    by_name = raw.assign(share=(cast == 1).sum(1) / (cast >= 0).sum(1).clip(lower=1)).set_index("Filename")
    if by_name.index.duplicated().any():
        raise AmfError(f"{csv.name}: {by_name.index[by_name.index.duplicated()][0]} is listed twice")
    missing = sorted(set(df["file"]) - set(by_name.index))
    if missing:
        raise AmfError(f"{csv.name}: no votes for {len(missing)} image(s), e.g. {missing[0]}")
    if "Majority" in raw.columns:
        majority = by_name.loc[df["file"], "Majority"].str.strip().str.lower().map(spell).to_numpy()
        disagree = df["file"][majority != df["label"].to_numpy()]
        if len(disagree):
            raise AmfError(f"{csv.name}: the Majority of {disagree.iloc[0]} disagrees with its folder")
    return by_name.loc[df["file"], "share"].to_numpy(float)


def read_labelled(data_dir, label_col: str = "majority", official: pd.DataFrame | None = None) -> pd.DataFrame:
    """The main labelled set of DATA_DIR in either layout (layout_of), normalised. OFFICIAL: an official table
    (read_official_labels) that names the scanner and origin of AMi-Br's MIDOG21 figures."""
    data_dir = Path(data_dir)
    if layout_of(data_dir) == "official":
        return read_table(data_dir / OFFICIAL_CSV, data_dir / OFFICIAL_IMAGES, "official", label_col)
    return read_amibr(data_dir, official=official)


def read_extra(extra: dict, label_col: str, official: pd.DataFrame | None) -> pd.DataFrame:
    """One data.extra entry: {name, dir} in either layout, or {name, csv, images[, slide_prefix]} in the official
    columns; its rows marked extra and their ids prefixed with its name."""
    name = extra["name"]
    if "dir" in extra:
        folder = Path(extra["dir"])
        if layout_of(folder) == "amibr":
            table = read_amibr(folder, source=name, id_prefix=f"{name}/", official=official)
        else:
            table = read_table(folder / OFFICIAL_CSV, folder / OFFICIAL_IMAGES, name, label_col, id_prefix=f"{name}/")
    else:
        table = read_table(
            extra["csv"],
            extra["images"],
            name,
            label_col,
            id_prefix=f"{name}/",
            slide_prefix=extra.get("slide_prefix", ""),
        )
    table["extra"] = True
    return table


def read_synthetic(folder) -> pd.DataFrame:
    """A folder of synthetic atypical PNGs -> rows with label 1, marked synthetic."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AmfError(f"no synthetic image folder {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png")
    if not files:
        raise AmfError(f"no PNG images in the synthetic folder {folder}")
    df = pd.DataFrame(
        {
            "image_id": [f"{SYNTHETIC}/{p.name}" for p in files],
            "path": [str(inside(folder, p.name)) for p in files],  # a link leading out is refused
            "filename": SYNTHETIC,
            "slide": SYNTHETIC,
            "coordinateX": np.nan,
            "coordinateY": np.nan,
            "label": 1,
            "soft": 1.0,
        }
    )
    for col in DOMAIN_COLUMNS:
        df[f"raw_{col}"] = SYNTHETIC
        df[col] = SYNTHETIC
    df["source"] = SYNTHETIC
    df["synthetic"] = True
    df["extra"] = True
    return df


def deduplicate(tables: list[pd.DataFrame], radius: float) -> tuple[pd.DataFrame, int]:
    """Concatenate sets in order, dropping a later figure within RADIUS px of a kept one on the same slide."""
    kept: list[pd.DataFrame] = [tables[0]]
    dropped = 0
    for table in tables[1:]:
        seen = pd.concat(kept, ignore_index=True)
        seen = seen[seen["coordinateX"].notna()]
        by_slide = {s: g[["coordinateX", "coordinateY"]].to_numpy(float) for s, g in seen.groupby("slide")}
        keep = np.ones(len(table), bool)
        for i, (s, x, y) in enumerate(zip(table["slide"], table["coordinateX"], table["coordinateY"])):
            pts = by_slide.get(s)
            near = pts is not None and np.isfinite(x) and np.isfinite(y)
            if near and (np.hypot(pts[:, 0] - x, pts[:, 1] - y) <= radius).any():
                keep[i] = False
        dropped += int((~keep).sum())
        kept.append(table[keep])
    df = pd.concat(kept, ignore_index=True)
    clash = df["image_id"].duplicated()
    if clash.any():
        raise AmfError(f"image_id(s) appear in two sets: {', '.join(df.loc[clash, 'image_id'][:5])}")
    return df, dropped


def image_path(row, data_dir=None) -> Path:
    """The image of a splits.csv row: its recorded path, or a figure of the main set under DATA_DIR (in its
    layout) when the data folder has moved since training."""
    main = not _true(row["extra"]) if "extra" in row else row["source"] == "official"  # splits from before "extra"
    if data_dir is None or not main:
        return Path(row["path"])
    if layout_of(data_dir) == "amibr":
        return inside(Path(data_dir) / AMIBR_IMAGES / CLASSES[int(row["label"])], row["image_id"])
    return inside(Path(data_dir) / OFFICIAL_IMAGES, row["image_id"])


def _true(value) -> bool:
    """A flag as a table holds it: a bool, or its text as read back from a CSV."""
    return value is True or str(value).strip().lower() == "true"


def decode(path) -> np.ndarray:
    """A PNG (any mode) -> square HxWx3 uint8 by the container's rule (amf.preprocess.canonical_patch:
    a 16-bit PNG is scaled by 255/65535, grey repeated, alpha dropped). The one image reader of training
    and of offline evaluation (evaluation.pack). An image whose header declares a side over MAX_SIDE is
    refused before a pixel is decoded; whatever else Pillow cannot read is one AmfError naming PATH."""
    try:
        with Image.open(path) as im:
            if max(im.size) > MAX_SIDE:
                w, h = im.size
                raise AmfError(f"{w}x{h} pixels: a patch side is at most {MAX_SIDE} (the container's cap)")
            if im.mode not in ("RGB", "RGBA", "L", "LA", "I;16", "I"):
                im = im.convert("RGB")  # palette and other modes: let Pillow expand them
            return canonical_patch(np.asarray(im))
    except AmfError as e:
        raise AmfError(f"cannot read image {path}: {e}") from None
    except Image.DecompressionBombError:  # Pillow's own check of the header, before the one above
        raise AmfError(
            f"cannot read image {path}: its header declares far more pixels than any patch: a patch side is at most "
            f"{MAX_SIDE}"
        ) from None
    except Exception as e:  # a damaged file makes Pillow raise OSError, SyntaxError, zlib and struct errors,
        # DecompressionBombError ...: each is this file's problem, not a bug
        raise AmfError(f"cannot read image {path}: {one_line(e)[:200] or type(e).__name__}") from None


def check_images(df: pd.DataFrame, skip: bool, preload: bool, workers: int = 4):
    """Missing images (refused before anything is decoded), then unreadable ones: every image is decoded once,
    kept with PRELOAD; one error listing them, or, with SKIP, dropped with a count.

    Returns (table, cache, message): cache is the decoded patches in table order (None without preload).
    """
    exists = np.array([is_file(p) for p in df["path"]], dtype=bool)
    missing = df.loc[~exists, "image_id"].tolist()
    if missing and not skip:
        raise AmfError(
            f"{len(missing)} of {len(df)} image(s) missing: {', '.join(map(shown, missing[:10]))}"
            f"{' ...' if len(missing) > 10 else ''} (use --skip-missing to train without them)"
        )

    def load(p):
        if p is None:  # missing: already counted
            return None
        try:
            img = decode(p)
        except AmfError as e:
            return e
        return img if preload else True  # without preload only the check is kept

    with ThreadPoolExecutor(max(1, workers)) as pool:
        decoded = list(pool.map(load, [p if ok else None for p, ok in zip(df["path"], exists)]))
    bad = [f"{shown(i)} (missing)" for i in missing]
    for i, (img, ok) in enumerate(zip(decoded, exists)):
        if ok and isinstance(img, AmfError):
            reason = str(img).split(": ", 1)[-1]
            bad.append(f"{shown(df['image_id'].iloc[i])} (unreadable: {shown(one_line(reason))})")
            exists[i] = False
    if bad and not skip:
        raise AmfError(
            f"{len(bad)} image(s) missing or unreadable: {'; '.join(bad[:10])}"
            f"{' ...' if len(bad) > 10 else ''} (use --skip-missing to train without them)"
        )
    cache = [img for img, ok in zip(decoded, exists) if ok] if preload else None
    msg = f"skipped {len(bad)} missing or unreadable image(s)" if bad else ""
    return df[exists].reset_index(drop=True), cache, msg


def load_table(data_dir, cfg: dict, log=print) -> pd.DataFrame:
    """The whole training table (the main set in its layout + extras + synthetic), no image read: what splits are
    made of (training.pipeline's plan reads it before anything trains). Columns: image_id, path, filename, slide,
    coordinateX/Y, label, soft, the canonical domain columns, raw_<domain>, source, synthetic, extra."""
    d = cfg["data"]
    official = read_official_labels(d["official_labels"], d["label"]) if d["official_labels"] else None
    main = read_labelled(data_dir, d["label"], official)
    if official is None and layout_of(data_dir) == "official":
        official = main  # AMi-Br as an extra set of the official one takes its scanners from it
    tables = [main] + [read_extra(extra, d["label"], official) for extra in d["extra"]]
    df, dropped = deduplicate(tables, float(d["dedup_radius"]))
    if dropped:
        log(
            f"de-duplicated {dropped} figure(s) that extra sets share with earlier sets (same slide, "
            f"<= {d['dedup_radius']} px)"
        )
    if d["synthetic"]:
        df = pd.concat([df, read_synthetic(d["synthetic"])], ignore_index=True)
    return df


def load_dataset(data_dir, cfg: dict, skip_missing: bool | None = None, log=print):
    """load_table's table, its images checked, and their decoded patches: (table, cache)."""
    d = cfg["data"]
    df = load_table(data_dir, cfg, log)
    skip = d["skip_missing"] if skip_missing is None else skip_missing
    df, cache, msg = check_images(df, skip, d["preload"], max(2, d["num_workers"]))
    if msg:
        log(msg)
    if df.empty or df.loc[~df["synthetic"], "label"].nunique() < 2:
        raise AmfError("the training data needs real figures of both classes")
    return df, cache


def counts_report(df: pd.DataFrame) -> str:
    """Class counts overall and per (canonical) domain value, one screen."""
    real = df[~df["synthetic"]]
    lines = [
        f"{len(df)} figures: {int(real['label'].sum())} atypical, {int((real['label'] == 0).sum())} normal, "
        f"{int(df['synthetic'].sum())} synthetic atypical; {real['slide'].nunique()} slides; "
        f"sources {', '.join(f'{k} {v}' for k, v in df['source'].value_counts().items())}"
    ]
    for col in DOMAIN_COLUMNS:
        g = real.groupby(col)["label"].agg(["size", "sum"])
        parts = [f"{k} {int(r['size'])} ({int(r['sum'])} AMF)" for k, r in g.iterrows()]
        lines.append(f"  {col:8s} " + "; ".join(parts))
    return "\n".join(lines)


class PatchDataset:
    """Rows of the table -> (float32 CHW tensor, target, row index). Training rows are augmented."""

    def __init__(
        self,
        df: pd.DataFrame,
        indices,
        size: int,
        mean,
        std,
        resize_method: str = "bilinear",
        augment=None,
        cache=None,
        soft: bool = False,
        seed: int = 0,
    ):
        self.paths = df["path"].to_numpy()
        self.targets = (df["soft"] if soft else df["label"]).to_numpy(np.float32)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.size, self.mean, self.std, self.method = int(size), mean, std, resize_method
        self.augment, self.cache, self.seed, self.epoch = augment, cache, int(seed), 0

    def __len__(self) -> int:
        return len(self.indices)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def patch(self, row: int) -> np.ndarray:
        return self.cache[row] if self.cache is not None else decode(self.paths[row])

    def __getitem__(self, item):
        """item: an index, or (index, draw) from training.train.EpochSampler."""
        import torch

        i, draw = item if isinstance(item, (tuple, list)) else (item, item)
        row = int(self.indices[i])
        img = self.patch(row)
        if self.augment is not None:
            # seeded by (run seed, epoch, draw position): a figure drawn twice in an epoch (the class-balanced
            # sampler draws with replacement) gets two views, and the same seed gives the same views whatever
            # the worker layout
            img = self.augment(img, np.random.default_rng((self.seed, self.epoch, int(draw))))
        x = normalize(resize(img, self.size, self.method)[None], self.mean, self.std)[0]
        return torch.from_numpy(x), torch.tensor(self.targets[row]), row
