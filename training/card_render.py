"""The model card's text (model/README.md), rendered from card.json alone: every figure and every fact in it
is a key of card.json (built by training.card from the runs); a sentence that holds only under a condition
(random initialisation, an enabled recipe part, epochs chosen on the held-out fold, a leave-one-out run ...)
is written only when card.json says the condition holds.
One layout, card_version 2 (training.card's build): the recipe run shipped by decision, a possibly partial plain
run or none (a team's pipeline may train no control: the plain rows, the comparison and its verdict are then left
out), each run at nested thresholds, at the pooled threshold and at 0.5, the paired comparison, leave-one-scanner-out,
the threshold for scanner shift and test-time augmentation. A card.json without card_version 2 (the layout from
before issue 12) is refused with one error: rebuild it from the runs.

  python -m training.card --model model --render        (re-render README.md from card.json)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from amf import AmfError
from training import augment
from training.data import EXPERTS, OFFICIAL_CSV
from training.metrics import fmt, fmt_ci

CARD_VERSION = 2  # card.json's layout, written by training.card's build: the only one rendered
RENDERED_MARK = "<!-- rendered by `python -m training.card`"  # the card's second line (export knows a card by it)
PLAIN_SETS = ("mixstyle.enabled=false", "align.enabled=false", "ema.enabled=false")  # the plain control (pipeline)
SHOWN = ("balanced_accuracy", "roc_auc", "sensitivity", "specificity")
METRIC_NAMES = {
    "balanced_accuracy": "balanced accuracy",
    "roc_auc": "ROC AUC",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
}
EXPERT_COUNT = {2: "two", 3: "three", 4: "four"}.get(len(EXPERTS), str(len(EXPERTS)))


def with_ci(m: dict, ci: dict, key: str) -> str:
    return f"{fmt(m[key])} {fmt_ci(ci.get(key), missing='[–, –]')}"


def shown(m: dict, ci: dict, at_05: dict | None = None, keys=SHOWN) -> list[str]:
    """A table row's metric cells: the KEYS metrics of M with their intervals CI, then, given AT_05 (the
    metrics at threshold 0.5), balanced accuracy at 0.5."""
    cells = [with_ci(m, ci, k) for k in keys]
    if at_05 is not None:
        cells.append(fmt(at_05["balanced_accuracy"]))
    return cells


def figures(m: dict) -> str:
    """The "figures (atypical)" cell of metrics M."""
    return f"{m['n']} ({m['n_atypical']})"


def row(*cells) -> str:
    """One Markdown table row."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def selection_of(cfg: dict) -> str:
    """train.selection of a config summary; a run from before the key existed chose on validation."""
    return cfg["train"].get("selection") or "validation"


def random_init(cfg: dict) -> bool:
    return cfg["model"].get("pretrained") is False and not cfg["model"].get("weights")


def initialisation(cfg: dict) -> str:
    m = cfg["model"]
    if m.get("weights"):
        return f"fine-tuned from the weights `{m['weights']}`"
    if m.get("pretrained"):
        return f"fine-tuned from timm's pretrained `{m['backbone']}` weights"
    return "trained from random initialisation" if random_init(cfg) else "trained"


def leaves(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= leaves(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_diff(base: dict, other: dict, ignore=("name",)) -> dict:
    """The summary keys both configs record on which OTHER differs from BASE (as --set overrides)."""
    a, b = leaves(base), leaves(other)
    return {k: b[k] for k in a if k in b and a[k] != b[k] and k not in ignore}


def as_set(diff: dict) -> str:
    """DIFF as training.train's --set KEY=VALUE words (YAML values: true, 0.5, [a,b])."""

    def value(v):
        if isinstance(v, list):
            return "[" + ",".join(value(x) for x in v) + "]"
        return v if isinstance(v, str) else json.dumps(v)

    return " ".join(f"{k}={value(v)}" for k, v in diff.items())


def plural(n, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def count(n: int, noun: str) -> str:
    return f"{'One' if n == 1 else n} {noun}{'' if n == 1 else 's'}"


def data_dir(card: dict) -> str | None:
    return card["data"].get("dir")


def loso_column(card: dict) -> str | None:
    """The domain the leave-one-out run held out (its fold names are COLUMN=VALUE)."""
    names = list(card.get("loso", {}).get("held_out", {}))
    return names[0].split("=", 1)[0] if names and "=" in names[0] else None


def aligned_note(d: dict, columns) -> str:
    """Which alignment columns can act on this data (a column with one value aligns nothing)."""
    one = [c for c in columns if d.get("values", {}).get(c, 2) < 2]
    acting = [c for c in columns if c not in one]
    if not one:
        return ""
    return (
        f"On this data {', '.join(one)} take{'s' if len(one) == 1 else ''} one value, so only "
        f"{', '.join(acting) or 'nothing'} align{'s' if len(acting) == 1 else ''}."
    )


def mixstyle_place(run: dict) -> str:
    """Where MixStyle acted: the modules build resolved (training.recipe.mixstyle_targets), described by its rule."""
    where, at = run["config"]["mixstyle"].get("where"), run.get("mixstyle_at")
    if not at:
        return f"at `mixstyle.where: {where}`"
    names = ", ".join(f"`{m}`" for m, _ in at)
    if where != "auto":
        return f"after {names}"
    # mixstyle_targets' auto rule: CNN stages at stride 4 and 8 carry their channels, ViT blocks do not
    rule = "the early and mid stages" if all(c is not None for _, c in at) else "blocks at 1/3 and 2/3 of the depth"
    return f"after {rule} ({names})"


def augment_line(card: dict) -> str:
    """The training augmentation of the recipe run, from its config (stain jitter is what v2 turned up)."""
    words = augment.card_words(card["runs"]["recipe"]["config"].get("augment") or {})
    return (
        f"- Augmentation: {words} (`training/augment.py`; the rest at its defaults)."
        if words
        else "- Augmentation: none."
    )


def recipe_parts(card: dict) -> str:
    rs, d = card["runs"]["recipe"]["config"], card["data"]
    parts = []
    if rs["mixstyle"].get("enabled"):
        parts.append(
            f"MixStyle (p {rs['mixstyle']['p']}, α {rs['mixstyle']['alpha']}) {mixstyle_place(card['runs']['recipe'])}"
        )
    if rs["align"].get("enabled"):
        parts.append(
            f"alignment of pooled features across {', '.join(rs['align']['columns'])} (weight {rs['align']['weight']})"
        )
    if rs["ema"].get("enabled"):
        parts.append(
            f"EMA teacher (decay {rs['ema']['decay']}) distilled with temperature-"
            f"{rs['ema']['temperature']} KL (weight {rs['ema']['kd_weight']})"
            + ("; the teacher is the evaluated and exported model" if rs["ema"].get("evaluate") else "")
        )
    if not parts:
        return "- Recipe: none of MixStyle, alignment and the EMA teacher is enabled in the recipe run."
    note = aligned_note(d, rs["align"]["columns"]) if rs["align"].get("enabled") else ""
    return ("- Recipe: " + "; ".join(parts) + ". " + note).rstrip()


def runs_in(card: dict) -> list[str]:
    """The runs the card holds, in table order: the recipe run, and the plain control when one was given."""
    return [name for name in ("recipe", "plain") if name in card["runs"]]


def plain_line(card: dict) -> str:
    if "plain" not in card["runs"]:
        return "- Plain baseline: none was trained; the figures are the recipe run's alone."
    rs, ps = card["runs"]["recipe"]["config"], card["runs"]["plain"]["config"]
    diff = config_diff(rs, ps)
    same = ", folds" if card.get("same_folds") else ""
    epochs = " and epochs" if "train.epochs" not in diff else ""
    partial = partial_note(card, "plain")
    return (
        f"- Plain baseline: the same config{same}{epochs}"
        + (f" with `--set {as_set(diff)}`" if diff else " (no difference in the recorded config)")
        + (f"; {partial}: its figures and the paired comparison are on those folds" if partial else "")
        + "."
    )


def selection_line(card: dict) -> str:
    sel = {n: selection_of(r["config"]) for n, r in card["runs"].items()}
    shipped = card["runs"][card["shipped"]]["config"]
    if sel[card["shipped"]] == "validation":
        select = METRIC_NAMES.get(shipped["train"].get("select") or "", shipped["train"].get("select"))
        return (
            "- The best epoch of each fold was chosen on that fold's validation "
            + (f"{select} " if select else "figures ")
            + "(the old `train.selection: validation`), so the "
            "out-of-fold figures are optimistic"
            + ("; the same holds for both runs" if set(sel.values()) == {"validation"} else "")
            + "."
        )
    shipped_line = (
        "- Each fold kept its last epoch (`train.selection: last`): no epoch was chosen on the held-out fold"
        if sel[card["shipped"]] == "last"
        else "- Each fold's epoch was chosen on an inner split of its training folds (`train.selection: inner`), "
        "never on the held-out fold"
    )
    others = sorted(n for n, s in sel.items() if s == "validation")
    return (
        shipped_line
        + (f"; the {', '.join(others)} run chose its epochs on the held-out folds (optimistic)" if others else "")
        + ". The out-of-fold figures are selection-free in the epoch; at nested thresholds they are selection-free"
        ", at the pooled threshold optimistic (chosen on the figures it is reported on)."
    )


def fold_line(card: dict) -> str:
    d, s = card["data"], card["runs"][card["shipped"]]["config"].get("splits") or {}
    n = len(d["fold"])
    if s.get("kind") == "kfold":
        how = (
            f"{n} folds by `StratifiedGroupKFold` (label × tumour strata, grouped by slide, best of "
            f"{s['tries']} shuffles)"
        )
    elif s.get("kind"):
        how = f"{n} folds (`splits.kind: {s['kind']}`)"
    else:
        how = f"{n} folds, grouped by slide"
    return how + ": no slide is in two folds. Member k was trained on the other folds; `oof.csv` says which."


def label_col(card: dict) -> str:
    label = card["runs"][card["shipped"]]["config"]["data"].get("label")
    return f"`{label}` " if label else ""


def members_line(card: dict) -> str:
    folds = sorted(str(m["fold"]) for m in card["ensemble"]["members"])
    if folds == sorted(card["data"]["fold"]):
        return "one member per fold"
    return f"members of fold{'s' if len(folds) > 1 else ''} {', '.join(folds)} of {len(card['data']['fold'])}"


def source_name(d: dict) -> str:
    sources = d.get("sources") or {}
    if set(sources) <= {"official"}:
        return "the MIDOG 2025 atypical training set"
    return ", ".join(f"{k} ({v})" for k, v in sources.items())


def data_line(card: dict) -> str:
    d = card["data"]
    where = f"`{data_dir(card)}`: " if data_dir(card) else ""
    px = f"{d['patch_px']}×{d['patch_px']} " if d.get("patch_px") else ""
    sources = d.get("sources") or {}
    if set(sources) <= {"official"}:
        what = f"the real rows and {px}PNGs of the official `{OFFICIAL_CSV}`"
    else:
        what = "the real rows and PNGs of " + ", ".join(f"{k} ({v} figures)" for k, v in sources.items())
    label = label_col(card).strip(" `")
    return (
        f"- {where}{what} for {', '.join(d['tumor'])}: {d['figures']} figures, {d['atypical']} atypical"
        + (f" (`{label}` = AMF)" if label else "")
        + f", {d['slides']} slides."
    )


def compare_table(card: dict) -> list[str]:
    c = card["compare"]
    lines = ["| metric | plain | recipe | recipe − plain [95% interval] | P(recipe ≤ plain) |", "|---|---|---|---|---|"]
    for k, v in c["metrics"].items():
        lines.append(
            f"| {k} | {fmt(v['a'])} | {fmt(v['b'])} | {v['b_minus_a']:+.3f} "
            f"[{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}] | {v['p_b_not_better']:.3f} |"
        )
    return lines


def epochs_on_fold(card: dict) -> bool:
    """The shipped run chose each fold's epoch on that fold's own figures."""
    return selection_of(card["runs"][card["shipped"]]["config"]) == "validation"


def learned(card: dict) -> bool:
    """The shipped run's out-of-fold ROC AUC interval lies above chance."""
    ci = card["runs"][card["shipped"]]["oof"]["ci95"].get("roc_auc")
    return bool(ci) and ci[0] > 0.5


def with_set(run: dict) -> str:
    """' --set ...' for what a run set on top of its named config (recorded by build), or ''."""
    return f" --set {as_set(run['overrides'])}" if run.get("overrides") else ""


def render(card: dict) -> str:
    if card.get("card_version", 1) < CARD_VERSION:  # the layout from before issue 12: its keys are not these
        raise AmfError(
            f"card.json of an older layout (no card_version {CARD_VERSION}): rebuild it with python -m training.card "
            "--model MODEL --recipe RUN --plain RUN [--loso RUN] [--tta TTA_RUN ...] --data DATA"
        )
    d, e = card["data"], card["ensemble"]
    shipped = card["runs"][card["shipped"]]
    cfg, rs = shipped["config"], card["runs"]["recipe"]["config"]
    mb = e["total_bytes"] / 1e6
    scanners = ", ".join(
        f"{s} {c['figures']} ({c['atypical']} atypical, {c['slides']} slides)" for s, c in d["scanner"].items()
    )
    parity = e.get("parity") or {}
    worst = max(
        (x for v in parity.values() for key, x in v.items() if key.startswith("max_abs_logit_diff")), default=None
    )
    demo = random_init(cfg)
    loso_col = loso_column(card)
    wt = rs["train"]["warmup_epochs"]
    out = [
        f"# Model card: {'the shipped default ensemble' if default_model(card) else 'the ensemble in this folder'}",
        "",
        f"{RENDERED_MARK} from card.json; edit the code, not this file -->",
        "",
        f"{len(e['members'])} × `{cfg['model']['backbone']}` at {cfg['data']['input_size']} px, {members_line(card)}, "
        f"{mb:.1f} MB in all, {initialisation(cfg)} on the {', '.join(d['tumor'])} figures of "
        f"{source_name(d)}. The container averages the members' P(atypical) "
        f"(TTA: {e['tta']}) and calls a figure atypical at P ≥ {e['threshold']:.3f}.",
        "",
    ]
    if demo:
        out += [
            "**It is a working demonstration, not a submission.** "
            + (
                f"It has learned something real from {d['figures']} figures (the figures below). "
                if learned(card)
                else ""
            )
            + "For a submission, retrain on the full official set with a pretrained backbone: "
            "`python -m training.pipeline convnext_small --data DATA --runs runs/cnx --model-out model` (or "
            "`lunit_vit_small`).",
            "",
        ]
    out += [
        "## Data and provenance",
        data_line(card),
        f"- Scanners: {scanners}. Raw scanner spellings kept as given: {', '.join(d['raw_scanner_values'])} "
        "(aliases are resolved only for grouping, in `training/domains.py`).",
        f"- Tumour: {', '.join(d['tumor'])}; species: {', '.join(d['species'])}.",
        f"- Label: the {label_col(card)}vote of {EXPERT_COUNT} experts. No image or label of the data is in this "
        "folder; `oof.csv` holds only image ids, slides, folds and our own out-of-fold probabilities.",
        "",
        "## Recipe and configuration",
        f"- Config `training/configs/{rs['name']}.yaml`"
        + (f" with `{with_set(card['runs']['recipe']).strip()}`" if with_set(card["runs"]["recipe"]) else "")
        + " (recipe run): "
        f"backbone `{rs['model']['backbone']}`, "
        f"pretrained {rs['model']['pretrained']}"
        + (f", weights `{rs['model']['weights']}`" if rs["model"].get("weights") else "")
        + f", {rs['data']['input_size']} px ({rs['data']['resize']} resize of the "
        + (f"{d['patch_px']} px " if d.get("patch_px") else "")
        + f"patch, the container's rule in `amf/preprocess.py`), {rs['train']['epochs']} epochs, batch "
        f"{rs['train']['batch_size']}, AdamW lr {rs['train']['lr']} (cosine, {plural(wt, 'warm-up epoch')}), "
        f"weight decay {rs['train']['weight_decay']}, class balance by {rs['imbalance']['mode']}.",
        augment_line(card),
        recipe_parts(card),
        plain_line(card),
        selection_line(card),
        "- Training time (wall clock, the sum of the epochs)"
        f"{' on ' + card['trained_on'] if card.get('trained_on') else ''}: "
        f"recipe {card['runs']['recipe']['train_minutes']} min"
        + (f", plain {card['runs']['plain']['train_minutes']} min" if "plain" in card["runs"] else "")
        + (f" ({folds_count(card, 'plain')})" if partial_note(card, "plain") else "")
        + (
            f", leave-one-{(loso_col or 'domain').lower()}-out {card['loso']['train_minutes']} min"
            if "loso" in card
            else ""
        )
        + ".",
        "",
        "## Folds",
        fold_line(card),
        "",
        *fold_table(card),
        "",
        *body(card),
        "## Files",
        *[f"- `{m['file']}`: fold {m['fold']}, {m['bytes'] / 1e6:.1f} MB" for m in e["members"]],
        "- `ensemble.json`: the manifest (`amf/manifest.py`), with the full config and out-of-fold metrics "
        "as provenance"
        + (f"; ONNX against torch, largest |logit difference| {worst:.1e}" if worst is not None else ""),
        "- `card.json`: every figure on this card; `oof.csv`: the shipped run's out-of-fold probabilities.",
        "",
        "## Intended use",
        "- The shipped default of the toolkit: `make demo`, the container's tests, the benchmark, and a "
        "baseline to beat. It shows the whole path (training, export, container) working on real data."
        if default_model(card)
        else "- The model of this folder, for the container (`inference.py`) of this toolkit.",
        "- Not for diagnosis" + (", and not a leaderboard submission." if demo else "."),
        "",
        "## Limits",
        f"- {count(len(d['tumor']), 'tumour type')} ({', '.join(d['tumor'])}), {', '.join(d['species'])} only, and "
        f"{len(d['scanner'])} scanners: nothing else was seen"
        + (", and an unseen scanner only in the leave-one-scanner-out figures above" if loso_col == "Scanner" else "")
        + ".",
        *(
            [
                f"- No pretrained weights (`model.pretrained: false`, no `model.weights`): a network of "
                f"{e['members'][0]['bytes'] / 1e6:.1f} MB per member from random initialisation on {d['figures']} "
                f"figures, for {cfg['train']['epochs']} epochs."
            ]
            if demo
            else []
        ),
        "- Thresholds"
        + (" and best epochs" if selection_of(cfg) == "validation" else "")
        + " were chosen on the same out-of-fold predictions that are reported"
        + ("; the nested-threshold figures chose nothing." if not epochs_on_fold(card) else "."),
        *(
            [
                "- For a submission, retrain on the full official set (every tumour type and species) with `training/` "
                "and a pretrained backbone."
            ]
            if demo
            else []
        ),
        "",
        *reproduce(card),
    ]
    return "\n".join(out)


def default_model(card: dict) -> bool:
    """The card is the toolkit's shipped default model's (its config, training/configs/default_model.yaml)."""
    return card["runs"]["recipe"]["config"].get("name") == "default_model"


def folds_list(folds) -> str:
    return ", ".join(str(k) for k in folds)


def partial_note(card: dict, name: str) -> str:
    """'' for a complete run (or one the card does not hold), else which of its folds were trained (and why, when
    card.json says)."""
    if name not in card["runs"]:
        return ""
    o = card["runs"][name]["oof"]
    if o["folds_done"] == o["folds"]:
        return ""
    why = card["runs"][name].get("partial_reason")
    return (
        f"trained on fold{'s' if len(o['folds_done']) > 1 else ''} {folds_list(o['folds_done'])} of "
        f"{len(o['folds'])} only" + (f" ({why})" if why else "")
    )


def folds_count(card: dict, name: str) -> str:
    o = card["runs"][name]["oof"]
    return f"{len(o['folds_done'])} of {len(o['folds'])} folds"


def threshold_range(thresholds: dict) -> str:
    v = sorted(thresholds.values())
    return f"{v[0]:.3f}" if f"{v[0]:.3f}" == f"{v[-1]:.3f}" else f"{v[0]:.3f}–{v[-1]:.3f}"


def selection_free_words(card: dict) -> str:
    """How the epoch was chosen, and what that makes of the out-of-fold figures."""
    if epochs_on_fold(card):
        return "each fold's epoch was chosen on that fold's own figures, so every out-of-fold figure is optimistic"
    return (
        "no epoch was chosen on a held-out fold, so the out-of-fold figures are selection-free in the epoch; at "
        "nested thresholds (each fold's chosen on the other folds) they are selection-free, at the pooled threshold "
        "optimistic (chosen on the figures it is reported on)"
    )


def oof_table(card: dict) -> list[str]:
    lines = [
        "| run | threshold | selection-free? | " + " | ".join(METRIC_NAMES[k] for k in SHOWN) + " |",
        "|---|---|---|" + "---|" * len(SHOWN),
    ]
    free = "no (epoch chosen on the fold)" if epochs_on_fold(card) else "yes"
    for name in runs_in(card):
        r = card["runs"][name]["oof"]
        label = name + (" (shipped)" if name == card["shipped"] else "")
        if partial_note(card, name):
            label += f", folds {folds_list(r['folds_done'])}"
        if "nested" in r:
            nested = r["nested"]
            lines.append(
                row(
                    label,
                    f"nested {threshold_range(nested['thresholds'])}",
                    free,
                    *shown(nested["at_nested_threshold"], nested["ci95"]),
                )
            )
        lines.append(
            row(
                label,
                f"pooled {r['threshold']:.3f}",
                "no (chosen on these figures)",
                *shown(r["at_threshold"], r["ci95"]),
            )
        )
        lines.append(row(label, "0.5", free, *(fmt(r["at_0.5"][k]) for k in SHOWN)))
    return lines


def scanner_table(card: dict) -> list[str]:
    lines = [
        "| run | scanner | figures (atypical) | slides | balanced accuracy, nested | ROC AUC | sensitivity, nested | "
        "specificity, nested | balanced accuracy, pooled threshold |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in runs_in(card):
        for scanner, s in card["runs"][name]["per_scanner"].items():
            m, n = s["metrics"], s.get("at_nested_threshold")
            cells = shown(n, s["ci95_nested"]) if n else ["–"] * len(SHOWN)
            cells[1] = with_ci(m, s["ci95"], "roc_auc")
            lines.append(row(name, scanner, figures(m), s["slides"], *cells, fmt(m["balanced_accuracy"])))
    return lines


def fold_table(card: dict) -> list[str]:
    names = runs_in(card)
    lines = [
        "| fold | figures (atypical) | slides | "
        + " | ".join(f"{name} balanced accuracy | {name} ROC AUC" for name in names)
        + " |",
        "|---|---|---|" + "---|---|" * len(names),
    ]
    for k, c in card["data"]["fold"].items():
        cells = []
        for name in names:
            m = card["runs"][name]["oof"]["per_fold"].get(k)
            cells += [fmt(m["balanced_accuracy"]), fmt(m["roc_auc"])] if m else ["not trained", "not trained"]
        lines.append(row(k, f"{c['figures']} ({c['atypical']})", c["slides"], *cells))
    return lines


def vote_lines(card: dict) -> list[str]:
    out = []
    for name in runs_in(card):
        o = card["runs"][name]["oof"]
        if "by_vote" not in o:
            continue
        key = "at_nested_threshold" if "nested" in o else "at_threshold"
        out.append(
            f"- {name}: "
            + "; ".join(
                f"{v}: {g['at_threshold']['n']} figures ({g['at_threshold']['n_atypical']} atypical), ROC AUC "
                f"{fmt(g['at_threshold']['roc_auc'])}, balanced accuracy {fmt(g[key]['balanced_accuracy'])}"
                for v, g in o["by_vote"].items()
            )
        )
    if not out:
        return []
    return [
        f"By expert agreement (unanimous: all {EXPERT_COUNT} experts voted alike; split: one dissented), balanced "
        "accuracy at nested thresholds:",
        "",
        *out,
        "",
    ]


def epoch_choice_line(card: dict) -> list[str]:
    gaps = [e for name in runs_in(card) for e in card["runs"][name].get("epoch_choice", {}).values()]
    if not gaps or epochs_on_fold(card):
        return []
    bal = [e["best_balanced_accuracy@0.5"] - e["kept_balanced_accuracy@0.5"] for e in gaps]
    auc = [e["best_roc_auc"] - e["kept_roc_auc"] for e in gaps]
    return [
        f"Had each fold's epoch been chosen on its own held-out figures (the old `train.selection: validation`), "
        f"those figures would have read higher by {np.mean(bal):+.3f} balanced accuracy at 0.5 and {np.mean(auc):+.3f} "
        f"ROC AUC on average ({plural(len(gaps), 'fold')}, from the runs' `epochs.csv`): the optimism "
        "these figures do not have.",
        "",
    ]


def oof_section(card: dict) -> list[str]:
    r = card["runs"][card["shipped"]]["oof"]
    return [
        "## Out-of-fold figures",
        f"Pooled out-of-fold predictions of the {len(card['runs'][card['shipped']]['oof']['folds'])} folds "
        f"({r['n']} figures), each figure scored by the one member that never saw it: "
        + selection_free_words(card)
        + ". Brackets: 95% bootstrap intervals over slides "
        f"({r['bootstrap']['n_boot']} resamples; thresholds held fixed)"
        + (
            f"; the plain run {partial_note(card, 'plain')}, so its rows are those folds' figures"
            if partial_note(card, "plain")
            else ""
        )
        + "."
        + (
            f" These are one view per figure; the container runs TTA `{card['ensemble']['tta']}`: its figures are in "
            "Test-time augmentation below."
            if card["ensemble"]["tta"] != "none"
            else ""
        ),
        "",
        *oof_table(card),
        "",
        "Per scanner (each fold at its nested threshold; ROC AUC needs none):",
        "",
        *scanner_table(card),
        "",
        *vote_lines(card),
        *epoch_choice_line(card),
    ]


def verdict(card: dict) -> str:
    if "compare" not in card:
        return f"No plain control run: nothing to compare the recipe with. Shipped: {card['shipped_rule']}."
    m = card["compare"]["metrics"]
    key = (
        "balanced_accuracy@nested_thresholds" if "balanced_accuracy@nested_thresholds" in m else "balanced_accuracy@0.5"
    )
    v = m[key]
    lo, hi = v["ci95"]
    told = (
        "its 95% interval spans 0, so the difference is not told from noise"
        if lo <= 0 <= hi
        else "its 95% interval excludes 0"
    )
    at = "nested thresholds" if "nested" in key else "0.5"
    return (
        f"Recipe − plain, balanced accuracy at {at}: {v['b_minus_a']:+.3f} "
        f"[{lo:+.3f}, {hi:+.3f}] on {card['compare']['n_figures']} figures; {told}. Shipped: {card['shipped_rule']}."
    )


def compare_section(card: dict) -> list[str]:
    if "compare" not in card:
        return []
    c = card["compare"]
    of = c["folds_of_run"]
    which = (
        f"on fold{'s' if len(c['folds']) > 1 else ''} {folds_list(c['folds'])}, the folds both runs finished "
        f"(the plain run {partial_note(card, 'plain')}; the recipe run has {len(of['b'])})"
        if c["folds"] != of["a"] or c["folds"] != of["b"]
        else f"on all {len(c['folds'])} folds"
    )
    not_computed = [f"{k} is left out: {why}." for k, why in (c.get("not_computed") or {}).items()]
    return [
        "## Recipe against the plain baseline",
        f"Paired bootstrap over slides {which} ({c['n_slides']} slides, {c['n_boot']} resamples, both runs on the "
        "same draw); nested thresholds: each compared fold's chosen on the run's other compared folds, held fixed. "
        "A difference whose interval excludes 0 is told from noise.",
        "",
        *compare_table(card),
        "",
        *([" ".join(not_computed), ""] if not_computed else []),
        verdict(card),
        "",
    ]


def loso_section(card: dict) -> list[str]:
    if "loso" not in card:
        return []
    lo = card["loso"]
    column = (loso_column(card) or "domain").lower()
    held = next(iter(lo["held_out"].values()))
    nested = "at_nested_threshold" in held
    head = (
        f"| held-out {column} | figures (atypical) | "
        + ("nested threshold | " if nested else "")
        + " | ".join(METRIC_NAMES[k] + (", nested" if nested and k != "roc_auc" else "") for k in SHOWN)
        + f" | balanced accuracy at {lo['threshold']:.3f} (pooled) | balanced accuracy at 0.5 |"
    )
    lines = [head, "|---|---|" + ("---|" if nested else "") + "---|" * (len(SHOWN) + 2)]
    for name, h in lo["held_out"].items():
        cells = shown(h["at_nested_threshold"], h["ci95_nested"]) if nested else shown(h["at_threshold"], h["ci95"])
        if nested:
            cells[1] = with_ci(h["at_threshold"], h["ci95"], "roc_auc")
        lines.append(
            row(
                name.split("=", 1)[-1],
                figures(h["at_threshold"]),
                *([f"{h['nested_threshold']:.3f}"] if nested else []),
                *cells,
                fmt(h["at_threshold"]["balanced_accuracy"]),
                fmt(h["at_0.5"]["balanced_accuracy"]),
            )
        )
    p = lo["pooled"]
    if nested:
        cells = shown(p["nested"]["at_nested_threshold"], p["nested"]["ci95"])
        cells[1] = with_ci(p["at_threshold"], p["ci95"], "roc_auc")
        pooled = [threshold_range(p["nested"]["thresholds"]), *cells]
    else:
        pooled = shown(p["at_threshold"], p["ci95"])
    lines.append(
        row(
            "pooled",
            figures(p),
            *pooled,
            fmt(p["at_threshold"]["balanced_accuracy"]),
            fmt(p["at_0.5"]["balanced_accuracy"]),
        )
    )
    same = not config_diff(
        card["runs"]["recipe"]["config"],
        lo["config"],
        ignore=("name",) + tuple(k for k in leaves(lo["config"]) if k.startswith("splits.")),
    )
    which = "The recipe config" if same else f"The `{lo['config']['name']}` config"
    return [
        f"## Leave one {column} out",
        f"{which} trained {len(lo['held_out'])} times, each time without one {column} and tested on it"
        + (
            f": each held-out {column} at its nested threshold (chosen on the other {column}s' predictions: "
            "selection-free), beside the pooled threshold (chosen on all these figures: optimistic) and 0.5"
            if nested
            else " (the threshold chosen on the pooled predictions, so it favours the pooled figure)"
        )
        + ":",
        "",
        *lines,
        "",
    ]


def shift_section(card: dict) -> list[str]:
    t = card.get("threshold_for_shift")
    if not t:
        return []
    lines = [
        "## Threshold for scanner shift",
        f"Two rules for the decision threshold (`training.threshold`, {t['n']} figures, scanners "
        f"{', '.join(t.get('groups') or t['scanners'])}): the **oof** rule maximises balanced accuracy on the "
        "pooled out-of-fold "
        "predictions, the **loso** rule on the pooled leave-one-scanner-out predictions (each figure predicted by "
        "a model that never saw its scanner). Each is reported on both sets (optimistic on the set that chose it) "
        "and nested: each held-out scanner's leave-one-scanner-out predictions at the rule's threshold chosen on "
        "the other scanners' figures (selection-free).",
        "",
        "| rule | threshold | balanced accuracy, out-of-fold | balanced accuracy, leave-one-scanner-out | "
        "sensitivity, leave-one-scanner-out | nested leave-one-scanner-out balanced accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for rule, r in t["rules"].items():
        on, n = r["on"], r["nested_loso"]
        lines.append(
            row(
                rule + (" (shipped)" if rule == t["chosen"] else ""),
                f"{r['threshold']:.3f}",
                with_ci(on["oof"], on["oof"]["ci95"], "balanced_accuracy"),
                with_ci(on["loso"], on["loso"]["ci95"], "balanced_accuracy"),
                with_ci(on["loso"], on["loso"]["ci95"], "sensitivity"),
                with_ci(n, n["ci95"], "balanced_accuracy"),
            )
        )
    shipped = card["ensemble"]["threshold"]
    lines += [
        "",
        f"Shipped: the {t['chosen']} rule, threshold {t['threshold']:.3f}"
        + ("" if f"{t['threshold']:.3f}" == f"{shipped:.3f}" else f" (the manifest's threshold is {shipped:.3f})")
        + f". The rule: {t['rule']}.",
        "",
    ]
    return lines


def tta_section(card: dict) -> list[str]:
    t = card.get("tta")
    e = card["ensemble"]
    if not t:
        return []
    lines = [
        "## Test-time augmentation",
        "Each run's held-out figures predicted again under the container's test-time augmentation "
        "(`training.tta_oof`: the exported member of each fold, the views averaged as the container averages "
        "them), against the same run without it: paired bootstrap over slides, nested thresholds as above.",
        "",
        "| run | TTA | folds | ROC AUC, none → TTA | TTA − none [95% interval] | P(TTA ≤ none) | balanced accuracy, "
        "nested, none → TTA | TTA − none [95% interval] | P(TTA ≤ none) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in t["runs"]:
        c = r["compare"]["metrics"]
        cells = []
        for key in ("roc_auc", "balanced_accuracy@nested_thresholds"):
            v = c.get(key)
            cells += (
                [
                    f"{fmt(v['a'])} → {fmt(v['b'])}",
                    f"{v['b_minus_a']:+.3f} [{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]",
                    f"{v['p_b_not_better']:.3f}",
                ]
                if v
                else ["–", "–", "–"]
            )
        base = "leave-one-scanner-out" if r["base"] == "loso" else r["base"]
        lines.append(row(f"{base} (`{r['base_run']}`)", r["mode"], folds_list(r["compare"]["folds"]), *cells))
    lines += [
        "",
        f"Shipped: TTA `{e['tta']}`. The rule: {t['rule']} (the table's leave-one-scanner-out rows).",
    ]
    tp = e.get("threshold_predictions")
    if tp:
        lines[-1] += (
            f" The shipped threshold was chosen on the out-of-fold predictions of `{tp['run']}` (TTA {tp['tta']})."
        )
    return lines + [""]


def threshold_section(card: dict) -> list[str]:
    e, t = card["ensemble"], card.get("threshold_for_shift")
    how = (
        f"the {t['chosen']} rule's threshold (see Threshold for scanner shift), chosen on all its figures"
        if t
        else "the value that maximises balanced accuracy on the shipped run's pooled out-of-fold predictions"
    )
    return [
        "## Threshold",
        f"P(atypical) ≥ {e['threshold']:.3f}: {how}. The container applies it to the members' mean probability"
        + (f" under TTA `{e['tta']}`" if e["tta"] != "none" else "")
        + ", which is an estimate: each out-of-fold probability came from one member alone.",
        "",
    ]


def pipeline_command(card: dict) -> str | None:
    """The one training.pipeline command that makes the card's runs and model, when they are the pipeline's own
    (training.run.pipeline_run's names: RUNS/NAME_recipe, NAME_plain set by PLAIN_SETS, the shift run differing in
    its splits only, RUN_tta_MODE for every mode on every run, the export's threshold chosen on the shipped mode's
    re-prediction); else None."""
    from training.run import RunDir, pipeline_run

    recipe = Path(card["runs"]["recipe"]["run"])
    if not recipe.name.endswith("_recipe"):
        return None
    runs_dir, name = recipe.parent, recipe.name[: -len("_recipe")]
    rs, e, args = card["runs"]["recipe"], card["ensemble"], []
    bases = [recipe]
    if "plain" in card["runs"]:
        plain = card["runs"]["plain"]
        off = {k.split("=")[0]: False for k in PLAIN_SETS}
        if (
            Path(plain["run"]) != pipeline_run(runs_dir, name, "plain")
            or config_diff(rs["config"], plain["config"]) != off
        ):
            return None
        args.append("--plain")
        if partial_note(card, "plain"):
            args.append(f"--plain-folds {','.join(map(str, plain['oof']['folds_done']))}")
        if plain.get("partial_reason"):
            args.append(f'--plain-partial-reason "{plain["partial_reason"]}"')
    shift = card.get("threshold_for_shift")
    if "loso" in card:
        kind, loso = card["loso"]["config"]["splits"]["kind"], Path(card["loso"]["run"])
        diff = config_diff(rs["config"], card["loso"]["config"])
        if loso != pipeline_run(runs_dir, name, kind) or not diff or any(not k.startswith("splits.") for k in diff):
            return None
        args.insert(0, f"--shift {kind}")
        bases.insert(0, loso)
    tta = (card.get("tta") or {}).get("runs", [])
    modes = list(dict.fromkeys(r["mode"] for r in tta))
    if sorted(Path(r["run"]) for r in tta) != sorted(RunDir(b).tta_dir(m) for b in bases for m in modes):
        return None
    shipped = e["tta"]
    chosen_on = Path((e.get("threshold_predictions") or {}).get("run") or recipe)
    if chosen_on != (RunDir(recipe).tta_dir(shipped) if shipped != "none" else recipe):
        return None
    if bool(shift) != ("loso" in card) or (
        shift and Path(shift["loso_run"]) != (RunDir(bases[0]).tta_dir(shipped) if shipped != "none" else bases[0])
    ):
        return None
    compared = [m for m in modes if m != shipped]
    head = [rs["config"]["name"], "--data $D", f"--runs {runs_dir}", f"--name {name}", "--model-out model"]
    head += [f"--set {as_set(rs['overrides'])}"] if rs.get("overrides") else []
    head += [f"--tta {shipped}"] if shipped != "none" else []
    head += [f"--compare-tta {' '.join(compared)}"] if compared else []
    tail = [f'--trained-on "{card["trained_on"]}"'] if card.get("trained_on") else []
    return "python -m training.pipeline " + " ".join(head + args + tail)


def reproduce(card: dict) -> list[str]:
    """The command that made the card's runs and model: the one pipeline command where the runs are the pipeline's,
    else each step's command (each run's named config and what it set on top, its overrides)."""
    one = pipeline_command(card)
    if one:
        return [
            "## Reproduce",
            "One command (`training.pipeline`: training, re-prediction under test-time augmentation, export, this "
            "card; each step skipped when its outputs are current):",
            "",
            "```",
            f"D={data_dir(card) or 'DATA'}",
            one,
            "```",
            "",
        ]
    out = ["## Reproduce", "```", f"D={data_dir(card) or 'DATA'}"]
    runs = [(n, card["runs"][n]) for n in runs_in(card)] + ([("loso", card["loso"])] if "loso" in card else [])
    for name, r in runs:
        folds = ""
        if name in card["runs"] and partial_note(card, name):
            folds = "   # folds " + folds_list(card["runs"][name]["oof"]["folds_done"]) + ": one --fold K each"
        out.append(
            f"python -m training.train --config {r['config']['name']} --data $D --out {r['run']}{with_set(r)}{folds}"
        )
    for name, r in runs:
        if name not in card["runs"] or not partial_note(card, name):
            out.append(f"python -m training.oof {r['run']}")
    for r in (card.get("tta") or {}).get("runs", []):
        out.append(f"python -m training.tta_oof {r['base_run']} --tta {r['mode']} --data $D --out {r['run']}")
    shift = card.get("threshold_for_shift")
    e = card["ensemble"]
    recipe = card["runs"]["recipe"]["run"]
    tp = e.get("threshold_predictions") or {}
    out.append(
        f"python -m training.export {recipe} --out model --data $D"
        + (f" --tta {e['tta']}" if e["tta"] != "none" else "")
        + (f" --threshold-run {tp['run']}" if tp and Path(tp["run"]).resolve() != Path(recipe).resolve() else "")
        + (f" --shift-run {shift['loso_run']}" if shift and shift.get("loso_run") else "")
    )
    cmd = "python -m training.card --model model " + " ".join(f"--{n} {card['runs'][n]['run']}" for n in runs_in(card))
    if "loso" in card:
        cmd += f" --loso {card['loso']['run']}"
    if card.get("tta"):
        cmd += " --tta " + " ".join(r["run"] for r in card["tta"]["runs"])
    why = card["runs"].get("plain", {}).get("partial_reason")
    cmd += f' --plain-partial-reason "{why}"' if why else ""
    cmd += f' --trained-on "{card["trained_on"]}"' if card.get("trained_on") else ""
    return out + [cmd + " --data $D", "```", ""]


def body(card: dict) -> list[str]:
    return [
        *oof_section(card),
        *compare_section(card),
        *loso_section(card),
        *shift_section(card),
        *tta_section(card),
        *threshold_section(card),
    ]
