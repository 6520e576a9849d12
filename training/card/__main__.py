"""The model card of an exported ensemble: every figure measured from the runs, none typed by hand.

  python -m training.card --model model --recipe RUN [--plain RUN] [--loso RUN] [--tta TTA_RUN ...] [--data DATA]
                          [--n-boot 2000] [--trained-on TEXT] [--benchmark NAME]
                          [--candidates RUN ... --candidate-rule TEXT] [--overlap DATA ...] [--config-note TEXT]
  python -m training.card --model model --render        (re-render README.md from card.json only)
  python -m training.card --model model --refresh [--data DATA] [--overlap DATA ...] [--config-note TEXT]
                                                        (measure again what the model folder and the data give)

The shipped run is --recipe, decided before any figure (the recipe is the method; the plain run is its control):
MODEL_DIR must hold its export (python -m training.export RUN --out MODEL_DIR [--shift-run LOSO]), else one error.
An export of some folds only (--folds): the recipe run's figures, and its comparisons, are those folds' alone. A
member trained on all figures (a run of splits.kind all, exported with --threshold-from CV_RUN): --recipe is CV_RUN,
whose folds, figures and threshold the card reports as the cross-validated run's (the member has no held-out figure).
Each run's figures are training.results.oof's, recomputed here without writing into the run: pooled threshold
(optimistic: chosen on the figures it is reported on), nested thresholds (each fold's chosen on the other folds:
selection-free when the run's train.selection is last or inner) and 0.5, with slide-level bootstrap intervals, per
fold and per scanner. --plain may be partial (some folds not trained): its figures are its finished folds, and the
paired comparison with the recipe (training.results.compare) is on the folds both finished. Without --plain (a
pipeline that trained no control) the card holds the recipe run alone: no comparison, no verdict on the recipe's
parts.
--loso: the leave-one-scanner-out run, each held-out scanner at its nested threshold (chosen on the other scanners),
at the pooled threshold and at 0.5.
--tta: training.results.tta_oof runs of --recipe or --loso, each paired with the run it re-predicted (from_run).
--data: the data folder (official or AMi-Br layout), for the figures by expert agreement where the runs' tables lack
the votes.
--candidates: the other recipes tried before this one, each a run of the same splits.kind as --recipe or --loso
(a candidate compared on leave-one-out runs is trained that way); the card counts them and pairs each with the shipped
recipe's run of that kind; --candidate-rule says how one was chosen (written before their figures).
--benchmark: a published protocol the runs followed (training/card/benchmarks/NAME.yaml): the card states it and
prints its table as the paper's figures; refused when the runs trained on another number of figures.
--overlap: other data folders (a layout training reads), each checked by content against the figures the model
trained on (training_fingerprints.bin): the card counts them (and, with --benchmark, the test-split figures there).
--config-note: how the config's values were chosen (e.g. after figures on which data), for the card.
--refresh: without the runs (they may be gone): the manifest's facts, the recipe run's config, how the folds were
made (oof.csv against --data, default the card's data folder), the TTA rule's pick, the benchmark, --overlap; every
path made portable; the runs' figures stay as card.json has them. Upgrades a card.json of card_version 2.
Every path card.json records is portable (training/export/paths.py): runs relative to the recipe run's parent.
From the manifest: the threshold for scanner shift (provenance threshold_for_shift, training.results.threshold) and the
shipped test-time augmentation. Writes, atomically, into MODEL_DIR (by training.ownership's rule: a file there that
no card.json or manifest names is never written over, and of the earlier card's files only those it named go):
  card.json   the figures and facts (card_version 2, the one layout training/card/render.py renders): data counts,
              configs and their overrides, out-of-fold metrics, per scanner, the paired comparison,
              leave-one-scanner-out, threshold for shift, TTA, files and sizes
  oof.csv     image_id, slide, fold, probability of the shipped run: which member held out which
              figure and what it said there (labels stay in the official CSV), at full precision
  predictions/NAME.csv  the same of every other run the card reports (card.json's "predictions" names them)
  README.md   the card, rendered from card.json alone by training/card/render.py (its template: card.md)
--render refuses a card.json of an older layout with one error (--refresh, or rebuild it from the runs).
"""

from __future__ import annotations

import json
from pathlib import Path

from amf import AmfError, report_error
from amf.cli import ArgumentParser, first_sentence
from amf.fileio import write_text_atomic
from training import ownership
from training.card.build import build, refresh, write
from training.card.render import render, verdict
from training.ownership import CARD_JSON, MODEL, README


def main(argv=None) -> int:
    ap = ArgumentParser(prog="python -m training.card", description=first_sentence(__doc__))
    ap.add_argument("--model", default="model")
    ap.add_argument("--recipe", help="the shipped run (MODEL_DIR must hold its export)")
    ap.add_argument("--plain", help="the plain baseline on the same splits (may be partial; left out: no control run)")
    ap.add_argument("--plain-partial-reason", default="", help="why the plain run has unfinished folds, for the card")
    ap.add_argument("--loso", default=None, help="the recipe's config with splits.kind=leave_scanner_out")
    ap.add_argument("--tta", nargs="*", default=[], help="training.results.tta_oof runs of --recipe or --loso")
    ap.add_argument("--data", default=None, help="the official layout: expert votes for the by-agreement figures")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--trained-on", default="", help="where the runs trained, for the card (e.g. 'a 2-core CPU')")
    ap.add_argument("--benchmark", default=None, help="a published protocol the runs followed (card/benchmarks)")
    ap.add_argument("--candidates", nargs="*", default=[], help="runs of the other recipes tried (counted on the card)")
    ap.add_argument("--candidate-rule", default="", help="the rule, written before the figures, that chose the recipe")
    ap.add_argument("--overlap", nargs="*", default=[], help="data folders checked against the training figures")
    ap.add_argument("--config-note", default=None, help="how the config's values were chosen, for the card")
    ap.add_argument("--render", action="store_true", help="re-render README.md from card.json")
    ap.add_argument("--refresh", action="store_true", help="measure again what the model folder and data give")
    args = ap.parse_args(argv)
    model_dir = Path(args.model)
    try:
        if args.render:
            if not (model_dir / CARD_JSON).is_file():
                raise AmfError(f"{model_dir / CARD_JSON} is missing")
            ownership.claim(model_dir, [README], MODEL)
            write_text_atomic(model_dir / README, render(json.loads((model_dir / CARD_JSON).read_text())))
        elif args.refresh:
            if not (model_dir / CARD_JSON).is_file():
                raise AmfError(f"{model_dir / CARD_JSON} is missing")
            write(model_dir, refresh(model_dir, args.data, args.overlap, args.config_note))
        else:
            if not args.recipe:
                raise AmfError("give --recipe RUN [--plain RUN] (or --render)")
            card, tables = build(
                model_dir,
                args.recipe,
                args.plain,
                args.loso,
                args.n_boot,
                args.trained_on,
                args.tta,
                args.data,
                args.plain_partial_reason,
                args.benchmark,
                args.candidates,
                args.candidate_rule,
                args.overlap,
                args.config_note or "",
            )
            write(model_dir, card, tables)
            print(verdict(card))
    except AmfError as e:
        return report_error(e)
    print(f"wrote {model_dir / README}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
