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
  README.md   the card, rendered from card.json by render()
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

from amf import AmfError, manifest as manifest_io, report_error
from training import metrics
from amf.cli import ArgumentParser
from training.domains import DOMAIN_COLUMNS
from amf.fileio import write_text_atomic
from training import compare as compare_runs, oof as oof_io, splits as splits_io

CARD_JSON, OOF_CSV, README = "card.json", "oof.csv", "README.md"
SHOWN = ("balanced_accuracy", "roc_auc", "sensitivity", "specificity")
LABELS = {"balanced_accuracy": "balanced accuracy", "roc_auc": "ROC AUC", "sensitivity": "sensitivity",
          "specificity": "specificity"}


def load_run(run) -> tuple[pd.DataFrame, dict, dict]:
    """A finished run's pooled out-of-fold table and metrics (pooled now if not yet) and its config."""
    import yaml

    run = Path(run)
    if (run / "oof_metrics.json").is_file():
        oof = pd.read_csv(run / "oof.csv", dtype={"image_id": str, "slide": str}, keep_default_na=False)
        result = json.loads((run / "oof_metrics.json").read_text())
    else:
        oof, result = oof_io.pool(run)
    return oof, result, yaml.safe_load((run / "config.yaml").read_text())


def per_scanner(oof: pd.DataFrame, result: dict, n_boot: int) -> dict:
    """training.oof's per-scanner metrics (at the run's threshold), with bootstrap intervals and slide counts."""
    out, threshold = {}, result["threshold"]
    for scanner, g in oof.groupby("Scanner"):
        y, p = g["label"].to_numpy(int), g["probability"].to_numpy(float)
        out[str(scanner)] = {"metrics": result["per_domain"]["Scanner"][str(scanner)],
                             "ci95": metrics.bootstrap_ci(y, p, threshold=threshold, n_boot=n_boot, seed=0),
                             "slides": int(g["slide"].nunique())}
    return out


def data_counts(splits: pd.DataFrame) -> dict:
    rows = splits[splits["fold"] >= 0]
    by = lambda col: {str(v): {"figures": int(len(g)), "atypical": int(g["label"].sum()),  # noqa: E731
                               "slides": int(g["slide"].nunique())} for v, g in rows.groupby(col)}
    return {"figures": int(len(rows)), "atypical": int(rows["label"].sum()), "slides": int(rows["slide"].nunique()),
            "scanner": by("Scanner"), "fold": by("fold"),
            "raw_scanner_values": sorted(map(str, rows["raw_Scanner"].unique())),
            "tumor": sorted(map(str, rows["Tumor"].unique())), "species": sorted(map(str, rows["Species"].unique())),
            "values": {col: int(rows[col].nunique()) for col in DOMAIN_COLUMNS if col in rows}}


def recipe_summary(cfg: dict) -> dict:
    keep = {"model": ("backbone", "pretrained", "kwargs"), "data": ("input_size", "resize"),
            "train": ("epochs", "batch_size", "lr", "weight_decay", "warmup_epochs"),
            "imbalance": ("mode",), "mixstyle": ("enabled", "p", "alpha", "where"),
            "align": ("enabled", "weight", "columns"),
            "ema": ("enabled", "decay", "kd_weight", "temperature", "evaluate")}
    return {sec: {k: cfg.get(sec, {}).get(k) for k in keys} for sec, keys in keep.items()} | {"name": cfg.get("name")}


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
        raise AmfError(f"{model_dir} does not hold the export of the better run ({shipped}, out-of-fold balanced "
                       f"accuracy {bal[shipped]:.3f}): python -m training.export {runs[shipped]} --out {model_dir}")
    card = {"shipped": shipped, "trained_on": trained_on, "data": data_counts(splits_io.read(runs[shipped] / "splits.csv")),
            "compare": cmp, "runs": {}}
    for name, (oof, result, cfg) in loaded.items():
        card["runs"][name] = {"config": recipe_summary(cfg), "oof": result,
                              "per_scanner": per_scanner(oof, result, n_boot),
                              "train_minutes": train_minutes(runs[name])}
    if loso is not None:
        oof, result, cfg = load_run(loso)
        names = splits_io.read(Path(loso) / "splits.csv").groupby("fold")["fold_name"].first()
        held_out = {}
        for k, g in oof.groupby("fold"):
            y, p = g["label"].to_numpy(int), g["probability"].to_numpy(float)
            # each held-out scanner at the threshold the pooled out-of-fold predictions chose (training.oof's
            # per-fold figures), and at 0.5
            held_out[str(names[k])] = {"at_threshold": result["per_fold"][str(k)],
                                       "at_0.5": metrics.summary(y, p, threshold=0.5),
                                       "ci95": metrics.bootstrap_ci(y, p, threshold=result["threshold"],
                                                                    n_boot=n_boot, seed=0)}
        card["loso"] = {"config": recipe_summary(cfg), "threshold": result["threshold"], "pooled": result,
                        "held_out": held_out, "train_minutes": train_minutes(Path(loso))}
    files = [m.file for m in manifest.members]
    card["ensemble"] = {"members": [{"file": m.file, "fold": m.fold, "backbone": m.backbone,
                                     "input_size": m.input_size, "bytes": (model_dir / m.file).stat().st_size}
                                    for m in manifest.members],
                        "total_bytes": sum((model_dir / f).stat().st_size for f in files),
                        "threshold": manifest.threshold, "tta": manifest.tta,
                        "parity": manifest.provenance.get("parity"),
                        "versions": manifest.provenance.get("versions")}
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
    oof = pd.read_csv(Path(model_dir) / OOF_CSV, dtype={"image_id": str, "slide": str})
    merged = oof.merge(votes, on="image_id", how="left", validate="1:1")
    if merged["label"].isna().any():
        raise AmfError(f"{int(merged['label'].isna().sum())} figure(s) of {model_dir / OOF_CSV} are not in the data")
    merged["label"] = merged["label"].astype(int)
    return merged


def epoch_choice(run: Path, folds) -> dict:
    """Per fold: the kept epoch's held-out figures against the best epoch's on the held-out fold (the choice the
    old selection made), from epochs.csv; the gap is the optimism of choosing the epoch on the reported figures."""
    out = {}
    for k in folds:
        f = run / f"fold{k}" / "epochs.csv"
        done = run / f"fold{k}" / oof_io.DONE
        if not f.is_file() or not done.is_file():
            continue
        e, kept = pd.read_csv(f), json.loads(done.read_text())["best_epoch"]
        row = e.loc[e["epoch"] == kept].iloc[0]
        best = e.loc[e["val_balanced_accuracy"].idxmax()]
        out[str(k)] = {"kept_epoch": int(kept), "kept_balanced_accuracy@0.5": float(row["val_balanced_accuracy"]),
                       "kept_roc_auc": float(row["val_roc_auc"]), "best_epoch_on_held_out": int(best["epoch"]),
                       "best_balanced_accuracy@0.5": float(best["val_balanced_accuracy"]),
                       "best_roc_auc": float(e["val_roc_auc"].max())}
    return out


def honest_run(run, shipped: pd.DataFrame, votes: pd.DataFrame, n_boot: int) -> dict:
    """A run with train.selection last/inner: pooled figures if finished, else its finished folds at 0.5."""
    import yaml

    run = Path(run)
    if not (run / "splits.csv").is_file():
        raise AmfError(f"{run} is not a training run folder (no splits.csv)")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    selection = cfg["train"].get("selection", "validation")
    if selection == "validation":
        raise AmfError(f"{run} chose its epochs on the held-out folds (train.selection validation): not selection-free")
    splits = splits_io.read(run / "splits.csv")
    folds = splits_io.folds_of(splits)
    done = [k for k in folds if oof_io.fold_done(run, k)]
    out = {"run": str(run), "selection": selection, "config": recipe_summary(cfg), "splits": cfg["splits"]["kind"],
           "folds_done": done, "folds": folds, "epoch_choice": epoch_choice(run, done),
           "ema_decay": sorted({json.loads((run / f"fold{k}" / oof_io.DONE).read_text()).get("ema_decay")
                                for k in done} - {None}),
           "train_minutes": train_minutes(run)}
    if done and len(done) == len(folds):
        _, out["oof"] = oof_io.pool(run, n_boot=n_boot, votes=votes)
        return out
    per_fold = {}
    for k in done:
        f = pd.read_csv(run / f"fold{k}" / "oof.csv", dtype={"image_id": str, "slide": str})
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
    return {"shipped": {"oof": oof_io.compute(shipped, n_boot=n_boot, seed=0),
                        "note": "the shipped members' out-of-fold predictions (oof.csv): each fold's epoch was chosen "
                                "on that fold's own figures (optimistic); the nested threshold removes the "
                                "threshold's share of the optimism only"},
            "runs": {name: honest_run(path, shipped, votes, n_boot) for name, path in runs.items() if path},
            "not_run": [name for name in HONEST if not runs.get(name)]}


def train_minutes(run: Path) -> float:
    """Wall-clock minutes the run's epochs took (epochs.csv 'seconds'; resumed epochs count once)."""
    total = 0.0
    for f in sorted(run.glob("fold*/epochs.csv")):
        total += pd.read_csv(f)["seconds"].fillna(0).sum()
    return round(total / 60, 1)


# -- rendering ---------------------------------------------------------------------------------------

def f3(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def with_ci(m: dict, ci: dict, key: str) -> str:
    lo, hi = (ci.get(key) or [None, None])
    return f"{f3(m[key])} [{f3(lo)}, {f3(hi)}]"


def oof_table(card: dict) -> list[str]:
    lines = ["| run | threshold | " + " | ".join(LABELS[k] for k in SHOWN) + " | balanced accuracy at 0.5 |",
             "|---|---|" + "---|" * (len(SHOWN) + 1)]
    for name in ("recipe", "plain"):
        r = card["runs"][name]["oof"]
        ship = " (shipped)" if name == card["shipped"] else ""
        lines.append(f"| {name}{ship} | {r['threshold']:.3f} | "
                     + " | ".join(with_ci(r["at_threshold"], r["ci95"], k) for k in SHOWN)
                     + f" | {f3(r['at_0.5']['balanced_accuracy'])} |")
    return lines


def scanner_table(card: dict) -> list[str]:
    lines = ["| run | scanner | figures (atypical) | slides | balanced accuracy | ROC AUC | sensitivity | specificity |",
             "|---|---|---|---|---|---|---|---|"]
    for name in ("recipe", "plain"):
        for scanner, s in card["runs"][name]["per_scanner"].items():
            m = s["metrics"]
            lines.append(f"| {name} | {scanner} | {m['n']} ({m['n_atypical']}) | {s['slides']} | "
                         + " | ".join(with_ci(m, s["ci95"], k) for k in SHOWN) + " |")
    return lines


def fold_table(card: dict) -> list[str]:
    lines = ["| fold | figures (atypical) | slides | recipe balanced accuracy | recipe ROC AUC | "
             "plain balanced accuracy | plain ROC AUC |", "|---|---|---|---|---|---|---|"]
    for k, c in card["data"]["fold"].items():
        r, p = card["runs"]["recipe"]["oof"]["per_fold"][k], card["runs"]["plain"]["oof"]["per_fold"][k]
        lines.append(f"| {k} | {c['figures']} ({c['atypical']}) | {c['slides']} | {f3(r['balanced_accuracy'])} | "
                     f"{f3(r['roc_auc'])} | {f3(p['balanced_accuracy'])} | {f3(p['roc_auc'])} |")
    return lines


def compare_table(card: dict) -> list[str]:
    c = card["compare"]
    lines = ["| metric | plain | recipe | recipe − plain [95% interval] | P(recipe ≤ plain) |", "|---|---|---|---|---|"]
    for k, v in c["metrics"].items():
        lines.append(f"| {k} | {f3(v['a'])} | {f3(v['b'])} | {v['b_minus_a']:+.3f} "
                     f"[{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}] | {v['p_b_not_better']:.3f} |")
    return lines


def verdict(card: dict) -> str:
    v = card["compare"]["metrics"]["balanced_accuracy@oof_threshold"]
    lo, hi = v["ci95"]
    noise = lo <= 0 <= hi
    if card["shipped"] == "recipe":
        return (f"The recipe beats the plain baseline on out-of-fold balanced accuracy by {v['b_minus_a']:+.3f} "
                + (f"(95% interval spans 0, so on these {card['compare']['n_figures']} figures the gain is not told from noise); "
                   if noise else "(95% interval excludes 0); ") + "the recipe run is shipped.")
    return (f"**The recipe does not beat the plain baseline** on out-of-fold balanced accuracy "
            f"({v['b_minus_a']:+.3f}, 95% interval [{lo:+.3f}, {hi:+.3f}]"
            + (", not told from noise" if noise else "") + "), so the plain run is shipped, as the better one.")


def loso_table(card: dict) -> list[str]:
    lo = card["loso"]
    lines = [f"| held-out scanner | figures (atypical) | balanced accuracy at {lo['threshold']:.3f} | ROC AUC | "
             "sensitivity | specificity | balanced accuracy at 0.5 |", "|---|---|---|---|---|---|---|"]
    for name, h in lo["held_out"].items():
        m = h["at_threshold"]
        lines.append(f"| {name.split('=', 1)[-1]} | {m['n']} ({m['n_atypical']}) | "
                     + " | ".join(with_ci(m, h["ci95"], k) for k in SHOWN)
                     + f" | {f3(h['at_0.5']['balanced_accuracy'])} |")
    p = lo["pooled"]
    lines.append(f"| pooled | {p['n']} ({p['n_atypical']}) | "
                 + " | ".join(with_ci(p["at_threshold"], p["ci95"], k) for k in SHOWN)
                 + f" | {f3(p['at_0.5']['balanced_accuracy'])} |")
    return lines


def selection_free_section(card: dict) -> list[str]:
    sf = card.get("selection_free")
    if not sf:
        return []
    sh = sf["shipped"]["oof"]
    nb = sh["bootstrap"]["n_boot"]
    nested = sh["nested"]
    thr = sorted(nested["thresholds"].values())
    out = ["## Selection-free figures",
           "Which figures chose nothing: a figure is **selection-free** when neither the epoch, nor the threshold, "
           "nor the run was chosen on it. The out-of-fold figures further down are **optimistic**: each fold's "
           "epoch was chosen on that fold's own figures, the threshold on the pooled figures, and the shipped run "
           "on the same figures. Brackets here: 95% intervals by a slide-level bootstrap "
           f"({nb} resamples of the {card['data']['slides']} slides; thresholds held fixed).",
           "",
           "The shipped members (same model, `oof.csv`), threshold chosen two ways:",
           "",
           "| threshold | value | " + " | ".join(LABELS[k] for k in SHOWN) + " | selection-free? |",
           "|---|---|" + "---|" * len(SHOWN) + "---|",
           "| pooled (optimistic: chosen on these figures) | " + f"{sh['threshold']:.3f} | "
           + " | ".join(with_ci(sh["at_threshold"], sh["ci95"], k) for k in SHOWN) + " | no |",
           "| nested (each fold's from the other folds) | " + f"{thr[0]:.3f}–{thr[-1]:.3f} | "
           + " | ".join(with_ci(nested["at_nested_threshold"], nested["ci95"], k) for k in SHOWN)
           + " | threshold yes; epoch no (chosen on the fold) |",
           ""]
    if "by_vote" in sh:
        out += ["By expert agreement (unanimous: all three experts voted alike; split: one dissented), shipped "
                "members, nested thresholds:", "",
                "| vote | figures (atypical) | ROC AUC | balanced accuracy | sensitivity | specificity |",
                "|---|---|---|---|---|---|"]
        for v, g in sh["by_vote"].items():
            m = g["at_nested_threshold"]
            out.append(f"| {v} | {m['n']} ({m['n_atypical']}) | "
                       + " | ".join(with_ci(m, g["ci95_nested"], k) for k in ("roc_auc", "balanced_accuracy",
                                                                                 "sensitivity", "specificity")) + " |")
        out.append("")
    runs = sf.get("runs", {})
    done = {n: r for n, r in runs.items() if "oof" in r}
    if done:
        out += ["Runs trained with an honest `train.selection` (the epoch never chosen on the held-out fold), "
                "pooled out-of-fold, nested thresholds (selection-free) and, beside them, the pooled threshold "
                "(optimistic):", "",
                "| run | selection | " + " | ".join(LABELS[k] for k in SHOWN)
                + " | balanced accuracy, pooled threshold | balanced accuracy at 0.5 |",
                "|---|---|" + "---|" * (len(SHOWN) + 2)]
        for n, r in done.items():
            o = r["oof"]
            if "nested" not in o:
                continue
            out.append(f"| {n} | {r['selection']} | "
                       + " | ".join(with_ci(o["nested"]["at_nested_threshold"], o["nested"]["ci95"], k) for k in SHOWN)
                       + f" | {f3(o['at_threshold']['balanced_accuracy'])} | {f3(o['at_0.5']['balanced_accuracy'])} |")
        out.append("")
        for n, r in done.items():
            if "by_vote" in r["oof"]:
                votes = "; ".join(f"{v} ROC AUC {f3(g['at_threshold']['roc_auc'])}"
                                  for v, g in r["oof"]["by_vote"].items())
                out.append(f"- {n}: {votes}")
        out.append("")
    partial = {n: r for n, r in runs.items() if "oof" not in r}
    for n, r in partial.items():
        if not r["per_fold"]:
            out += [f"Run `{n}` ({r['selection']}, {r['splits']}): no fold finished when this card was written.", ""]
            continue
        out += [f"Run `{n}` ({r['selection']}, {r['splits']}): {len(r['folds_done'])} of {len(r['folds'])} folds "
                "finished when this card was written; the finished folds at the fixed threshold 0.5 (chosen "
                "by nobody), beside the shipped members on the same figures (their epoch chosen on them). The "
                "honest runs also carry this version's training fixes (stain matrix, a view per draw, the "
                "configured EMA decay), so the difference is not the selection's alone; the table after it "
                "measures the selection's share within the same runs:", "",
                "| fold | honest balanced accuracy | honest ROC AUC | shipped balanced accuracy | shipped ROC AUC |",
                "|---|---|---|---|---|"]
        for k, e in r["per_fold"].items():
            h, s_ = e["honest@0.5"], e.get("shipped@0.5", {})
            out.append(f"| {k} | {f3(h['balanced_accuracy'])} | {f3(h['roc_auc'])} | "
                       f"{f3(s_.get('balanced_accuracy'))} | {f3(s_.get('roc_auc'))} |")
        out.append("")
    gaps = [(n, k, e) for n, r in runs.items() for k, e in r.get("epoch_choice", {}).items()]
    if gaps:
        bal = [e["best_balanced_accuracy@0.5"] - e["kept_balanced_accuracy@0.5"] for _, _, e in gaps]
        auc = [e["best_roc_auc"] - e["kept_roc_auc"] for _, _, e in gaps]
        out += ["What choosing the epoch on the held-out fold would have reported, in the same honest folds "
                "(held-out figures of every epoch, threshold 0.5): the gap is the optimism of that choice.", "",
                "| run | fold | kept epoch | balanced accuracy | ROC AUC | best epoch on the fold | its balanced "
                "accuracy | best ROC AUC |", "|---|---|---|---|---|---|---|---|"]
        for n, k, e in gaps:
            out.append(f"| {n} | {k} | {e['kept_epoch']} | {f3(e['kept_balanced_accuracy@0.5'])} | "
                       f"{f3(e['kept_roc_auc'])} | {e['best_epoch_on_held_out']} | "
                       f"{f3(e['best_balanced_accuracy@0.5'])} | {f3(e['best_roc_auc'])} |")
        out += ["", f"Mean optimism over {len(gaps)} fold(s): balanced accuracy {np.mean(bal):+.3f}, ROC AUC "
                f"{np.mean(auc):+.3f}.", ""]
    decays = sorted({d for r in runs.values() for d in r.get("ema_decay", [])})
    if decays:
        out += [f"EMA decay in effect at the end of the honest runs: {', '.join(f'{d:g}' for d in decays)} (the "
                "configured value; the shipped run's timm warm-up had reached about 0.984 of 0.99).", ""]
    if sf.get("not_run"):
        out += [f"Not run when this card was written (no figures): {', '.join(sf['not_run'])}.", ""]
    return out


def count(n: int, noun: str) -> str:
    return f"{'One' if n == 1 else n} {noun}{'' if n == 1 else 's'}"


def aligned_note(d: dict, columns) -> str:
    """Which alignment columns can act on this data (a column with one value aligns nothing)."""
    one = [c for c in columns if d.get("values", {}).get(c, 2) < 2]
    acting = [c for c in columns if c not in one]
    if not one:
        return ""
    return (f"On this data {', '.join(one)} take{'s' if len(one) == 1 else ''} one value, so only "
            f"{', '.join(acting) or 'nothing'} align{'s' if len(acting) == 1 else ''}.")


def render(card: dict) -> str:
    d, e = card["data"], card["ensemble"]
    shipped = card["runs"][card["shipped"]]
    cfg = shipped["config"]
    mb = e["total_bytes"] / 1e6
    scanners = ", ".join(f"{s} {c['figures']} ({c['atypical']} atypical, {c['slides']} slides)"
                         for s, c in d["scanner"].items())
    rs = card["runs"]["recipe"]["config"]
    parity = e.get("parity") or {}
    worst = max((x for v in parity.values() for key, x in v.items() if key.startswith("max_abs_logit_diff")),
                default=None)
    out = [
        "# Model card: the shipped default ensemble",
        "",
        "<!-- rendered by `python -m training.card` from card.json; edit the code, not this file -->",
        "",
        f"{len(e['members'])} × `{cfg['model']['backbone']}` at {cfg['data']['input_size']} px, one member per "
        f"fold, {mb:.1f} MB in all, trained from random initialisation on the human-breast-cancer slice of the "
        "MIDOG 2025 atypical training set. The container averages the members' P(atypical) "
        f"(TTA: {e['tta']}) and calls a figure atypical at P ≥ {e['threshold']:.3f}.",
        "",
        f"**It is a working demonstration, not a submission.** It has learned something real from {d['figures']} figures "
        "(the figures below), far from the ≈0.95 ROC AUC that pretrained backbones reach on the full set. "
        "For a submission, retrain on the full official set with a pretrained backbone: "
        "`python -m training.train --config convnext_small --data DATA --out runs/cnx` (or `lunit_vit_small`), "
        "then `python -m training.export runs/cnx --out model`.",
        "",
        "## Data and provenance",
        f"- `../shared/data/midog25-breast`: the real rows and 128×128 PNGs of the official "
        f"`MIDOG25_Atypical_Classification_Train_Set.csv` for human breast cancer: {d['figures']} figures, "
        f"{d['atypical']} atypical (`majority` = AMF), {d['slides']} slides.",
        f"- Scanners: {scanners}. Raw scanner spellings kept as given: {', '.join(d['raw_scanner_values'])} "
        "(aliases are resolved only for grouping, in `training/domains.py`).",
        f"- Tumour: {', '.join(d['tumor'])}; species: {', '.join(d['species'])}.",
        "- Label: the `majority` vote of three experts. No image or label of the data is in this folder; "
        "`oof.csv` holds only image ids, slides, folds and our own out-of-fold probabilities.",
        "",
        "## Recipe and configuration",
        f"- Config `training/configs/{cfg['name']}.yaml` (recipe run): backbone `{rs['model']['backbone']}`, "
        f"pretrained {rs['model']['pretrained']}, {rs['data']['input_size']} px ({rs['data']['resize']} resize of the "
        f"128 px patch, the container's rule in `amf/preprocess.py`), {rs['train']['epochs']} epochs, batch "
        f"{rs['train']['batch_size']}, AdamW lr {rs['train']['lr']} (cosine, {rs['train']['warmup_epochs']} warm-up "
        f"epoch), weight decay {rs['train']['weight_decay']}, class balance by {rs['imbalance']['mode']}.",
        f"- Recipe: MixStyle (p {rs['mixstyle']['p']}, α {rs['mixstyle']['alpha']}) after the early and mid "
        f"stages; alignment of pooled features across {', '.join(rs['align']['columns'])} (weight "
        f"{rs['align']['weight']}); EMA teacher (decay {rs['ema']['decay']}) distilled with temperature-"
        f"{rs['ema']['temperature']} KL (weight {rs['ema']['kd_weight']}); the teacher is the evaluated and "
        "exported model. " + aligned_note(d, rs["align"]["columns"]),
        "- Plain baseline: the same config, folds and epochs with "
        "`--set mixstyle.enabled=false align.enabled=false ema.enabled=false`.",
        "- The best epoch of each fold was chosen on that fold's validation balanced accuracy (the old "
        "`train.selection: validation`), so the out-of-fold figures are optimistic; the same holds for both runs. "
        "See the selection-free figures.",
        f"- Training time (wall clock, the sum of the epochs){' on ' + card['trained_on'] if card.get('trained_on') else ''}: "
        f"recipe {card['runs']['recipe']['train_minutes']} min, plain {card['runs']['plain']['train_minutes']} min"
        + (f", leave-one-scanner-out {card['loso']['train_minutes']} min" if "loso" in card else "") + ".",
        "",
        "## Folds",
        f"{len(d['fold'])} folds by `StratifiedGroupKFold` (label × tumour strata, grouped by slide, best of 16 shuffles): "
        "no slide is in two folds. Member k was trained on the other folds; `oof.csv` says which.",
        "",
        *fold_table(card),
        "",
        *selection_free_section(card),
        "## Out-of-fold figures" + (" (optimistic)" if "selection_free" in card else ""),
        f"Pooled out-of-fold predictions of the {len(e['members'])} members ({d['figures']} figures), each "
        "figure scored by the one member that never saw it"
        + (", the epoch chosen on it and the threshold on the pooled figures" if "selection_free" in card else "")
        + ". Brackets: 95% bootstrap intervals over "
        + ("slides" if card["runs"]["recipe"]["oof"]["bootstrap"].get("unit") == "slide" else "figures")
        + f" ({card['runs']['recipe']['oof']['bootstrap']['n_boot']} resamples).",
        "",
        *oof_table(card),
        "",
        "Per scanner, at each run's threshold:",
        "",
        *scanner_table(card),
        "",
        "## Recipe against the plain baseline",
        f"Paired bootstrap over slides ({card['compare']['n_slides']} slides, {card['compare']['n_boot']} "
        "resamples, both runs on the same draw): a difference whose interval excludes 0 is told from noise.",
        "",
        *compare_table(card),
        "",
        verdict(card),
        "",
    ]
    if "loso" in card:
        out += ["## Leave one scanner out",
                f"The recipe config trained {len(card['loso']['held_out'])} times, each time without one scanner "
                "and tested on it "
                "(the threshold chosen on the pooled predictions, so it favours the pooled figure):",
                "", *loso_table(card), ""]
    out += [
        "## Threshold",
        f"P(atypical) ≥ {e['threshold']:.3f}: the value that maximises balanced accuracy on the shipped run's "
        "pooled out-of-fold predictions. The container applies it to the members' mean probability, which "
        "is an estimate: each out-of-fold probability came from one member alone. Balanced accuracy at 0.5 "
        "is given beside it.",
        "",
        "## Files",
        *[f"- `{m['file']}`: fold {m['fold']}, {m['bytes'] / 1e6:.1f} MB" for m in e["members"]],
        "- `ensemble.json`: the manifest (`amf/manifest.py`), with the full config and out-of-fold metrics "
        "as provenance" + (f"; ONNX against torch, largest |logit difference| {worst:.1e}" if worst is not None else ""),
        "- `card.json`: every figure on this card; `oof.csv`: the shipped run's out-of-fold probabilities.",
        "",
        "## Intended use",
        "- The shipped default of the toolkit: `make demo`, the container's tests, the benchmark, and a "
        "baseline to beat. It shows the whole path (training, export, container) working on real data.",
        "- Not for diagnosis, and not a leaderboard submission.",
        "",
        "## Limits",
        f"- {count(len(d['tumor']), 'tumour type')} ({', '.join(d['tumor'])}), {', '.join(d['species'])} only, and "
        f"{len(d['scanner'])} scanners: nothing else was seen, and an unseen scanner only in the "
        "leave-one-scanner-out figures above.",
        "- No pretrained weights (none can be fetched on the machine that trained it): a small network from "
        f"random initialisation on {d['figures']} figures, for a short schedule.",
        "- Thresholds and best epochs were chosen on the same out-of-fold predictions that are reported.",
        "- Retrain on the full official set (11,937 figures, 7 tumour types, 2 species) with `training/` "
        "and a pretrained backbone for a submission.",
        "",
        "## Reproduce",
        "```",
        "D=../shared/data/midog25-breast",
        "python -m training.train --config default_model --data $D --out runs/default_recipe",
        "python -m training.train --config default_model --data $D --out runs/default_plain \\",
        "    --set mixstyle.enabled=false align.enabled=false ema.enabled=false",
        "python -m training.train --config default_model --data $D --out runs/default_loso --set splits.kind=leave_scanner_out",
        "python -m training.oof runs/default_recipe   # and the other two",
        f"python -m training.export runs/default_{card['shipped']} --out model",
        "python -m training.card --model model --recipe runs/default_recipe --plain runs/default_plain "
        "--loso runs/default_loso",
        *(["# the selection-free figures (train.selection last, the default now; the runs above used validation):",
           "python -m training.train --config default_model --data $D --out runs/honest_recipe   # and _plain, _loso, "
           "_soft (--set data.soft_labels=true)",
           "python -m training.card --model model --selection-free --data $D --honest-recipe runs/honest_recipe "
           "--honest-plain runs/honest_plain --honest-loso runs/honest_loso --honest-soft runs/honest_soft"]
          if "selection_free" in card else []),
        "```",
        "",
    ]
    return "\n".join(out)


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
    ap.add_argument("--selection-free", action="store_true",
                    help="add the selection-free figures to card.json (needs --data) and re-render")
    ap.add_argument("--data", default=None, help="the official layout (labels and expert votes)")
    for name in HONEST:
        ap.add_argument(f"--honest-{name}", default=None, help=f"the {name} run trained with train.selection last|inner")
    args = ap.parse_args(argv)
    model_dir = Path(args.model)
    try:
        if args.selection_free:
            if not args.data or not (model_dir / CARD_JSON).is_file():
                raise AmfError("--selection-free needs --data DATA and an existing card.json")
            card = json.loads((model_dir / CARD_JSON).read_text())
            card["selection_free"] = selection_free(model_dir, args.data, {n: getattr(args, f"honest_{n}")
                                                                           for n in HONEST}, args.n_boot)
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
