"""One command from the data to a submission-ready model folder: every step of a model card's Reproduce block, in
order, each skipped when its outputs are complete and current; a killed pipeline picks up where it stopped.

  python -m training.pipeline CONFIG --data DATA_DIR --runs RUNS_DIR --model-out MODEL_DIR [--name NAME]
         [--set KEY=VALUE ...] [--parallel N] [--device auto|cuda|cpu] [--tta none|flips|d4] [--compare-tta MODE ...]
         [--precision fp32|fp16]
         [--shift [KIND]] [--plain [--plain-folds K,K] [--plain-partial-reason TEXT]] [--trained-on TEXT]
         [--n-boot N] [--no-progress] [--candidates RUN ... --candidate-rule TEXT] [--benchmark NAME] [--beside]
         [--overlap DATA ...] [--config-note TEXT]
         [--executor inline|local|slurm [--gpus-per-fold G] [--cluster KEY=VALUE ...] [--sbatch KEY=VALUE ...]]

The steps (the existing modules do the work; RUN = RUNS_DIR/NAME_recipe, NAME defaults to the config's name):
  train    training.train CONFIG [--set ...] -> RUN: every fold (resumes a fold from its last.pt), pooled
  shift    with --shift KIND (bare --shift: leave_scanner_out; any split kind of training/splits.py that leaves a group
           out): the same config with splits.kind=KIND -> RUNS_DIR/NAME_loso (leave_scanner_out) or NAME_<KIND>
  plain    with --plain: the control, mixstyle, align and ema off -> NAME_plain (--plain-folds: those folds only)
  tta      training.results.tta_oof: RUN (and the shift run) re-predicted under --tta and each --compare-tta mode
  export   training.export RUN --out MODEL_DIR --tta T [--threshold-run RUN_tta_T] [--shift-run SHIFT(_tta_T)]
           [--precision P]: the threshold by the existing rules (the out-of-fold rule, or training.results.threshold's
           choice with a shift run), the ONNX members (every fold's; in fp16 with --precision fp16 or export.precision),
           the manifest, and the model's own expected output on the sample job
  card     training.card: MODEL_DIR/README.md, card.json, oof.csv, predictions/ (without --plain, the recipe run
           alone; --candidates: finished runs of the other recipes tried, counted and compared on the card;
           --benchmark: the published protocol the runs followed, its table printed as the paper's; --overlap: other
           data folders checked by content against the training figures; --config-note: how the config was chosen)
then prints the next commands (build, test run, save). Before anything trains it prints its plan: every training run,
its split kind, the folds it trains and their epochs (a --shift run has one fold per held-out group, whatever
splits.folds says), and the folds found done; training's ETA then counts the later runs too (one ETA across the
pipeline's training).
MODEL_DIR follows training.ownership's rule, checked before anything is trained: it is new, empty, or a model folder
(an ensemble.json or card.json there), else refused in one line naming it and its first files (--beside: write
beside them); a file there that no manifest or card names is never written over nor removed; an existing model
there is replaced whole (the files its manifest and card named that the new model lacks are removed).
A step is skipped when its outputs exist, are complete and are newer than its inputs: a training run whose
config.yaml is the same resolved config and whose folds are all done (and pooled); a re-prediction pooled from the
same run's members; an export of the same runs with the same test-time augmentation; a card of the same runs.
The data folder is not fingerprinted: new data wants a new --runs folder.
A config of splits.kind all (one member trained on every figure, none held out) is refused in one line: that member
is three commands, the cross-validated run first (this pipeline), then training.train --set splits.kind=all, then
training.export ALL_RUN --threshold-from CV_RUN; a subset of the folds is training.export RUN --folds K,K.
Training runs in this process (training.train, --parallel N as there), or with --executor slurm as a job array on a
SLURM cluster, a fold a task (--executor local: the same tasks on this machine; training/cluster.py: --gpus-per-fold,
--cluster KEY=VALUE, --sbatch KEY=VALUE), the rest on this machine once every fold is done. By hand: train the folds
first (torchrun or one --fold job per GPU, same --out as the pipeline's run folders) and then run the pipeline: it
trains what is missing and goes on.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from amf import AmfError, manifest, report_error
from amf.cli import EXPECTED, ArgumentParser, as_error, fold_list, positive_int
from amf.preprocess import TTA_MODES
from training import cluster, config, ownership
from training.card.build import build as build_card
from training.card.build import write as write_card
from training.card.render import verdict
from training.data import find_layout, load_table
from training.export.folder import export_run
from training.export.paths import names_run, names_runs, portable_data
from training.ownership import CARD_JSON, EXPECTED_OUTPUT, FINGERPRINTS, MANIFEST, MODEL, OOF_CSV, README
from training.results.oof import pool
from training.results.threshold import oof_predictions
from training.results.tta_oof import tta_run
from training.rundir import RunDir, pipeline_run, plain_sets, same_path
from training.splits import ALL, KINDS, folds_of, make_splits
from training.train.__main__ import main as train_main
from training.train.kfold import resolve_normalisation

ROOT = Path(__file__).resolve().parents[1]
SHIFT_KINDS = [kind for kind, column in KINDS.items() if column]  # the kinds that leave a group out


class StepFailed(Exception):
    """A step's own command failed and said why (its one error line is out): the pipeline stops with its code."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


@dataclass
class Plan:
    """What the command line asks for, and the run folders it names."""

    config: str
    data: Path
    runs: Path
    model_out: Path
    name: str
    sets: list = field(default_factory=list)
    parallel: int = 1
    device: str = "auto"
    tta: str = "none"
    precision: str = "fp32"
    compare_tta: list = field(default_factory=list)
    shift: str | None = None
    plain: bool = False
    plain_folds: list | None = None
    plain_partial_reason: str = ""
    trained_on: str = ""
    n_boot: int = 2000
    progress: bool = True
    candidates: list = field(default_factory=list)
    candidate_rule: str = ""
    benchmark: str | None = None
    executor: str = "inline"  # inline | local | slurm: where the folds train (training/cluster.py)
    gpus_per_fold: int = 1
    cluster: dict = field(default_factory=dict)  # --cluster options
    sbatch: dict = field(default_factory=dict)  # --sbatch extra lines
    beside: bool = False
    overlap: list = field(default_factory=list)
    config_note: str = ""

    @property
    def recipe(self) -> Path:
        return pipeline_run(self.runs, self.name, "recipe")

    @property
    def shift_run(self) -> Path | None:
        return pipeline_run(self.runs, self.name, self.shift) if self.shift else None

    @property
    def plain_run(self) -> Path | None:
        return pipeline_run(self.runs, self.name, "plain") if self.plain else None

    @property
    def modes(self) -> list[str]:
        """The test-time augmentations to re-predict under: the compared ones, then the shipped one."""
        return list(dict.fromkeys(m for m in [*self.compare_tta, self.tta] if m != "none"))

    def tta_runs(self) -> list[Path]:
        """Every re-prediction: the shift run's, then the recipe run's, each under every mode."""
        bases = [b for b in (self.shift_run, self.recipe) if b is not None]
        return [RunDir(b).tta_dir(m) for b in bases for m in self.modes]


# ---- when a step is current ---------------------------------------------------------------------------------


def mtime(path: Path) -> int:
    return path.stat().st_mtime_ns


def newer(outputs, inputs) -> bool:
    """Every output exists and none is older than any input that exists."""
    outputs, inputs = [Path(p) for p in outputs], [Path(p) for p in inputs if Path(p).exists()]
    if not all(p.exists() for p in outputs):
        return False
    return not inputs or min(map(mtime, outputs)) >= max(map(mtime, inputs))


def fold_files(run: Path, *names: str) -> list[Path]:
    return [f.path / name for f in RunDir(run).fold_dirs() for name in names]


def say(step: str, text: str) -> None:
    print(f"== pipeline {step}: {text}", flush=True)


# ---- the steps ----------------------------------------------------------------------------------------------


def resolved_config(plan: Plan, sets: list) -> dict:
    """The config training.train would write into config.yaml for these overrides."""
    return resolve_normalisation(config.load(plan.config, sets))


def stages(plan: Plan) -> list[tuple[str, Path, list, list | None]]:
    """The training runs, in order: (step, run folder, --set words, the folds to train or None for all)."""
    sets = list(plan.sets)
    out = [("train", plan.recipe, sets, None)]
    if plan.shift:
        out.append(("shift", plan.shift_run, [*sets, f"splits.kind={plan.shift}"], None))
    if plan.plain:
        out.append(("plain", plan.plain_run, [*sets, *plain_sets(config.load(plan.config, sets))], plan.plain_folds))
    return out


def work(plan: Plan, table, run: Path, sets: list, folds: list | None) -> dict:
    """A training run's part of the plan: its split kind, the folds it trains (of how many), their epochs, and per
    fold still to train its training steps, as training.train will count them (its training figures // the batch,
    times the epochs; a fold found done counts nothing). The run's splits.csv where it has one, else the splits
    training.splits would write for TABLE."""
    cfg, r = config.load(plan.config, sets), RunDir(run)
    s, t = cfg["splits"], cfg["train"]
    if r.splits.is_file():
        splits = r.read_splits()
    else:
        splits = make_splits(table, s["kind"], int(s["folds"]), int(s["seed"]), int(s["tries"]))
    every = folds_of(splits)
    want = [k for k in every if folds is None or k in folds]
    steps = {}
    for k in want:
        if not r.fold(k).is_done():
            per_epoch = int((splits["fold"] != k).sum()) // int(t["batch_size"])
            cap = t.get("max_steps_per_epoch")
            steps[k] = max(1, min(per_epoch, int(cap)) if cap else per_epoch) * int(t["epochs"])
    return {"kind": s["kind"], "folds": want, "of": len(every), "epochs": int(t["epochs"]), "steps": steps}


def plan_text(plan: Plan, parts: list[tuple[str, Path, dict]]) -> str:
    """The plan, before anything trains: every training run, its folds and epochs, and what follows them."""
    then = [f"re-prediction under {', '.join(plan.modes)} of {1 + bool(plan.shift)} run(s)"] if plan.modes else []
    lines = [f"{len(parts)} training run(s), then {', '.join([*then, 'the export', 'the card'])}"]
    for step, run, w in parts:
        column = KINDS[w["kind"]]
        if column:
            folds = f"{w['of']} folds, one per held-out {column} (splits.folds does not apply)"
        elif len(w["folds"]) < w["of"]:
            folds = f"folds {', '.join(map(str, w['folds']))} of {w['of']}"
        else:
            folds = f"{w['of']} folds"
        left = "none done yet" if len(w["steps"]) == len(w["folds"]) else f"{len(w['steps'])} still to train"
        lines.append(f"  {step:6s}{run}: {w['kind']}, {folds} x {w['epochs']} epochs ({left})")
    return "\n".join(lines)


def train(
    plan: Plan, step: str, run: Path, sets: list, folds: list | None = None, after: int = 0, steps: dict | None = None
) -> None:
    """training.train into RUN (FOLDS only, when given, one --fold job each); skipped when the run holds the same
    config and the folds are done (pooled, for a whole run). AFTER: the training steps of the pipeline's later runs,
    STEPS: this run's per fold (work's), for the one ETA."""
    cfg, r = resolved_config(plan, sets), RunDir(run)
    if r.config.is_file() and not r.config_differences(cfg):
        want = folds if folds is not None else folds_of(r.read_splits())
        if all(r.fold(k).is_done() for k in want):
            if folds is None and not newer([r.oof, r.oof_metrics], fold_files(run, "done.json")):
                pool(r, seed=int(cfg["train"]["seed"]))
                say(step, f"{run}: folds done; pooled")
            else:
                say(step, f"skipped: {run} holds this config, folds {', '.join(map(str, want))} done")
            return
    say(step, f"training.train -> {run}")
    argv = ["--config", plan.config, "--data", str(plan.data), "--out", str(run), "--device", plan.device]
    argv += (["--set", *sets] if sets else []) + ([] if plan.progress else ["--no-progress"])
    if plan.executor != "inline":  # every fold a task of the run's job array; then pooled here
        todo = folds if folds is not None else cluster.prepare(plan.config, plan.data, run, sets)
        task = [*argv, "--pipeline-after", "0"]  # a task names no next step; its ETA is its fold's
        jobs = [cluster.FoldJob(f"{run.name} fold {k}", [*task, "--fold", str(k)], run, k) for k in todo]
        cluster.train_folds(jobs, plan.executor, cluster.run_config, plan.cluster, plan.sbatch, plan.gpus_per_fold)
        if folds is None:
            pool(r, seed=int(cfg["train"]["seed"]))
            say(step, f"{run}: folds done; pooled")
        return
    if folds is None:
        jobs = [argv + ["--parallel", str(plan.parallel), "--pipeline-after", str(after)]]
    else:  # a job per fold: the folds after it count in its ETA too
        later = [sum((steps or {}).get(j, 0) for j in folds[i + 1 :]) for i in range(len(folds))]
        jobs = [argv + ["--fold", str(k), "--pipeline-after", str(after + n)] for k, n in zip(folds, later)]
    for job in jobs:
        code = train_main(job)
        if code:
            raise StepFailed(code)


def re_predict(plan: Plan, base: Path, mode: str) -> Path:
    """training.results.tta_oof BASE --tta MODE; skipped when it holds BASE's members' predictions under MODE, pooled
    after BASE's members were last written."""
    out = RunDir(base).tta_dir(mode)
    o = RunDir(out)
    inputs = [RunDir(base).splits, *fold_files(base, "best.pt")]
    if o.is_pooled() and newer([o.oof], inputs) and o.predicted_tta() == mode and same_path(o.from_run(), base):
        say("tta", f"skipped: {out} holds {base} re-predicted under {mode}")
        return out
    say("tta", f"training.results.tta_oof {base} --tta {mode} -> {out}")
    tta_run(base, mode, out, plan.data)
    return out


def export(plan: Plan) -> None:
    """training.export RUN --out MODEL_DIR, the threshold chosen on the predictions the container makes (the
    re-prediction under --tta) and, with a shift run, by training.results.threshold's rule; skipped when MODEL_DIR
    holds that export, newer than the runs it read, with its expected output."""
    tta = plan.tta
    threshold_run = RunDir(plan.recipe).tta_dir(tta) if tta != "none" else None
    shift_run = None
    if plan.shift_run is not None:
        shift_run = RunDir(plan.shift_run).tta_dir(tta) if tta != "none" else plan.shift_run
    m_path = plan.model_out / manifest.MANIFEST_NAME
    inputs = [
        RunDir(plan.recipe).oof,
        *fold_files(plan.recipe, "best.pt"),
        *[RunDir(r).oof for r in (threshold_run, shift_run) if r is not None],
    ]
    if newer([m_path, plan.model_out / EXPECTED_OUTPUT], inputs):
        try:
            m = manifest.load(plan.model_out)
        except AmfError:
            m = None
        p, root = (m.provenance if m else {}), plan.runs
        shift = p.get("threshold_for_shift") or {}
        if (
            m is not None
            and names_run(p.get("run"), plan.recipe, root)
            and m.tta == tta
            and all(member.precision == plan.precision for member in m.members)
            and names_run(oof_predictions(p.get("threshold_predictions"), shift), threshold_run or plan.recipe, root)
            and (names_run(shift.get("loso_run"), shift_run, root) if shift_run else not shift)
        ):
            say("export", f"skipped: {plan.model_out} holds the export of {plan.recipe} (tta {tta})")
            return
    say("export", f"training.export {plan.recipe} --out {plan.model_out}")
    export_run(
        plan.recipe,
        plan.model_out,
        plan.data,
        tta,
        shift_run=shift_run,
        threshold_run=threshold_run,
        beside=plan.beside,
        precision=plan.precision,
    )


def card(plan: Plan) -> None:
    """training.card into MODEL_DIR; skipped when its card.json describes this export with these runs and is newer
    than them."""
    json_path = plan.model_out / CARD_JSON
    runs = [r for r in (plan.recipe, plan.plain_run, plan.shift_run, *plan.candidates) if r is not None]
    tta_runs = plan.tta_runs()
    inputs = [plan.model_out / manifest.MANIFEST_NAME]
    for r in [*runs, *tta_runs]:
        inputs += [RunDir(r).oof, *fold_files(r, "done.json")]
    reason = plan.plain_partial_reason if plan.plain else ""
    if newer([json_path, plan.model_out / README, plan.model_out / OOF_CSV], inputs):
        old, root = json.loads(json_path.read_text()), plan.runs
        plain, loso = old["runs"].get("plain", {}), old.get("loso", {})
        if (
            names_run(old["runs"]["recipe"]["run"], plan.recipe, root)
            and (names_run(plain.get("run"), plan.plain_run, root) if plan.plain else not plain)
            and (names_run(loso.get("run"), plan.shift_run, root) if plan.shift else not loso)
            and names_runs([r["run"] for r in old.get("tta", {}).get("runs", [])], tta_runs, root)
            and (old.get("trained_on", ""), plain.get("partial_reason", "")) == (plan.trained_on, reason)
            and names_runs([r["run"] for r in old.get("candidates", {}).get("runs", [])], plan.candidates, root)
            and old.get("candidates", {}).get("rule", "") == plan.candidate_rule
            and old.get("benchmark_name") == plan.benchmark
            and [o["dir"] for o in old.get("overlap", [])] == [portable_data(d) for d in plan.overlap]
            and old.get("config_note", "") == plan.config_note
        ):
            say("card", f"skipped: {json_path} describes these runs")
            return
    say("card", f"training.card --model {plan.model_out} -> {plan.model_out / README}")
    votes = plan.data if find_layout(plan.data) else None  # the experts' votes, from a labelled layout
    built, tables = build_card(
        plan.model_out,
        plan.recipe,
        plain=plan.plain_run,
        loso=plan.shift_run,
        n_boot=plan.n_boot,
        trained_on=plan.trained_on,
        tta=tta_runs,
        data_dir=votes,
        plain_partial_reason=reason,
        benchmark=plan.benchmark,
        candidates=plan.candidates,
        candidate_rule=plan.candidate_rule,
        overlap=plan.overlap,
        config_note=plan.config_note,
    )
    write_card(plan.model_out, built, tables)
    print(verdict(built))


def next_commands(plan: Plan) -> None:
    m = manifest.load(plan.model_out)
    print(
        f"\n{plan.model_out} is ready: {len(m.members)} member(s) {m.members[0].backbone}, threshold "
        f"{m.threshold:.3f}, tta {m.tta}; card {plan.model_out / README}; expected output on the sample job "
        f"{plan.model_out / EXPECTED_OUTPUT}"
    )
    if not same_path(plan.model_out, ROOT / "model"):
        print(f"The scripts package ./model: install it there first, whole: make install-model FROM={plan.model_out}")
    steps = [
        (f"AMF_DATA={plan.data} make test", "the project's checks on ./model, the data's included"),
        ("./do_build.sh [TAG]", "build the image"),
        ("./do_test_run.sh [TAG]", "run it as the platform does; compare: model/expected_output.json"),
        ("AMF_TEST_TARBALL=1 ./do_test_run.sh", "the same with model/ mounted at /opt/ml/model (the model tarball)"),
        ("./do_save.sh [TAG]", "out/<TAG>_<date>.tar.gz (the image), out/model_<date>.tar.gz"),
        ("./do_save_model.sh", "out/model_<date>.tar.gz alone, without Docker"),
    ]
    width = max(len(c) for c, _ in steps) + 2
    print("Next:\n" + "".join(f"  {c.ljust(width)}{what}\n" for c, what in steps), end="")
    print('then upload to Grand Challenge (README.md, "Your own submission").')


def run(plan: Plan) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise AmfError(
            "run the pipeline in one process; torchrun trains folds (--fold N) before it, in its run folders"
        )
    # the model folder's files the export and the card write (the members' and predictions' names: their steps)
    writes = [MANIFEST, EXPECTED_OUTPUT, FINGERPRINTS, CARD_JSON, README, OOF_CSV]
    ownership.claim(plan.model_out, writes, MODEL, plan.beside)
    table = load_table(plan.data, config.load(plan.config, plan.sets), log=lambda *a: None)
    parts = [(step, run, sets, folds, work(plan, table, run, sets, folds)) for step, run, sets, folds in stages(plan)]
    say("plan", plan_text(plan, [(step, run, w) for step, run, _, _, w in parts]))
    for i, (step, run, sets, folds, w) in enumerate(parts):
        after = sum(n for *_, later in parts[i + 1 :] for n in later["steps"].values())
        train(plan, step, run, sets, folds, after, w["steps"])
    for base in [b for b in (plan.shift_run, plan.recipe) if b is not None]:
        for mode in plan.modes:
            re_predict(plan, base, mode)
    export(plan)
    card(plan)
    next_commands(plan)


def parser() -> ArgumentParser:
    ap = ArgumentParser.from_doc("python -m training.pipeline", __doc__)
    ap.add_argument("config", help="YAML file or name in training/configs/")
    ap.add_argument("--data", required=True, type=Path, help="the data folder (official layout)")
    ap.add_argument("--runs", required=True, type=Path, help="folder of the pipeline's run folders")
    ap.add_argument("--model-out", required=True, type=Path, help="the model folder to write (model: the shipped one)")
    ap.add_argument("--name", default=None, help="run folder prefix (default: the config's name)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. train.lr=1e-4")
    ap.add_argument("--parallel", type=positive_int, default=1, metavar="N", help="folds at once (training.train)")
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--tta", default=None, choices=list(TTA_MODES), help="default: the config's export.tta")
    ap.add_argument(
        "--precision", default=None, choices=list(manifest.PRECISIONS), help="the members' (default: export.precision)"
    )
    ap.add_argument(
        "--compare-tta",
        nargs="*",
        default=[],
        choices=[m for m in TTA_MODES if m != "none"],
        help="also re-predict under these modes, for the card's comparison",
    )
    ap.add_argument(
        "--shift",
        nargs="?",
        const="leave_scanner_out",
        default=None,
        choices=SHIFT_KINDS,
        help="also train the config leaving one group out (bare: leave_scanner_out); the threshold for shift",
    )
    ap.add_argument("--plain", action="store_true", help="also train the plain control (mixstyle, align, ema off)")
    ap.add_argument("--plain-folds", type=fold_list, default=None, metavar="K,K", help="the control's folds only")
    ap.add_argument("--plain-partial-reason", default="", help="why the control has only some folds, for the card")
    ap.add_argument("--trained-on", default="", help="where the runs trained, for the card")
    ap.add_argument("--n-boot", type=positive_int, default=2000, help="bootstrap resamples of the card")
    ap.add_argument("--candidates", nargs="*", type=Path, default=[], help="finished runs of other recipes tried")
    ap.add_argument("--candidate-rule", default="", help="the rule that chose the recipe among them, for the card")
    ap.add_argument("--benchmark", default=None, help="a published protocol the runs follow (training/card/benchmarks)")
    ap.add_argument("--overlap", nargs="*", type=Path, default=[], help="data folders checked by content")
    ap.add_argument("--config-note", default="", help="how the config's values were chosen, for the card")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    cluster.add_arguments(ap)
    ap.add_argument("--beside", action="store_true", help=ownership.BESIDE_HELP)
    return ap


def plan_of(a) -> Plan:
    cfg = config.load(a.config, a.set)  # an unknown config or a bad --set: one error before anything runs
    if cfg["splits"]["kind"] == ALL:
        raise AmfError(
            "the pipeline trains cross-validated runs; a member trained on all figures (splits.kind all) is three "
            "commands: the cross-validated run (this pipeline, or training.train), training.train --set "
            "splits.kind=all, then training.export ALL_RUN --threshold-from CV_RUN (docs/training.md, Shipping a "
            "foundation model)"
        )
    if a.plain_folds is not None and not a.plain:
        raise AmfError("--plain-folds needs --plain")
    if a.candidates and not a.candidate_rule:
        raise AmfError("--candidates needs --candidate-rule: the rule, written before their figures, that chose")
    return Plan(
        config=a.config,
        data=a.data,
        runs=a.runs,
        model_out=a.model_out,
        name=a.name or cfg["name"],
        sets=list(a.set),
        parallel=a.parallel,
        device=a.device,
        tta=a.tta or cfg["export"]["tta"],
        precision=a.precision or cfg["export"]["precision"],
        compare_tta=list(a.compare_tta),
        shift=a.shift,
        plain=a.plain,
        plain_folds=a.plain_folds,
        plain_partial_reason=a.plain_partial_reason,
        trained_on=a.trained_on,
        n_boot=a.n_boot,
        progress=not a.no_progress,
        candidates=list(a.candidates),
        candidate_rule=a.candidate_rule,
        benchmark=a.benchmark,
        overlap=list(a.overlap),
        config_note=a.config_note,
        **cluster.options_of(a),
        beside=a.beside,
    )


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    try:
        run(plan_of(a))
    except StepFailed as e:  # the step printed its error line
        return e.code
    except EXPECTED as e:
        return report_error(as_error(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
