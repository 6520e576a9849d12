"""A finished run's held-out predictions again, under the container's test-time augmentation.

RUN -> OUT, a run folder of its own: each fold's held-out figures are predicted by the member the container
would run for that fold (fold{k}/best.pt through training.train.models.load_for_export, the model training.export
turns into fold{k}.onnx), prepared by amf.preprocess.prepare and averaged over amf.preprocess.tta_views as the
container averages them (the mean of the views' probabilities). OUT holds config.yaml (export.tta set to the
mode), splits.csv, fold{k}/oof.csv (RUN's columns, probability and logit replaced) and fold{k}/done.json, so
training.results.oof pools it and `python -m training.results.compare RUN OUT` gives the paired slide-bootstrap
difference that the model card reports: is test-time augmentation worth its cost on held-out (or held-out-scanner) data?
With --tta none it reproduces RUN's own out-of-fold probabilities (a check of the whole path).
Run:  python -m training.results.tta_oof RUN_DIR --tta flips|d4|none [--data DATA_DIR] [--out OUT_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from amf import AmfError, report_error
from amf.cli import EXPECTED, ArgumentParser, as_error, first_sentence
from amf.ensemble import sigmoid
from amf.fileio import write_text_atomic
from amf.preprocess import TTA_MODES, prepare, tta_views
from training.data import decode, image_path
from training.results.oof import pool, summary_text
from training.rundir import RunDir, write_csv_atomic, write_json_atomic
from training.splits import folds_of
from training.train.models import load_for_export

BATCH = 128


@torch.no_grad()
def predict_views(model: torch.nn.Module, patches: list, cfg: dict, tta: str) -> np.ndarray:
    """P(atypical) per patch: the mean over the TTA views of sigmoid(logit), as amf.ensemble computes it."""
    d = cfg["data"]
    out = []
    for i in range(0, len(patches), BATCH):
        x = prepare(patches[i : i + BATCH], int(d["input_size"]), d["mean"], d["std"], d["resize"])
        views = [
            sigmoid(model(torch.from_numpy(np.ascontiguousarray(v))).numpy().reshape(-1)) for v in tta_views(x, tta)
        ]
        out.append(np.mean(views, axis=0))
    return np.concatenate(out) if out else np.zeros(0)


def tta_run(run_dir, tta: str, out_dir=None, data_dir=None, log=print) -> Path:
    run = RunDir(run_dir)
    if tta not in TTA_MODES:
        raise AmfError(f"--tta must be one of {', '.join(TTA_MODES)}")
    out = RunDir(out_dir if out_dir else run.tta_dir(tta))
    if out.path.resolve() == run.path.resolve():
        raise AmfError("--out must not be the run folder itself")
    cfg = run.read_config(complete=True)
    splits = run.read_splits()
    missing = run.missing_folds(splits)
    if missing:
        raise AmfError(f"fold(s) {', '.join(map(str, missing))} of {run} are not finished")
    for k in folds_of(splits):
        fold = run.fold(k)
        held_out = fold.read_oof()
        rows = splits.set_index("image_id").loc[held_out["image_id"]].reset_index()
        paths = [image_path(row, data_dir) for _, row in rows.iterrows()]
        absent = [str(p) for p in paths if not p.is_file()]
        if absent:
            raise AmfError(
                f"fold {k}: {len(absent)} held-out image(s) are missing ({absent[0]}); give the data folder with --data"
            )
        model = load_for_export(cfg, fold.load_best()["state_dict"], fold.best).eval()
        p = predict_views(model, [decode(path) for path in paths], cfg, tta)
        held_out["probability"] = p
        held_out["logit"] = np.log(np.clip(p, 1e-12, None)) - np.log(np.clip(1 - p, 1e-12, None))
        out.fold(k).path.mkdir(parents=True, exist_ok=True)
        write_csv_atomic(held_out, out.fold(k).oof)
        write_json_atomic({**fold.read_done(), "tta": tta, "from_run": str(run.path.resolve())}, out.fold(k).done)
        log(f"fold {k}: {len(p)} held-out figures, tta {tta}")
    cfg["export"]["tta"] = tta
    out.write_config(cfg)
    write_text_atomic(out.splits, run.splits.read_text())
    _, result = pool(out, seed=int(cfg["train"]["seed"]))
    log(summary_text(result))
    return out.path


def main(argv=None) -> int:
    ap = ArgumentParser(prog="python -m training.results.tta_oof", description=first_sentence(__doc__))
    ap.add_argument("run", type=Path, help="a finished training run folder")
    ap.add_argument("--tta", required=True, choices=list(TTA_MODES))
    ap.add_argument("--data", type=Path, default=None, help="the official data folder, if the run's paths moved")
    ap.add_argument("--out", type=Path, default=None, help="default: RUN_DIR_tta_<mode> beside RUN_DIR")
    a = ap.parse_args(argv)
    try:
        tta_run(a.run, a.tta, a.out, a.data)
    except EXPECTED as e:
        return report_error(as_error(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
