"""Cross-validation splits, written once per run (RUN_DIR/splits.csv) and reused by every --fold job.

kinds (config splits.kind):
  kfold              k folds (splits.folds, default 5), grouped by slide (no slide in two folds), balanced
                     in size, in atypical share and in every label x tumour type x source stratum. scikit-learn's
                     StratifiedGroupKFold balances the strata but not the sizes (on the breast slice its 2
                     folds held 640 and 1,081 figures), so the assignment is made here: slides, largest
                     first, each into the fold it brings closest to an equal share of every count (sizes,
                     atypical figures, strata; relative squared deviations), then single slides moved
                     and pairs of slides swapped between folds while that improves it. splits.tries
                     seeded orders (seed*1000 + t); the one kept has the smallest worst-fold
                     atypical-share plus size deviation: deterministic for a seed
  leave_scanner_out  one fold per scanner (canonical name): train on the others, validate on it
  leave_tumor_out    one fold per tumour type
  leave_source_out   one fold per source (an AMi-Br dataset: MIDOG21, TUPAC16; an extra set's name)
  all                one "fold", fold 0 named "all", that trains on every figure and holds none out: the final
                     member trained on all figures (train.epochs fixed in advance from a cross-validated run of the
                     same config, the last epoch kept: there is nothing to select on, so train.selection must be last;
                     no oof.csv). Its export takes the threshold from that run's out-of-fold predictions
                     (training.export ALL_RUN --threshold-from CV_RUN)
Every kind is checked: a slide whose figures would fall in two folds (e.g. two scanner values on one
slide) is refused, naming it.
Synthetic images get fold -1: they train in every fold and never enter a validation fold.
splits.csv columns: image_id, slide, fold, fold_name, label, source, synthetic, extra, the canonical domain
columns, raw_<domain>, and the image path (export checks its ONNX files on real patches with it).
Every read (read) checks what writing guarantees: one row per image_id, whole-number folds (real figures
>= 0, synthetic ones -1), labels 0/1, no slide in two folds, an image path that ends in the figure's name
without a '..' part: a hand-edited splits.csv that breaks one of these is refused, naming it.
Look:  python -m training.inspect splits LABELS.csv [--folds 5] [--seed 0] [--kind kfold]   (per-fold counts)
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from amf import AmfError
from amf.fileio import write_text_atomic
from training.domains import DOMAIN_COLUMNS

WEIGHT_SIZE_LABEL = 30.0  # fold size and atypical share come first; the strata balance within them
KINDS = {
    "kfold": None,
    "leave_scanner_out": "Scanner",
    "leave_tumor_out": "Tumor",
    "leave_source_out": "source",
    "all": None,
}
ALL = "all"  # the kind, and the name of its one fold: every figure trains, none is held out
COLUMNS = [
    "image_id",
    "slide",
    "fold",
    "fold_name",
    "label",
    "source",
    "synthetic",
    "extra",
    *DOMAIN_COLUMNS,
    *[f"raw_{c}" for c in DOMAIN_COLUMNS],
    "path",
]


def kfold_assign(key, groups, labels, folds: int, seed: int, tries: int = 16) -> np.ndarray:
    """Fold index per row: every group (slide) whole in one fold, and the folds as equal as the slides allow in
    size, in atypical share and in each stratum of KEY (label x tumour type). See the module docstring."""
    key, groups, labels = np.asarray(key), np.asarray(groups), np.asarray(labels, float)
    names, group_of = np.unique(groups, return_inverse=True)
    strata = np.unique(key, return_inverse=True)[1]
    # per slide: its figures in each stratum, its size and its atypical figures: every column is balanced
    counts = np.zeros((len(names), strata.max() + 1))
    np.add.at(counts, (group_of, strata), 1)
    counts = np.column_stack([counts, np.bincount(group_of), np.bincount(group_of, weights=labels)])
    target = counts.sum(0) / folds
    weight = 1.0 / np.maximum(target, 1.0)  # relative deviations: a rare stratum counts as much as a common one
    weight[-2:] *= WEIGHT_SIZE_LABEL
    best, best_score = None, np.inf
    for t in range(max(1, tries)):
        rng = np.random.default_rng(seed * 1000 + t)
        fold_of = _greedy(counts, target, weight, folds, rng)
        fold_of = _improve(counts, target, weight, folds, fold_of)
        fold = fold_of[group_of]
        shares = np.array([labels[fold == k].mean() if (fold == k).any() else np.inf for k in range(folds)])
        sizes = np.bincount(fold, minlength=folds) / len(fold) * folds
        score = np.abs(shares - labels.mean()).max() + np.abs(sizes - 1).max()
        if score < best_score:
            best, best_score = fold, score
    return best


def _greedy(counts, target, weight, folds: int, rng) -> np.ndarray:
    """Slides, largest first (ties and near-ties in a seeded random order), each into the fold where it brings the
    folds' counts closest to TARGET (weighted squared deviation)."""
    sizes = counts[:, -2]
    order = np.argsort(-sizes * rng.uniform(0.8, 1.25, len(sizes)), kind="stable")
    filled = np.zeros((folds, counts.shape[1]))
    fold_of = np.empty(len(counts), int)
    for g in order:
        cost = ((counts[g] ** 2 + 2 * counts[g] * (filled - target)) * weight).sum(1)
        k = int(np.argmin(cost + rng.uniform(0, 1e-9, folds)))
        fold_of[g], filled[k] = k, filled[k] + counts[g]
    return fold_of


def _improve(counts, target, weight, folds: int, fold_of, rounds: int = 500) -> np.ndarray:
    """Local search: the best single-slide move or two-slide swap between folds, while one lowers the weighted
    squared deviation of the folds' counts from TARGET."""
    fold_of = fold_of.copy()
    filled = np.zeros((folds, counts.shape[1]))
    np.add.at(filled, fold_of, counts)
    sq = lambda change, dev: ((change**2 + 2 * change * dev) * weight).sum(-1)  # noqa: E731  cost change of a fold
    overlap = (counts * weight) @ counts.T  # sum w c_g c_h
    norms = np.diag(overlap)
    for _ in range(rounds):
        dev = filled - target  # (folds, columns)
        # move slide g from its fold to fold b
        move = sq(-counts, dev[fold_of])[:, None] + sq(counts[:, None, :], dev[None])
        move[np.arange(len(counts)), fold_of] = 0.0
        g, b = np.unravel_index(np.argmin(move), move.shape)
        if move[g, b] < -1e-9:
            filled[fold_of[g]] -= counts[g]
            filled[b] += counts[g]
            fold_of[g] = b
            continue
        # no move helps: swap slides g and h of two folds (g's fold gains h - g, h's fold gains g - h); the cost change
        # 2 sum w (h - g)^2 + 2 sum w (h - g)(dev_fold(g) - dev_fold(h)), expanded into matrix products
        pulled = (dev[fold_of] * weight) @ counts.T  # [g, h] = sum w c_h dev_fold(g)
        own = np.diag(pulled)
        swap = 2 * (norms[:, None] + norms[None, :] - 2 * overlap) + 2 * (pulled + pulled.T - own[:, None] - own[None])
        swap[fold_of[:, None] == fold_of[None, :]] = 0.0
        g, h = np.unravel_index(np.argmin(swap), swap.shape)
        if swap[g, h] >= -1e-9:
            break
        a, c = fold_of[g], fold_of[h]
        filled[a] += counts[h] - counts[g]
        filled[c] += counts[g] - counts[h]
        fold_of[g], fold_of[h] = c, a
    return fold_of


STRATA = ("label", "Tumor", "source")  # kfold_assign's strata (the model card names them from here)


def strata(table: pd.DataFrame) -> pd.Series:
    """The stratum of each figure: label x tumour type x source, STRATA (one source, the official set alone: label x
    tumour type; AMi-Br: label x dataset)."""
    columns = [table[c].astype(str) if c in table else pd.Series("", index=table.index) for c in STRATA]
    out = columns[0]
    for c in columns[1:]:
        out = out + "|" + c
    return out


def make_splits(df: pd.DataFrame, kind: str = "kfold", folds: int = 5, seed: int = 0, tries: int = 16) -> pd.DataFrame:
    """The table -> its splits table (COLUMNS), one row per figure, in table order."""
    if kind not in KINDS:
        raise AmfError(f"unknown split kind {kind!r}; use one of {list(KINDS)}")
    out = df.reindex(columns=COLUMNS).copy()
    out["synthetic"] = df["synthetic"].astype(bool).values if "synthetic" in df else False
    out["source"] = df["source"].values if "source" in df else "official"
    out["extra"] = df["extra"].astype(bool).values if "extra" in df else False
    out["fold"], out["fold_name"] = -1, "train-only"
    real = np.flatnonzero(~out["synthetic"].to_numpy())
    sub = out.iloc[real]
    if kind == ALL:
        out.iloc[real, out.columns.get_loc("fold")] = 0
        out.iloc[real, out.columns.get_loc("fold_name")] = ALL
    elif KINDS[kind] is None:
        n_slides = sub["slide"].nunique()
        if n_slides < folds:
            raise AmfError(f"{folds} folds need at least {folds} slides; the data has {n_slides}")
        key = strata(sub)
        fold = kfold_assign(key.to_numpy(), sub["slide"].to_numpy(), sub["label"].to_numpy(), folds, seed, tries)
        out.iloc[real, out.columns.get_loc("fold")] = fold
        out.iloc[real, out.columns.get_loc("fold_name")] = [f"fold{k}" for k in fold]
    else:
        col = KINDS[kind]
        names = sorted(sub[col].unique())
        if len(names) < 2:
            raise AmfError(f"leave-one-{col.lower()}-out needs two or more {col} values; the data has {names}")
        codes = {n: k for k, n in enumerate(names)}
        out.iloc[real, out.columns.get_loc("fold")] = [codes[v] for v in sub[col]]
        out.iloc[real, out.columns.get_loc("fold_name")] = [f"{col}={v}" for v in sub[col]]
    out["fold"] = out["fold"].astype(int)
    one_fold_per_slide(out.iloc[real], f"{kind}: ", f" (their figures differ in {KINDS[kind] or 'fold'})")
    return out.reset_index(drop=True)


def one_fold_per_slide(real: pd.DataFrame, where: str, why: str = "") -> None:
    """Refuse, naming them, slides whose (real) figures fall in two folds: a slide on both sides would put its
    figures in training and validation at once."""
    torn = real.groupby("slide")["fold"].nunique()
    if (torn > 1).any():
        raise AmfError(
            f"{where}slide(s) {', '.join(map(str, torn.index[torn > 1][:5]))} fall in two folds{why}; "
            "a slide must stay in one fold"
        )


def write(splits: pd.DataFrame, path) -> Path:
    buf = io.StringIO()
    splits.to_csv(buf, index=False)
    write_text_atomic(path, buf.getvalue())
    return Path(path)


def read(path) -> pd.DataFrame:
    """A run's splits.csv, checked (the module docstring): one AmfError line naming the file and the fault."""
    from training.data import MAX_RUN_TABLE_BYTES, read_csv

    dtypes = {"image_id": str, "slide": str, "fold_name": str, "path": str, "source": str}
    splits = read_csv(path, "splits", MAX_RUN_TABLE_BYTES, dtype=dtypes, keep_default_na=False)
    where = f"splits {path}: "
    absent = [c for c in ("image_id", "slide", "fold") if c not in splits.columns]
    if absent:
        raise AmfError(f"{where}no column(s) {', '.join(absent)}")
    ids = splits["image_id"]
    faulty = ids[ids.eq("") | ids.duplicated()]
    if len(faulty):
        raise AmfError(f"{where}an empty or repeated image_id (row {int(faulty.index[0]) + 2}: {faulty.iloc[0]!r})")
    for col, low, high in (("fold", -1, len(splits) - 1), ("label", 0, 1)):
        if col not in splits.columns:
            continue
        numbers = pd.to_numeric(splits[col], errors="coerce")
        if not (numbers.notna() & (numbers == numbers.round()) & numbers.between(low, high)).all():
            raise AmfError(f"{where}{col} must be a whole number from {low} to {high} in every row")
        splits[col] = numbers.astype(int)
    synthetic = splits["synthetic"] if "synthetic" in splits.columns else pd.Series(False, index=splits.index)
    flags = synthetic.astype(str).str.lower().map({"true": True, "false": False})
    if flags.isna().any():
        raise AmfError(f"{where}synthetic must be True or False in every row")
    splits["synthetic"] = flags.astype(bool)
    if (splits.loc[~splits["synthetic"], "fold"] < 0).any() or (splits.loc[splits["synthetic"], "fold"] != -1).any():
        raise AmfError(f"{where}a real figure needs a fold >= 0 and a synthetic one fold -1")
    if not folds_of(splits):
        raise AmfError(f"{where}no fold holds a figure")
    if "fold_name" in splits.columns and (splits["fold_name"] == ALL).any() and not is_all(splits):
        raise AmfError(f"{where}a fold named {ALL!r} must be the only fold and hold every real figure")
    one_fold_per_slide(splits[~splits["synthetic"]], where, " (a hand-edited splits.csv?)")
    if "path" in splits.columns:
        names = [Path(i).name for i in splits["image_id"]]
        # a data folder given relative to the working directory (../data) puts '..' in every path: the name decides
        bad = [p for p, n in zip(splits["path"], names) if Path(p).name != n]
        if bad:
            raise AmfError(f"{where}{len(bad)} image path(s) not written by training, e.g. {bad[0]!r}")
    return splits


def matching(splits: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    """A written splits table aligned to the data table's row order; refuses if the figures differ."""
    a, b = set(splits["image_id"]), set(df["image_id"])
    if a != b:
        only_s, only_d = sorted(a - b), sorted(b - a)
        raise AmfError(
            f"the run's splits.csv does not match the data: {len(only_s)} figure(s) only in the "
            f"splits (e.g. {only_s[:3]}), {len(only_d)} only in the data (e.g. {only_d[:3]}); "
            f"use a new --out folder"
        )
    aligned = splits.set_index("image_id").loc[df["image_id"]].reset_index()
    moved = aligned["slide"].to_numpy() != df["slide"].to_numpy()
    if moved.any():  # the one-fold-per-slide check of the splits holds for the data's slides only if they agree
        raise AmfError(
            f"the run's splits.csv puts {int(moved.sum())} figure(s) on other slides than the data does "
            f"(e.g. {aligned['image_id'][moved].iloc[0]}); use a new --out folder"
        )
    return aligned


def folds_of(splits: pd.DataFrame) -> list[int]:
    return sorted(int(f) for f in splits["fold"].unique() if f >= 0)


def is_all(splits: pd.DataFrame) -> bool:
    """Whether SPLITS are of kind all: one fold, named "all", that holds every real figure and holds none out."""
    real = splits[splits["fold"] >= 0]
    named = "fold_name" in splits.columns and len(real) > 0 and bool((real["fold_name"] == ALL).all())
    return named and real["fold"].nunique() == 1


def fold_rows(splits: pd.DataFrame, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows) of fold K; synthetic rows (-1) always train. Splits of kind all: every row
    trains and none is held out."""
    fold = splits["fold"].to_numpy()
    if is_all(splits):
        return np.arange(len(splits)), np.zeros(0, int)
    return np.flatnonzero(fold != k), np.flatnonzero(fold == k)


def inner_split(splits: pd.DataFrame, train_rows, parts: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, inner selection rows): one of PARTS slide-grouped, label x tumour stratified parts of a
    fold's real training rows (kfold_assign); synthetic rows stay in training. The held-out fold is not among
    TRAIN_ROWS, so nothing chosen on the inner rows has seen it (for leave-one-domain-out: the training domains
    only)."""
    train_rows = np.asarray(train_rows)
    sub = splits.iloc[train_rows]
    real = ~sub["synthetic"].astype(bool).to_numpy()
    n_slides = sub.loc[real, "slide"].nunique()
    if n_slides < parts:
        raise AmfError(f"train.inner_folds={parts} needs {parts} training slides; the fold has {n_slides}")
    key = strata(sub).to_numpy()[real]
    part = kfold_assign(key, sub["slide"].to_numpy()[real], sub["label"].to_numpy()[real], parts, seed)
    inner = train_rows[real][part == 0]
    assert not set(splits["slide"].iloc[inner]) & set(splits["slide"].iloc[np.setdiff1d(train_rows, inner)])
    return np.setdiff1d(train_rows, inner), inner


def describe(splits: pd.DataFrame) -> str:
    lines = []
    if is_all(splits):
        real = splits[splits["fold"] >= 0]
        return (
            f"  all: every figure trains, none is held out: {len(real)} figures, {int(real['label'].sum())} atypical, "
            f"{real['slide'].nunique()} slides"
        )
    for k in folds_of(splits):
        v = splits[splits["fold"] == k]
        lines.append(
            f"  fold {k} ({v['fold_name'].iloc[0]}): {len(v)} figures, {int(v['label'].sum())} atypical "
            f"({100 * v['label'].mean():.1f}%), {v['slide'].nunique()} slides"
        )
    return "\n".join(lines)
