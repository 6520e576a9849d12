"""Progress a person can read (training/train/progress.py): where the run is, the ETA for the whole of a process's work,
a bar on a terminal, plain lines (no carriage return) otherwise. A made-up clock: nothing here waits or times."""

from __future__ import annotations

import pytest

from training.train.progress import Progress, duration


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def plain(folds=(0, 1), epochs=2, every_s=60.0, what="run"):
    lines, clock = [], Clock()
    p = Progress(folds, epochs, what, show=True, tty=False, every_s=every_s, write=lines.append, clock=clock)
    return p, lines, clock


def steps(p, clock, n, seconds=1.0, images=8):
    for _ in range(n):
        clock.now += seconds
        if p.step(images):
            p.loss_so_far(0.5)


def test_eta_is_the_time_per_step_so_far_times_the_steps_left_of_every_fold():
    p, _, clock = plain()
    assert p.eta_s() is None and p.eta_text() == "ETA - (run)"
    p.start_fold(0, 0, 10)  # fold 1 is not built yet: it counts with fold 0's 10 steps per epoch
    p.start_epoch(0)
    steps(p, clock, 10)
    assert p.steps_left() == 30 and p.eta_s() == pytest.approx(30.0)
    clock.now += 5  # validation: part of the time per step from now on
    p.start_epoch(1)
    steps(p, clock, 10)
    assert p.eta_s() == pytest.approx(25 / 20 * 20)
    p.start_fold(1, 0, 12)  # built: its own steps
    assert p.steps_left() == 24 and p.steps_total() == 44


def test_a_fold_found_done_or_resumed_counts_what_is_left():
    p, _, clock = plain(folds=(0, 1, 2), epochs=4)
    p.skip(0)
    p.start_fold(1, 3, 10)  # resumed after 3 of 4 epochs
    assert p.steps_left() == 10 + 4 * 10
    p.start_epoch(3)
    steps(p, clock, 10, seconds=2.0)
    assert p.eta_s() == pytest.approx(2.0 * 40)


def test_where_names_the_fold_its_place_and_the_epoch():
    p, _, _ = plain(folds=(3, 4), epochs=60)
    p.start_fold(4, 0, 5)
    p.start_epoch(6)
    assert p.where() == "fold 4 (2 of 2), epoch 7 of 60"
    one, _, _ = plain(folds=(2,), what="fold 2")
    one.start_fold(2, 0, 5)
    one.start_epoch(0)
    assert one.where() == "fold 2, epoch 1 of 2" and one.eta_text() == "ETA - (fold 2)"


def test_plain_lines_come_at_most_every_interval_and_never_with_a_carriage_return():
    p, lines, clock = plain(every_s=30.0)
    p.start_fold(0, 0, 100)
    p.start_epoch(0)
    steps(p, clock, 95, seconds=1.0, images=8)  # a line at 30, 60 and 90 s
    assert len(lines) == 3
    assert lines[0] == "fold 0 (1 of 2), epoch 1 of 2, step 30 of 100: loss 0.5000, 8 img/s; ETA 6 min 10 s (run)"
    p.epoch_done("fold 0 (1 of 2), epoch 1 of 2: loss 0.5")
    assert lines[-1].startswith("fold 0 (1 of 2), epoch 1 of 2: loss 0.5; ETA ")
    assert not any("\r" in line for line in lines)


def test_no_progress_keeps_the_epoch_lines_only():
    lines, clock = [], Clock()
    p = Progress([0], 1, show=False, tty=False, every_s=0.001, write=lines.append, clock=clock)
    p.start_fold(0, 0, 5)
    p.start_epoch(0)
    steps(p, clock, 5)
    assert lines == []
    p.epoch_done("fold 0, epoch 1 of 1: loss 0.5")
    assert lines == ["fold 0, epoch 1 of 1: loss 0.5; ETA 0 s (run)"]


def test_on_a_terminal_one_bar_for_the_whole_run(capsys):
    lines, clock = [], Clock()
    p = Progress([0, 1], 2, show=True, tty=True, write=lines.append, clock=clock)
    p.start_fold(0, 0, 10)
    p.start_epoch(0)
    steps(p, clock, 10)
    assert p.bar is not None and p.bar.total == 40 and p.bar.n == 10
    p.write("an epoch line")  # above the bar, on stdout
    p.close()
    out, err = capsys.readouterr()
    assert "an epoch line" in out and lines == []
    assert "fold 0 (1 of 2), epoch 1 of 2" in err and "loss 0.5000, ETA 30 s (run)" in err and "10/40 steps" in err


@pytest.mark.parametrize(
    "seconds, text", [(0, "0 s"), (59.4, "59 s"), (61, "1 min 01 s"), (600, "10 min"), (3725, "1 h 02 min")]
)
def test_duration(seconds, text):
    assert duration(seconds) == text


def test_the_pipelines_later_runs_count_in_the_eta():
    """Under training.pipeline the ETA runs to the end of its training: this run's steps and the later runs'."""
    lines, clock = [], Clock()
    p = Progress((0,), 1, "pipeline", show=True, tty=False, write=lines.append, clock=clock, after=30)
    p.start_fold(0, 0, 10)
    p.start_epoch(0)
    steps(p, clock, 10, seconds=2.0)
    assert p.steps_left() == 30 and p.eta_s() == pytest.approx(60.0) and p.eta_text() == "ETA 1 min 00 s (pipeline)"
