"""RUN_DIR/progress.png: drawn from history.csv, atomically, whatever the columns hold."""

from __future__ import annotations

import csv
import math

import matplotlib.image
import numpy as np

from training.progress import progress_figure, read_history, write_progress

COLUMNS = ["epoch", "dice_pancreas", "dice_tumour", "epoch_seconds", "learning_rate", "loss"]
COLUMNS += ["val_dice_pancreas", "val_dice_tumour", "val_loss"]


def _history(path, epochs, **override):
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, COLUMNS)
        writer.writeheader()
        for e in range(epochs):
            row = {"epoch": e, "dice_pancreas": 0.1 * e, "dice_tumour": 0.05 * e, "epoch_seconds": 3.0 + e}
            row |= {"learning_rate": 1e-3 / (e + 1), "loss": 1 - 0.1 * e, "val_dice_pancreas": 0.08 * e}
            row |= {"val_dice_tumour": "", "val_loss": 1 - 0.08 * e} | override
            writer.writerow(row)
    return path


def test_history_is_read_as_numbers_with_empty_cells_as_nan(tmp_path):
    rows = read_history(_history(tmp_path / "history.csv", 3))
    assert [r["epoch"] for r in rows] == [0.0, 1.0, 2.0]
    assert rows[2]["dice_pancreas"] == 0.2 and math.isnan(rows[0]["val_dice_tumour"])


def test_the_four_panels_hold_every_class_train_and_validation(tmp_path):
    fig = progress_figure(read_history(_history(tmp_path / "history.csv", 4)), title="run $x$")
    loss, dice, lr, seconds = fig.axes
    assert [line.get_label() for line in loss.lines] == ["train", "validation"]
    labels = [line.get_label() for line in dice.lines]
    assert labels == ["pancreas train", "pancreas validation", "tumour train", "tumour validation"]
    np.testing.assert_allclose(dice.lines[0].get_xdata(), [1, 2, 3, 4])  # epochs counted from 1
    assert lr.get_yscale() == "log" and len(seconds.patches) == 4


def test_progress_png_is_written_and_not_blank(tmp_path):
    out = write_progress(_history(tmp_path / "history.csv", 5), tmp_path / "progress.png", title="<run> $")
    picture = matplotlib.image.imread(out)
    assert picture.shape[:2] == (750, 1200) and picture.std() > 0.05
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv", "progress.png"]  # no temporary left


def test_a_history_without_optional_columns_still_draws(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss\n0,0.9\n1,nan\n")
    assert matplotlib.image.imread(write_progress(path, tmp_path / "p.png")).std() > 0
