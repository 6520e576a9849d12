"""Train k-fold timm classifiers for atypical vs normal mitotic figures.

  python -m training.train --config CONFIG --data DATA_DIR --out RUN_DIR [--fold N] [--seed S] [--set a.b=v ...]
  torchrun --nproc_per_node G -m training.train ... --fold N     (one fold on G GPUs, DDP; gloo on CPU)
  python -m training.train ... --parallel N   (N folds at once on one device, a process each: parallel.py)

CONFIG is a YAML file or a name in training/configs/ (smoke, convnext_small, lunit_vit_small, ...).
Writes a run folder (config.yaml, splits.csv, fold{k}/{last.pt,best.pt,epochs.csv,oof.csv,done.json}, then the
pooled oof.csv and oof_metrics.json): its layout, names and readers are training/rundir.py's. A later job with another
config in the same folder is refused; a fold resumes from its last.pt (--restart ignores it); one process trains a
fold at a time (fold{k}/train.lock: a second refuses, naming the first). Every file read is checked (training/rundir.py,
training/data.py, training/config.py: docs/training.md, "Refusals and limits").
Without --fold every fold runs in turn. Folds are independent jobs: run them side by side (a SLURM
array of --fold N), then export pools them. The epoch kept per fold (best.pt, oof.csv) follows train.selection:
  last        the last of train.epochs (fixed length: nothing is selected, the held-out figures are honest)
  inner       the best train.select (balanced accuracy at 0.5, or ROC AUC) on an inner slide-grouped split of
              the training folds (1 of train.inner_folds; the inner figures do not train); the held-out fold
              (for leave-one-scanner/tumour-out: the held-out domain) is never seen by the selection
  validation  the best train.select on the held-out fold itself: optimistic (the reported figures chose the
              epoch), kept only to compare with older runs
splits.kind all trains one member on every figure (none held out, no oof.csv: train.selection must be last, the
epochs fixed in advance from a cross-validated run of the same config); its export takes the threshold from that run.
The held-out metrics of every epoch (val_* in epochs.csv) are for monitoring and never select anything
unless train.selection is validation. With ema.evaluate the EMA teacher is the model that is evaluated,
selected and exported.
"""

from __future__ import annotations

import argparse
import sys
import time

from amf import AmfError, report_error
from amf.cli import EXPECTED, ArgumentParser, as_error, positive_int
from training import config
from training.data import counts_report, load_dataset
from training.results.oof import pool, summary_text
from training.rundir import RunDir
from training.splits import describe, folds_of, is_all
from training.train import curves, tracking
from training.train.kfold import Dist, prepare_run, resolve_normalisation, train_fold
from training.train.parallel import run_parallel
from training.train.progress import Progress


def main(argv=None) -> int:
    ap = ArgumentParser.from_doc("python -m training.train", __doc__)
    ap.add_argument("--config", required=True, help="YAML file or name in training/configs/")
    ap.add_argument("--data", required=True, help="folder with the official CSV and PNG folder")
    ap.add_argument("--out", required=True, help="run folder")
    ap.add_argument("--fold", type=int, default=None, help="train this fold only")
    ap.add_argument("--seed", type=int, default=None, help="overrides train.seed and splits.seed")
    ap.add_argument("--epochs", type=int, default=None, help="overrides train.epochs")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. train.lr=1e-4")
    ap.add_argument(
        "--skip-missing",
        action="store_true",
        default=None,
        help="train without missing/unreadable images (reported with a count)",
    )
    ap.add_argument("--restart", action="store_true", help="ignore last.pt/done.json and train from scratch")
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--workers", type=int, default=None, help="overrides data.num_workers")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines (epoch lines stay)")
    ap.add_argument("--parallel-child", action="store_true", help=argparse.SUPPRESS)  # parallel.py's children
    # training.pipeline's: the training steps of its later runs (the ETA counts them; the pipeline names the next step)
    ap.add_argument("--pipeline-after", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument(
        "--parallel",
        type=positive_int,
        default=1,
        metavar="N",
        help="without --fold: train up to N folds at once, one process each on the same device "
        "(training/train/parallel.py), then pool them",
    )
    args = ap.parse_args(argv)
    dist, run, fresh, todo = None, None, False, []
    try:
        overrides = list(args.set)
        if args.seed is not None:
            overrides += [f"train.seed={args.seed}", f"splits.seed={args.seed}"]
        if args.epochs is not None:
            overrides.append(f"train.epochs={args.epochs}")
        if args.workers is not None:
            overrides.append(f"data.num_workers={args.workers}")
        cfg = resolve_normalisation(config.load(args.config, overrides))
        note = tracking.check(cfg["log"])  # a tracker asked for and not installed: an error before any work
        dist = Dist(args.device)
        log = print if dist.main else (lambda *a, **k: None)
        header = log if not args.parallel_child else (lambda *a, **k: None)  # the parent printed it once
        if note:
            header(note)
        header(f"device {dist.device}: {dist.why}")
        t0 = time.perf_counter()
        df, cache = load_dataset(args.data, cfg, args.skip_missing, log=header)
        header(counts_report(df))
        run = RunDir(args.out)
        fresh = not run.config.is_file()  # this command starts the run (a failure before its first epoch undoes it)
        splits = prepare_run(cfg, df, run, dist)
        folds = folds_of(splits)
        header(f"{cfg['splits']['kind']} splits ({run.splits}):\n{describe(splits)}")
        if args.fold is not None and args.fold not in folds:
            raise AmfError(f"--fold {args.fold}: the splits have folds {folds}")
        todo = [args.fold] if args.fold is not None else folds
        after, what = args.pipeline_after, "run" if args.fold is None else f"fold {args.fold}"
        if after is not None and (after > 0 or args.fold is None):  # the pipeline's: its later work counts too
            what = f"{what}, then the pipeline's later runs" if args.parallel_child else "pipeline"
        if args.parallel > 1 and len(todo) > 1 and dist.world == 1:
            cache = None  # the children decode their own
            child_argv = list(sys.argv[1:] if argv is None else argv)
            if after is not None:  # the later runs train N folds at a time too: each child counts its share
                i = child_argv.index("--pipeline-after")
                child_argv[i + 1] = str(after // args.parallel)
            run_parallel(child_argv, todo, args.parallel, log)
        else:
            progress = Progress(
                todo,
                int(cfg["train"]["epochs"]),
                what,
                show=dist.main and not args.no_progress,
                every_s=float(cfg["log"]["progress_s"]),
                write=log,
                world=dist.world,
                after=after or 0,
            )
            try:
                for k in todo:
                    train_fold(cfg, df, cache, splits, k, run, dist, args.restart, progress, progress.write)
            finally:
                progress.close()
        missing = run.missing_folds(splits) if dist.main and not args.parallel_child else []
        if args.parallel_child:  # the parent pools and names the next step once every child has ended
            log(f"fold {args.fold} done in {time.perf_counter() - t0:.0f} s")
        elif missing:  # other folds train elsewhere (or later): the next step is not this job's to name
            log(
                f"fold {args.fold} done in {time.perf_counter() - t0:.0f} s; folds {missing} are not done yet "
                f"(export once every fold is)"
            )
        elif dist.main and is_all(splits):  # one member on every figure: nothing held out, nothing to pool
            curves.write(run)
            log(
                f"\n== {cfg['name']}: {cfg['model']['backbone']} @ {cfg['data']['input_size']} px, one member on all "
                f"{int((splits['fold'] >= 0).sum())} figures, {cfg['train']['epochs']} epoch(s), the last kept, "
                f"{time.perf_counter() - t0:.0f} s: no held-out figures, no out-of-fold results =="
            )
            nxt = (
                ""
                if after is not None
                else (
                    f"; next: python -m training.export {run} --out MODEL_DIR --threshold-from CV_RUN "
                    "(a cross-validated run of the same figures and config)"
                )
            )
            log(f"run folder {run} (curves: {run.curves}){nxt}")
        elif dist.main:  # every fold is done and none is still running: pool, plot, name the next step
            _, result = pool(run, seed=int(cfg["train"]["seed"]))
            curves.write(run)
            log(
                f"\n== {cfg['name']}: {cfg['model']['backbone']} @ {cfg['data']['input_size']} px, "
                f"{len(folds)} folds, {time.perf_counter() - t0:.0f} s =="
            )
            log(summary_text(result))
            nxt = "" if after is not None else f"; next: python -m training.export {run} --out MODEL_DIR"
            log(f"run folder {run} (curves: {run.curves}){nxt}")
    except BaseException as e:
        if fresh and (dist is None or dist.main) and run.discard_untrained(todo or [f.k for f in run.fold_dirs()]):
            log(f"{run}: nothing trained; removed what this command wrote there, so the corrected command can start")
        if isinstance(e, EXPECTED):
            return report_error(as_error(e))
        raise
    finally:
        if dist is not None:
            dist.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
