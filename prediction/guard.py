"""Where prediction may write: the refusals that keep ``pancreas predict`` off real data.

Two rules, both checked before anything is written:

* the output folder may not be, or lie inside, a folder the command reads (the input
  folder; for ``evaluate --run`` also the truth, dataset and store folders), links resolved;
* predict replaces ``<case>.nii.gz`` and ``<case>_probabilities.nii.gz`` only for cases
  the folder's own ``predictions.json`` lists (``dataset.contract.predictions``); any other
  file of those names is someone else's.

``check_output`` runs both without the output folder's lock, so the callers run it
*before* ``exclusive_lock`` creates the lock file: a refused run leaves the folder exactly
as it found it. ``plan_run`` (``prediction.predict``) checks ownership again under the
lock, where the record cannot change underneath it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dataset.common.paths import inside
from dataset.contract.predictions import (
    PREDICTIONS_NAME,
    Predictions,
    label_name,
    probabilities_name,
    read_predictions,
)
from prediction.cases import PredictError


def check_output_folder(out_dir: str | Path, protected: Sequence[tuple[str, Path]], flag: str) -> None:
    """Refuse an output folder that is, or lies inside, a folder the command reads.

    ``protected``: (role, folder) pairs, e.g. ("input folder", imagesTs); links are resolved.
    ``flag``: the option that named ``out_dir``, for the message.
    """
    for role, folder in protected:
        if inside(out_dir, folder):
            where = "is" if Path(out_dir).resolve() == Path(folder).resolve() else "lies inside"
            raise PredictError(
                f"{flag} {out_dir} {where} the {role} {folder}: predictions there could replace "
                f"its files; choose a {flag} folder outside it"
            )


def check_owned(out: Path, record: Predictions | None, case_ids: Sequence[str], probabilities: bool, flag: str) -> None:
    """Refuse to replace a file of ``out`` that the folder's ``predictions.json`` does not list."""
    for case_id in case_ids:
        names = [label_name(case_id)] + ([probabilities_name(case_id)] if probabilities else [])
        for name in names:
            path = out / name
            if (path.exists() or path.is_symlink()) and not (record and record.owns(name)):
                raise PredictError(
                    f"{path}: exists and was not written by `pancreas predict` (not listed in "
                    f"{out / PREDICTIONS_NAME}); move it away or choose another {flag} folder"
                )


def check_output(
    out_dir: str | Path, protected: Sequence[tuple[str, Path]], case_ids: Sequence[str], probabilities: bool, flag: str
) -> None:
    """Every refusal that needs no lock; run it before taking ``out_dir``'s lock.

    Checking every case, not only those a run would redo, refuses exactly the same
    folders: a case that is up to date is listed in the record, so its files are owned.
    """
    check_output_folder(out_dir, protected, flag)
    check_owned(Path(out_dir), read_predictions(out_dir), case_ids, probabilities, flag)
