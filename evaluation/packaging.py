"""``pancreas package``: one zip with an ensemble's models, contracts, decision, report, model card and probe.

``package_models`` checks every input and the output first, then assembles the members in a
staging folder and writes the zip atomically under the output folder's lock. See docs/how-to/package.md.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from dataset.common.atomic import TMP_SUFFIX, atomic_path, read_json
from dataset.common.fingerprints import content_sha256
from dataset.common.locks import exclusive_lock, shared_lock
from dataset.common.modelfiles import load_keras_model
from dataset.common.paths import refuse_inside
from dataset.common.verify import verify_zip
from dataset.common.version import package_version
from dataset.contract.package import (
    MODEL_CARD_NAME,
    MODEL_DIR,
    PACKAGE_NAME,
    PROBE_NAME,
    REPORT_DIR,
    PackageError,
    PackageMember,
    PackageModel,
    PackageRecord,
    is_package_record,
    package_record_bytes,
)
from dataset.contract.postprocessing import POSTPROCESSING_NAME, read_postprocessing
from dataset.contract.run import (
    CONFIG_NAME,
    ENVIRONMENT_NAME,
    HISTORY_NAME,
    INPUT_CONTRACT_NAME,
    checkpoint_path,
    read_environment,
    read_input_contract,
    read_run_config,
    read_state,
)
from evaluation.crossval import REPORT_NAME
from evaluation.model_card import CardModel, model_card
from evaluation.report_files import ReportFiles
from prediction.config import PredictConfig
from prediction.package_zip import MAX_RECORD_BYTES, read_zip_package
from prediction.packages import PROBE_INPUT, PROBE_TOLERANCE, probe_input
from prediction.runs import check_checkpoints, check_model_is_the_runs, load_predict_fn, load_runs

log = logging.getLogger(__name__)

CHECKPOINTS = ("best", "last")
PROGRESS_NAME = "progress.png"  # training.progress.PROGRESS_NAME (training is not imported here)
RUN_MEMBERS = (INPUT_CONTRACT_NAME, CONFIG_NAME, ENVIRONMENT_NAME, HISTORY_NAME, PROGRESS_NAME)


@dataclass(frozen=True)
class Sources:
    """What goes into the package, checked: the runs, the checkpoint, the decision, the CV folder."""

    runs: list[Path]
    checkpoint: str
    postprocessing: Path | None
    cv_dir: Path | None
    report: dict[str, Any] | None


@dataclass(frozen=True)
class PackageSummary:
    """What ``package_models`` wrote."""

    out: Path
    sha256: str  # the package hash (SHA-256 of its package.json)
    models: int
    checkpoint: str
    members: int
    size_bytes: int
    replaced: bool  # an earlier package was replaced


# ----------------------------------------------------------------------------- inputs and the output
def _from_cv(cv_dir: Path, checkpoint: str | None) -> Sources:
    report = read_json(cv_dir / REPORT_NAME, "cross-validation report", "run `pancreas evaluate --cv` first")
    if not isinstance(report, dict) or not isinstance(report.get("folds"), list) or not report["folds"]:
        raise PackageError(f"{cv_dir / REPORT_NAME}: not a `pancreas evaluate --cv` report (no folds)")
    if not all(isinstance(f, dict) and isinstance(f.get("run"), str) for f in report["folds"]):
        raise PackageError(f"{cv_dir / REPORT_NAME}: a fold without its run; rerun `pancreas evaluate --cv`")
    runs = [Path(f["run"]) for f in report["folds"]]
    decision = cv_dir / POSTPROCESSING_NAME
    read_postprocessing(decision)  # one line when it is missing or wrong
    return Sources(runs, checkpoint or str(report.get("checkpoint", "last")), decision, cv_dir, report)


def resolve_sources(
    run_dirs: Sequence[str | Path] | None,
    cv_dir: str | Path | None,
    checkpoint: str | None,
    postprocessing: str | Path | None,
) -> Sources:
    """The runs (``--model``) or the CV folder's runs, decision and report (``--cv``)."""
    if (run_dirs is None) == (cv_dir is None):
        raise PackageError("give either --model RUN [RUN ...] or --cv CV_DIR")
    if checkpoint is not None and checkpoint not in CHECKPOINTS:
        raise PackageError(f"--checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
    if cv_dir is not None:
        if postprocessing is not None:
            raise PackageError(
                f"--postprocessing: --cv packages its own {Path(cv_dir) / POSTPROCESSING_NAME}; give --cv or "
                "--model with --postprocessing, not both"
            )
        sources = _from_cv(Path(cv_dir), checkpoint)
    else:
        assert run_dirs is not None
        decision = None if postprocessing is None else Path(postprocessing)
        sources = Sources([Path(r) for r in run_dirs], checkpoint or "best", decision, None, None)
    return sources


def check_sources(sources: Sources) -> None:
    """Every checkpoint readable; the contracts agree; the decision was chosen on their store."""
    check_checkpoints(sources.runs, sources.checkpoint)
    config = PredictConfig(
        checkpoint=sources.checkpoint,
        postprocessing=None if sources.postprocessing is None else str(sources.postprocessing),
    )
    load_runs(sources.runs, config)


def holds_package(out: Path) -> bool:
    """Whether ``out`` is missing (False) or one of our packages (True); refuse anything else."""
    if out.is_symlink():
        raise PackageError(f"--out {out}: is a symbolic link; give the real file")
    if not out.exists():
        return False
    if not out.is_file() or not zipfile.is_zipfile(out):
        raise PackageError(f"--out {out}: exists and is not a `pancreas package` zip; choose another --out")
    try:
        with zipfile.ZipFile(out) as archive:
            info = archive.getinfo(PACKAGE_NAME)
            ours = info.file_size <= MAX_RECORD_BYTES and is_package_record(archive.read(info))
    except (KeyError, zipfile.BadZipFile, OSError):
        ours = False
    if not ours:
        raise PackageError(
            f"--out {out}: exists and is not a `pancreas package` package; an existing file is replaced only "
            "when it is one of ours, choose another --out"
        )
    return True


# ----------------------------------------------------------------------------- the members
def _copy_run_files(run: Path, folder: Path) -> None:
    folder.mkdir(parents=True)
    for name in RUN_MEMBERS:
        if (run / name).is_file():
            shutil.copyfile(run / name, folder / name)


def _strip_checkpoint(run: Path, checkpoint: str, folder: Path) -> None:
    """The checkpoint, loaded without compiling (no optimiser) and saved again: the same weights."""
    source, target = checkpoint_path(run, checkpoint), checkpoint_path(folder, checkpoint)
    model = load_keras_model(source, PackageError)
    check_model_is_the_runs(model, run, source)
    with atomic_path(target, ending=".keras") as tmp:  # as training.checkpoints.save_model_atomic
        model.save(tmp)
        verify_zip(tmp, target)


def _copy_report(cv_dir: Path, folder: Path) -> None:
    files = ReportFiles.beside(cv_dir / REPORT_NAME)
    folder.mkdir()
    for path in (files.json, files.csv, files.html, files.plot):
        if path.is_file():
            shutil.copyfile(path, folder / path.name)
    if files.pictures.is_dir():
        (folder / files.pictures.name).mkdir()
        for picture in sorted(files.pictures.glob("*.png")):
            shutil.copyfile(picture, folder / files.pictures.name / picture.name)


def _write_probe(staging: Path, model_dirs: Sequence[Path], checkpoint: str) -> None:
    depth = max(read_input_contract(d).model_depth for d in model_dirs)
    window = probe_input(depth)
    arrays: dict[str, Any] = {PROBE_INPUT: window}
    arrays.update({f"output_{i}": load_predict_fn(d, checkpoint)(window) for i, d in enumerate(model_dirs)})
    with open(staging / PROBE_NAME, "wb") as fh:
        np.savez(fh, **arrays)


def _card_model(folder: str, run: Path) -> CardModel:
    state = read_state(run)
    starts = read_environment(run)
    return CardModel(
        folder=folder,
        run=str(run.resolve()),
        contract=read_input_contract(run),
        train_config=read_run_config(run) if (run / CONFIG_NAME).is_file() else None,
        epochs=state.epoch if state else None,
        best_epoch=state.best_epoch if state else None,
        packages=dict(starts[-1].packages) if starts else {},
    )


def _versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    return {"pancreas-seg": package_version(), "tensorflow": tf.__version__, "keras": keras.__version__}


def _members(staging: Path) -> dict[str, PackageMember]:
    members = {}
    for root, dirs, names in os.walk(staging):
        dirs.sort()
        for name in sorted(names):
            path = Path(root) / name
            members[path.relative_to(staging).as_posix()] = PackageMember(path.stat().st_size, content_sha256(path))
    return members


def assemble(sources: Sources, staging: Path) -> PackageRecord:
    """Every member into ``staging``; the record that lists them."""
    models = []
    for i, run in enumerate(sources.runs):
        folder = MODEL_DIR.format(i=i)
        _copy_run_files(run, staging / folder)
        _strip_checkpoint(run, sources.checkpoint, staging / folder)
        models.append(PackageModel(folder, str(run.resolve()), read_input_contract(run).fold))
    decision = None
    if sources.postprocessing is not None:
        shutil.copyfile(sources.postprocessing, staging / POSTPROCESSING_NAME)
        decision = read_postprocessing(staging / POSTPROCESSING_NAME)
    if sources.cv_dir is not None:
        _copy_report(sources.cv_dir, staging / REPORT_DIR)
    _write_probe(staging, [staging / m.folder for m in models], sources.checkpoint)
    card = model_card(
        [_card_model(m.folder, run) for m, run in zip(models, sources.runs, strict=True)],
        sources.checkpoint,
        sources.report,
        decision,
        _versions(),
    )
    (staging / MODEL_CARD_NAME).write_text(card, encoding="utf-8")
    return PackageRecord(
        created_utc=datetime.now(UTC).isoformat(timespec="seconds"),
        pancreas_seg=package_version(),
        checkpoint=sources.checkpoint,
        models=models,
        postprocessing=POSTPROCESSING_NAME if decision is not None else None,
        cv_dir=str(sources.cv_dir.resolve()) if sources.cv_dir is not None else None,
        probe_tolerance=PROBE_TOLERANCE,
        members=_members(staging),
    )


def write_zip(path: Path, staging: Path, record: PackageRecord) -> bytes:
    """``package.json`` first, then every member in name order, deflated; returns package.json's bytes."""
    data = package_record_bytes(record)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(PACKAGE_NAME, data)
        for name in record.members:
            archive.write(staging / name, name)
    return data


def remove_stale_packages(out: Path) -> None:
    """Delete the temporaries a killed ``package`` of this very ``out`` left beside it (the lock is
    held): its unfinished zip and its staging folder."""
    for stale in out.parent.glob(f".{glob.escape(out.name)}.*{TMP_SUFFIX}*"):
        if stale.is_symlink():
            continue
        if stale.is_file() and stale.name.endswith(f"{TMP_SUFFIX}.zip"):
            log.info("%s: removing %s, left by a package that was killed", out, stale.name)
            stale.unlink()
        elif stale.is_dir() and stale.name.endswith(TMP_SUFFIX):
            log.info("%s: removing %s/, left by a package that was killed", out, stale.name)
            shutil.rmtree(stale)


# ----------------------------------------------------------------------------- the command
def package_models(
    out: str | Path,
    run_dirs: Sequence[str | Path] | None = None,
    cv_dir: str | Path | None = None,
    checkpoint: str | None = None,
    postprocessing: str | Path | None = None,
) -> PackageSummary:
    """Package the runs (or CV_DIR's runs, decision and report) into the zip ``out`` (module docstring)."""
    out = Path(os.path.abspath(out))
    if out.suffix.lower() != ".zip":
        raise PackageError(f"--out {out}: a package is a .zip file; name it MODEL.zip")
    sources = resolve_sources(run_dirs, cv_dir, checkpoint, postprocessing)
    reads = [("model's run folder", r) for r in sources.runs] + [("cross-validation folder", sources.cv_dir)]
    refuse_inside(out, reads, "--out")
    holds_package(out)  # refuse before writing anything, not even the lock file
    check_sources(sources)
    with contextlib.ExitStack() as stack:
        for run in sources.runs:  # no training may replace a checkpoint meanwhile
            stack.enter_context(shared_lock(run))
        stack.enter_context(exclusive_lock(out.parent))
        replaced = holds_package(out)
        remove_stale_packages(out)
        # the members are assembled beside --out (its folder, its lock), not in the system's temporary folder
        staging = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix=f".{out.name}.", suffix=TMP_SUFFIX, dir=out.parent))
        )
        record = assemble(sources, staging)
        with atomic_path(out, ending=".zip", point="package") as tmp:
            written = write_zip(tmp, staging, record)
            read_zip_package(tmp)  # every member read back and hashed before the rename
            holds_package(out)  # again: a file put there while this one was written
    summary = PackageSummary(
        out,
        hashlib.sha256(written).hexdigest(),  # the package hash: package.json's bytes (ReadPackage.sha256)
        len(record.models),
        record.checkpoint,
        len(record.members) + 1,
        out.stat().st_size,
        replaced,
    )
    return summary


__all__ = ["PackageSummary", "check_sources", "holds_package", "package_models", "resolve_sources"]
