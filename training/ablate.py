"""Ablation: which parts of a recipe help, each arm trained with several seeds on one split and paired with the base.

  python -m training.ablate CONFIG --data DATA_DIR --runs RUNS_DIR --arms NAME=KEY=VALUE[,KEY=VALUE...] ...
         [--split KIND] [--seeds N] [--set KEY=VALUE ...] [--parallel N] [--device auto|cuda|cpu] [--fold K]
         [--n-boot N] [--report-only] [--parts ARM ...] [--no-progress] [--executor inline|local|slurm ...]

Arm `base` is CONFIG itself (with --set); every other arm is CONFIG with its own overrides on top, e.g.
  --arms mixstyle=mixstyle.enabled=true  soft=data.soft_labels=true  both=mixstyle.enabled=true,data.soft_labels=true
Each arm x seed is a training.train run folder, RUNS_DIR/<arm>/seed<s> (train.seed = s, for s in 0..N-1; splits.seed
and everything else as configured, so that every run has the same folds): --split KIND sets splits.kind (e.g.
leave_source_out: each source predicted by members that never saw it). Every fold of every run is one job of
`training.train --fold k`; --parallel N runs N of them at once (a process each, training/train/parallel.py);
--fold K trains fold K of every run only (one fold per GPU or array task: the same command with another K elsewhere,
then a last call without --fold, or with --report-only, writes the report). A finished fold is skipped and an
interrupted one resumes from its last epoch, so rerunning the command trains only what is missing. --executor slurm
sends every fold of every run as a task of a job array instead (training/cluster.py: its options, requeue, logs).
Then the report (training/results/ablation.py): RUNS_DIR/ablation.md, ablation.csv and ablation.png, from every run
whose folds are all done: each arm's balanced accuracy at nested thresholds and ROC AUC (mean over its seeds), and
arm - base with a 95% interval that carries both the slide resampling and the seed-to-seed variance, and each arm's
verdict (helps / hurts / no evidence / undecided: the rule in training/results/ablation.py); with --parts, the best
of those arms (the one to combine with others in a further arm).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from amf import AmfError, report_error
from amf.cli import EXPECTED, ArgumentParser, as_error, positive_int
from training import cluster
from training.cluster import prepare as prepare_run
from training.results import ablation
from training.rundir import RunDir
from training.splits import ALL, KINDS
from training.train.parallel import run_jobs

BASE = "base"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class Arm:
    name: str
    sets: list  # KEY=VALUE words on top of CONFIG and --set


def parse_arm(text: str) -> Arm:
    """NAME=KEY=VALUE[,KEY=VALUE...] (a comma starts a new override only where KEY= follows it, so a list value
    keeps its commas)."""
    name, _, rest = text.partition("=")
    if not NAME.match(name) or name == BASE:
        raise AmfError(f"--arms {text!r}: the arm's name must be a plain word other than {BASE!r} (NAME=KEY=VALUE,...)")
    sets = [s for s in re.split(r",(?=[A-Za-z_][\w.]*=)", rest) if s]
    if not sets or not all("=" in s for s in sets):
        raise AmfError(f"--arms {text!r}: give the arm's overrides as NAME=KEY=VALUE[,KEY=VALUE...]")
    return Arm(name, sets)


@dataclass
class Plan:
    config: str
    data: Path
    runs: Path
    arms: list  # [Arm], base first
    seeds: int
    split: str | None
    sets: list

    def run_dir(self, arm: Arm, seed: int) -> Path:
        return self.runs / arm.name / f"seed{seed}"

    def run_sets(self, arm: Arm, seed: int) -> list[str]:
        split = [f"splits.kind={self.split}"] if self.split else []
        return [*self.sets, *arm.sets, *split, f"train.seed={seed}"]

    def runs_by_arm(self) -> dict:
        return {arm.name: {s: self.run_dir(arm, s) for s in range(self.seeds)} for arm in self.arms}


def prepare(plan: Plan) -> list[tuple[Arm, int, Path, list[int]]]:
    """Every run's config.yaml and splits.csv written (or checked) before anything trains, so that a bad arm fails at
    once (training.cluster.prepare); [(arm, seed, run folder, folds)]."""
    tables = {}
    return [
        (arm, seed, plan.run_dir(arm, seed), prepare_run(plan.config, plan.data, plan.run_dir(arm, seed), sets, tables))
        for arm in plan.arms
        for seed in range(plan.seeds)
        for sets in [plan.run_sets(arm, seed)]
    ]


def train_all(plan: Plan, prepared, args, log=print) -> None:
    """Every fold not done yet (--fold: that fold of every run only) as a training.train job, --parallel at a time
    here, or a task of a job array (--executor: training/cluster.py)."""
    fold, device, progress = args.fold, args.device, not args.no_progress
    jobs, done = [], 0
    for arm, seed, run, folds in sorted(prepared, key=lambda r: r[1]):  # seed 0 of every arm first
        for k in folds if fold is None else [f for f in folds if f == fold]:
            if RunDir(run).fold(k).is_done():
                done += 1
                continue
            argv = ["--config", plan.config, "--data", str(plan.data), "--out", str(run), "--device", device]
            argv += ["--set", *plan.run_sets(arm, seed), "--fold", str(k)]
            argv += [] if progress else ["--no-progress"]
            jobs.append(cluster.FoldJob(f"{arm.name} seed{seed} fold {k}", argv, run, k))
    ex = cluster.options_of(args)
    where = f"{min(args.parallel, max(1, len(jobs)))} at a time" if ex["executor"] == "inline" else ex["executor"]
    log(f"ablation: {len(plan.arms)} arms x {plan.seeds} seed(s); {done} fold(s) done, {len(jobs)} to train, {where}")
    if ex["executor"] != "inline":
        cluster.train_folds(jobs, ex["executor"], cluster.run_config, ex["cluster"], ex["sbatch"], ex["gpus_per_fold"])
        return
    failed = run_jobs([(j.name, j.argv) for j in jobs], args.parallel)
    if failed:
        raise AmfError(
            "ablation job(s) failed: "
            + ", ".join(f"{name} (exit status {s})" for name, s in failed.items())
            + "; their messages are above; rerun the same command to train what is missing"
        )


def main(argv=None) -> int:
    ap = ArgumentParser.from_doc("python -m training.ablate", __doc__)
    ap.add_argument("config", help="YAML file or name in training/configs/: the base arm")
    ap.add_argument("--data", required=True, help="the data folder (either layout)")
    ap.add_argument("--runs", required=True, help="folder of the ablation's run folders and report")
    ap.add_argument("--arms", nargs="+", default=[], metavar="NAME=KEY=VALUE[,KEY=VALUE...]")
    held_out = [kind for kind in KINDS if kind != ALL]  # splits.kind all holds nothing out: nothing to compare on
    ap.add_argument("--split", default=None, choices=held_out, help="splits.kind for every run")
    ap.add_argument("--seeds", type=positive_int, default=2, help="seeds per arm (train.seed 0..N-1)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every arm")
    ap.add_argument("--parallel", type=positive_int, default=1, metavar="N", help="fold jobs at once")
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--fold", type=int, default=None, help="train this fold of every run only")
    ap.add_argument("--n-boot", type=positive_int, default=2000, help="slide resamples of the report")
    ap.add_argument("--report-only", action="store_true", help="train nothing; the report of what is done")
    ap.add_argument(
        "--parts",
        nargs="*",
        default=[],
        metavar="ARM",
        help="the arms that each add one part: the report names the best of them (the largest mean difference)",
    )
    ap.add_argument("--no-progress", action="store_true")
    cluster.add_arguments(ap)
    args = ap.parse_args(argv)
    try:
        arms = [parse_arm(a) for a in args.arms]
        names = [a.name for a in arms]
        if len(set(names)) != len(names):
            raise AmfError(f"--arms: each arm needs its own name, got {names}")
        if set(args.parts) - set(names):
            raise AmfError(f"--parts: {sorted(set(args.parts) - set(names))} are not arms ({names})")
        plan = Plan(
            args.config, Path(args.data), Path(args.runs), [Arm(BASE, []), *arms], args.seeds, args.split, args.set
        )
        if not args.report_only:
            prepared = prepare(plan)
            train_all(plan, prepared, args)
            if args.fold is not None:
                print(f"fold {args.fold} of every run done; the report: the same command without --fold")
                return 0
        written = ablation.write_report(plan.runs, plan.runs_by_arm(), BASE, args.n_boot, plan.arms, args.parts)
        print(written)
    except EXPECTED as e:
        return report_error(as_error(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
