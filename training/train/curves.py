"""curves.png of a training run: per epoch, the training loss (and the held-out loss), the held-out balanced accuracy
and ROC AUC, one line (one colour) per fold, from the folds' epochs.csv.

training.train writes it when every fold is done (beside oof.csv); the held-out metrics of every epoch are for
watching the run and chose nothing unless train.selection is validation.
Run:  python -m training.train.curves RUN_DIR [--out FILE.png]   (a run whose folds are not all done: the finished ones)
"""

from __future__ import annotations

import sys
from pathlib import Path

from training.rundir import RunDir

PANELS = (
    ("loss", (("train_loss", "-", "training"), ("val_loss", "--", "held out"))),
    ("held-out balanced accuracy (at 0.5)", (("val_balanced_accuracy", "-", None),)),
    ("held-out ROC AUC", (("val_roc_auc", "-", None),)),
)


def write(run, out=None) -> Path:
    """Plot RUN's finished folds (every fold with an epochs.csv when none is finished) into OUT (default
    RUN/curves.png), written atomically. An AmfError when no fold has an epoch log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from amf import AmfError
    from amf.fileio import write_error
    from training.metrics import save_figure

    run = RunDir(run)
    dirs = [f for f in run.fold_dirs() if f.epochs.is_file()]
    finished = [f for f in dirs if f.is_done()]
    dirs = finished or dirs
    if not dirs:
        raise AmfError(f"{run}: no fold has an epoch log (fold*/epochs.csv) to plot")
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.4))
    for colour, fold in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 10, dirs):
        epochs = fold.read_epochs()
        for ax, (_, series) in zip(axes, PANELS):
            for column, style, what in series:
                if column in epochs and epochs[column].notna().any():
                    label = f"fold {fold.k}" + (f", {what}" if what and len(series) > 1 else "")
                    ax.plot(epochs["epoch"], epochs[column], style, color=colour, lw=1.4, marker=".", ms=4, label=label)
    for ax, (title, _) in zip(axes, PANELS):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{run.path.name}: {len(dirs)} fold(s)", fontsize=10)
    fig.tight_layout()
    out = Path(out) if out is not None else run.curves
    try:
        save_figure(fig, out)
    except OSError as e:
        plt.close(fig)
        raise write_error(out, e) from None
    return out


def main(argv=None) -> int:
    from amf import report_error
    from amf.cli import EXPECTED, ArgumentParser, as_error

    ap = ArgumentParser.from_doc("python -m training.train.curves", __doc__)
    ap.add_argument("run", help="training run folder")
    ap.add_argument("--out", default=None, help="the PNG (default RUN_DIR/curves.png)")
    a = ap.parse_args(argv)
    try:
        print(write(a.run, a.out))
    except EXPECTED as e:
        return report_error(as_error(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
