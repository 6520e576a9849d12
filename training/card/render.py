"""The model card's text (model/README.md), rendered from card.json alone through one template, card.md.

The template holds every sentence and reads card.json itself; this module gives it a few facts it cannot read off
directly (facts()) and the tables (one small function each). card.json is training.card's build, card_version 3;
one of an older layout is refused with one error (python -m training.card --refresh measures the new facts again
from the model folder and the data; or rebuild it from the runs).

  python -m training.card --model model --render        (re-render README.md from card.json)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from amf import AmfError
from training import augment
from training.card.reproduce import candidate_args, in_runs, overlap_args, pipeline_runs, threshold_run
from training.config import as_set
from training.config import diff as config_diff
from training.data import EXPERTS, OFFICIAL_CSV
from training.metrics import fmt, fmt_ci

CARD_VERSION = 3  # card.json's layout, written by training.card's build and refresh: the only one rendered
TEMPLATE = Path(__file__).with_name("card.md")
RENDERED_MARK = "<!-- rendered by `python -m training.card`"  # the card's second line (card.md): how it was made
SHOWN = ("balanced_accuracy", "roc_auc", "sensitivity", "specificity")
METRIC_NAMES = dict(zip(SHOWN, ("balanced accuracy", "ROC AUC", "sensitivity", "specificity")))
EXPERT_COUNT = {2: "two", 3: "three", 4: "four"}.get(len(EXPERTS), str(len(EXPERTS)))
STRATUM_WORDS = {"label": "label", "Tumor": "tumour type", "source": "source"}  # training.splits.STRATA's columns


def render(card: dict) -> str:
    import jinja2

    if card.get("card_version", 1) < CARD_VERSION:  # an older layout: its keys are not these
        raise AmfError(
            f"card.json of an older layout (no card_version {CARD_VERSION}): python -m training.card --model MODEL "
            "--refresh [--data DATA] measures it again from the model folder (card_version 2), or rebuild it with "
            "python -m training.card --model MODEL --recipe RUN [--plain RUN] [--loso RUN] [--tta RUN ...] --data DATA"
        )
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.undefined = jinja2.StrictUndefined  # a key the template names and card.json lacks is an error, not ""
    env.globals |= {f.__name__: f for f in (fmt, plural, folds_list, as_set, partial_note, in_runs)}
    env.globals |= {"RENDERED_MARK": RENDERED_MARK, "OFFICIAL_CSV": OFFICIAL_CSV, "EXPERT_COUNT": EXPERT_COUNT}
    tables = {f.__name__: (lambda f=f: "\n".join(f(card))) for f in TABLES}
    return env.from_string(TEMPLATE.read_text()).render(card=card, **facts(card), **tables)


def facts(card: dict) -> dict:
    """What the template reads besides card.json: the runs it holds, how each chose its epochs, and the facts that
    compare configs or compute over several of card.json's entries."""
    rs, loso = card["runs"]["recipe"]["config"], card.get("loso")
    selection = {n: selection_of(r["config"]) for n, r in card["runs"].items()}
    gaps = [g for n in runs_in(card) for g in card["runs"][n].get("epoch_choice", {}).values()]
    bal = [g["best_balanced_accuracy@0.5"] - g["kept_balanced_accuracy@0.5"] for g in gaps]
    auc = [g["best_roc_auc"] - g["kept_roc_auc"] for g in gaps]
    parity = [x for v in (card["ensemble"].get("parity") or {}).values() for k, x in v.items() if "logit_diff" in k]
    half = [v["fp16"] for v in (card["ensemble"].get("parity") or {}).values() if isinstance(v.get("fp16"), dict)]
    half = [x for h in half for k, x in h.items() if k.startswith("max_abs_prob_diff") and x is not None]
    values = card["data"].get("values", {})
    select = card["runs"][card["shipped"]]["config"]["train"].get("select")
    return {
        "runs": runs_in(card),
        "fold_nested": fold_nested(card),
        "tta_modes": sorted({r["mode"] for r in (card.get("tta") or {}).get("runs", [])}),
        "selection": selection[card["shipped"]],
        "all_validation": set(selection.values()) == {"validation"},
        "validation_others": sorted(n for n, s in selection.items() if s == "validation"),
        "select_name": METRIC_NAMES.get(select or "", select),
        "augmentation": augment.card_words(rs.get("augment") or {}),
        "single_valued": [c for c in rs["align"]["columns"] if values.get(c, 2) < 2],
        "aligning": [c for c in rs["align"]["columns"] if values.get(c, 2) >= 2],
        "plain_diff": config_diff(rs, card["runs"]["plain"]["config"]) if "plain" in card["runs"] else {},
        "epoch_gaps": (np.mean(bal), np.mean(auc), len(gaps)) if gaps else None,  # choosing on the held-out fold
        "loso_column": loso_column(card),
        "loso_domain": loso_domain(card),
        "loso_same_config": bool(loso) and not beyond_splits(rs, loso["config"]),
        "worst_parity": max(parity, default=None),
        "worst_fp16": max(half, default=None),  # fp16 against fp32, |P(atypical) difference| on real patches
        "pipeline": pipeline_runs(card),
        "threshold_run": threshold_run(card),
        "verdict": verdict(card),
        "candidate_args": candidate_args(card),
        "overlap_args": overlap_args(card),
        "strata": " × ".join(STRATUM_WORDS.get(c, c) for c in card["data"]["folds"].get("strata", [])),
        "roles": prediction_roles(card),
    }


def prediction_roles(card: dict) -> dict:
    """Per run whose predictions the model folder ships (by its name in card.json): what chose on them, for the
    Files list: ("threshold", RULE) for the shipped threshold's source (the run whose rule won), ("shift", RULE) for
    the other rule's run of the threshold for shift."""
    source, shift, roles = card["ensemble"].get("threshold_predictions") or {}, card.get("threshold_for_shift"), {}
    for rule in ("oof", "loso"):
        if (shift or {}).get(f"{rule}_run"):
            roles[shift[f"{rule}_run"]] = ("shift", rule)
    if source.get("run"):
        roles[source["run"]] = ("threshold", source.get("rule", "oof"))
    return roles


def selection_of(cfg: dict) -> str:
    """train.selection of a config summary; a run from before the key existed chose on validation."""
    return cfg["train"].get("selection") or "validation"


def runs_in(card: dict) -> list[str]:
    """The runs the card holds, in table order: the recipe run, and the plain control when one was given."""
    return [name for name in ("recipe", "plain") if name in card["runs"]]


def beyond_splits(recipe: dict, other: dict) -> dict:
    """Where the config summary OTHER differs from the recipe's besides its name and its splits (a leave-one-out run
    or a candidate of another split kind is still the recipe when this is empty)."""
    return config_diff(recipe, other, ignore=("name", *(f"splits.{k}" for k in other["splits"])))


def loso_domain(card: dict) -> str:
    """The held-out domain in words ("scanner", "source"; "domain" without a leave-one-out run)."""
    return (loso_column(card) or "domain").lower()


def loso_column(card: dict) -> str | None:
    """The domain the leave-one-out run held out (its fold names are COLUMN=VALUE)."""
    names = list(card.get("loso", {}).get("held_out", {}))
    return names[0].split("=", 1)[0] if names and "=" in names[0] else None


def partial_note(card: dict, name: str) -> str:
    """'' for a complete run (or one the card does not hold), else which of its folds were trained (and why, when
    card.json says)."""
    o = card["runs"].get(name, {}).get("oof")
    if not o or o["folds_done"] == o["folds"]:
        return ""
    done, why = o["folds_done"], card["runs"][name].get("partial_reason")
    note = f"trained on fold{'s' if len(done) > 1 else ''} {folds_list(done)} of {len(o['folds'])} only"
    return note + (f" ({why})" if why else "")


def verdict(card: dict) -> str:
    """The recipe against the plain control in one sentence (the card's, and training.card's last line)."""
    if "compare" not in card:
        return f"No plain control run: nothing to compare the recipe with. Shipped: {card['shipped_rule']}."
    m = card["compare"]["metrics"]
    key = next(k for k in ("balanced_accuracy@nested_thresholds", "balanced_accuracy@0.5") if k in m)
    v, (lo, hi) = m[key], m[key]["ci95"]
    told = "spans 0, so the difference is not told from noise" if lo <= 0 <= hi else "excludes 0"
    return (
        f"Recipe − plain, balanced accuracy at {'nested thresholds' if 'nested' in key else '0.5'}: "
        f"{v['b_minus_a']:+.3f} [{lo:+.3f}, {hi:+.3f}] on {card['compare']['n_figures']} figures; its 95% interval "
        f"{told}. Shipped: {card['shipped_rule']}."
    )


# ---- cells and rows ------------------------------------------------------------------------------------------


def with_ci(m: dict, ci: dict, key: str) -> str:
    return f"{fmt(m[key])} {fmt_ci(ci.get(key), missing='[–, –]')}"


def shown(m: dict, ci: dict, auc: tuple | None = None) -> list[str]:
    """The SHOWN metrics of M with their intervals CI; ROC AUC from AUC (metrics, intervals) where given."""
    return [with_ci(*(auc if auc and k == "roc_auc" else (m, ci)), k) for k in SHOWN]


def row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def figures(m: dict) -> str:
    return f"{m['n']} ({m['n_atypical']})"


def plural(n, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def folds_list(folds) -> str:
    return ", ".join(str(k) for k in folds)


def threshold_range(thresholds: dict) -> str:
    v = sorted(thresholds.values())
    return f"{v[0]:.3f}" if f"{v[0]:.3f}" == f"{v[-1]:.3f}" else f"{v[0]:.3f}–{v[-1]:.3f}"


def difference(v: dict | None) -> list[str]:
    """A paired comparison's cells: A → B, B − A [interval], P(B ≤ A) ("–" where it was not computed)."""
    if not v:
        return ["–"] * 3
    lo, hi = v["ci95"]
    return [
        f"{fmt(v['a'])} → {fmt(v['b'])}",
        f"{v['b_minus_a']:+.3f} [{lo:+.3f}, {hi:+.3f}]",
        f"{v['p_b_not_better']:.3f}",
    ]


# ---- the tables: each a function of card.json to its rows (their heads are in the template) ----------------


def fold_nested(card: dict) -> dict:
    """Per run: whether its card.json holds each fold at its nested threshold (cards built before it: pooled only)."""
    return {n: "per_fold_nested" in card["runs"][n]["oof"] for n in runs_in(card)}


def fold_rows(card: dict) -> list[str]:
    lines = []
    for k, c in card["data"]["fold"].items():
        cells = []
        for n, nested in fold_nested(card).items():
            o = card["runs"][n]["oof"]
            m = o["per_fold"].get(k)
            if not m:
                shipped = (card.get("shipped_folds") or {}).get("folds")
                cells += ["not shipped" if n == "recipe" and shipped else "not trained"] * (4 if nested else 2)
                continue
            if nested:
                cells += [f"{o['nested']['thresholds'][k]:.3f}", fmt(o["per_fold_nested"][k]["balanced_accuracy"])]
            cells += [fmt(m["balanced_accuracy"]), fmt(m["roc_auc"])]
        lines.append(row(k, f"{c['figures']} ({c['atypical']})", c["slides"], *cells))
    return lines


def oof_rows(card: dict) -> list[str]:
    free = (
        "no (epoch chosen on the fold)"
        if selection_of(card["runs"][card["shipped"]]["config"]) == "validation"
        else "yes"
    )
    lines = []
    for name in runs_in(card):
        r = card["runs"][name]["oof"]
        label = name + (" (shipped)" if name == card["shipped"] else "")
        label += f", folds {folds_list(r['folds_done'])}" if partial_note(card, name) else ""
        if "nested" in r:
            n, at = r["nested"], f"nested {threshold_range(r['nested']['thresholds'])}"
            lines.append(row(label, at, free, *shown(n["at_nested_threshold"], n["ci95"])))
        pooled = shown(r["at_threshold"], r["ci95"])
        lines.append(row(label, f"pooled {r['threshold']:.3f}", "no (chosen on these figures)", *pooled))
        lines.append(row(label, "0.5", free, *(fmt(r["at_0.5"][k]) for k in SHOWN)))
    return lines


def scanner_rows(card: dict) -> list[str]:
    lines = []
    for name in runs_in(card):
        for scanner, s in card["runs"][name]["per_scanner"].items():
            m, n = s["metrics"], s.get("at_nested_threshold")
            auc = with_ci(m, s["ci95"], "roc_auc")
            cells = shown(n, s["ci95_nested"], (m, s["ci95"])) if n else ["–", auc, "–", "–"]
            lines.append(row(name, scanner, figures(m), s["slides"], *cells, fmt(m["balanced_accuracy"])))
    return lines


def compare_rows(card: dict) -> list[str]:
    return [row(k, fmt(v["a"]), fmt(v["b"]), *difference(v)[1:]) for k, v in card["compare"]["metrics"].items()]


def loso_rows(card: dict) -> list[str]:
    lo, p, lines = card["loso"], card["loso"]["pooled"], []
    nested = "at_nested_threshold" in next(iter(lo["held_out"].values()))
    for name, h in [*((n.split("=", 1)[-1], h) for n, h in lo["held_out"].items()), ("pooled", None)]:
        r = p if h is None else h
        pooled = (r["at_threshold"], r["ci95"])
        if not nested:
            first, cells = [], shown(*pooled)
        elif h is None:
            first = [threshold_range(p["nested"]["thresholds"])]
            cells = shown(p["nested"]["at_nested_threshold"], p["nested"]["ci95"], pooled)
        else:
            first, cells = [f"{h['nested_threshold']:.3f}"], shown(h["at_nested_threshold"], h["ci95_nested"], pooled)
        at = (fmt(r["at_threshold"]["balanced_accuracy"]), fmt(r["at_0.5"]["balanced_accuracy"]))
        lines.append(row(name, figures(p if h is None else h["at_threshold"]), *first, *cells, *at))
    return lines


def shift_rows(card: dict) -> list[str]:
    t, lines = card["threshold_for_shift"], []
    for rule, r in t["rules"].items():
        on, n = r["on"], r["nested_loso"]
        cells = [
            with_ci(on[s], on[s]["ci95"], k) for s, k in (("oof", "balanced_accuracy"), ("loso", "balanced_accuracy"))
        ]
        cells += [with_ci(on["loso"], on["loso"]["ci95"], "sensitivity"), with_ci(n, n["ci95"], "balanced_accuracy")]
        lines.append(row(rule + (" (shipped)" if rule == t["chosen"] else ""), f"{r['threshold']:.3f}", *cells))
    return lines


def tta_rows(card: dict) -> list[str]:
    lines = []
    for r in card["tta"]["runs"]:
        c = r["compare"]["metrics"]
        cells = [*difference(c.get("roc_auc")), *difference(c.get("balanced_accuracy@nested_thresholds"))]
        base = f"leave-one-{loso_domain(card)}-out" if r["base"] == "loso" else r["base"]
        lines.append(row(f"{base} (`{r['base_run']}`)", r["mode"], folds_list(r["compare"]["folds"]), *cells))
    return lines


def candidate_rows(card: dict) -> list[str]:
    lines, rs = [], card["runs"]["recipe"]["config"]
    for c in card["candidates"]["runs"]:
        differs = beyond_splits(rs, c["config"])
        base = f"leave-one-{loso_domain(card)}-out run" if c["base"] == "loso" else "recipe run"
        m = c["compare"]["metrics"]
        cells = [*difference(m.get("roc_auc")), *difference(m.get("balanced_accuracy@nested_thresholds"))]
        lines.append(row(f"`{Path(c['run']).name}`", f"`--set {as_set(differs)}`" if differs else "–", base, *cells))
    return lines


TABLES = (fold_rows, oof_rows, scanner_rows, compare_rows, loso_rows, shift_rows, tta_rows, candidate_rows)
