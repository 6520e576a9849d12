"""Offline evaluation: pack a labelled set as platform jobs, run the container on them, score them; and the preflight.

  python -m evaluation pack CSV IMAGE_DIR OUT [--format tiff|mha|mixed] [--seed N] [--tumor TYPE]
                                   [--limit N] [--slides FILE] [--beside]
  python -m evaluation pack DATA_DIR OUT [...]               (a data folder in a layout training reads)
  python -m evaluation pack --run RUN --fold K OUT [--data DATA_DIR] [...]   (a run's held-out fold)
      -> OUT/jobs/<job>/input/ (inputs.json + one stack of up to 16), OUT/ground_truth.json, OUT/figures.csv
  python -m evaluation run JOBS [--model DIR] [--in-process] [--python PATH] [--timeout S]
      -> JOBS/<job>/output/multiple-mitotic-figure-classification.json, JOBS/<job>/run.json
  python -m evaluation score JOBS --ground-truth GT --out DIR [--model DIR] [--confidence ...] [--beside]
      -> DIR/metrics.json (organisers' "aggregates", intervals, the model, the figures it trained on),
         DIR/report.md + PNGs, DIR/predictions.csv
  python -m evaluation preflight MODEL --data DATA [--run RUN] [--limit N] [--in-process] [--out DIR] [...]
      -> one PASS/FAIL/SKIP line per check of the container as packaged against its card (evaluation/preflight.py);
         exit 1 when one FAILs

OUT and DIR follow training.ownership's rule: a new or empty folder, or one of the step's own (score: a metrics.json
there names its files), else refused in one line (--beside: write beside its files); a file there the step did not
write is never written over nor removed.
Each step is its own module of the package evaluation/: labels.py and pack.py, run.py, identity.py,
measure.py, score.py and report.py; preflight.py runs pack, run and score's readers on a model before upload.
Any problem (a bad argument, input file, ground truth, result or run record, or an output that
cannot be written): one line `error: ...` on stderr, exit 2, and no partial output. `run` records a
job that fails, or cannot even start (say --python names no interpreter), as that job's error, runs
the rest, and exits 1 naming the failed jobs. Nothing here imports torch.
"""

from __future__ import annotations

import json
import sys

from amf import report_error
from amf.cli import EXPECTED, ArgumentParser, as_error, first_sentence, non_negative_int, positive_float, positive_int
from training.ownership import BESIDE_HELP


def pack_paths(parser, args) -> list[str]:
    """pack's positional paths, checked against --run/--fold/--data (a usage error is one line, exit 2)."""
    if (args.run is None) != (args.fold is None):
        parser.error("--run and --fold go together")
    if args.run is not None and len(args.paths) != 1:
        parser.error(f"with --run, give OUT alone (got {len(args.paths)} paths)")
    if args.run is None and len(args.paths) not in (2, 3):
        parser.error(f"give CSV IMAGE_DIR OUT, DATA_DIR OUT, or --run RUN --fold K OUT (got {len(args.paths)} paths)")
    if args.data is not None and args.run is None:
        parser.error("--data goes with --run (a CSV names its image folder itself)")
    return args.paths


def main(argv=None) -> int:
    ap = ArgumentParser(prog="python -m evaluation", description=first_sentence(__doc__))
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "pack",
        help="a labelled set -> platform jobs and ground_truth.json",
        usage="python -m evaluation pack (CSV IMAGE_DIR | DATA_DIR | --run RUN --fold K) OUT [options]",
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="CSV IMAGE_DIR OUT (the official MIDOG 2025 CSV or image,label[,domain], and the folder of its images), "
        "DATA_DIR OUT (a data folder in a layout training reads), or OUT alone with --run and --fold; OUT gets "
        "jobs/, ground_truth.json, figures.csv",
    )
    p.add_argument("--run", default=None, help="a training run folder: pack the held-out figures of its --fold")
    p.add_argument("--fold", type=non_negative_int, default=None, help="the run's fold (its splits.csv)")
    p.add_argument("--data", default=None, help="with --run: the data folder, if the official images moved")
    p.add_argument("--limit", type=positive_int, default=None, help="pack N figures, stratified by label (--seed)")
    p.add_argument("--slides", default=None, help="a file listing slides (one a line): pack only their figures")
    p.add_argument(
        "--format",
        default="tiff",
        choices=["tiff", "mha", "mixed"],
        help="stack file format; mixed alternates .tiff and .mha (default tiff)",
    )
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the figures' order in stacks (default 0)")
    p.add_argument("--tumor", default=None, help="tumour type of every figure, for a CSV with no domain column")
    p.add_argument("--beside", action="store_true", help=BESIDE_HELP)

    r = sub.add_parser("run", help="run the container entrypoint on every job")
    r.add_argument("jobs", help="the jobs folder (OUT/jobs of pack)")
    r.add_argument("--model", default=None, help="model folder (default: as inference.py resolves it)")
    r.add_argument("--in-process", action="store_true", help="call inference.run here instead of a process per job")
    r.add_argument(
        "--python",
        default=None,
        help="interpreter for the per-job processes (default .venv-runtime/bin/python, else this one)",
    )
    r.add_argument(
        "--timeout", type=positive_float, default=600.0, help="seconds allowed per job process (default 600)"
    )

    s = sub.add_parser("score", help="organisers' metrics, intervals and a report")
    s.add_argument("jobs", help="the jobs folder, after run")
    s.add_argument("--ground-truth", required=True, help="ground_truth.json in the organisers' form")
    s.add_argument("--out", required=True, help="report folder (metrics.json, report.md, PNGs)")
    s.add_argument(
        "--confidence",
        default="p-atypical",
        choices=["p-atypical", "predicted-class"],
        help="how to read confidence for ROC AUC (default p-atypical; see evaluate/score.py)",
    )
    s.add_argument("--n-boot", type=positive_int, default=1000, help="bootstrap resamples (default 1000)")
    s.add_argument("--seed", type=non_negative_int, default=0, help="bootstrap seed (default 0)")
    s.add_argument("--no-report", action="store_true", help="metrics.json and predictions.csv only")
    s.add_argument(
        "--model", default=None, help="the model folder the jobs ran with (default: the one their run.json names)"
    )
    s.add_argument("--beside", action="store_true", help=BESIDE_HELP)

    f = sub.add_parser("preflight", help="the container as packaged, on labelled data, against what its card says")
    f.add_argument("model", help="the model folder (ensemble.json), as it will ship")
    f.add_argument(
        "--data",
        required=True,
        help="a labelled data folder in a layout pack reads: the members' held-out figures, and the figures the "
        "model did not train on",
    )
    f.add_argument(
        "--run",
        default=None,
        help="the run the model was exported from: held-out folds from its splits.csv "
        "(default: MODEL/oof.csv matched to DATA)",
    )
    f.add_argument(
        "--limit",
        type=positive_int,
        default=None,
        help="at most N figures per member's fold and N of DATA, stratified by label (--seed): quicker, rougher",
    )
    f.add_argument("--seed", type=non_negative_int, default=0, help="seed of --limit, the stacks and the bootstrap")
    f.add_argument("--n-boot", type=positive_int, default=1000, help="bootstrap resamples (default 1000)")
    f.add_argument("--tumor", default=None, help="tumour type of every figure, for a layout without one (AtNorM)")
    f.add_argument("--in-process", action="store_true", help="run the jobs in this process, not a process each")
    f.add_argument("--python", default=None, help="interpreter for the per-job processes (default .venv-runtime)")
    f.add_argument("--timeout", type=positive_float, default=600.0, help="seconds allowed per job (default 600)")
    f.add_argument("--out", default=None, help="also write preflight.json and predictions.csv into this folder")
    f.add_argument("--beside", action="store_true", help=BESIDE_HELP)

    args = ap.parse_args(argv)
    try:
        if args.command == "pack":
            from evaluation import labels
            from evaluation.pack import pack_table, select

            *given, out = pack_paths(p, args)
            if args.run is not None:
                table = labels.run_fold_table(args.run, args.fold, args.data, args.tumor)
            elif len(given) == 2:
                table = labels.csv_table(*given, args.tumor)
            else:
                table = labels.layout_table(given[0], args.tumor)
            table = select(table, args.limit, args.slides, args.seed)
            print(json.dumps(pack_table(table, out, args.format, args.seed, beside=args.beside), indent=2))
        elif args.command == "run":
            from evaluation.run import run_jobs, summarise

            records = run_jobs(args.jobs, args.model, args.in_process, args.python, args.timeout)
            print(summarise(records))
            return 1 if any(not rec["ok"] for rec in records) else 0
        elif args.command == "preflight":
            from evaluation.preflight import preflight, summary_line

            record = preflight(
                args.model,
                args.data,
                args.run,
                args.limit,
                args.seed,
                args.n_boot,
                args.tumor,
                args.in_process,
                args.python,
                args.timeout,
                args.out,
                args.beside,
                progress=sys.stderr.isatty(),
            )
            print(summary_line(record))
            return 1 if record["counts"]["FAIL"] else 0
        else:
            from evaluation.score import score

            m = score(
                args.jobs,
                args.ground_truth,
                args.out,
                args.confidence,
                args.n_boot,
                args.seed,
                report=not args.no_report,
                model=args.model,
                beside=args.beside,
            )
            print(json.dumps(m["aggregates"], indent=2))
            print(f"-> {args.out}/metrics.json" + ("" if args.no_report else f", {args.out}/report.md"))
    except EXPECTED as e:  # the one error boundary: whatever the steps raise for bad input or files
        return report_error(as_error(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
