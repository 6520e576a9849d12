"""Export a finished training run to the container's ONNX ensemble.

  python -m training.export RUN_DIR --out MODEL_DIR [--data DATA_DIR] [--tta none|flips|d4] [--n-real 16]
                           [--threshold-run RUN_tta_MODE] [--shift-run LOSO_RUN_DIR] [--beside]
                           [--folds K,K] [--precision fp32|fp16] [--threshold-from CV_RUN]

1. Pools the folds' out-of-fold predictions (RUN_DIR/oof.csv, oof_metrics.json; refuses, naming them,
   if folds are missing) and takes the threshold that maximises out-of-fold balanced accuracy; the
   container applies it to the ensemble's mean probability (the members' out-of-fold probabilities
   were each judged alone, so the threshold is an estimate for the mean; the model card says so).
   With --shift-run (a pooled leave-one-domain-out run of the same figures: scanners, sources) the threshold is the
   one training.results.threshold chooses between the out-of-fold and the leave-one-domain-out rule, and the whole
   comparison goes into the provenance (threshold_for_shift).
   With --tta and --threshold-run (RUN's held-out figures re-predicted under that mode by training.results.tta_oof) the
   out-of-fold predictions that choose the threshold are the ones the container makes; --shift-run must then be
   re-predicted under the same mode (refused otherwise). Without it the threshold comes from RUN's one-view
   predictions, and the provenance (threshold_predictions, threshold_note) says so.
   --folds K,K ships those folds' members only (a fold the run lacks is refused in one line; only they need be
   finished): the threshold and the out-of-fold figures are their held-out predictions alone (with --shift-run, the
   leave-one-out predictions of their figures), and the provenance says which folds of how many (folds, run_folds).
   A run of splits.kind all (one member trained on every figure, none held out) has no out-of-fold predictions:
   --threshold-from CV_RUN names the cross-validated run of the same figures and config (its splits aside) whose
   out-of-fold predictions (or, with --threshold-run, their re-prediction under --tta) choose the threshold and give
   the figures; a run of other figures, labels or config is refused in one line. The member is all.onnx, of no fold.
2. Each fold's best.pt (LoRA already merged) -> MODEL_DIR/fold{k}.onnx: opset >= 17, input "input"
   float32 N x 3 x S x S (dynamic N), output "logit" float32 (N, 1) for atypical; TorchScript exporter
   (dynamo=False), weights inside the one file (over 2 GB: in one fold{k}.onnx.data beside it).
   --precision fp16 (default export.precision): the checked fp32 member converted to float16 weights and compute,
   input and output kept float32 (half the file; the container's path is the same).
3. Parity: onnxruntime against torch on random inputs and on real validation patches of that fold
   (prepared by amf.preprocess.prepare, as the container does); the largest |logit difference| must be
   <= export.parity_tol (1e-3); it is printed and recorded in the manifest. An fp16 member is then checked against
   the fp32 one on the same real patches (through onnxruntime's CPU provider, and in torch with float16 activations,
   as a GPU runs it): the largest |P(atypical) difference| must be <= export.fp16_tol (1e-3), recorded (parity.K.fp16).
4. MODEL_DIR/training_fingerprints.bin (training/export/fingerprint.py): the content fingerprint of every figure a
   shipped member trained on (the run's splits.csv; with one fold of several shipped, all but its held-out fold), so
   that offline evaluation can tell the figures the model trained on; the container never reads it.
5. MODEL_DIR/ensemble.json through amf.manifest.save, trained: true, with provenance: backbone, config,
   folds, out-of-fold metrics with bootstrap intervals, threshold, parity, precision, versions, training_figures (the
   fingerprint file's figure count and SHA-256), all_figures (a member trained on every figure: its cv_run).
6. MODEL_DIR/expected_output.json: the container's result (inference.run) on the project's sample job
   (test/input) with this model, which do_test_run.sh, make test and make demo's checks compare against.
MODEL_DIR follows training.ownership's rule: it is new, empty, or a model folder (an ensemble.json or card.json
there), else refused in one line naming it and its first files (--beside: write beside them); a file of MODEL_DIR
that no manifest or card there names is never written over (refused before anything is done) nor removed.
Everything is written to a scratch folder inside MODEL_DIR first; MODEL_DIR changes only when all of it succeeded,
and the model there is replaced whole: what described it goes first (its card: README.md, card.json, oof.csv and
the predictions/ files it names, training.card writes this model's; its expected output), the new expected output
comes last, after the manifest, and then the files the old manifest named that the new one does not (an older
fingerprint file too) are removed.
"""

from __future__ import annotations

import sys

from amf import report_error
from amf.cli import EXPECTED, ArgumentParser, as_error, fold_list, positive_int
from amf.manifest import PRECISIONS
from amf.preprocess import TTA_MODES
from training.export.folder import export_run
from training.ownership import BESIDE_HELP


def main(argv=None) -> int:
    ap = ArgumentParser.from_doc("python -m training.export", __doc__)
    ap.add_argument("run", help="training run folder")
    ap.add_argument("--out", required=True, help="model folder to write (ensemble.json + fold*.onnx)")
    ap.add_argument("--data", default=None, help="data folder, if the images moved since training")
    ap.add_argument("--tta", default=None, choices=list(TTA_MODES), help="overrides export.tta")
    ap.add_argument("--n-real", type=positive_int, default=16, help="real patches per fold for the parity check")
    ap.add_argument(
        "--shift-run",
        default=None,
        help="a pooled leave-one-domain-out run of the same figures (leave_scanner_out, leave_source_out): "
        "the threshold is chosen between the out-of-fold and the leave-one-domain-out rule "
        "(training.results.threshold) and the comparison recorded in the provenance",
    )
    ap.add_argument(
        "--threshold-run",
        default=None,
        help="RUN's held-out figures re-predicted under --tta (training.results.tta_oof RUN --tta MODE): the threshold "
        "is chosen on the predictions the container makes (default: RUN's own, one view)",
    )
    ap.add_argument("--beside", action="store_true", help=BESIDE_HELP)
    ap.add_argument(
        "--folds",
        type=fold_list,
        default=None,
        metavar="K,K",
        help="ship these folds' members only; the threshold and figures are their out-of-fold predictions",
    )
    ap.add_argument("--precision", default=None, choices=list(PRECISIONS), help="overrides export.precision")
    ap.add_argument(
        "--threshold-from",
        default=None,
        metavar="CV_RUN",
        help="for a run of splits.kind all: the cross-validated run of the same figures and config whose out-of-fold "
        "predictions choose the threshold",
    )
    a = ap.parse_args(argv)
    try:
        export_run(
            a.run,
            a.out,
            a.data,
            a.tta,
            a.n_real,
            shift_run=a.shift_run,
            threshold_run=a.threshold_run,
            beside=a.beside,
            folds=a.folds,
            precision=a.precision,
            threshold_from=a.threshold_from,
        )
    except EXPECTED as e:
        return report_error(as_error(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
