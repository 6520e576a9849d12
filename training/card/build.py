"""The model card's facts: every figure and fact measured from the runs into card.json (build), then the card's
files written (write: card.json, oof.csv and predictions/ at full precision, and README.md rendered from card.json
alone by render.py). refresh measures again, without the runs, what the model folder and the data give.

card.json (card_version 3, the one layout render.py renders): data counts, how the folds were made, configs and
their overrides, out-of-fold metrics, per scanner, the paired comparison, leave-one-scanner-out, the threshold for
shift and the threshold's source, test-time augmentation (where it was set, what the rule picks), the overlap with
other data, files and sizes; every path portable (training.export.paths: runs relative to the runs folder). The
command line and its manual: training/card/__main__.py (python -m training.card).
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from amf import AmfError
from amf.fileio import write_text_atomic
from amf.manifest import load as load_manifest
from training import augment, metrics, ownership
from training.card.render import CARD_VERSION, loso_domain, render
from training.domains import DOMAIN_COLUMNS
from training.export import fingerprint
from training.export.paths import names_run, portable_data, relocate
from training.ownership import CARD_JSON, MODEL, OOF_CSV, PREDICTIONS, README
from training.results import threshold
from training.results.compare import compare, finished_oof
from training.results.oof import compute, with_votes
from training.rundir import RunDir, same_path


def load_run(run, n_boot: int, votes: pd.DataFrame | None = None, shipped=None) -> tuple[pd.DataFrame, dict, dict]:
    """A run's out-of-fold table and its training.results.oof metrics (pooled threshold, nested thresholds, per fold,
    per domain, by vote agreement where the table or VOTES has the experts' share), recomputed without writing into the
    run: all folds when it is pooled, else its finished folds (a partial run); and its config. The metrics record
    the run's train.selection (as training.results.oof.pool does), its folds and the finished ones. SHIPPED: the
    folds a subset export shipped, the only ones the figures are of (the run's folds recorded as run_folds)."""
    oof, done, folds = finished_oof(run)
    run_folds = folds
    if shipped is not None:
        missing = sorted(set(shipped) - set(done))
        if missing:
            raise AmfError(f"{run}: the shipped fold(s) {', '.join(map(str, missing))} are not finished")
        oof, done, folds = oof[oof["fold"].isin(shipped)].reset_index(drop=True), list(shipped), list(shipped)
    oof = with_votes(oof, votes)
    result = compute(oof, n_boot=n_boot, seed=0)
    selection = RunDir(run).done_values("selection", "validation", done)
    result |= {"selection": sorted(selection), "folds": folds, "folds_done": done}
    if shipped is not None:
        result["run_folds"] = run_folds
    return oof, result, RunDir(run).read_config()


def per_scanner(oof: pd.DataFrame, result: dict, n_boot: int) -> dict:
    """training.results.oof's per-scanner metrics at the run's pooled threshold and at its nested thresholds, with slide
    bootstrap intervals and slide counts."""
    out, pooled, nested = {}, result["threshold"], threshold.table_nested_classes(oof)
    for scanner, g in oof.groupby("Scanner"):
        y, p, slides = g["label"].to_numpy(int), g["probability"].to_numpy(float), g["slide"].astype(str)
        out[str(scanner)] = {
            "metrics": result["per_domain"]["Scanner"][str(scanner)],
            "ci95": metrics.slide_bootstrap_ci(y, p, slides, (p >= pooled).astype(int), n_boot, 0),
            "slides": int(g["slide"].nunique()),
        }
        if nested is not None:
            at = nested[g.index.to_numpy()]
            out[str(scanner)]["at_nested_threshold"] = metrics.summary(y, p, y_pred=at)
            out[str(scanner)]["ci95_nested"] = metrics.slide_bootstrap_ci(y, p, slides, at, n_boot, 0)
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
        **no_scanner(rows),
    } | data_source(rows)


def no_scanner(rows: pd.DataFrame) -> dict:
    """The sources whose layout names no scanner (AMi-Br's TUPAC16): their Scanner is "unknown", one domain."""
    if "source" not in rows:
        return {}
    unknown = rows.groupby("source")["raw_Scanner"].apply(lambda v: bool((v.astype(str) == "unknown").all()))
    return {"no_scanner_sources": sorted(map(str, unknown[unknown].index))} if unknown.any() else {}


def data_source(rows: pd.DataFrame) -> dict:
    """Where the figures came from: figures per source, and for the official ones their folder and patch size
    (read from the first image that is there; absent keys when the images are not)."""
    from PIL import Image

    from training.data import AMIBR_IMAGES, OFFICIAL_IMAGES

    out = (
        {"sources": {str(k): int(v) for k, v in rows["source"].value_counts().sort_index().items()}}
        if "source" in rows
        else {}
    )
    paths = [Path(p) for p in rows.get("path", pd.Series(dtype=str)) if isinstance(p, str)]
    official = [p for p in paths if p.parent.name == OFFICIAL_IMAGES]
    amibr = [p for p in paths if p.parent.parent.name == AMIBR_IMAGES]  # patches/{atypical,normal}/<file>
    if official:
        out["dir"] = str(official[0].parent.parent)
    elif amibr:
        out["dir"] = str(amibr[0].parent.parent.parent)
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
        "model": ("backbone", "pretrained", "weights", "kwargs", "attention"),
        "data": ("input_size", "resize", "label", "soft_labels", "official_labels"),
        "splits": ("kind", "folds", "seed", "tries"),
        "train": ("epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "select", "selection"),
        "imbalance": ("mode",),
        "mixstyle": ("enabled", "p", "alpha", "where"),
        "align": ("enabled", "weight", "columns"),
        "ema": ("enabled", "decay", "kd_weight", "temperature", "evaluate"),
        "augment": augment.CARD_KEYS,
    }
    return {sec: {k: cfg.get(sec, {}).get(k) for k in keys} for sec, keys in keep.items()} | {"name": cfg.get("name")}


def overrides(cfg: dict) -> dict | None:
    """What the run set on top of its named config (training/configs/NAME.yaml), in the card's summary keys: the
    --set of its command line, as far as the card states it (None when the named config is not there)."""
    from training import config

    try:
        named = config.load(cfg.get("name"))
    except AmfError:
        return None
    return config.diff(recipe_summary(named), recipe_summary(cfg))


def mixstyle_at(cfg: dict) -> list | None:
    """The modules MixStyle hooks in this config's backbone, with their channels
    (training.train.recipe.mixstyle_targets; None when MixStyle is off or the backbone cannot be built here, e.g. a
    hub model offline)."""
    if not cfg.get("mixstyle", {}).get("enabled"):
        return None
    try:
        from training.train.models import create_backbone
        from training.train.recipe import mixstyle_targets

        bb = create_backbone(
            {**cfg["model"], "weights": None}, pretrained=False, img_size=int(cfg["data"]["input_size"])
        )
        return [[name, chans] for name, chans in mixstyle_targets(bb, cfg["mixstyle"].get("where", "auto"))]
    except (AmfError, ValueError, RuntimeError, OSError):  # a fact the card then leaves out, not a failed card
        return None


def ema_decays(run) -> list:
    """The EMA decay in effect at the end of each finished fold (done.json; absent in runs from before it was kept)."""
    return sorted(RunDir(run).done_values("ema_decay") - {None})


def run_facts(run, oof: pd.DataFrame, result: dict, cfg: dict, n_boot: int) -> dict:
    """What the card states of one run: config summary, out-of-fold metrics, per scanner, time, command facts."""
    return {
        "config": recipe_summary(cfg),
        "oof": result,
        "per_scanner": per_scanner(oof, result, n_boot),
        "train_minutes": train_minutes(run),
        "run": str(run),
        "overrides": overrides(cfg),
        "mixstyle_at": mixstyle_at(cfg),
        "ema_decay": ema_decays(run),
        "epoch_choice": epoch_choice(run, result["folds_done"]),
    }


def loso_facts(run, n_boot: int, votes) -> dict:
    """The leave-one-out run: pooled, and per held-out domain at its nested threshold (chosen on the other
    domains' figures), at the pooled threshold (optimistic) and at 0.5."""
    oof, result, cfg = load_run(run, n_boot, votes)
    names = RunDir(run).read_splits().groupby("fold")["fold_name"].first()
    nested = threshold.table_nested_classes(oof)
    held_out = {}
    for k, g in oof.groupby("fold"):
        y, p, slides = g["label"].to_numpy(int), g["probability"].to_numpy(float), g["slide"].astype(str)
        h = {
            "at_threshold": result["per_fold"][str(k)],
            "at_0.5": metrics.summary(y, p, threshold=0.5),
            "ci95": metrics.slide_bootstrap_ci(y, p, slides, (p >= result["threshold"]).astype(int), n_boot, 0),
        }
        if nested is not None:
            at = nested[g.index.to_numpy()]
            h["nested_threshold"] = result["nested"]["thresholds"][str(k)]
            h["at_nested_threshold"] = metrics.summary(y, p, y_pred=at)
            h["ci95_nested"] = metrics.slide_bootstrap_ci(y, p, slides, at, n_boot, 0)
        held_out[str(names[k])] = h
    return {
        "config": recipe_summary(cfg),
        "threshold": result["threshold"],
        "pooled": result,
        "held_out": held_out,
        "train_minutes": train_minutes(run),
        "run": str(run),
        "overrides": overrides(cfg),
    }


def tta_facts(tta_runs, bases: dict, n_boot: int, shipped=None) -> list[dict]:
    """Each test-time-augmentation run (training.results.tta_oof) against the run it re-predicted (its folds' done.json
    from_run, one of BASES by resolved path): its mode (RunDir.predicted_tta) and the paired comparison TTA - none
    (of the recipe run: on the SHIPPED folds only, where a subset export shipped some)."""
    out = []
    for tta in tta_runs:
        tta = Path(tta)
        source = RunDir(tta).from_run()
        base = [name for name, path in bases.items() if same_path(path, source)]
        if not base or source == tta.resolve():  # a run that re-predicted nothing is no TTA run
            raise AmfError(
                f"{tta} re-predicted {source if source != tta.resolve() else 'no finished run'}, which is none of "
                f"the runs given ({', '.join(f'--{n} {p}' for n, p in bases.items() if p is not None)})"
            )
        out.append(
            {
                "run": str(tta),
                "base": base[0],
                "base_run": str(bases[base[0]]),
                "mode": RunDir(tta).predicted_tta(),
                "compare": compare(
                    bases[base[0]], tta, n_boot=n_boot, seed=0, folds=shipped if base[0] == "recipe" else None
                ),
            }
        )
    return out


SHIPPED_RULE = (
    "the recipe run, decided before the figures: the recipe is the method, the plain run its control; "
    "no run was chosen on the figures reported"
)
SHIPPED_ALONE = "the recipe run, the one run trained (no control run); no run was chosen on the figures reported"
TTA_RULE = (
    "test-time augmentation ships only if it raises both the balanced accuracy at nested thresholds and the ROC AUC "
    "of the leave-one-{domain}-out predictions over one view; of several modes that do, the one with the higher "
    "balanced accuracy"
)


def build(
    model_dir,
    recipe,
    plain=None,
    loso=None,
    n_boot: int = 2000,
    trained_on: str = "",
    tta=(),
    data_dir=None,
    plain_partial_reason: str = "",
    benchmark=None,
    candidates=(),
    candidate_rule: str = "",
    overlap=(),
    config_note: str = "",
) -> tuple[dict, dict]:
    """card.json's facts, and the tables the model folder ships ({OOF_CSV: the recipe run's out-of-fold
    predictions, "predictions/NAME.csv": each other run's the card reports})."""
    model_dir = Path(model_dir)
    manifest = load_manifest(model_dir)
    runs = {"recipe": Path(recipe)} | ({"plain": Path(plain)} if plain else {})
    root = runs["recipe"].parent  # the runs folder: the pipeline's --runs
    p = manifest.provenance
    every_figure = p.get("all_figures")  # a member trained on all figures: the card is its cross-validated run's
    exported = every_figure.get("cv_run") if every_figure else p.get("run")
    if not manifest.trained or not names_run(exported, runs["recipe"], root):
        if every_figure:
            raise AmfError(
                f"{model_dir} holds a member trained on all figures ({p.get('run')}): its card reports the "
                f"cross-validated run its threshold came from, {exported} (--recipe names that run)"
            )
        raise AmfError(
            f"{model_dir} does not hold the export of the recipe run {runs['recipe']}: python -m training.export "
            f"{runs['recipe']} --out {model_dir}" + (f" --shift-run {loso}" if loso else "")
        )
    shipped = subset_of(p)
    votes = official_votes(data_dir) if data_dir else None
    loaded = {name: load_run(path, n_boot, votes, shipped if name == "recipe" else None) for name, path in runs.items()}
    splits = RunDir(runs["recipe"]).read_splits()
    card = {
        "card_version": CARD_VERSION,
        "shipped": "recipe",
        "shipped_rule": SHIPPED_RULE if plain else SHIPPED_ALONE,
        "trained_on": trained_on,
        "config_note": config_note,
        "runs_dir": portable_data(root),
        "data": data_counts(splits) | {"folds": fold_facts(splits, loaded["recipe"][2]["splits"])},
        **({"compare": compare(runs["plain"], runs["recipe"], n_boot=n_boot, seed=0, folds=shipped)} if plain else {}),
        "runs": {name: run_facts(runs[name], *loaded[name], n_boot) for name in runs},
        **({"shipped_folds": {"folds": shipped, "of": len(p["run_folds"])}} if shipped else {}),
        **({"all_figures": every_figure | {"run": p.get("run")}} if every_figure else {}),
    }
    if plain:
        if plain_partial_reason:
            card["runs"]["plain"]["partial_reason"] = plain_partial_reason
        folds = [RunDir(r).read_splits().set_index("image_id")["fold"].sort_index() for r in runs.values()]
        card["same_folds"] = bool(folds[0].equals(folds[1]))
    if benchmark:
        card |= benchmark_facts(benchmark, card["data"]["figures"], runs["recipe"])
    if loso is not None:
        card["loso"] = loso_facts(Path(loso), n_boot, votes)
    if candidates:
        card["candidates"] = candidate_facts(candidates, candidate_rule, runs["recipe"], loso, n_boot, shipped)
    if tta:
        card["tta"] = {"runs": tta_facts(tta, {"recipe": runs["recipe"], "loso": loso}, n_boot, shipped)}
    if overlap:
        card["overlap"] = overlap_facts(model_dir, overlap)
    tables = {OOF_CSV: loaded["recipe"][0][list(SHIPPED_COLUMNS)]}
    tables |= {name: finished_oof(run)[0][list(SHIPPED_COLUMNS)] for name, run in reported_runs(card).items()}
    card = relocate(card | model_facts(model_dir, manifest), root)
    if card.get("tta"):
        card["tta"] |= {"rule": TTA_RULE.format(domain=loso_domain(card)), "choice": tta_choice(card["tta"]["runs"])}
    card["predictions"] = reported_runs(card)
    return card, tables


def subset_of(provenance: dict) -> list[int] | None:
    """The folds a subset export shipped (training.export --folds: provenance folds, fewer than its run_folds), or
    None when it shipped every fold (or one member trained on all figures)."""
    folds, every = provenance.get("folds"), provenance.get("run_folds")
    if provenance.get("all_figures") or not folds or not every or sorted(folds) == sorted(every):
        return None
    return sorted(int(k) for k in folds)


def model_facts(model_dir: Path, manifest) -> dict:
    """What card.json takes from the model folder's manifest: the members and their sizes, the threshold, where it
    came from (threshold.source: the run whose rule won) and the threshold for shift, the test-time augmentation and
    where it was set (tta_given), the parity checks, the versions."""
    p = manifest.provenance
    e = {
        "members": [
            {
                "file": m.file,
                "fold": m.fold,
                "backbone": m.backbone,
                "input_size": m.input_size,
                "precision": m.precision,
                "bytes": (model_dir / m.file).stat().st_size,
            }
            for m in manifest.members
        ],
        "total_bytes": sum((model_dir / m.file).stat().st_size for m in manifest.members),
        "threshold": manifest.threshold,
        "tta": manifest.tta,
        "tta_given": tta_given(manifest),
        "threshold_predictions": threshold.source(p),
        "parity": p.get("parity"),
        "versions": p.get("versions"),
    }
    shift = p.get("threshold_for_shift")
    if shift:  # both rules' runs (a manifest from before oof_run names the out-of-fold one as threshold_predictions)
        shift = {**shift, "oof_run": threshold.oof_predictions(p.get("threshold_predictions"), shift)}
    return {"ensemble": e} | ({"threshold_for_shift": shift} if shift else {})


def tta_given(manifest) -> str:
    """Where the shipped test-time augmentation was set: "export.tta" (the config's, the export's default) or
    "--tta" (the command line, over the config's)."""
    config = manifest.provenance.get("config") or {}
    return "export.tta" if (config.get("export") or {}).get("tta", "none") == manifest.tta else "--tta"


def tta_choice(tta_runs: list[dict]) -> dict:
    """What TTA_RULE picks on the card's re-predictions: on the leave-one-out run's where there are any, else on the
    recipe run's; per mode whether it raises both figures over one view, and the mode picked ("none" when none
    does). The card sets it beside the mode shipped, which the command line or the config set."""
    on = "loso" if any(r["base"] == "loso" for r in tta_runs) else "recipe"
    modes = {}
    for r in tta_runs:
        if r["base"] != on:
            continue
        m = r["compare"]["metrics"]
        ba, auc = m.get("balanced_accuracy@nested_thresholds"), m.get("roc_auc")
        modes[r["mode"]] = {
            "raises_both": bool(ba and auc and ba["b_minus_a"] > 0 and auc["b_minus_a"] > 0),
            "balanced_accuracy": ba["b_minus_a"] if ba else None,
        }
    raising = [k for k, v in modes.items() if v["raises_both"]]
    pick = max(raising, key=lambda k: modes[k]["balanced_accuracy"]) if raising else "none"
    return {"on": on, "modes": modes, "pick": pick}


def fold_facts(table: pd.DataFrame | None, cfg_splits: dict) -> dict:
    """How the folds of TABLE (a splits table: image_id, fold, slide and the STRATA columns) were made: the split
    kind, and for k folds the algorithm and its strata as training.splits holds them, and whether it makes the same
    folds of these figures now (recomputed: True, False; None without a table, or when it cannot say)."""
    from training import splits

    kind = cfg_splits.get("kind") or "kfold"
    out = {"kind": kind}
    if kind != "kfold":
        return out
    out |= {"by": f"training.splits.{splits.kfold_assign.__name__}", "strata": list(splits.STRATA)}
    out["tries"], out["recomputed"] = cfg_splits.get("tries"), None
    if table is None:
        return out
    try:
        again = splits.make_splits(
            table, kind, int(cfg_splits["folds"]), int(cfg_splits["seed"]), int(cfg_splits["tries"])
        )
        want = table.set_index("image_id")["fold"]
        out["recomputed"] = bool(again.set_index("image_id")["fold"].reindex(want.index).eq(want).all())
    except (AmfError, KeyError, TypeError, ValueError):
        out["recomputed"] = None
    return out


def overlap_facts(model_dir: Path, folders) -> list[dict]:
    """Each data folder of FOLDERS (a layout training reads) against the figures the model trained on, by content
    (training_fingerprints.bin): its figures and how many of them the model trained on."""
    from training.data import decode, layout_of, read_labelled

    trained = fingerprint.read(model_dir / fingerprint.FILE)
    out = []
    for folder in folders:
        table = read_labelled(folder)
        values = fingerprint.digests(decode(p) for p in table["path"])
        out.append(
            {
                "dir": str(folder),
                "layout": layout_of(folder),
                "figures": int(len(values)),
                "trained_on": int(np.isin(values, trained).sum()),
            }
        )
    return out


def benchmark_facts(benchmark, figures: int, recipe) -> dict:
    """The published protocol the runs followed (load_benchmark); refused when they trained on another number of
    figures than its training split."""
    b = load_benchmark(benchmark)
    if figures != b["training_figures"]:
        raise AmfError(
            f"{recipe} trained on {figures} figures; {b['name']}'s training split has {b['training_figures']}: the "
            "card cannot claim its protocol"
        )
    return {"benchmark": b, "benchmark_name": portable_data(benchmark) if Path(benchmark).suffix else str(benchmark)}


def refresh(model_dir, data_dir=None, overlap=(), config_note=None) -> dict:
    """card.json measured again from what the model folder and the data hold, without the runs (which may be gone):
    the manifest's facts (model_facts), the recipe run's config (the manifest records it whole), how the folds were
    made (oof.csv and the data's table), the TTA rule's pick (card.json's own comparisons), the benchmark file, the
    overlap with OVERLAP's figures (where given), CONFIG_NOTE (where given); every path made portable. The runs'
    figures stay as card.json has them."""
    from training.data import find_layout, read_labelled

    model_dir = Path(model_dir)
    card = json.loads((model_dir / CARD_JSON).read_text())
    if card.get("card_version", 1) < 2:
        raise AmfError(f"{model_dir / CARD_JSON} is of the layout from before card_version 2: rebuild it from the runs")
    manifest = load_manifest(model_dir)
    recipe = Path(card["runs"]["recipe"]["run"])
    root = recipe.parent if recipe.is_absolute() else None
    if isinstance(manifest.provenance.get("config"), dict):  # the recipe run's whole config (export records it)
        card["runs"]["recipe"]["config"] = recipe_summary(manifest.provenance["config"])
    card |= model_facts(model_dir, manifest)
    data, table = Path(data_dir or card["data"].get("dir") or ""), None
    if data.name and find_layout(data):
        shipped = pd.read_csv(model_dir / OOF_CSV, dtype={"image_id": str, "slide": str})
        table = read_labelled(data).drop(columns=["slide"]).merge(shipped, on="image_id", how="inner")
        if len(table) != len(shipped):  # the run held figures this folder lacks (extra sets): not recomputed here
            table = None
    card["data"]["folds"] = fold_facts(table, card["runs"]["recipe"]["config"]["splits"])
    if card.get("benchmark_name"):
        card |= benchmark_facts(card["benchmark_name"], card["data"]["figures"], recipe)
    if overlap:
        card["overlap"] = overlap_facts(model_dir, overlap)
    if config_note is not None:
        card["config_note"] = config_note
    card = relocate(card, root)
    card["runs_dir"] = card.get("runs_dir") or (portable_data(root) if root else ".")
    if card.get("tta"):
        card["tta"] |= {"rule": TTA_RULE.format(domain=loso_domain(card)), "choice": tta_choice(card["tta"]["runs"])}
    card["predictions"] = reported_runs(card)
    card["card_version"] = CARD_VERSION
    return card


def candidate_facts(candidates, rule: str, recipe, loso, n_boot: int, shipped=None) -> dict:
    """The other recipes tried before the shipped one (counted): each against the shipped recipe's run of the same
    splits.kind (its leave-one-out run or the recipe run itself: on the SHIPPED folds only, where a subset export
    shipped some), paired bootstrap over slides."""
    if not rule:
        raise AmfError("give --candidate-rule: the rule, written before the figures, that chose among the candidates")
    bases = {"recipe": recipe} | ({"loso": Path(loso)} if loso is not None else {})
    kinds = {name: RunDir(run).read_config()["splits"]["kind"] for name, run in bases.items()}
    out = []
    for run in map(Path, candidates):
        cfg = RunDir(run).read_config()
        base = next((n for n, kind in kinds.items() if kind == cfg["splits"]["kind"]), None)
        if base is None:
            raise AmfError(
                f"candidate {run} split its figures by {cfg['splits']['kind']}, none of the shipped runs' "
                f"({', '.join(f'{n}: {k}' for n, k in kinds.items())}): nothing to pair it with"
            )
        out.append(
            {
                "run": str(run),
                "base": base,
                "base_run": str(bases[base]),
                "config": recipe_summary(cfg),
                "overrides": overrides(cfg),
                "compare": compare(
                    bases[base], run, n_boot=n_boot, seed=0, folds=shipped if base == "recipe" else None
                ),
            }
        )
    return {"rule": rule, "runs": out}


SHIPPED_COLUMNS = ("image_id", "slide", "fold", "probability")  # no label: the labels stay in the data's table


def reported_runs(card: dict) -> dict:
    """Every run besides the recipe whose predictions the card reports (the control, the leave-one-out run, each
    re-prediction under test-time augmentation), by the file the model folder ships them as: with the data's labels,
    every figure of the card, the shipped threshold and the threshold for shift can be recomputed from the folder."""
    runs = {"plain": card["runs"].get("plain", {}).get("run"), "loso": card.get("loso", {}).get("run")}
    runs |= {f"{r['base']}_tta_{r['mode']}": r["run"] for r in (card.get("tta") or {}).get("runs", [])}
    runs |= {f"candidate_{Path(r['run']).name}": r["run"] for r in (card.get("candidates") or {}).get("runs", [])}
    return {f"{PREDICTIONS}/{name}.csv": run for name, run in runs.items() if run}


BENCHMARKS = Path(__file__).with_name("benchmarks")  # NAME.yaml: a published protocol and its table
MAX_BENCHMARK_BYTES = 64 * 1024  # a protocol and one published table
BENCHMARK_KEYS = {
    "name",
    "cite",
    "training_split",
    "training_figures",
    "test_split",
    "never_seen",
    "figures",
    "sets",
    "rows",
}
TEST_SPLIT_KEYS = {"name", "figures", "slides", "held"}  # held: where data of a layout holds part of it (or null)
HELD_KEYS = {"layout", "source", "why"}


def load_benchmark(name_or_file) -> dict:
    """A benchmark file (training/card/benchmarks/NAME.yaml, or a path): its protocol and the published table,
    checked for shape, so that the card prints the paper's figures as given and nothing else. Read as a config is
    (training.config.parse: UTF-8, tag-free, plain values, bounded), each fault one error line."""
    from amf.fileio import read_text
    from training import config

    path = Path(name_or_file)
    if not path.suffix:
        path = BENCHMARKS / f"{name_or_file}.yaml"
    if not path.is_file() or path.stat().st_size > MAX_BENCHMARK_BYTES:
        known = ", ".join(sorted(p.stem for p in BENCHMARKS.glob("*.yaml")))
        raise AmfError(f"benchmark {name_or_file}: no such file under 64 KB (known: {known})")
    b = config.parse(read_text(path, "benchmark", MAX_BENCHMARK_BYTES), f"benchmark {path}")
    if not isinstance(b, dict) or set(b) != BENCHMARK_KEYS:
        raise AmfError(f"benchmark {path}: wants exactly the keys {', '.join(sorted(BENCHMARK_KEYS))}")
    t = b["test_split"]
    held = t.get("held") if isinstance(t, dict) else None
    if not (isinstance(t, dict) and set(t) == TEST_SPLIT_KEYS and (held is None or set(held) == HELD_KEYS)):
        raise AmfError(
            f"benchmark {path}: test_split wants exactly {', '.join(sorted(TEST_SPLIT_KEYS))} (held: null or "
            f"{', '.join(sorted(HELD_KEYS))})"
        )
    sets = b["sets"]
    if not (isinstance(sets, list) and sets and isinstance(b["rows"], list)):
        raise AmfError(f"benchmark {path}: sets and rows are lists (the sets' names; a row per published model)")
    for r in b["rows"]:
        pairs = r.get("figures") if isinstance(r, dict) else None
        if not (isinstance(pairs, list) and len(pairs) == len(sets) and all(_pair(x) for x in pairs)):
            raise AmfError(f"benchmark {path}: row {r!r} wants one [balanced accuracy, ROC AUC] pair per set")
    return b


def _pair(x) -> bool:
    return isinstance(x, list) and len(x) == 2 and all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in x)


def official_votes(data_dir) -> pd.DataFrame:
    """The data folder's labels and expert votes (image_id, label, soft, domains; either layout), for the by-vote
    figures."""
    from training.data import read_labelled

    return read_labelled(data_dir).drop(columns=["slide", "path"])


def epoch_choice(run, folds) -> dict:
    """Per fold: the kept epoch's held-out figures against the best epoch's on the held-out fold (the choice the
    old selection made), from epochs.csv; the gap is the optimism of choosing the epoch on the reported figures."""
    out = {}
    for k in folds:
        f = RunDir(run).fold(k)
        if not f.epochs.is_file() or not f.is_done():
            continue
        e, kept = f.read_epochs(), f.read_done().get("best_epoch")
        if kept is None or "val_balanced_accuracy" not in e or not (e["epoch"] == kept).any():
            continue
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


def train_minutes(run) -> float:
    """Wall-clock minutes the run's epochs took (epochs.csv 'seconds'; resumed epochs count once)."""
    total = 0.0
    for f in RunDir(run).fold_dirs():
        if f.epochs.is_file():
            total += f.read_epochs()["seconds"].fillna(0).sum()
    return round(total / 60, 1)


def write(model_dir, card: dict, tables: dict | None = None) -> None:
    """card.json, README.md and TABLES (build's: oof.csv and predictions/*.csv, each probability at full precision:
    every figure recomputes from them exactly), written into a scratch folder and installed by training.ownership's
    rule: the earlier card's files this one does not name go; a file the earlier card did not name is never written
    over nor removed. Without TABLES (refresh) the tables there stay as they are."""
    model_dir = Path(model_dir)
    names = list(tables) if tables is not None else [OOF_CSV, *card.get("predictions", {})]
    ownership.claim(model_dir, [*names, CARD_JSON, README], MODEL)
    with ownership.scratch(model_dir, "card") as tmp:
        for name in names:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            if tables is None:  # kept byte for byte: the card's own (named by it), moved back in by install
                if (model_dir / name).is_file():
                    shutil.copyfile(model_dir / name, tmp / name)
                continue
            buf = io.StringIO()
            tables[name].to_csv(buf, index=False)  # floats as repr: the shortest text that reads back the same number
            write_text_atomic(tmp / name, buf.getvalue())
        write_text_atomic(tmp / CARD_JSON, json.dumps(card, indent=1, default=_plain) + "\n")
        write_text_atomic(tmp / README, render(json.loads((tmp / CARD_JSON).read_text())))
        ownership.install(tmp, model_dir, MODEL, replaces=(CARD_JSON,))


def _plain(x):
    return x.item() if isinstance(x, np.generic) else str(x)
