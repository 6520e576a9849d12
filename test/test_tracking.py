"""Experiment tracking (training/train/tracking.py), the run's curves.png (training/train/curves.py) and the world-size
rules (training/train/ddp.py): what is logged under which name, the errors for a tracker asked for and missing, W&B's
arguments (offline mode left to wandb), TensorBoard's event files, the curves from epochs.csv."""

from __future__ import annotations

import copy
import importlib.util
import sys
import types

import pandas as pd
import pytest
import torch

from amf import AmfError
from training import config as config_io
from training.train import __main__ as train
from training.train import curves, ddp, tracking

ROW = {
    "epoch": 3,
    "lr": 1e-3,
    "images_per_s": 120.5,
    "train_loss": 0.5,
    "train_cls": 0.4,
    "train_kd": 0.1,
    "train_align": 0.0,
    "ema_decay": None,  # no teacher: left out
    "val_balanced_accuracy": 0.7,
    "val_roc_auc": 0.8,
    "val_loss": 0.6,
    "inner_roc_auc": float("nan"),  # a metric that does not exist: left out
    "best": True,
    "seconds": 12.0,
}


def cfg(**log):
    c = config_io.load("smoke", [f"log.{k}={v}" for k, v in log.items()])
    c["data"]["mean"], c["data"]["std"] = [0.5] * 3, [0.25] * 3
    return c


def test_scalars_name_every_number_of_the_epoch_row():
    assert tracking.scalars(ROW) == {
        "opt/lr": 1e-3,
        "speed/train_images_per_s_end_to_end": 120.5,
        "train/loss": 0.5,
        "train/cls": 0.4,
        "train/kd": 0.1,
        "train/align": 0.0,
        "val/balanced_accuracy": 0.7,
        "val/roc_auc": 0.8,
        "val/loss": 0.6,
        "speed/seconds": 12.0,
    }


def hide(monkeypatch, *names):
    real = importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda n, *a: None if n in names else real(n, *a))


def test_a_tracker_asked_for_and_missing_is_one_error(monkeypatch):
    hide(monkeypatch, "wandb", "tensorboard")
    with pytest.raises(AmfError, match=r"log.wandb: true needs the wandb package \(pip install wandb\)"):
        tracking.check(cfg(wandb="true")["log"])
    with pytest.raises(AmfError, match="log.tensorboard: true needs the tensorboard package"):
        tracking.check(cfg(tensorboard="true")["log"])
    assert "no event files" in tracking.check(cfg()["log"])  # auto: a note, and training goes on
    assert tracking.check(cfg(tensorboard="false")["log"]) is None


def test_training_refuses_wandb_when_missing_before_any_work(monkeypatch, tmp_path, capsys):
    hide(monkeypatch, "wandb")
    out = tmp_path / "run"
    argv = ["--config", "smoke", "--data", str(tmp_path / "nothing"), "--out", str(out), "--set", "log.wandb=true"]
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: log.wandb: true needs the wandb package")
    assert not out.exists()  # refused before the data was read or the run folder made


def test_config_checks_the_new_keys():
    for bad in ("log.tensorboard=maybe", "log.wandb_mode=cloud", "train.lr_scaling=sqrt", "ema.decay_scaling=2"):
        with pytest.raises(AmfError, match=bad.split("=")[0]):
            config_io.load("smoke", [bad])
    for bad in ("log.images=-1", "log.progress_s=0"):
        with pytest.raises(AmfError, match="log.images must be >= 0 and log.progress_s > 0"):
            config_io.load("smoke", [bad])


class FakeWandb(types.ModuleType):
    """Records what the tracker asks of wandb."""

    def __init__(self):
        super().__init__("wandb")
        self.inits, self.logged, self.finished = [], [], 0
        fake = self

        class Run:
            def log(self, values):
                fake.logged.append(values)

            def finish(self):
                fake.finished += 1

        self.Run = Run

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return self.Run()

    class Image:
        def __init__(self, array):
            self.shape = array.shape


@pytest.mark.parametrize("mode", ["auto", "offline"])
def test_wandb_run_per_fold_with_the_config_names_and_mode(monkeypatch, tmp_path, mode):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    c = cfg(wandb="true", wandb_mode=mode, tensorboard="false", images=4)
    t = tracking.FoldTracker(c, tmp_path / "fold1", 1, "myrun")
    assert t.wants_images
    t.images(torch.zeros(8, 3, 16, 16), 0)
    t.images(torch.zeros(8, 3, 16, 16), 0)  # once per fold
    t.epoch(ROW)
    t.close()
    (kwargs,) = fake.inits
    assert kwargs["project"] == "amf" and kwargs["name"] == "smoke-myrun-fold1" and kwargs["group"] == "myrun"
    assert kwargs["config"] == c and kwargs["dir"] == str(tmp_path / "fold1")
    # auto: no mode passed, so wandb's own setting (WANDB_MODE=offline, disabled) decides
    assert ("mode" not in kwargs) if mode == "auto" else kwargs["mode"] == "offline"
    image, scalars = fake.logged
    assert image[tracking.IMAGE_TAG].shape == (16 + 2 * 2, 4 * 16 + 5 * 2, 3)  # 4 patches in a row, padded
    assert scalars["val/roc_auc"] == 0.8 and scalars["epoch"] == 3 and "opt/ema_decay" not in scalars
    assert fake.finished == 1


def test_wandb_failing_to_start_is_one_error(monkeypatch, tmp_path):
    fake = FakeWandb()

    def refuse(**kwargs):
        raise RuntimeError("api_key not configured (no-tty)\ncall wandb.login")

    fake.init = refuse
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with pytest.raises(AmfError, match=r"^log.wandb: wandb.init failed: api_key not configured \(no-tty\)"):
        tracking.FoldTracker(cfg(wandb="true", tensorboard="false"), tmp_path, 0, "run")


def test_a_disabled_tracker_does_nothing(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)  # would fail if it were imported
    t = tracking.FoldTracker(cfg(wandb="true"), tmp_path, 0, "run", enabled=False)
    assert not t.wants_images
    t.epoch(ROW)
    t.close()
    assert list(tmp_path.iterdir()) == []


def test_tensorboard_event_files_hold_the_epochs_and_the_patches(tmp_path):
    pytest.importorskip("tensorboard", reason="requirements-dev.txt installs it")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    t = tracking.FoldTracker(cfg(tensorboard="true", images=8), tmp_path, 0, "run")
    x = torch.full((16, 3, 8, 8), -2.0)  # normalised black: (0 - 0.5) / 0.25
    t.images(x, 0)
    for epoch in (1, 2):
        t.epoch({**ROW, "epoch": epoch, "val_roc_auc": 0.5 + epoch / 10})
    t.close()
    ea = EventAccumulator(str(tmp_path))
    ea.Reload()
    assert set(tracking.scalars(ROW)) <= set(ea.Tags()["scalars"])
    assert [(e.step, round(e.value, 6)) for e in ea.Scalars("val/roc_auc")] == [(1, 0.6), (2, 0.7)]
    (image,) = ea.Images(tracking.IMAGE_TAG)
    assert (image.width, image.height) == (8 * 8 + 9 * 2, 8 + 2 * 2)


def test_a_fold_trained_again_from_its_first_epoch_leaves_no_old_curves(tmp_path):
    """--restart (or a new training in the same fold folder) starts the fold's event files afresh; a resumed fold
    keeps its own."""
    pytest.importorskip("tensorboard", reason="requirements-dev.txt installs it")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def train(first_epoch, epochs):
        t = tracking.FoldTracker(cfg(tensorboard="true", images=0), tmp_path, 0, "run", first_epoch)
        for epoch in epochs:
            t.epoch({**ROW, "epoch": epoch})
        t.close()

    def steps():
        ea = EventAccumulator(str(tmp_path))
        ea.Reload()
        return [e.step for e in ea.Scalars("train/loss")]

    train(0, (1, 2, 3))
    train(2, (3, 4))  # resumed after epoch 2
    assert steps() == [1, 2, 3, 4]
    train(0, (1,))  # trained again from the first epoch
    assert steps() == [1] and len(list(tmp_path.glob(tracking.EVENTS))) == 1


def test_patch_grid_undoes_the_normalisation():
    x = torch.stack([torch.full((3, 4, 4), v) for v in (-2.0, 0.0, 2.0)])  # (x/255 - 0.5) / 0.25
    grid = tracking.patch_grid(x, [0.5] * 3, [0.25] * 3, 3)
    assert grid.shape == (3, 4 + 4, 3 * 4 + 4 * 2)
    assert grid[:, 2, 2].tolist() == [0.0] * 3 and grid[:, 2, 8].tolist() == [0.5] * 3
    assert grid[:, 2, 14].tolist() == [1.0] * 3


# ---- curves.png --------------------------------------------------------------------------------------


def fold_log(run, k, epochs=3, done=True):
    folder = run / f"fold{k}"
    folder.mkdir(parents=True)
    pd.DataFrame(
        {
            "epoch": range(1, epochs + 1),
            "train_loss": [0.7 - 0.1 * e for e in range(epochs)],
            "val_loss": [0.8] * epochs,
            "val_balanced_accuracy": [0.6] * epochs,
            "val_roc_auc": [0.7] * epochs,
        }
    ).to_csv(folder / "epochs.csv", index=False)
    if done:
        (folder / "done.json").write_text("{}")


def test_curves_png_from_the_folds_epoch_logs(tmp_path, capsys):
    from PIL import Image

    run = tmp_path / "run"
    fold_log(run, 0)
    fold_log(run, 1)
    assert curves.main([str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / "curves.png")
    with Image.open(run / "curves.png") as im:
        assert im.format == "PNG" and im.width > 2 * im.height
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []  # written atomically, nothing left


def test_curves_without_epoch_logs_is_one_error(tmp_path, capsys):
    (tmp_path / "run" / "fold0").mkdir(parents=True)
    assert curves.main([str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "no fold has an epoch log" in err[0]
    fold_log(tmp_path / "ok", 0)
    assert curves.main([str(tmp_path / "ok"), "--out", str(tmp_path / "missing" / "c.png")]) == 2
    assert capsys.readouterr().err.startswith(f"error: cannot write {tmp_path / 'missing' / 'c.png'}")


# ---- the world size (training/train/ddp.py) ---------------------------------------------------------------------


def test_lr_and_ema_with_the_world_size():
    c = config_io.load("smoke")
    assert ddp.effective_lr(c, 4) == c["train"]["lr"] and ddp.effective_ema_decay(c, 4) == 0.999
    c["train"]["lr_scaling"], c["ema"]["decay_scaling"] = "linear", "world"
    assert ddp.effective_lr(c, 4) == pytest.approx(4 * c["train"]["lr"])
    assert ddp.effective_ema_decay(c, 4) == pytest.approx(0.999**4)
    assert ddp.effective_lr(c, 1) == c["train"]["lr"] and ddp.effective_ema_decay(c, 1) == 0.999
    scaled = ddp.for_world(c, 2)
    assert scaled["train"]["lr"] == pytest.approx(2 * c["train"]["lr"]) and c["train"]["lr"] == 2e-3  # a copy
    # the same horizon in epochs as one process: 1/(1-d^G) steps of G x fewer steps per epoch
    one = ddp.horizon_epochs(0.999, 100)
    assert ddp.horizon_epochs(0.999**4, 25) == pytest.approx(one, rel=2e-3)
    assert ddp.horizon_epochs(0.999, 25) == pytest.approx(4 * one)


def test_world_line_says_what_the_world_size_does():
    c = config_io.load("smoke")
    line = ddp.world_line(c, 2, 50)
    assert "2 process(es), global batch 64 (32 x 2); lr 0.002 (train.lr_scaling none: train.lr 0.002, " in line
    assert "linear would be 0.004)" in line
    assert "EMA decay 0.999 per step, horizon 1000 steps = 20 epochs (ema.decay_scaling none; one process: 10" in line
    single = ddp.world_line(c, 1, 100)
    assert single == (
        "1 process(es), global batch 32 (32 x 1); lr 0.002; EMA decay 0.999 per step, horizon 1000 steps = 10 epochs"
    )
    c["ema"]["enabled"] = False
    assert "EMA" not in ddp.world_line(c, 2, 50)


def test_rank_seeds_differ_by_rank_and_epoch_and_leave_rank_0_alone():
    seeds = {ddp.rank_seed(7, r, e) for r in (1, 2, 3) for e in (0, 1, 2)}
    assert len(seeds) == 9 and ddp.rank_seed(7, 1, 0) == ddp.rank_seed(7, 1, 0)
    torch.manual_seed(0)
    mixer = types.SimpleNamespace(generator=torch.Generator().manual_seed(3))
    state, mix_state = torch.get_rng_state(), mixer.generator.get_state()
    ddp.reseed_rank(7, 0, 5, mixer)  # one process, or rank 0: its stream is untouched
    assert torch.equal(torch.get_rng_state(), state) and torch.equal(mixer.generator.get_state(), mix_state)
    ddp.reseed_rank(7, 1, 5, mixer)
    a = (torch.rand(3), torch.rand(3, generator=mixer.generator))
    ddp.reseed_rank(7, 1, 5, mixer)  # a resumed fold reseeds as the uninterrupted one did
    b = (torch.rand(3), torch.rand(3, generator=mixer.generator))
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_ddp_command_prints_the_line(capsys):
    from training import inspect

    assert inspect.main(["ddp", "smoke", "train.lr_scaling=linear", "--world", "4", "--steps", "400"]) == 0
    assert "global batch 128 (32 x 4); lr 0.008 (train.lr_scaling linear: train.lr 0.002)" in capsys.readouterr().out
    defaults = copy.deepcopy(config_io.DEFAULTS)
    assert defaults["train"]["lr_scaling"] == "none" and defaults["ema"]["decay_scaling"] == "none"
