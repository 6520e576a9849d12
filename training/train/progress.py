"""Where training is and when it will end, for a person watching training.train.

One Progress per process, over the folds it trains (every fold of the run, or --fold N's one):
  on a terminal   (stderr a tty) one tqdm bar over every training step this process still has to do, described
                  "fold 2 (3 of 5), epoch 4 of 60", with the mean loss and the ETA for all of that work
  otherwise       (a log file, a pipe, a --parallel child) plain lines, never a carriage return: where, the step,
                  the mean loss, images/s and the ETA, at most every log.progress_s seconds
and either way each finished epoch's line (losses, held-out metrics) ends with the ETA. The ETA is the time per
training step so far in this process (model building and validation included) times the steps left; a fold not
yet built counts with the steps per epoch of the last one built (slide-grouped folds are close in size), a fold
found done counts nothing. Under training.pipeline, AFTER (the training steps of the pipeline's later runs, from its
plan) counts too: one ETA across every run of the pipeline, named "pipeline". --no-progress: no bar and no progress
lines; the epoch lines stay.
"""

from __future__ import annotations

import sys
import time


def duration(seconds: float) -> str:
    """'1 h 02 min', '41 min', '35 s'."""
    s = int(round(max(0.0, seconds)))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min" if s >= 600 else f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


class Progress:
    """FOLDS (in training order) of EPOCHS epochs each; WHAT names that work in the ETA ("run", "fold 2",
    "pipeline"); AFTER: training steps that follow this process's (the pipeline's later runs), in the ETA too.
    SHOW: a bar or progress lines (else epoch lines only); TTY: a bar (default: whether stderr is a terminal);
    WRITE prints a line (print on the main rank, nothing on the others); WORLD: processes (images/s is global)."""

    def __init__(
        self,
        folds,
        epochs: int,
        what: str = "run",
        show: bool = True,
        tty: bool | None = None,
        every_s: float = 60.0,
        write=print,
        world: int = 1,
        clock=time.monotonic,
        after: int = 0,
    ):
        self.folds, self.epochs, self.what = list(folds), int(epochs), what
        self.show, self.every_s, self._write, self.world, self.clock = show, float(every_s), write, world, clock
        self.tty = sys.stderr.isatty() if tty is None else bool(tty)
        self.left = {k: None for k in self.folds}  # steps still to train per fold (None: not built yet)
        self.steps = 1  # steps per epoch of the last fold built
        self.k, self.epoch, self.step_in_epoch, self.images_in_epoch = None, 0, 0, 0
        self.done, self.t_first, self.t_epoch, self.t_line = 0, None, None, None
        self.loss, self.bar = None, None
        self.after = max(0, int(after))

    # ---- the work --------------------------------------------------------------------------------------

    def skip(self, k: int) -> None:
        """Fold K is done already: nothing of it is left."""
        self.left[k] = 0

    def start_fold(self, k: int, first_epoch: int, steps: int) -> None:
        """Fold K trains epochs FIRST_EPOCH.. of STEPS steps each (a resumed fold starts later)."""
        self.k, self.steps = k, max(1, int(steps))
        self.left[k] = (self.epochs - int(first_epoch)) * self.steps

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.step_in_epoch, self.images_in_epoch, self.loss = int(epoch), 0, 0, None
        now = self.clock()
        self.t_epoch = now
        if self.t_first is None:
            self.t_first = self.t_line = now
        if self.show and self.tty and self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.steps_total(),
                desc=self.where(),
                bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} steps{postfix}",
                mininterval=1.0,
                dynamic_ncols=True,
            )
        self._refresh_bar()

    def step(self, images: int) -> bool:
        """One training step of IMAGES images (this process's). Returns whether the mean loss is wanted now
        (give it with loss_so_far): every 10 steps on a terminal, when a progress line is due otherwise."""
        self.done += 1
        self.step_in_epoch += 1
        self.images_in_epoch += int(images)
        if self.left.get(self.k):
            self.left[self.k] -= 1
        if not self.show:
            return False
        if self.bar is not None:
            self._refresh_bar()  # the ETA moves with every step; the bar itself redraws at most once a second
            self.bar.update(1)
            return self.step_in_epoch % 10 == 0
        return self.clock() - self.t_line >= self.every_s

    def loss_so_far(self, loss: float) -> None:
        """The epoch's mean training loss so far: shown on the bar, or printed with a progress line now."""
        self.loss = loss
        if self.bar is not None:
            self._refresh_bar()
        elif self.show:
            self.t_line = self.clock()
            rate = self.images_in_epoch * self.world / max(1e-9, self.t_line - self.t_epoch)
            self._write(
                f"{self.where()}, step {self.step_in_epoch} of {self.steps}: loss {loss:.4f}, {rate:.0f} img/s; "
                f"{self.eta_text()}"
            )

    # ---- what is shown ---------------------------------------------------------------------------------

    def steps_total(self) -> int:
        return self.done + self.steps_left()

    def steps_left(self) -> int:
        return sum(self.epochs * self.steps if v is None else v for v in self.left.values()) + self.after

    def eta_s(self) -> float | None:
        """Seconds to the end of this process's work, at the time per step so far (None before the first step)."""
        if not self.done or self.t_first is None:
            return None
        return (self.clock() - self.t_first) / self.done * self.steps_left()

    def eta_text(self) -> str:
        eta = self.eta_s()
        return f"ETA {'-' if eta is None else duration(eta)} ({self.what})"

    def where(self) -> str:
        """'fold 2 (3 of 5), epoch 4 of 60' ('fold 2, epoch 4 of 60' when this process trains one fold)."""
        pos = f" ({self.folds.index(self.k) + 1} of {len(self.folds)})" if len(self.folds) > 1 else ""
        return f"fold {self.k}{pos}, epoch {self.epoch + 1} of {self.epochs}"

    def epoch_done(self, text: str) -> None:
        """An epoch's line (TEXT: its results), with the ETA."""
        self.write(f"{text}; {self.eta_text()}")

    def write(self, text: str) -> None:
        """A line of the log, above the bar when there is one."""
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
        else:
            self._write(text)

    def _refresh_bar(self) -> None:
        if self.bar is None:
            return
        self.bar.total = self.steps_total()
        self.bar.set_description_str(self.where(), refresh=False)
        loss = f"loss {self.loss:.4f}, " if self.loss is not None else ""
        self.bar.set_postfix_str(f"{loss}{self.eta_text()}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
