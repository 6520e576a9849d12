"""The model card's text (model/README.md), rendered from card.json alone: every figure and every fact in it
is a key of card.json (built by training.card from the runs); a sentence that holds only under a condition
(random initialisation, an enabled recipe part, epochs chosen on the held-out fold, a leave-one-out run ...)
is written only when card.json says the condition holds.
Two layouts: card_version 2 (training.card's build: the recipe run shipped by decision, a possibly partial plain
run, nested thresholds, threshold for scanner shift, test-time augmentation; v2_body, v2_reproduce) and the older
card.json without the key (the better run shipped, pooled thresholds, selection_free beside; v1_body, reproduce),
which still renders as it was written until model/card.json is regenerated.

  python -m training.card --model model --render        (re-render README.md from card.json)
"""

from __future__ import annotations

import json

import numpy as np

from training.data import EXPERTS, OFFICIAL_CSV
from training.metrics import fmt, fmt_ci

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


def run_path(card: dict, name: str) -> str:
    """Where a run of the card was, as given to training.card (recorded by build and compare)."""
    if name == "loso":
        return card.get("loso", {}).get("run") or "runs/loso"
    return card["runs"][name].get("run") or card["compare"]["run_b" if name == "recipe" else "run_a"]


def data_dir(card: dict) -> str | None:
    return card["data"].get("dir") or card.get("selection_free", {}).get("data")


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


def plain_line(card: dict) -> str:
    rs, ps = card["runs"]["recipe"]["config"], card["runs"]["plain"]["config"]
    diff = config_diff(rs, ps)
    same = ", folds" if card.get("same_folds") else ""
    epochs = " and epochs" if "train.epochs" not in diff else ""
    partial = partial_note(card, "plain") if v2(card) else ""
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
            + (" See the selection-free figures." if "selection_free" in card else "")
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
        + (
            ". The out-of-fold figures are selection-free in the epoch; at nested thresholds they are selection-free"
            ", at the pooled threshold optimistic (chosen on the figures it is reported on)."
            if v2(card)
            else "."
        )
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


def oof_table(card: dict) -> list[str]:
    lines = [
        "| run | threshold | " + " | ".join(METRIC_NAMES[k] for k in SHOWN) + " | balanced accuracy at 0.5 |",
        "|---|---|" + "---|" * (len(SHOWN) + 1),
    ]
    for name in ("recipe", "plain"):
        r = card["runs"][name]["oof"]
        ship = " (shipped)" if name == card["shipped"] else ""
        lines.append(row(name + ship, f"{r['threshold']:.3f}", *shown(r["at_threshold"], r["ci95"], r["at_0.5"])))
    return lines


def scanner_table(card: dict) -> list[str]:
    lines = [
        "| run | scanner | figures (atypical) | slides | balanced accuracy | ROC AUC | sensitivity | specificity |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("recipe", "plain"):
        for scanner, s in card["runs"][name]["per_scanner"].items():
            m = s["metrics"]
            lines.append(row(name, scanner, figures(m), s["slides"], *shown(m, s["ci95"])))
    return lines


def fold_table(card: dict) -> list[str]:
    lines = [
        "| fold | figures (atypical) | slides | recipe balanced accuracy | recipe ROC AUC | "
        "plain balanced accuracy | plain ROC AUC |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, c in card["data"]["fold"].items():
        r, p = card["runs"]["recipe"]["oof"]["per_fold"][k], card["runs"]["plain"]["oof"]["per_fold"][k]
        lines.append(
            f"| {k} | {c['figures']} ({c['atypical']}) | {c['slides']} | {fmt(r['balanced_accuracy'])} | "
            f"{fmt(r['roc_auc'])} | {fmt(p['balanced_accuracy'])} | {fmt(p['roc_auc'])} |"
        )
    return lines


def compare_table(card: dict) -> list[str]:
    c = card["compare"]
    lines = ["| metric | plain | recipe | recipe − plain [95% interval] | P(recipe ≤ plain) |", "|---|---|---|---|---|"]
    for k, v in c["metrics"].items():
        lines.append(
            f"| {k} | {fmt(v['a'])} | {fmt(v['b'])} | {v['b_minus_a']:+.3f} "
            f"[{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}] | {v['p_b_not_better']:.3f} |"
        )
    return lines


def verdict(card: dict) -> str:
    if v2(card):
        return v2_verdict(card)
    v = card["compare"]["metrics"]["balanced_accuracy@oof_threshold"]
    lo, hi = v["ci95"]
    noise = lo <= 0 <= hi
    if card["shipped"] == "recipe":
        return (
            f"The recipe beats the plain baseline on out-of-fold balanced accuracy by {v['b_minus_a']:+.3f} "
            + (
                f"(95% interval spans 0, so on these {card['compare']['n_figures']} figures "
                "the gain is not told from noise); "
                if noise
                else "(95% interval excludes 0); "
            )
            + "the recipe run is shipped."
        )
    return (
        f"**The recipe does not beat the plain baseline** on out-of-fold balanced accuracy "
        f"({v['b_minus_a']:+.3f}, 95% interval [{lo:+.3f}, {hi:+.3f}]"
        + (", not told from noise" if noise else "")
        + "), so the plain run is shipped, as the better one."
    )


def loso_table(card: dict) -> list[str]:
    lo = card["loso"]
    column = (loso_column(card) or "domain").lower()
    lines = [
        f"| held-out {column} | figures (atypical) | balanced accuracy at {lo['threshold']:.3f} | ROC AUC | "
        "sensitivity | specificity | balanced accuracy at 0.5 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, h in lo["held_out"].items():
        m = h["at_threshold"]
        lines.append(row(name.split("=", 1)[-1], figures(m), *shown(m, h["ci95"], h["at_0.5"])))
    p = lo["pooled"]
    lines.append(row("pooled", figures(p), *shown(p["at_threshold"], p["ci95"], p["at_0.5"])))
    return lines


def loso_section(card: dict) -> list[str]:
    if "loso" not in card:
        return []
    column = (loso_column(card) or "domain").lower()
    same = not config_diff(
        card["runs"]["recipe"]["config"],
        card["loso"]["config"],
        ignore=("name",) + tuple(k for k in leaves(card["loso"]["config"]) if k.startswith("splits.")),
    )
    which = "The recipe config" if same else f"The `{card['loso']['config']['name']}` config"
    return [
        f"## Leave one {column} out",
        f"{which} trained {len(card['loso']['held_out'])} times, each time without one {column} and tested on it "
        "(the threshold chosen on the pooled predictions, so it favours the pooled figure):",
        "",
        *loso_table(card),
        "",
    ]


def ema_line(card: dict, runs: dict) -> list[str]:
    decays = sorted({d for r in runs.values() for d in r.get("ema_decay", [])})
    if not decays:
        return []
    configured = {r["config"]["ema"]["decay"] for r in runs.values() if r.get("ema_decay")}
    notes = ["the configured value"] if set(decays) == configured else []
    shipped = card["runs"][card["shipped"]]
    if shipped.get("ema_decay"):
        notes.append(f"the shipped run's: {', '.join(f'{d:g}' for d in shipped['ema_decay'])}")
    return [
        f"EMA decay in effect at the end of the honest runs: {', '.join(f'{d:g}' for d in decays)}"
        + (f" ({'; '.join(notes)})" if notes else "")
        + ".",
        "",
    ]


def selection_free_section(card: dict) -> list[str]:
    sf = card.get("selection_free")
    if not sf:
        return []
    sh = sf["shipped"]["oof"]
    nb = sh["bootstrap"]["n_boot"]
    nested = sh["nested"]
    thr = sorted(nested["thresholds"].values())
    on_fold = epochs_on_fold(card)
    out = [
        "## Selection-free figures",
        "Which figures chose nothing: a figure is **selection-free** when neither the epoch, nor the threshold, "
        "nor the run was chosen on it. The out-of-fold figures further down are **optimistic**: "
        + ("each fold's epoch was chosen on that fold's own figures, " if on_fold else "")
        + "the threshold on the pooled figures, and the shipped run on the same figures. Brackets here: 95% "
        "intervals by a slide-level bootstrap "
        f"({nb} resamples of the {card['data']['slides']} slides; thresholds held fixed).",
        "",
        "The shipped members (same model, `oof.csv`), threshold chosen two ways:",
        "",
        "| threshold | value | " + " | ".join(METRIC_NAMES[k] for k in SHOWN) + " | selection-free? |",
        "|---|---|" + "---|" * len(SHOWN) + "---|",
        row(
            "pooled (optimistic: chosen on these figures)",
            f"{sh['threshold']:.3f}",
            *shown(sh["at_threshold"], sh["ci95"]),
            "no",
        ),
        row(
            "nested (each fold's from the other folds)",
            f"{thr[0]:.3f}–{thr[-1]:.3f}",
            *shown(nested["at_nested_threshold"], nested["ci95"]),
            "threshold yes; epoch no (chosen on the fold)" if on_fold else "yes",
        ),
        "",
    ]
    if "by_vote" in sh:
        out += [
            f"By expert agreement (unanimous: all {EXPERT_COUNT} experts voted alike; split: one dissented), "
            "shipped members, nested thresholds:",
            "",
            "| vote | figures (atypical) | ROC AUC | balanced accuracy | sensitivity | specificity |",
            "|---|---|---|---|---|---|",
        ]
        for v, g in sh["by_vote"].items():
            m = g["at_nested_threshold"]
            keys = ("roc_auc", "balanced_accuracy", "sensitivity", "specificity")
            out.append(row(v, figures(m), *shown(m, g["ci95_nested"], keys=keys)))
        out.append("")
    runs = sf.get("runs", {})
    done = {n: r for n, r in runs.items() if "oof" in r}
    if done:
        out += [
            "Runs trained with an honest `train.selection` (the epoch never chosen on the held-out fold), "
            "pooled out-of-fold, nested thresholds (selection-free) and, beside them, the pooled threshold "
            "(optimistic):",
            "",
            "| run | selection | "
            + " | ".join(METRIC_NAMES[k] for k in SHOWN)
            + " | balanced accuracy, pooled threshold | balanced accuracy at 0.5 |",
            "|---|---|" + "---|" * (len(SHOWN) + 2),
        ]
        for n, r in done.items():
            o = r["oof"]
            if "nested" not in o:
                continue
            pooled_ba = fmt(o["at_threshold"]["balanced_accuracy"])
            out.append(
                row(
                    n,
                    r["selection"],
                    *shown(o["nested"]["at_nested_threshold"], o["nested"]["ci95"]),
                    pooled_ba,
                    fmt(o["at_0.5"]["balanced_accuracy"]),
                )
            )
        out.append("")
        for n, r in done.items():
            if "by_vote" in r["oof"]:
                votes = "; ".join(
                    f"{v} ROC AUC {fmt(g['at_threshold']['roc_auc'])}" for v, g in r["oof"]["by_vote"].items()
                )
                out.append(f"- {n}: {votes}")
        out.append("")
    partial = {n: r for n, r in runs.items() if "oof" not in r}
    for n, r in partial.items():
        if not r["per_fold"]:
            out += [f"Run `{n}` ({r['selection']}, {r['splits']}): no fold finished when this card was written.", ""]
            continue
        out += [
            f"Run `{n}` ({r['selection']}, {r['splits']}): {len(r['folds_done'])} of {len(r['folds'])} folds "
            "finished when this card was written; the finished folds at the fixed threshold 0.5 (chosen "
            "by nobody), beside the shipped members on the same figures"
            + (" (their epoch chosen on them)" if on_fold else "")
            + config_note(card, r)
            + ". The table after it measures the selection's share within the same runs:",
            "",
            "| fold | honest balanced accuracy | honest ROC AUC | shipped balanced accuracy | shipped ROC AUC |",
            "|---|---|---|---|---|",
        ]
        for k, e in r["per_fold"].items():
            h, s_ = e["honest@0.5"], e.get("shipped@0.5", {})
            out.append(
                f"| {k} | {fmt(h['balanced_accuracy'])} | {fmt(h['roc_auc'])} | "
                f"{fmt(s_.get('balanced_accuracy'))} | {fmt(s_.get('roc_auc'))} |"
            )
        out.append("")
    gaps = [(n, k, e) for n, r in runs.items() for k, e in r.get("epoch_choice", {}).items()]
    if gaps:
        bal = [e["best_balanced_accuracy@0.5"] - e["kept_balanced_accuracy@0.5"] for _, _, e in gaps]
        auc = [e["best_roc_auc"] - e["kept_roc_auc"] for _, _, e in gaps]
        out += [
            "What choosing the epoch on the held-out fold would have reported, in the same honest folds "
            "(held-out figures of every epoch, threshold 0.5): the gap is the optimism of that choice.",
            "",
            "| run | fold | kept epoch | balanced accuracy | ROC AUC | best epoch on the fold | its balanced "
            "accuracy | best ROC AUC |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for n, k, e in gaps:
            out.append(
                f"| {n} | {k} | {e['kept_epoch']} | {fmt(e['kept_balanced_accuracy@0.5'])} | "
                f"{fmt(e['kept_roc_auc'])} | {e['best_epoch_on_held_out']} | "
                f"{fmt(e['best_balanced_accuracy@0.5'])} | {fmt(e['best_roc_auc'])} |"
            )
        out += [
            "",
            f"Mean optimism over {len(gaps)} fold(s): balanced accuracy {np.mean(bal):+.3f}, ROC AUC "
            f"{np.mean(auc):+.3f}.",
            "",
        ]
    out += ema_line(card, runs)
    if sf.get("not_run"):
        out += [f"Not run when this card was written (no figures): {', '.join(sf['not_run'])}.", ""]
    return out


def epochs_on_fold(card: dict) -> bool:
    """The shipped run chose each fold's epoch on that fold's own figures."""
    return selection_of(card["runs"][card["shipped"]]["config"]) == "validation"


def config_note(card: dict, run: dict) -> str:
    """What else than train.selection differs between the shipped run's config and an honest run's."""
    diff = config_diff(card["runs"][card["shipped"]]["config"], run["config"], ignore=("name", "train.selection"))
    return f"; their configs also differ in `{as_set(diff)}`" if diff else ""


def learned(card: dict) -> bool:
    """The shipped run's out-of-fold ROC AUC interval lies above chance."""
    ci = card["runs"][card["shipped"]]["oof"]["ci95"].get("roc_auc")
    return bool(ci) and ci[0] > 0.5


def with_set(run: dict) -> str:
    """' --set ...' for what a run set on top of its named config (recorded by build), or ''."""
    return f" --set {as_set(run['overrides'])}" if run.get("overrides") else ""


def reproduce(card: dict) -> list[str]:
    rs = card["runs"]["recipe"]["config"]
    recipe, plain = run_path(card, "recipe"), run_path(card, "plain")
    train = f"python -m training.train --config {rs['name']} --data $D --out"
    # the plain run: the recipe's command, with what differs from the recipe's config
    plain_set = (card["runs"]["recipe"].get("overrides") or {}) | config_diff(rs, card["runs"]["plain"]["config"])
    out = [
        "## Reproduce",
        "```",
        f"D={data_dir(card) or 'DATA'}",
        f"{train} {recipe}{with_set(card['runs']['recipe'])}",
        f"python -m training.train --config {card['runs']['plain']['config']['name']} --data $D --out {plain} \\",
        f"    --set {as_set(plain_set)}",
    ]
    card_cmd = f"python -m training.card --model model --recipe {recipe} --plain {plain}"
    if "loso" in card:
        lo = card["loso"]
        kind = (lo["config"].get("splits") or {}).get("kind") or (
            f"leave_{loso_column(card).lower()}_out" if loso_column(card) else "KIND"
        )
        lo_set = {k: v for k, v in (lo.get("overrides") or {}).items() if k != "splits.kind"} | {"splits.kind": kind}
        out.append(
            f"python -m training.train --config {lo['config']['name']} --data $D --out {run_path(card, 'loso')} "
            f"--set {as_set(lo_set)}"
        )
        card_cmd += f" --loso {run_path(card, 'loso')}"
    others = "the other two" if "loso" in card else "the other one"
    out += [
        f"python -m training.oof {recipe}   # and {others}",
        f"python -m training.export {run_path(card, card['shipped'])} --out model",
        card_cmd,
    ]
    sf = card.get("selection_free")
    if sf:
        honest = {n: r["run"] for n, r in sf.get("runs", {}).items()}
        paths = {n: honest.get(n, f"runs/honest_{n}") for n in ("recipe", "plain", "loso", "soft")}
        sels = sorted({r["selection"] for r in sf.get("runs", {}).values()})
        old = selection_of(card["runs"][card["shipped"]]["config"])
        out += [
            f"# the selection-free figures (train.selection {' / '.join(sels) or 'last'}"
            + (f"; the runs above used {old}" if old not in sels else "")
            + "):",
            f"{train} {paths['recipe']}   # and plain, loso, soft (--set data.soft_labels=true)",
            "python -m training.card --model model --selection-free --data $D "
            + " ".join(f"--honest-{n} {p}" for n, p in paths.items()),
        ]
    return out + ["```", ""]


def render(card: dict) -> str:
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
        "# Model card: the shipped default ensemble",
        "",
        "<!-- rendered by `python -m training.card` from card.json; edit the code, not this file -->",
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
            "`python -m training.train --config convnext_small --data DATA --out runs/cnx` (or `lunit_vit_small`), "
            "then `python -m training.export runs/cnx --out model`.",
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
        recipe_parts(card),
        plain_line(card),
        selection_line(card),
        "- Training time (wall clock, the sum of the epochs)"
        f"{' on ' + card['trained_on'] if card.get('trained_on') else ''}: "
        f"recipe {card['runs']['recipe']['train_minutes']} min, plain {card['runs']['plain']['train_minutes']} min"
        + (f" ({folds_count(card, 'plain')})" if v2(card) and partial_note(card, "plain") else "")
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
        *(v2_fold_table(card) if v2(card) else fold_table(card)),
        "",
        *(v2_body(card) if v2(card) else v1_body(card)),
        "## Files",
        *[f"- `{m['file']}`: fold {m['fold']}, {m['bytes'] / 1e6:.1f} MB" for m in e["members"]],
        "- `ensemble.json`: the manifest (`amf/manifest.py`), with the full config and out-of-fold metrics "
        "as provenance"
        + (f"; ONNX against torch, largest |logit difference| {worst:.1e}" if worst is not None else ""),
        "- `card.json`: every figure on this card; `oof.csv`: the shipped run's out-of-fold probabilities.",
        "",
        "## Intended use",
        "- The shipped default of the toolkit: `make demo`, the container's tests, the benchmark, and a "
        "baseline to beat. It shows the whole path (training, export, container) working on real data.",
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
        + ("; the nested-threshold figures chose nothing." if v2(card) and not epochs_on_fold(card) else "."),
        *(
            [
                "- For a submission, retrain on the full official set (every tumour type and species) with `training/` "
                "and a pretrained backbone."
            ]
            if demo
            else []
        ),
        "",
        *(v2_reproduce(card) if v2(card) else reproduce(card)),
    ]
    return "\n".join(out)


# ---- the card of card_version 2 (training.card's build since issue 12): shipped run decided before the figures,
# a possibly partial plain run, nested thresholds, the threshold for scanner shift, test-time augmentation ----------


def v2(card: dict) -> bool:
    return card.get("card_version", 1) >= 2


def folds_list(folds) -> str:
    return ", ".join(str(k) for k in folds)


def partial_note(card: dict, name: str) -> str:
    """'' for a complete run, else which of its folds were trained (and why, when card.json says)."""
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


def v2_oof_table(card: dict) -> list[str]:
    lines = [
        "| run | threshold | selection-free? | " + " | ".join(METRIC_NAMES[k] for k in SHOWN) + " |",
        "|---|---|---|" + "---|" * len(SHOWN),
    ]
    free = "no (epoch chosen on the fold)" if epochs_on_fold(card) else "yes"
    for name in ("recipe", "plain"):
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


def v2_scanner_table(card: dict) -> list[str]:
    lines = [
        "| run | scanner | figures (atypical) | slides | balanced accuracy, nested | ROC AUC | sensitivity, nested | "
        "specificity, nested | balanced accuracy, pooled threshold |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("recipe", "plain"):
        for scanner, s in card["runs"][name]["per_scanner"].items():
            m, n = s["metrics"], s.get("at_nested_threshold")
            cells = shown(n, s["ci95_nested"]) if n else ["–"] * len(SHOWN)
            cells[1] = with_ci(m, s["ci95"], "roc_auc")
            lines.append(row(name, scanner, figures(m), s["slides"], *cells, fmt(m["balanced_accuracy"])))
    return lines


def v2_fold_table(card: dict) -> list[str]:
    lines = [
        "| fold | figures (atypical) | slides | recipe balanced accuracy | recipe ROC AUC | "
        "plain balanced accuracy | plain ROC AUC |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, c in card["data"]["fold"].items():
        cells = []
        for name in ("recipe", "plain"):
            m = card["runs"][name]["oof"]["per_fold"].get(k)
            cells += [fmt(m["balanced_accuracy"]), fmt(m["roc_auc"])] if m else ["not trained", "not trained"]
        lines.append(row(k, f"{c['figures']} ({c['atypical']})", c["slides"], *cells))
    return lines


def vote_lines(card: dict) -> list[str]:
    out = []
    for name in ("recipe", "plain"):
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
    gaps = [e for name in ("recipe", "plain") for e in card["runs"][name].get("epoch_choice", {}).values()]
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


def v2_oof_section(card: dict) -> list[str]:
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
        + ".",
        "",
        *v2_oof_table(card),
        "",
        "Per scanner (each fold at its nested threshold; ROC AUC needs none):",
        "",
        *v2_scanner_table(card),
        "",
        *vote_lines(card),
        *epoch_choice_line(card),
    ]


def v2_verdict(card: dict) -> str:
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


def v2_compare_section(card: dict) -> list[str]:
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
        v2_verdict(card),
        "",
    ]


def v2_loso_section(card: dict) -> list[str]:
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
        f"{', '.join(t['scanners'])}): the **oof** rule maximises balanced accuracy on the pooled out-of-fold "
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
    if e.get("threshold_predictions"):
        lines[-1] += f" The shipped threshold was chosen on the predictions of `{e['threshold_predictions']}`."
    return lines + [""]


def v2_threshold_section(card: dict) -> list[str]:
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


def v2_reproduce(card: dict) -> list[str]:
    """The commands that made the card's runs: each run's named config and what it set on top (its overrides)."""
    out = ["## Reproduce", "```", f"D={data_dir(card) or 'DATA'}"]
    runs = [(n, card["runs"][n]) for n in ("recipe", "plain")] + ([("loso", card["loso"])] if "loso" in card else [])
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
    out.append(
        f"python -m training.export {card['runs']['recipe']['run']} --out model --data $D"
        + (f" --shift-run {shift['loso_run']}" if shift and shift.get("loso_run") else "")
        + (f" --tta {e['tta']}" if e["tta"] != "none" else "")
    )
    cmd = "python -m training.card --model model " + " ".join(
        f"--{n} {card['runs'][n]['run']}" for n in ("recipe", "plain")
    )
    if "loso" in card:
        cmd += f" --loso {card['loso']['run']}"
    if card.get("tta"):
        cmd += " --tta " + " ".join(r["run"] for r in card["tta"]["runs"])
    why = card["runs"]["plain"].get("partial_reason")
    cmd += f' --plain-partial-reason "{why}"' if why else ""
    cmd += f' --trained-on "{card["trained_on"]}"' if card.get("trained_on") else ""
    return out + [cmd + " --data $D", "```", ""]


def v1_body(card: dict) -> list[str]:
    """The figures of a card from before card_version 2 (the shipped run chosen on out-of-fold balanced accuracy,
    pooled thresholds, the selection-free figures beside): kept so that such a card.json still renders."""
    d, e = card["data"], card["ensemble"]
    return [
        *selection_free_section(card),
        "## Out-of-fold figures" + (" (optimistic)" if "selection_free" in card else ""),
        f"Pooled out-of-fold predictions of the {len(e['members'])} members ({d['figures']} figures), each "
        "figure scored by the one member that never saw it"
        + (
            (
                ", the epoch chosen on it and the threshold on the pooled figures"
                if epochs_on_fold(card)
                else ", the threshold chosen on the pooled figures"
            )
            if "selection_free" in card
            else ""
        )
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
        *loso_section(card),
        "## Threshold",
        f"P(atypical) ≥ {e['threshold']:.3f}: the value that maximises balanced accuracy on the shipped run's "
        "pooled out-of-fold predictions. The container applies it to the members' mean probability, which "
        "is an estimate: each out-of-fold probability came from one member alone. Balanced accuracy at 0.5 "
        "is given beside it.",
        "",
    ]


def v2_body(card: dict) -> list[str]:
    return [
        *v2_oof_section(card),
        *v2_compare_section(card),
        *v2_loso_section(card),
        *shift_section(card),
        *tta_section(card),
        *v2_threshold_section(card),
    ]
