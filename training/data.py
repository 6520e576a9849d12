"""Training data: the official MIDOG 2025 Track 2 layout, extra labelled sets, synthetic atypicals.

DATA_DIR holds the organisers' files:
  MIDOG25_Atypical_Classification_Train_Set.csv   image_id, filename, coordinateX, coordinateY, Tumor, Scanner,
                                                  Origin, Species, expert1, expert2, expert3, majority (AMF|NMF)
  MIDOG25_Binary_Classification_Train_Set/        one PNG per figure, named by image_id
Extra sets (config data.extra: [{name, csv, images, slide_prefix?}]) use the same columns. Their
image_ids are prefixed "<name>/" so that they never collide with the official ones.
- Slide key: the slide file's stem, lower case ("002.tiff" -> "002"), shared across sets, so AMi-Br's
  MIDOG21 part falls on the same slides as the official breast slice; an extra set whose file names
  mean other slides sets slide_prefix (key "<prefix><stem>").
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
Run:  python -m training.data DATA_DIR [--config CONFIG]   (prints the class and domain counts)
"""

from __future__ import annotations

import io
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from amf import AmfError, one_line, report_error
from amf.cli import ArgumentParser
from amf.fileio import read_text
from amf.jobs import MAX_SIDE
from amf.preprocess import canonical_patch, normalize, resize
from amf.results import ATYPICAL, CLASS_ID, NORMAL
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
MAX_TABLE_BYTES = 16 * 2**20  # a label table (the full official one, 11,937 figures, is 1.1 MB)


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
    if df["image_id"].duplicated().any():
        dup = df.loc[df["image_id"].duplicated(), "image_id"].tolist()
        raise AmfError(f"{csv.name}: duplicate image_id(s) {', '.join(map(shown, dup[:5]))}")
    return df


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
    """The image of a splits.csv row: its recorded path, or an official figure under DATA_DIR when the data
    folder has moved since training."""
    if data_dir is not None and row["source"] == "official":
        return inside(Path(data_dir) / OFFICIAL_IMAGES, row["image_id"])
    return Path(row["path"])


def decode(path) -> np.ndarray:
    """A PNG (any mode) -> square HxWx3 uint8 by the container's rule (amf.preprocess.canonical_patch:
    a 16-bit PNG is scaled by 255/65535, grey repeated, alpha dropped). The one image reader of training
    and of offline evaluation (training.evaluate.pack). An image whose header declares a side over MAX_SIDE is
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


def load_dataset(data_dir, cfg: dict, skip_missing: bool | None = None, log=print):
    """The whole training table (official + extras + synthetic) and its decoded patches.

    Returns (table, cache). Columns: image_id, path, filename, slide, coordinateX/Y, label, soft, the
    canonical domain columns, raw_<domain>, source, synthetic.
    """
    data_dir = Path(data_dir)
    d = cfg["data"]
    if not (data_dir / OFFICIAL_CSV).is_file():
        raise AmfError(f"{data_dir} is not the official layout: no {OFFICIAL_CSV}")
    tables = [read_table(data_dir / OFFICIAL_CSV, data_dir / OFFICIAL_IMAGES, "official", d["label"])]
    for extra in d["extra"]:
        tables.append(
            read_table(
                extra["csv"],
                extra["images"],
                extra["name"],
                d["label"],
                id_prefix=f"{extra['name']}/",
                slide_prefix=extra.get("slide_prefix", ""),
            )
        )
    df, dropped = deduplicate(tables, float(d["dedup_radius"]))
    if dropped:
        log(
            f"de-duplicated {dropped} figure(s) that extra sets share with earlier sets (same slide, "
            f"<= {d['dedup_radius']} px)"
        )
    if d["synthetic"]:
        df = pd.concat([df, read_synthetic(d["synthetic"])], ignore_index=True)
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


def main(argv=None) -> int:
    from training import config as config_io

    ap = ArgumentParser(prog="python -m training.data", description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--config", default="smoke")
    ap.add_argument("--skip-missing", action="store_true", default=None)
    a = ap.parse_args(argv)
    try:
        cfg = config_io.load(a.config)
        df, _ = load_dataset(a.data, cfg, a.skip_missing)
    except AmfError as e:
        return report_error(e)
    print(counts_report(df))
    return 0


if __name__ == "__main__":
    sys.exit(main())
