"""Experiment tracking for training.train: TensorBoard event files (by default) and Weights & Biases (log.wandb).

Per fold, from the main rank only:
  every epoch   its epochs.csv row: losses, each term's share of the loss and the alignment's shuffled control
                (train/*), held-out metrics (val/*), inner metrics (inner/*), the learning rate and the EMA decay
                (opt/*), training throughput end to end and seconds (speed/*), at step = epoch
  once          a grid of the first training batch's patches as the model receives them (augmented, resized;
                de-normalised for display; log.images of them, 0: none): what the model is fed
TensorBoard: the event files go into RUN/fold{k}/, so `tensorboard --logdir RUNS` shows every run and fold; a
resumed fold drops what an interrupted epoch had logged (purge_step); a fold that trains from its first epoch
(new, or --restart) removes the fold's earlier event files, so that two trainings never overlay.
log.tensorboard: auto, on where the package is installed (requirements-dev.txt pins it; a line says when it is
not), true (an error where it is not), false.
W&B: one run per fold, named log.wandb_name or CONFIG-RUN-fold{k}, grouped by the run folder's name, its config the
run's, its files under fold{k}/wandb/; log.wandb_mode auto leaves the mode to wandb itself (so
WANDB_MODE=offline or disabled is respected), else passes the mode named. Asked for and not installed, or failing
to start: one error line, before anything trains.
Run:  tensorboard --logdir runs      (then open the address it prints)
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from amf import AmfError, one_line

GROUPS = {"train_": "train/", "val_": "val/", "inner_": "inner/"}  # epochs.csv prefix -> TensorBoard group
# images_per_s: the epoch's training images over its wall time, end to end (loading, augmenting, the steps, the EMA
# update; not the held-out prediction): what a run achieves, not the network's speed (bench.train_throughput)
OTHER = {
    "lr": "opt/lr",
    "ema_decay": "opt/ema_decay",
    "images_per_s": "speed/train_images_per_s_end_to_end",
    "seconds": "speed/seconds",
}
IMAGE_TAG = "train/patches_as_fed"
EVENTS = "events.out.tfevents.*"  # TensorBoard's event files


def scalars(row: dict) -> dict:
    """The epochs.csv row's numbers under their tracking names (missing values, e.g. no EMA, left out)."""
    out = {}
    for key, value in row.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            continue
        name = OTHER.get(key) or next((g + key[len(p) :] for p, g in GROUPS.items() if key.startswith(p)), None)
        if name is not None:
            out[name] = float(value)
    return out


def tensorboard_on(log_cfg: dict) -> bool:
    """Whether event files are written: log.tensorboard, auto meaning where the package is installed."""
    setting = log_cfg["tensorboard"]
    if setting is False:
        return False
    installed = importlib.util.find_spec("tensorboard") is not None
    if setting is True and not installed:
        raise AmfError(
            "log.tensorboard: true needs the tensorboard package (pip install -r requirements-dev.txt), "
            "or set log.tensorboard=false"
        )
    return installed


def check(log_cfg: dict) -> str | None:
    """Before anything trains: an AmfError for a tracker asked for and not installed; a note for what auto left
    off (None when nothing is left off)."""
    if log_cfg["wandb"] and importlib.util.find_spec("wandb") is None:
        raise AmfError("log.wandb: true needs the wandb package (pip install wandb), or set log.wandb=false")
    if not tensorboard_on(log_cfg) and log_cfg["tensorboard"] == "auto":
        return "log: the tensorboard package is not installed (pip install -r requirements-dev.txt): no event files"
    return None


def patch_grid(x: torch.Tensor, mean, std, n: int) -> torch.Tensor:
    """The first N of a normalised batch (N x 3 x S x S) as one 3 x H x W image in [0, 1], 8 to a row."""
    from torchvision.utils import make_grid

    x = x[:n].detach().float().cpu()
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return make_grid((x * s + m).clamp(0, 1), nrow=8, padding=2, pad_value=1.0)


class FoldTracker:
    """The trackers of one fold (TensorBoard, W&B, either or none). Call epoch(row) after each epoch, images(x)
    with the first batch, close() at the end. A disabled tracker (ranks other than 0) does nothing."""

    def __init__(self, cfg: dict, fold_dir, k: int, run_name: str, first_epoch: int = 0, enabled: bool = True):
        log_cfg = cfg["log"]
        self.tb = self.wandb = self.run = None
        self.mean, self.std = cfg["data"]["mean"], cfg["data"]["std"]
        self.n_images = int(log_cfg["images"]) if enabled else 0
        if not enabled:
            return
        if tensorboard_on(log_cfg):
            from torch.utils.tensorboard import SummaryWriter

            if not first_epoch:  # an earlier training of this fold, discarded: its curves would overlay the new
                for old in Path(fold_dir).glob(EVENTS):
                    old.unlink()

            self.tb = SummaryWriter(str(fold_dir), purge_step=first_epoch + 1 if first_epoch else None)
        if log_cfg["wandb"]:
            self._start_wandb(cfg, Path(fold_dir), k, run_name)

    def _start_wandb(self, cfg: dict, fold_dir: Path, k: int, run_name: str) -> None:
        import wandb

        log_cfg = cfg["log"]
        kwargs = {
            "project": log_cfg["wandb_project"],
            "name": log_cfg["wandb_name"] or f"{cfg['name']}-{run_name}-fold{k}",
            "group": run_name,
            "job_type": "fold",
            "config": cfg,
            "dir": str(fold_dir),
        }
        if log_cfg["wandb_mode"] != "auto":
            kwargs["mode"] = log_cfg["wandb_mode"]
        try:
            self.run = wandb.init(**kwargs)
        except Exception as e:  # wandb's own errors (no login, no network in online mode) are many types
            raise AmfError(f"log.wandb: wandb.init failed: {one_line(e)}") from None
        self.wandb = wandb

    @property
    def wants_images(self) -> bool:
        return self.n_images > 0 and (self.tb is not None or self.run is not None)

    def images(self, x: torch.Tensor, epoch: int) -> None:
        """The grid of a batch's first log.images patches (once per fold: later calls do nothing)."""
        if not self.wants_images:
            return
        grid = patch_grid(x, self.mean, self.std, self.n_images)
        if self.tb is not None:
            self.tb.add_image(IMAGE_TAG, grid, epoch + 1)
        if self.run is not None:
            self.run.log({IMAGE_TAG: self.wandb.Image(grid.permute(1, 2, 0).numpy()), "epoch": epoch + 1})
        self.n_images = 0

    def epoch(self, row: dict) -> None:
        values = scalars(row)
        if self.tb is not None:
            for name, value in values.items():
                self.tb.add_scalar(name, value, int(row["epoch"]))
            self.tb.flush()  # a person watching sees the epoch now, not at the writer's next flush
        if self.run is not None:
            self.run.log({**values, "epoch": int(row["epoch"])})

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.run is not None:
            self.run.finish()
        self.tb = self.run = None
