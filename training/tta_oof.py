"""A finished run's held-out predictions again, under the container's test-time augmentation.

RUN -> OUT, a run folder of its own: each fold's held-out figures are predicted by the member the container
would run for that fold (fold{k}/best.pt through training.models.load_for_export, the model training.export
turns into fold{k}.onnx), prepared by amf.preprocess.prepare and averaged over amf.ensemble.tta_views as the
container averages them (the mean of the views' probabilities). OUT holds config.yaml (export.tta set to the
mode), splits.csv, fold{k}/oof.csv (RUN's columns, probability and logit replaced) and fold{k}/done.json, so
training.oof pools it and `python -m training.compare RUN OUT` gives the paired slide-bootstrap difference
that the model card reports: is test-time augmentation worth its cost on held-out (or held-out-scanner) data?
With --tta none it reproduces RUN's own out-of-fold probabilities (a check of the whole path).
Run:  python -m training.tta_oof RUN_DIR --tta flips|d4|none [--data DATA_DIR] [--out OUT_DIR]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from amf import AmfError, report_error
from amf.cli import EXPECTED, ArgumentParser, as_error
from amf.ensemble import sigmoid, tta_views
from amf.fileio import write_text_atomic
from amf.manifest import TTA_MODES
from amf.preprocess import prepare
from training import oof as oof_io
from training import splits as splits_io
from training.run import RunDir, write_csv_atomic, write_json_atomic
from training.data import OFFICIAL_IMAGES, decode
from training.models import load_for_export

BATCH = 128


def patch_path(row, data_dir=None) -> Path:
    """The image of a splits.csv row; an official figure under DATA_DIR when the data folder moved."""
    if data_dir is not None and row["source"] == "official":
        return Path(data_dir) / OFFICIAL_IMAGES / row["image_id"]
    return Path(row["path"])


@torch.no_grad()
def predict_views(model: torch.nn.Module, patches: list, cfg: dict, tta: str) -> np.ndarray:
    """P(atypical) per patch: the mean over the TTA views of sigmoid(logit), as amf.ensemble computes it."""
    d = cfg["data"]
    out = []
    for i in range(0, len(patches), BATCH):
        x = prepare(patches[i:i + BATCH], int(d["input_size"]), d["mean"], d["std"], d["resize"])
        views = [sigmoid(model(torch.from_numpy(np.ascontiguousarray(v))).numpy().reshape(-1))
                 for v in tta_views(x, tta)]
        out.append(np.mean(views, axis=0))
    return np.concatenate(out) if out else np.zeros(0)


def tta_run(run_dir, tta: str, out_dir=None, data_dir=None, log=print) -> Path:
    run_dir = Path(run_dir)
    if tta not in TTA_MODES:
        raise AmfError(f"--tta must be one of {', '.join(TTA_MODES)}")
    out_dir = Path(out_dir) if out_dir else run_dir.with_name(f"{run_dir.name}_tta_{tta}")
    if out_dir.resolve() == run_dir.resolve():
        raise AmfError("--out must not be the run folder itself")
    run, out = RunDir(run_dir), RunDir(out_dir)
    cfg = run.read_config(complete=True)
    splits = run.read_splits()
    missing = run.missing_folds(splits)
    if missing:
        raise AmfError(f"fold(s) {', '.join(map(str, missing))} of {run_dir} are not finished")
    torch.set_grad_enabled(False)
    for k in splits_io.folds_of(splits):
        fold, out_fold = run.fold(k), out.fold(k)
        held_out = fold.read_oof()
        rows = splits.set_index("image_id").loc[held_out["image_id"]].reset_index()
        paths = [patch_path(row, data_dir) for _, row in rows.iterrows()]
        absent = [str(p) for p in paths if not p.is_file()]
        if absent:
            raise AmfError(f"fold {k}: {len(absent)} held-out image(s) are missing ({absent[0]}); "
                           f"give the data folder with --data")
        model = load_for_export(cfg, fold.load_best()["state_dict"]).eval()
        p = predict_views(model, [decode(path) for path in paths], cfg, tta)
        held_out["probability"] = p
        held_out["logit"] = np.log(np.clip(p, 1e-12, None)) - np.log(np.clip(1 - p, 1e-12, None))
        out_fold.path.mkdir(parents=True, exist_ok=True)
        write_csv_atomic(held_out, out_fold.oof)
        write_json_atomic({**fold.read_done(), "tta": tta, "from_run": str(run_dir.resolve())}, out_fold.done)
        log(f"fold {k}: {len(p)} held-out figures, tta {tta}")
    cfg["export"]["tta"] = tta
    out.write_config(cfg)
    write_text_atomic(out.splits, run.splits.read_text())  # RUN's splits.csv as it is
    _, result = oof_io.pool(out_dir, seed=int(cfg["train"]["seed"]))
    log(oof_io.summary_text(result))
    return out_dir


def main(argv=None) -> int:
    ap = ArgumentParser(prog="python -m training.tta_oof", description=__doc__.split("\n")[0])
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
