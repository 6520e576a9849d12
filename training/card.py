"""The model card of an exported ensemble: every figure measured from the runs, none typed by hand.

  python -m training.card --model model --recipe RUN --plain RUN [--loso RUN] [--n-boot 2000]
  python -m training.card --model model --render        (re-render README.md from card.json only)
  python -m training.card --model model --selection-free --data DATA [--honest-recipe RUN] [--honest-plain RUN]
                          [--honest-loso RUN] [--honest-soft RUN]   (add the selection-free figures to card.json)

Reads the recipe run and the plain-baseline run (same splits, same epochs; both pooled by
training.oof), compares them with a paired slide-level bootstrap (training.compare), adds the
leave-one-scanner-out run when given, and checks that MODEL_DIR holds the export of the better run
by out-of-fold balanced accuracy (export it first: python -m training.export RUN --out MODEL_DIR).
Writes, atomically, into MODEL_DIR:
  card.json   the figures (data counts, configs, out-of-fold metrics, per-scanner bootstrap intervals,
              the paired comparison, leave-one-scanner-out, the ensemble's files and sizes)
  oof.csv     image_id, slide, fold, probability of the shipped run: which member held out which
              figure and what it said there (labels stay in the official CSV)
  README.md   the card, rendered from card.json alone by training.card_render.render()
--selection-free adds card.json["selection_free"] and re-renders README.md, leaving every other key, the
ONNX files, ensemble.json and oof.csv as they are: the shipped members' out-of-fold predictions (oof.csv,
labels and expert votes from DATA) with nested thresholds, slide-level intervals and figures by vote
agreement, and the runs trained with an honest train.selection (last or inner): pooled (training.oof) when
every fold is done, else the finished folds at the fixed threshold 0.5 beside the shipped members on the
same folds. From every honest fold's epochs.csv it also reports what choosing the epoch on the held-out
fold would have reported (the best epoch's held-out figures) against the kept epoch's: the optimism of
that choice, measured.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from amf import AmfError, report_error
from amf import manifest as manifest_io
from amf.cli import ArgumentParser
from amf.fileio import write_text_atomic
from training import compare as compare_runs
from training import metrics
from training import oof as oof_io
from training import splits as splits_io
from training.card_render import config_diff, render, verdict
from training.domains import DOMAIN_COLUMNS
from training.run import RunDir, read_predictions

CARD_JSON, OOF_CSV, README = "card.json", "oof.csv", "README.md"


def load_run(run) -> tuple[pd.DataFrame, dict, dict]:
    """A finished run's pooled out-of-fold table and metrics (pooled now if not yet) and its config."""
    run = RunDir(run)
    if run.is_pooled():
        oof, result = run.read_oof(), run.read_oof_metrics()
    else:
        oof, result = oof_io.pool(run)
    return oof, result, run.read_config()


def per_scanner(oof: pd.DataFrame, result: dict, n_boot: int) -> dict:
    """training.oof's per-scanner metrics (at the run's threshold), with bootstrap intervals and slide counts."""
    out, threshold = {}, result["threshold"]
    for scanner, g in oof.groupby("Scanner"):
        y, p = g["label"].to_numpy(int), g["probability"].to_numpy(float)
        out[str(scanner)] = {
            "metrics": result["per_domain"]["Scanner"][str(scanner)],
            "ci95": metrics.bootstrap_ci(y, p, threshold=threshold, n_boot=n_boot, seed=0),
            "slides": int(g["slide"].nunique()),
        }
    return out


def data_counts(splits: pd.DataFrame) -> dict:
    rows = splits[splits["fold"] >= 0]

    def by(col):
        return {
            str(v): {
                "figures": int(len(g)),
                "atypical": int(g["label"].sum()),
                "slides": int(g["slide"].nunique()),
            }
            for v, g in rows.groupby(col)
        }

    return {
        "figures": int(len(rows)),
        "atypical": int(rows["label"].sum()),
        "slides": int(rows["slide"].nunique()),
        "scanner": by("Scanner"),
        "fold": by("fold"),
        "raw_scanner_values": sorted(map(str, rows["raw_Scanner"].unique())),
        "tumor": sorted(map(str, rows["Tumor"].unique())),
        "species": sorted(map(str, rows["Species"].unique())),
        "values": {col: int(rows[col].nunique()) for col in DOMAIN_COLUMNS if col in rows},
    } | data_source(rows)


def data_source(rows: pd.DataFrame) -> dict:
    """Where the figures came from: figures per source, and for the official ones their folder and patch size
    (read from the first image that is there; absent keys when the images are not)."""
    from PIL import Image

    from training.data import OFFICIAL_IMAGES

    out = (
        {"sources": {str(k): int(v) for k, v in rows["source"].value_counts().sort_index().items()}}
        if "source" in rows
        else {}
    )
    paths = [Path(p) for p in rows.get("path", pd.Series(dtype=str)) if isinstance(p, str)]
    official = [p for p in paths if p.parent.name == OFFICIAL_IMAGES]
    if official:
        out["dir"] = str(official[0].parent.parent)
    found = next((p for p in paths if p.is_file()), None)
    if found is not None:
        with Image.open(found) as im:
            if im.width == im.height:
                out["patch_px"] = int(im.width)
    return out


def recipe_summary(cfg: dict) -> dict:
    """The config keys the card states (a key the config lacks is None: train.selection None is a run from before
    the key existed, which chose its epochs on validation)."""
    keep = {
        "model": ("backbone", "pretrained", "weights", "kwargs"),
        "data": ("input_size", "resize", "label"),
        "splits": ("kind", "folds", "seed", "tries"),
        "train": ("epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "select", "selection"),
        "imbalance": ("mode",),
        "mixstyle": ("enabled", "p", "alpha", "where"),
        "align": ("enabled", "weight", "columns"),
        "ema": ("enabled", "decay", "kd_weight", "temperature", "evaluate"),
    }
    return {sec: {k: cfg.get(sec, {}).get(k) for k in keys} for sec, keys in keep.items()} | {"name": cfg.get("name")}


def overrides(cfg: dict) -> dict | None:
    """What the run set on top of its named config (training/configs/NAME.yaml), in the card's summary keys: the
    --set of its command line, as far as the card states it (None when the named config is not there)."""
    from training import config as config_io

    try:
        named = config_io.load(cfg.get("name"))
    except AmfError:
        return None
    return config_diff(recipe_summary(named), recipe_summary(cfg))


def mixstyle_at(cfg: dict) -> list | None:
    """The modules MixStyle hooks in this config's backbone, with their channels (training.recipe.mixstyle_targets;
    None when MixStyle is off or the backbone cannot be built here, e.g. a hub model offline)."""
    if not cfg.get("mixstyle", {}).get("enabled"):
        return None
    try:
        from training.models import create_backbone
        from training.recipe import mixstyle_targets

        bb = create_backbone(
            {**cfg["model"], "weights": None}, pretrained=False, img_size=int(cfg["data"]["input_size"])
        )
        return [[name, chans] for name, chans in mixstyle_targets(bb, cfg["mixstyle"].get("where", "auto"))]
    except (AmfError, ValueError, RuntimeError, OSError):  # a fact the card then leaves out, not a failed card
        return None


def ema_decays(run) -> list:
    """The EMA decay in effect at the end of each finished fold (done.json; absent in runs from before it was kept)."""
    return sorted({f.read_done().get("ema_decay") for f in RunDir(run).fold_dirs() if f.is_done()} - {None})


def build(model_dir, recipe, plain, loso=None, n_boot: int = 2000, trained_on: str = "") -> tuple[dict, pd.DataFrame]:
    model_dir = Path(model_dir)
    manifest = manifest_io.load(model_dir)
    runs = {"recipe": Path(recipe), "plain": Path(plain)}
    loaded = {name: load_run(path) for name, path in runs.items()}
    cmp = compare_runs.compare(runs["plain"], runs["recipe"], n_boot=n_boot, seed=0)
    bal = {name: r[1]["at_threshold"]["balanced_accuracy"] for name, r in loaded.items()}
    shipped = "recipe" if bal["recipe"] > bal["plain"] else "plain"
    exported_from = Path(str(manifest.provenance.get("run", ""))).resolve()
    if not manifest.trained or exported_from != runs[shipped].resolve():
        raise AmfError(
            f"{model_dir} does not hold the export of the better run ({shipped}, out-of-fold balanced "
            f"accuracy {bal[shipped]:.3f}): python -m training.export {runs[shipped]} --out {model_dir}"
        )
    card = {
        "shipped": shipped,
        "trained_on": trained_on,
        "data": data_counts(RunDir(runs[shipped]).read_splits()),
        "compare": cmp,
        "runs": {},
    }
    for name, (oof, result, cfg) in loaded.items():
        card["runs"][name] = {
            "config": recipe_summary(cfg),
            "oof": result,
            "per_scanner": per_scanner(oof, result, n_boot),
            "train_minutes": train_minutes(runs[name]),
            "run": str(runs[name]),
            "overrides": overrides(cfg),
            "mixstyle_at": mixstyle_at(cfg),
            "ema_decay": ema_decays(runs[name]),
        }
    folds = [r[0].set_index("image_id")["fold"].sort_index() for r in loaded.values()]
    card["same_folds"] = bool(folds[0].equals(folds[1]))
    if loso is not None:
        oof, result, cfg = load_run(loso)
        names = RunDir(loso).read_splits().groupby("fold")["fold_name"].first()
        held_out = {}
        for k, g in oof.groupby("fold"):
            y, p = g["label"].to_numpy(int), g["probability"].to_numpy(float)
            # each held-out scanner at the threshold the pooled out-of-fold predictions chose (training.oof's
            # per-fold figures), and at 0.5
            held_out[str(names[k])] = {
                "at_threshold": result["per_fold"][str(k)],
                "at_0.5": metrics.summary(y, p, threshold=0.5),
                "ci95": metrics.bootstrap_ci(y, p, threshold=result["threshold"], n_boot=n_boot, seed=0),
            }
        card["loso"] = {
            "config": recipe_summary(cfg),
            "threshold": result["threshold"],
            "pooled": result,
            "held_out": held_out,
            "train_minutes": train_minutes(Path(loso)),
            "run": str(loso),
            "overrides": overrides(cfg),
        }
    files = [m.file for m in manifest.members]
    card["ensemble"] = {
        "members": [
            {
                "file": m.file,
                "fold": m.fold,
                "backbone": m.backbone,
                "input_size": m.input_size,
                "bytes": (model_dir / m.file).stat().st_size,
            }
            for m in manifest.members
        ],
        "total_bytes": sum((model_dir / f).stat().st_size for f in files),
        "threshold": manifest.threshold,
        "tta": manifest.tta,
        "parity": manifest.provenance.get("parity"),
        "versions": manifest.provenance.get("versions"),
    }
    oof = loaded[shipped][0][["image_id", "slide", "fold", "probability"]]
    return card, oof


HONEST = ("recipe", "plain", "loso", "soft")


def official_votes(data_dir) -> pd.DataFrame:
    from training.data import OFFICIAL_CSV, OFFICIAL_IMAGES, read_table

    data_dir = Path(data_dir)
    if not (data_dir / OFFICIAL_CSV).is_file():
        raise AmfError(f"{data_dir} is not the official layout: no {OFFICIAL_CSV}")
    t = read_table(data_dir / OFFICIAL_CSV, data_dir / OFFICIAL_IMAGES, "official")
    return t.drop(columns=["slide", "path"])


def shipped_oof(model_dir, votes: pd.DataFrame) -> pd.DataFrame:
    """The shipped members' out-of-fold predictions (oof.csv) with the data's labels, domains and expert votes."""
    oof = read_predictions(Path(model_dir) / OOF_CSV)
    merged = oof.merge(votes, on="image_id", how="left", validate="1:1")
    if merged["label"].isna().any():
        raise AmfError(f"{int(merged['label'].isna().sum())} figure(s) of {model_dir / OOF_CSV} are not in the data")
    merged["label"] = merged["label"].astype(int)
    return merged


def epoch_choice(run, folds) -> dict:
    """Per fold: the kept epoch's held-out figures against the best epoch's on the held-out fold (the choice the
    old selection made), from epochs.csv; the gap is the optimism of choosing the epoch on the reported figures."""
    out = {}
    for k in folds:
        f = RunDir(run).fold(k)
        if not f.epochs.is_file() or not f.is_done():
            continue
        e, kept = f.read_epochs(), f.read_done()["best_epoch"]
        row = e.loc[e["epoch"] == kept].iloc[0]
        best = e.loc[e["val_balanced_accuracy"].idxmax()]
        out[str(k)] = {
            "kept_epoch": int(kept),
            "kept_balanced_accuracy@0.5": float(row["val_balanced_accuracy"]),
            "kept_roc_auc": float(row["val_roc_auc"]),
            "best_epoch_on_held_out": int(best["epoch"]),
            "best_balanced_accuracy@0.5": float(best["val_balanced_accuracy"]),
            "best_roc_auc": float(e["val_roc_auc"].max()),
        }
    return out


def honest_run(run, shipped: pd.DataFrame, votes: pd.DataFrame, n_boot: int) -> dict:
    """A run with train.selection last/inner: pooled figures if finished, else its finished folds at 0.5."""
    run = RunDir(run)
    splits = run.read_splits()  # first: a folder that is no run is "not a training run folder (no splits.csv)"
    cfg = run.read_config()
    selection = cfg["train"].get("selection", "validation")
    if selection == "validation":
        raise AmfError(f"{run} chose its epochs on the held-out folds (train.selection validation): not selection-free")
    folds = splits_io.folds_of(splits)
    done = [k for k in folds if run.fold(k).is_done()]
    out = {
        "run": str(run),
        "selection": selection,
        "config": recipe_summary(cfg),
        "splits": cfg["splits"]["kind"],
        "folds_done": done,
        "folds": folds,
        "epoch_choice": epoch_choice(run, done),
        "ema_decay": ema_decays(run),
        "train_minutes": train_minutes(run),
    }
    if done and len(done) == len(folds):
        _, out["oof"] = oof_io.pool(run, n_boot=n_boot, votes=votes)
        return out
    per_fold = {}
    for k in done:
        f = run.fold(k).read_oof()
        m = metrics.summary(f["label"], f["probability"], threshold=0.5)
        entry = {"honest@0.5": m}
        if cfg["splits"]["kind"] == "kfold":
            same = shipped[shipped["image_id"].isin(f["image_id"])]
            if len(same) == len(f):
                entry["shipped@0.5"] = metrics.summary(same["label"], same["probability"], threshold=0.5)
        per_fold[str(k)] = entry
    out["per_fold"] = per_fold
    return out


def selection_free(model_dir, data_dir, runs: dict, n_boot: int = 2000) -> dict:
    votes = official_votes(data_dir)
    shipped = shipped_oof(model_dir, votes)  # read and labelled once: its metrics, and the honest runs' baseline
    return {
        "shipped": {
            "oof": oof_io.compute(shipped, n_boot=n_boot, seed=0),
            "note": "the shipped members' out-of-fold predictions (oof.csv): each fold's epoch was chosen "
            "on that fold's own figures (optimistic); the nested threshold removes the "
            "threshold's share of the optimism only",
        },
        "runs": {name: honest_run(path, shipped, votes, n_boot) for name, path in runs.items() if path},
        "data": str(data_dir),
        "not_run": [name for name in HONEST if not runs.get(name)],
    }


def train_minutes(run) -> float:
    """Wall-clock minutes the run's epochs took (epochs.csv 'seconds'; resumed epochs count once)."""
    total = 0.0
    for f in RunDir(run).fold_dirs():
        if f.epochs.is_file():
            total += f.read_epochs()["seconds"].fillna(0).sum()
    return round(total / 60, 1)


def write(model_dir, card: dict, oof: pd.DataFrame) -> None:
    model_dir = Path(model_dir)
    buf = io.StringIO()
    oof.to_csv(buf, index=False, float_format="%.7g")
    write_text_atomic(model_dir / OOF_CSV, buf.getvalue())
    write_text_atomic(model_dir / CARD_JSON, json.dumps(card, indent=1, default=_plain) + "\n")
    write_text_atomic(model_dir / README, render(json.loads((model_dir / CARD_JSON).read_text())))


def _plain(x):
    return x.item() if isinstance(x, np.generic) else str(x)


def main(argv=None) -> int:
    ap = ArgumentParser(prog="python -m training.card", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="model")
    ap.add_argument("--recipe")
    ap.add_argument("--plain")
    ap.add_argument("--loso", default=None)
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--trained-on", default="", help="where the runs trained, for the card (e.g. 'a 2-core CPU')")
    ap.add_argument("--render", action="store_true", help="re-render README.md from card.json")
    ap.add_argument(
        "--selection-free",
        action="store_true",
        help="add the selection-free figures to card.json (needs --data) and re-render",
    )
    ap.add_argument("--data", default=None, help="the official layout (labels and expert votes)")
    for name in HONEST:
        ap.add_argument(
            f"--honest-{name}", default=None, help=f"the {name} run trained with train.selection last|inner"
        )
    args = ap.parse_args(argv)
    model_dir = Path(args.model)
    try:
        if args.selection_free:
            if not args.data or not (model_dir / CARD_JSON).is_file():
                raise AmfError("--selection-free needs --data DATA and an existing card.json")
            card = json.loads((model_dir / CARD_JSON).read_text())
            card["selection_free"] = selection_free(
                model_dir, args.data, {n: getattr(args, f"honest_{n}") for n in HONEST}, args.n_boot
            )
            text = json.dumps(card, indent=1, default=_plain) + "\n"
            readme = render(json.loads(text))
            write_text_atomic(model_dir / CARD_JSON, text)
            write_text_atomic(model_dir / README, readme)
        elif args.render:
            if not (model_dir / CARD_JSON).is_file():
                raise AmfError(f"{model_dir / CARD_JSON} is missing")
            write_text_atomic(model_dir / README, render(json.loads((model_dir / CARD_JSON).read_text())))
        else:
            if not args.recipe or not args.plain:
                raise AmfError("give --recipe RUN and --plain RUN (or --render)")
            card, oof = build(model_dir, args.recipe, args.plain, args.loso, args.n_boot, args.trained_on)
            write(model_dir, card, oof)
            print(verdict(card))
    except AmfError as e:
        return report_error(e)
    print(f"wrote {model_dir / README}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
