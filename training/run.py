"""The run folder of training.train: every name in it, the one reader of each of its files, its atomic writers.

RUN_DIR/                 (RunDir(RUN_DIR); training.train writes it, oof/export/compare/card read it)
  config.yaml            the resolved config, written once (RunDir.read_config)
  splits.csv             the folds, written once and reused by every --fold job (RunDir.read_splits)
  fold{k}/               one per fold (RunDir.fold(k) -> FoldDir):
    last.pt                the training state after the last epoch (resuming reads it)
    best.pt                the kept epoch's weights, LoRA merged (the export reads it)
    epochs.csv             one row per epoch: losses, held-out (val_*) and inner (inner_*) metrics
    oof.csv                the kept epoch's held-out predictions
    done.json              the fold is finished (its best epoch, selection, EMA decay; training.tta_oof adds
                           "tta" and "from_run": the held-out figures re-predicted under test-time augmentation)
  oof.csv                pooled out-of-fold predictions, when every fold is done (training.oof; RunDir.read_oof)
  oof_metrics.json       their metrics and threshold (RunDir.read_oof_metrics)
RUN_DIR_tta_<mode>/       the same figures re-predicted under test-time augmentation (training.tta_oof; RunDir.tta_dir)
RUNS_DIR/NAME_<role>/    the runs of training.pipeline (pipeline_run): recipe, plain, and the shift run, named for its
                         split kind (leave_scanner_out: loso; any other kind: the kind itself)
A file that a reader needs and the folder lacks is one AmfError naming its path. read_predictions is the one
reader of an out-of-fold table (a fold's, the pooled one, the model card's copy): image_id and slide stay
strings as written ("007.png" stays "007.png", "NA" stays "NA").
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from amf import AmfError, one_line
from amf.fileio import read_json, write_text_atomic
from training import config as config_io
from training import splits as splits_io

CONFIG, SPLITS, OOF, OOF_METRICS = "config.yaml", "splits.csv", "oof.csv", "oof_metrics.json"
SHIFT_ROLES = {"leave_scanner_out": "loso"}  # the pipeline's shift run by split kind (others: the kind's own name)
LAST, BEST, EPOCHS, DONE = "last.pt", "best.pt", "epochs.csv", "done.json"  # in each fold{k}/
PREDICTION_DTYPES = {"image_id": str, "slide": str}


# ---- writers (a reader, or a job resuming, never sees half a file) --------------------------------------


def write_csv_atomic(df: pd.DataFrame, path) -> None:
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    write_text_atomic(path, buf.getvalue())


def write_json_atomic(obj, path) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def save_atomic(obj, path) -> None:
    """torch.save to a hidden file beside PATH, then rename: an interrupted save leaves the old checkpoint."""
    import torch  # the readers (compare, card) stay torch-free

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def pipeline_run(runs_dir, name: str, role: str) -> Path:
    """RUNS_DIR/NAME_ROLE, a run of training.pipeline: ROLE recipe, plain, or a split kind (its shift run)."""
    return Path(runs_dir) / f"{name}_{SHIFT_ROLES.get(role, role)}"


# ---- readers --------------------------------------------------------------------------------------------


def need(path: Path, what: str) -> Path:
    if not path.is_file():
        raise AmfError(f"{path.parent} has no {what}: {path} does not exist")
    return path


def read_predictions(path) -> pd.DataFrame:
    """An out-of-fold table (image_id, slide, fold, probability, ...), ids and slides as the strings written."""
    return pd.read_csv(need(Path(path), "out-of-fold predictions"), dtype=PREDICTION_DTYPES, keep_default_na=False)


def load_checkpoint(path, what: str) -> dict:
    import torch

    return torch.load(need(Path(path), what), map_location="cpu", weights_only=False)


def file_in_folder(name: str) -> property:
    """A read-only property: the path of NAME in the object's folder (self.path / NAME)."""
    return property(lambda self: self.path / name, doc=f"the folder's {name}")


@dataclass(frozen=True)
class FoldDir:
    """RUN_DIR/fold{k}: the files of one fold."""

    path: Path
    k: int

    last = file_in_folder(LAST)
    best = file_in_folder(BEST)
    epochs = file_in_folder(EPOCHS)
    oof = file_in_folder(OOF)
    done = file_in_folder(DONE)

    def is_done(self) -> bool:
        return self.done.is_file()

    def read_done(self) -> dict:
        """done.json ({} if it is empty: hand-made folders mark a fold done with an empty file)."""
        return json.loads(need(self.done, f"fold {self.k} marker ({DONE})").read_text() or "{}")

    def read_oof(self) -> pd.DataFrame:
        return read_predictions(self.oof)

    def read_epochs(self) -> pd.DataFrame:
        return pd.read_csv(need(self.epochs, f"fold {self.k} epoch log ({EPOCHS})"))

    def load_best(self) -> dict:
        return load_checkpoint(self.best, f"fold {self.k} weights ({BEST})")

    def load_last(self) -> dict:
        return load_checkpoint(self.last, f"fold {self.k} training state ({LAST})")


class RunDir:
    """A training run folder (see the module docstring for what it holds)."""

    def __init__(self, path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:  # Path(run), RunDir(run) and os.path functions take a RunDir
        return str(self.path)

    config = file_in_folder(CONFIG)
    splits = file_in_folder(SPLITS)
    oof = file_in_folder(OOF)
    oof_metrics = file_in_folder(OOF_METRICS)

    def tta_dir(self, mode: str) -> Path:
        """RUN_DIR_tta_MODE beside the run: where training.tta_oof re-predicts it under test-time augmentation."""
        return self.path.with_name(f"{self.path.name}_tta_{mode}")

    def fold(self, k: int) -> FoldDir:
        return FoldDir(self.path / f"fold{int(k)}", int(k))

    def fold_dirs(self) -> list[FoldDir]:
        """The fold folders present, in name order (fold0, fold1, fold10, ...), finished or not."""
        return [
            FoldDir(p, int(p.name[4:])) for p in sorted(self.path.glob("fold*")) if p.is_dir() and p.name[4:].isdigit()
        ]

    def read_config(self, complete: bool = False) -> dict:
        """config.yaml as written. COMPLETE: keys it lacks (a run from before they existed) take today's
        defaults, and the whole is validated: what a model is built from (the export)."""
        if not self.config.is_file():
            raise AmfError(f"{self.path} is not a training run folder (no {CONFIG})")
        try:
            cfg = config_io.yaml.safe_load(self.config.read_text())
        except config_io.yaml.YAMLError as e:
            raise AmfError(f"{self.config}: not valid YAML ({one_line(e)})") from None
        if not isinstance(cfg, dict):
            raise AmfError(f"{self.config}: not a config (a YAML mapping)")
        return config_io.validate(config_io.merge(config_io.DEFAULTS, cfg)) if complete else cfg

    def write_config(self, cfg: dict) -> None:
        write_text_atomic(self.config, config_io.dump(cfg))

    def read_splits(self) -> pd.DataFrame:
        if not self.splits.is_file():
            raise AmfError(f"{self.path} is not a training run folder (no {SPLITS})")
        return splits_io.read(self.splits)

    def write_splits(self, splits: pd.DataFrame) -> None:
        splits_io.write(splits, self.splits)

    def missing_folds(self, splits: pd.DataFrame) -> list[int]:
        """The folds of SPLITS without done.json."""
        return [k for k in splits_io.folds_of(splits) if not self.fold(k).is_done()]

    def config_differences(self, cfg: dict) -> list[str]:
        """The keys (section.key) in which config.yaml, completed with today's defaults, differs from CFG; [] when
        they are the same config (what training.train requires of a folder it continues, and the pipeline of a run
        it skips)."""
        old = self.read_config(complete=True)
        new = config_io.yaml.safe_load(config_io.dump(cfg))
        if old == new:
            return []
        keys = [
            f"{s}.{k}"
            for s in new
            if isinstance(new[s], dict)
            for k in new[s]
            if (old.get(s) or {}).get(k) != new[s][k]
        ]
        return keys or ["name"]

    def discard_untrained(self, folds) -> bool:
        """Remove what a run that failed before its first finished epoch wrote (config.yaml, splits.csv, the fold
        folders of FOLDS), so that the corrected command can start in the same folder; only when no fold folder
        holds a finished epoch (last.pt) or fold (done.json) and none but FOLDS exists. True when removed."""
        import shutil

        dirs = self.fold_dirs()
        if any(f.last.is_file() or f.is_done() or f.k not in set(folds) for f in dirs):
            return False
        for f in dirs:
            shutil.rmtree(f.path, ignore_errors=True)
        for path in (self.config, self.splits):
            path.unlink(missing_ok=True)
        if self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()
        return True

    def done_values(self, key: str, default=None, folds=None) -> set:
        """The values of KEY (DEFAULT where absent) in the done.json of its finished folds (of FOLDS if given)."""
        dirs = self.fold_dirs() if folds is None else [self.fold(k) for k in folds]
        return {f.read_done().get(key, default) for f in dirs if f.is_done()}

    def predicted_tta(self) -> str:
        """The test-time augmentation its held-out predictions were made with: training.tta_oof's mode, "none" for a
        training run (training.train predicts one view)."""
        modes = self.done_values("tta", "none")
        if len(modes) > 1:
            raise AmfError(f"{self.path}: folds predicted with different test-time augmentations ({sorted(modes)})")
        return modes.pop() if modes else "none"

    def from_run(self) -> Path:
        """The run whose members made these predictions: training.tta_oof's source run, else this run itself."""
        sources = self.done_values("from_run")
        if len(sources) > 1:
            raise AmfError(f"{self.path}: folds re-predicted from different runs")
        source = sources.pop() if sources else None
        return Path(source).resolve() if source else self.path.resolve()

    def is_pooled(self) -> bool:
        return self.oof.is_file() and self.oof_metrics.is_file()

    def read_oof(self) -> pd.DataFrame:
        """The pooled out-of-fold predictions (training.oof.pool writes them when every fold is done)."""
        self._need_pooled()
        return read_predictions(self.oof)

    def read_oof_metrics(self) -> dict:
        self._need_pooled()
        return read_json(self.oof_metrics, "out-of-fold metrics")

    def write_pooled(self, oof: pd.DataFrame, result: dict) -> None:
        write_csv_atomic(oof, self.oof)
        write_json_atomic(result, self.oof_metrics)

    def _need_pooled(self) -> None:
        if not self.is_pooled():
            raise AmfError(
                f"{self.path} has no pooled out-of-fold results ({self.oof}, {self.oof_metrics}): are all folds done?"
            )
