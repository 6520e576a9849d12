"""The model card's Reproduce block: the commands that made the card's runs, read off card.json (its runs named
relative to the runs folder, $R in the block). Where the runs and the model are training.pipeline's own (its run
names, its control, its re-predictions, its export), the block is its one command; else each step's command (the
template writes those from card.json directly)."""

from __future__ import annotations

import shlex
from pathlib import Path

from training.config import diff as config_diff
from training.results.threshold import oof_predictions
from training.rundir import RunDir, pipeline_run, plain_sets


def threshold_run(card: dict) -> str | None:
    """The out-of-fold re-prediction the export chose on (its --threshold-run), where it is not the recipe run."""
    run = oof_predictions(card["ensemble"].get("threshold_predictions"), card.get("threshold_for_shift"))
    return run if run and run != card["runs"]["recipe"]["run"] else None


def in_runs(runs) -> str:
    """Runs as the block names them: in the runs folder $R."""
    return " ".join(f"$R/{run}" for run in runs)


def candidate_args(card: dict) -> str:
    """The card command's words for its candidates ('' without)."""
    c = card.get("candidates")
    if not c:
        return ""
    return f" --candidates {in_runs(r['run'] for r in c['runs'])} --candidate-rule {shlex.quote(c['rule'])}"


def overlap_args(card: dict) -> str:
    """The words for the data folders checked against the training figures, and for the config's note."""
    words = [" --overlap " + " ".join(o["dir"] for o in card["overlap"])] if card.get("overlap") else []
    words += [" --config-note " + shlex.quote(card["config_note"])] if card.get("config_note") else []
    return "".join(words)


def pipeline_runs(card: dict) -> dict | None:
    """Whether the card's runs and model are training.pipeline's own (every fold's member, none trained on all
    figures; training.rundir.pipeline_run's names: RUNS/NAME_recipe, NAME_plain set by plain_sets, the shift run
    differing in its splits only, RUN_tta_MODE for every mode on every run, the export's threshold chosen on the
    shipped mode's re-prediction): then the template gives its one command, from NAME and the modes compared; else
    None (each step's command)."""
    recipe, e, rs = Path(card["runs"]["recipe"]["run"]), card["ensemble"], card["runs"]["recipe"]["config"]
    runs_dir, name = recipe.parent, recipe.name.removesuffix("_recipe")
    bases, plain, loso = [recipe], card["runs"].get("plain"), card.get("loso")
    if name == recipe.name or card.get("shipped_folds") or card.get("all_figures"):  # not what the pipeline exports
        return None
    off = {k: v == "true" for k, v in (word.split("=") for word in plain_sets(rs))}  # the pipeline's control
    if plain and (
        Path(plain["run"]) != pipeline_run(runs_dir, name, "plain") or config_diff(rs, plain["config"]) != off
    ):
        return None
    if loso:
        diff = config_diff(rs, loso["config"])
        if Path(loso["run"]) != pipeline_run(runs_dir, name, loso["config"]["splits"]["kind"]) or not diff:
            return None
        if any(not k.startswith("splits.") for k in diff):
            return None
        bases.insert(0, Path(loso["run"]))
    tta = (card.get("tta") or {}).get("runs", [])
    modes = list(dict.fromkeys(r["mode"] for r in tta))
    if sorted(Path(r["run"]) for r in tta) != sorted(RunDir(b).tta_dir(m) for b in bases for m in modes):
        return None
    as_shipped = (lambda run: RunDir(run).tta_dir(e["tta"])) if e["tta"] != "none" else (lambda run: run)
    chosen_on = oof_predictions(e.get("threshold_predictions"), card.get("threshold_for_shift")) or recipe
    if Path(chosen_on) != as_shipped(recipe):
        return None
    shift = card.get("threshold_for_shift")
    if bool(shift) != bool(loso) or (shift and Path(shift["loso_run"]) != as_shipped(bases[0])):
        return None
    return {"name": name, "compared": [m for m in modes if m != e["tta"]]}
