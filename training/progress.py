"""``RUN_DIR/progress.png``: the training curves as one picture, redrawn after every epoch.

For clusters where TensorBoard is not at hand (nnU-Net writes a ``progress.png`` for the
same reason). Four panels from ``history.csv``: loss (train, validation), Dice per class
(train solid, validation dashed), the learning rate (log scale) and seconds per epoch.
Drawn with matplotlib's object API on the Agg canvas, so no display and no pyplot state.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from dataset.common.figures import OKABE_ITO, plain_text, write_figure

PROGRESS_NAME = "progress.png"
PROGRESS_POINT = "progress"  # its crash-point name (dataset.common.crashpoints)
COLOURS = tuple(OKABE_ITO.values())


def read_history(path: str | Path) -> list[dict[str, float]]:
    """The rows of a Keras ``CSVLogger`` file as numbers (empty cells and text become NaN)."""
    rows = []
    with open(path, newline="") as fh:
        for raw in csv.DictReader(fh):
            rows.append({k: _number(v) for k, v in raw.items() if k is not None})
    return rows


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _series(rows: Sequence[Mapping[str, float]], key: str) -> list[float]:
    return [row.get(key, math.nan) for row in rows]


def progress_figure(rows: Sequence[Mapping[str, float]], title: str = "") -> Figure:
    """The four-panel figure of ``rows`` (one per epoch, ``history.csv``'s columns)."""
    fig = Figure(figsize=(12, 7.5), dpi=100, layout="constrained")
    axes = fig.subplots(2, 2)
    epochs = [int(row.get("epoch", i)) + 1 for i, row in enumerate(rows)]  # Keras counts from 0
    loss, dice, lr, seconds = axes.flat
    for key, label, colour in (("loss", "train", COLOURS[0]), ("val_loss", "validation", COLOURS[1])):
        loss.plot(epochs, _series(rows, key), label=label, color=colour, marker=".")
    loss.set(title="loss", xlabel="epoch")
    classes = sorted({k.removeprefix("dice_") for row in rows for k in row if k.startswith("dice_")})
    for i, name in enumerate(classes):
        colour = COLOURS[i % len(COLOURS)]
        dice.plot(epochs, _series(rows, f"dice_{name}"), color=colour, label=f"{name} train")
        dice.plot(epochs, _series(rows, f"val_dice_{name}"), color=colour, linestyle="--", label=f"{name} validation")
    dice.set(title="Dice per class", xlabel="epoch", ylim=(0, 1))
    lr.plot(epochs, _series(rows, "learning_rate"), color=COLOURS[2], marker=".")
    if any(v > 0 for v in _series(rows, "learning_rate")):
        lr.set_yscale("log")
    lr.set(title="learning rate", xlabel="epoch")
    seconds.bar(epochs, _series(rows, "epoch_seconds"), color=COLOURS[4])
    seconds.set(title="seconds per epoch", xlabel="epoch")
    for ax in (loss, dice):
        if ax.lines:
            ax.legend(fontsize="small")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no tick at 2.5
    if title:
        fig.suptitle(plain_text(title))
    return fig


def write_progress(history_csv: str | Path, out: str | Path, title: str = "") -> Path:
    """Redraw ``out`` (``RUN_DIR/progress.png``) from ``history_csv``; return its path."""
    rows = read_history(history_csv)
    return write_figure(progress_figure(rows, title), out, point=PROGRESS_POINT)
