"""Look at one part of training without training: what it makes of a config, a data folder, a label table, an image.

  python -m training.inspect config CONFIG [KEY=VALUE ...]             the resolved config (YAML)
  python -m training.inspect data DATA_DIR [--config smoke] [--skip-missing]   the class and domain counts
  python -m training.inspect splits LABELS.csv [--folds 5] [--seed 0] [--kind kfold]   the per-fold counts
  python -m training.inspect models [CONFIG] [KEY=VALUE ...]           the model built (hub weights fetched on first
                                                                       use): parameters, a forward pass, mean/std
  python -m training.inspect recipe [CONFIG] [KEY=VALUE ...]           where MixStyle hooks into the backbone
  python -m training.inspect augment IMAGE.png OUT.png [--seed 0]      one draw of the CPU augmentation (defaults)
  python -m training.inspect gpu_augment IMAGE.png OUT.png [--seed 0]  16 draws of the device augmentation, a grid
  python -m training.inspect device [auto|cuda|cpu]                    the device training would use, or the error
  python -m training.inspect ddp [CONFIG] [KEY=VALUE ...] [--world 2] [--steps 100]   what G processes change
CONFIG is a YAML file or a name in training/configs/ (models, recipe and ddp: smoke when left out). A bad argument, file
or config value is one line `error: ...` on stderr, exit 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

from amf import report_error
from amf.cli import EXPECTED, ArgumentParser, as_error, non_negative_int, positive_int
from training import config


def config_args(p, default: str | None = None, example: str = "train.epochs=3") -> None:
    """CONFIG (required, or DEFAULT when given) and its KEY=VALUE overrides."""
    p.add_argument("config", nargs=None if default is None else "?", default=default, help="YAML file or name")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=f"e.g. {example}")


def image_args(p) -> None:
    p.add_argument("image")
    p.add_argument("out")
    p.add_argument("--seed", type=non_negative_int, default=0)


def parser() -> ArgumentParser:
    from training.splits import KINDS

    ap = ArgumentParser.from_doc("python -m training.inspect", __doc__)
    sub = ap.add_subparsers(dest="part", required=True)
    config_args(sub.add_parser("config", help="the resolved config"))
    p = sub.add_parser("data", help="a data folder's class and domain counts")
    p.add_argument("data")
    p.add_argument("--config", default="smoke")
    p.add_argument("--skip-missing", action="store_true", default=None)
    p = sub.add_parser("splits", help="the folds of a label table (official columns; no image is read)")
    p.add_argument("labels", help="label table in the official columns")
    p.add_argument("--folds", type=positive_int, default=5)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--kind", default="kfold", choices=list(KINDS))
    config_args(sub.add_parser("models", help="the model a config builds"), "smoke", "model.backbone=resnet18")
    config_args(sub.add_parser("recipe", help="where MixStyle goes in the backbone"), "smoke", "mixstyle.where=[stem]")
    image_args(sub.add_parser("augment", help="one draw of the CPU augmentation"))
    image_args(sub.add_parser("gpu_augment", help="16 draws of the device augmentation"))
    p = sub.add_parser("device", help="the device training would use")
    p.add_argument("device", nargs="?", default="auto", choices=["auto", "cuda", "cpu"])
    p = sub.add_parser("ddp", help="the learning rate and EMA horizon with G processes")
    config_args(p, "smoke", "train.lr_scaling=linear")
    p.add_argument("--world", type=positive_int, default=2, help="number of processes (default 2)")
    p.add_argument("--steps", type=positive_int, default=100, help="optimiser steps per epoch with one process")
    return ap


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    try:
        shown = PARTS[a.part](a)
    except (*EXPECTED, RuntimeError) as e:  # RuntimeError: torch's, for an input size a backbone cannot take
        return report_error(as_error(e))
    if shown is not None:
        print(shown)
    return 0


def show_config(a) -> str:
    return config.dump(config.load(a.config, a.overrides)).rstrip("\n")


def show_data(a) -> str:
    from training.data import counts_report, load_dataset

    df, _ = load_dataset(a.data, config.load(a.config), a.skip_missing)
    return counts_report(df)


def show_splits(a) -> str:
    from training.data import read_table
    from training.splits import describe, make_splits

    table = read_table(a.labels, Path(a.labels).parent, source="labels")  # training's own checks of the table
    return describe(make_splits(table, a.kind, a.folds, a.seed))


def show_model(a) -> str:
    import torch

    from training.train.models import create_classifier, normalisation

    cfg = config.load(a.config, a.overrides)
    model, n = create_classifier(cfg), cfg["data"]["input_size"]
    with torch.no_grad():
        out = model.eval()(torch.zeros(2, 3, n, n))
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return (
        f"{cfg['model']['backbone']}: {total / 1e6:.2f} M parameters, {trainable / 1e6:.2f} M trainable; "
        f"(2, 3, {n}, {n}) -> {tuple(out.shape)}; mean/std {normalisation(cfg, model.timm_model)}"
    )


def show_recipe(a) -> str:
    from training.train.models import create_backbone
    from training.train.recipe import mixstyle_targets

    cfg = config.load(a.config, a.overrides)
    bb = create_backbone(cfg["model"], pretrained=False, img_size=int(cfg["data"]["input_size"]))
    return f"{cfg['model']['backbone']} MixStyle at {[n for n, _ in mixstyle_targets(bb, cfg['mixstyle']['where'])]}"


def read_image(path):
    import numpy as np
    from PIL import Image

    from amf.preprocess import canonical_patch

    return canonical_patch(np.array(Image.open(path).convert("RGB")))  # PIL: an OSError for a file that is no image


def show_augment(a) -> None:
    import numpy as np
    from PIL import Image

    from training.augment import Augment

    Image.fromarray(Augment(config.DEFAULTS["augment"])(read_image(a.image), np.random.default_rng(a.seed))).save(a.out)


def show_gpu_augment(a) -> None:
    import torch
    from PIL import Image

    from training.augment import augment_batch, device_params
    from training.train.gpu_augment import epoch_generator

    cfg = config.DEFAULTS["augment"]
    x = torch.from_numpy(read_image(a.image)).permute(2, 0, 1)[None].float().repeat(16, 1, 1, 1)
    x = augment_batch(x, device_params(cfg, 16, epoch_generator(a.seed, 0)), cfg)
    grid = x.view(4, 4, 3, *x.shape[2:]).permute(0, 3, 1, 4, 2).reshape(4 * x.shape[2], 4 * x.shape[3], 3)
    Image.fromarray(grid.byte().numpy()).save(a.out)


def show_device(a) -> str:
    from training.train.device import choose

    device, why = choose(a.device)
    return f"device {device}: {why}"


def show_ddp(a) -> str:
    from training.train.ddp import world_line

    return world_line(config.load(a.config, a.overrides), a.world, max(1, a.steps // a.world))


PARTS = {
    "config": show_config,
    "data": show_data,
    "splits": show_splits,
    "models": show_model,
    "recipe": show_recipe,
    "augment": show_augment,
    "gpu_augment": show_gpu_augment,
    "device": show_device,
    "ddp": show_ddp,
}

if __name__ == "__main__":
    sys.exit(main())
