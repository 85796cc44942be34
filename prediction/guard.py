"""Where prediction may write: the refusals that keep ``pancreas predict`` off real data.

``check_output`` takes no lock: callers must run it *before* ``exclusive_lock`` creates the lock file.
See docs/how-to/predict.md#what-predict-refuses and
docs/explanation/internals.md#where-predict-may-write-predictionguardpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dataset.common.paths import inside, refuse_inside
from dataset.contract.predictions import (
    PREDICTIONS_NAME,
    Predictions,
    label_name,
    probabilities_name,
    read_predictions,
    seg_name,
)
from prediction.cases import PredictError

# the one folder of a training run that predictions may go into (``evaluate --run``'s default --pred-out)
VALIDATION_PREDICTIONS = "validation_predictions"


def run_folders(run_dirs: Sequence[str | Path], out: str | Path) -> list[tuple[str, Path]]:
    """The model runs a command reads, as ``refuse_inside`` pairs: each whole run, except that an
    ``out`` inside its ``validation_predictions/`` is allowed."""
    return [("model's run folder", Path(d)) for d in run_dirs if not inside(out, Path(d) / VALIDATION_PREDICTIONS)]


def check_owned(
    out: Path, record: Predictions | None, case_ids: Sequence[str], probabilities: bool, flag: str, seg: bool = False
) -> None:
    """Refuse to replace a file of ``out`` that the folder's ``predictions.json`` does not list."""
    for case_id in case_ids:
        names = [label_name(case_id)] + ([probabilities_name(case_id)] if probabilities else [])
        names += [seg_name(case_id)] if seg else []
        for name in names:
            path = out / name
            if (path.exists() or path.is_symlink()) and not (record and record.owns(name)):
                raise PredictError(
                    f"{path}: exists and was not written by `pancreas predict` (not listed in "
                    f"{out / PREDICTIONS_NAME}); move it away or choose another {flag} folder"
                )


def check_output(
    out_dir: str | Path,
    protected: Sequence[tuple[str, Path]],
    case_ids: Sequence[str],
    probabilities: bool,
    flag: str,
    seg: bool = False,
) -> None:
    """Every refusal that needs no lock; run it before taking ``out_dir``'s lock.

    Checking every case, not only those a run would redo, refuses exactly the same
    folders: a case that is up to date is listed in the record, so its files are owned.
    """
    refuse_inside(out_dir, protected, flag)
    check_owned(Path(out_dir), read_predictions(out_dir), case_ids, probabilities, flag, seg)
