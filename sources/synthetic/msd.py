"""Synthetic MSD Task07-format datasets (or nnU-Net v2's): render each case and write the dataset.

See docs/how-to/synth.md and docs/explanation/internals.md#synthetic-datasets-sourcessynthetic.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from dataset.common.atomic import atomic_path, remove_stale_temporaries, write_json_atomic
from dataset.common.errors import UsageError
from dataset.common.locks import exclusive_lock
from sources.synthetic.dicom import hu_int16, write_case_series
from sources.synthetic.marker import (
    DICOM_DIR,
    JUNK_NAME,
    LAYOUTS,
    NNUNET_ENDING,
    SPLIT_DIRS,
    SYNTH_DESCRIPTION,
    SYNTH_REFERENCE,
    case_file_names,
    check_not_replacing,
    planned_files,
    stale_case_files,
    synth_files,
    write_synth_marker,
)
from sources.synthetic.nifti import stored_array, to_image, write_nifti
from sources.synthetic.noise import add_ct_noise
from sources.synthetic.params import SIZES, TUMOURS, CaseParams, draw_case_params, grid_coordinates
from sources.synthetic.phantom import render_phantom

log = logging.getLogger(__name__)

LABELS = {"0": "background", "1": "pancreas", "2": "cancer"}


def render_case(params: CaseParams) -> tuple[np.ndarray, np.ndarray]:
    """Noisy HU (float32) and label (uint8) arrays in stored (z, y, x) order."""
    hu, label = render_phantom(*grid_coordinates(params), params.anatomy)
    # blur ~0.5 mm in-plane (slice axis: the thick slices already average)
    d = np.abs(np.asarray(params.direction).reshape(3, 3))
    sigma = tuple(0.0 if d[2, 2 - ax] else 0.5 / params.spacing_mm[2 - ax] for ax in range(3))
    hu = add_ct_noise(hu, params.noise_sd_hu, sigma, np.random.default_rng(params.noise_seed))
    return hu, label


def make_case(
    index: int, seed: int = 0, size: str = "small", tumours: str = "profile"
) -> tuple[sitk.Image, sitk.Image]:
    """Render case ``index``: (float32 HU image before dtype storage, uint8 label).

    Its parameters are ``draw_case_params(index, seed, size, tumours=tumours)``.
    """
    params = draw_case_params(index, seed, size, tumours=tumours)
    hu, label = render_case(params)
    return to_image(hu, params), to_image(label, params)


def write_case(
    folder_images: Path,
    folder_labels: Path,
    index: int,
    seed: int,
    size: str,
    layout: str = "msd",
    tumours: str = "profile",
    dicom_out: Path | None = None,
) -> CaseParams:
    """Render case ``index`` and write its image and label; return its parameters.

    ``dicom_out``: the dataset folder, to write the image as a DICOM series there as well.
    """
    params = draw_case_params(index, seed, size, tumours=tumours)
    hu, label = render_case(params)
    image_name, label_name = case_file_names(params, layout)
    stored = stored_array(hu, params)
    write_nifti(folder_images / image_name, to_image(stored, params), params.scl_slope, params.scl_inter)
    write_nifti(folder_labels / label_name, to_image(label, params))
    if dicom_out is not None:
        write_case_series(dicom_out, to_image(hu_int16(stored, params), params), params, seed, tumours)
    return params


def _write_junk(folder: Path, seed: int) -> None:
    """A macOS AppleDouble resource file, as the real archive has next to its cases."""
    rng = np.random.default_rng([seed, 1_000_003])
    data = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + rng.bytes(int(rng.integers(16, 64)))
    with atomic_path(folder / JUNK_NAME, keep_identical=True) as tmp:
        tmp.write_bytes(data)


def _what(seed: int, size: str, tumours: str) -> str:
    """How the dataset was drawn, for its description (the default tumours unsaid, as before)."""
    return f"seed {seed}, size {size}" + (f", tumours {tumours}" if tumours != "profile" else "")


def dataset_json(
    train: list[CaseParams], test: list[CaseParams], seed: int, size: str, tumours: str = "profile"
) -> dict:
    """The MSD ``dataset.json`` for the written cases (its reference and description mark it as synth's)."""
    return {
        "name": "Pancreas",
        "description": f"{SYNTH_DESCRIPTION} ({_what(seed, size, tumours)}), "
        "in the Medical Segmentation Decathlon Task07 layout",
        "reference": SYNTH_REFERENCE,
        "licence": "CC-BY-SA 4.0",
        "release": "1.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": dict(LABELS),
        "numTraining": len(train),
        "numTest": len(test),
        "training": [{"image": f"./imagesTr/{p.filename}", "label": f"./labelsTr/{p.filename}"} for p in train],
        "test": [f"./imagesTs/{p.filename}" for p in test],
    }


def nnunet_dataset_json(train: list[CaseParams], seed: int, size: str, tumours: str = "profile") -> dict:
    """The nnU-Net v2 ``dataset.json``: no case lists (v2 scans the folders), labels as name -> value."""
    return {
        "name": "Pancreas",
        "description": f"{SYNTH_DESCRIPTION} ({_what(seed, size, tumours)}), in the nnU-Net v2 raw layout",
        "reference": SYNTH_REFERENCE,
        "licence": "CC-BY-SA 4.0",
        "release": "1.0",
        "channel_names": {"0": "CT"},
        "labels": {name: int(value) for value, name in LABELS.items()},
        "numTraining": len(train),
        "file_ending": NNUNET_ENDING,
    }


def _prepare_output(out: Path, planned: set[str], layout: str = "msd") -> dict[str, Path]:
    """Under the lock: check again, sweep our temporaries, list the files about to be written
    (nnU-Net layout: and remove synth's own case files this run does not write)."""
    listed = synth_files(out)
    check_not_replacing(out, planned, listed)
    if layout == "nnunet":
        for stale in stale_case_files(out, planned, listed):
            log.info("removing %s, written by an earlier synth run (an nnU-Net folder scan would find it)", stale)
            stale.unlink()
    folders = {k: out / k for split in SPLIT_DIRS.values() for k in split}
    remove_stale_temporaries(out)
    for f in folders.values():
        f.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(f)
    for series in sorted({str(Path(rel).parent) for rel in planned if rel.startswith(f"{DICOM_DIR}/")}):
        remove_stale_temporaries(out / series)
    write_synth_marker(out, listed | planned)
    return folders


def make_dataset(
    out_dir: str | Path,
    n_cases: int,
    seed: int = 0,
    size: str = "small",
    n_test: int | None = None,
    progress: bool = True,
    layout: str = "msd",
    tumours: str = "profile",
    dicom: bool = False,
) -> Path:
    """Write ``n_cases`` labelled and ``n_test`` (default max(1, n_cases // 4)) test cases.

    ``layout``: "msd" (MSD Task07) or "nnunet" (nnU-Net v2 raw dataset); see the module docstring.
    ``tumours``: "profile" (the size profile's own) or "task07" (``sources.synthetic.params``).
    ``dicom``: also write each test image as a DICOM CT series, ``dicomTs/<case>/`` (``sources.synthetic.dicom``).

    Test case j is case index ``n_cases + j``. ``dataset.json`` is written last, so a
    folder with one is complete. Returns ``out_dir``. Refuses (ValueError) to replace a
    file it did not write; see ``sources.synthetic.marker``.
    """
    if n_cases < 1:
        raise UsageError(f"--cases must be >= 1, got {n_cases}")
    n_test = max(1, n_cases // 4) if n_test is None else n_test
    if n_test < 0:
        raise UsageError(f"--test must be >= 0, got {n_test}")
    if size not in SIZES:
        raise UsageError(f"size {size!r} is not one of {SIZES}")
    if layout not in LAYOUTS:
        raise UsageError(f"layout {layout!r} is not one of {LAYOUTS}")
    out = Path(out_dir)
    if tumours not in TUMOURS:
        raise UsageError(f"tumours {tumours!r} is not one of {TUMOURS}")
    planned = planned_files(dataset_params(n_cases, seed, size, n_test, tumours), n_cases, layout, dicom)
    check_not_replacing(out, planned, synth_files(out))  # before the lock file is made there
    with exclusive_lock(out):
        folders = _prepare_output(out, planned, layout)
        train, test = [], []
        for i in tqdm(range(n_cases + n_test), desc="synth", unit="case", disable=not progress):
            if i < n_cases:
                train.append(write_case(folders["imagesTr"], folders["labelsTr"], i, seed, size, layout, tumours))
            else:
                test.append(
                    write_case(
                        folders["imagesTs"], folders["labelsTs"], i, seed, size, layout, tumours, out if dicom else None
                    )
                )
        for key in SPLIT_DIRS["training"]:
            _write_junk(folders[key], seed)
        meta = (
            dataset_json(train, test, seed, size, tumours)
            if layout == "msd"
            else nnunet_dataset_json(train, seed, size, tumours)
        )
        write_json_atomic(out / "dataset.json", meta, keep_identical=True)
    log.info("wrote %d training and %d test cases to %s", len(train), len(test), out)
    return out


def dataset_params(
    n_cases: int, seed: int = 0, size: str = "small", n_test: int | None = None, tumours: str = "profile"
) -> list[CaseParams]:
    """Parameters of the cases ``make_dataset`` writes, training first (nothing rendered)."""
    n_test = max(1, n_cases // 4) if n_test is None else n_test
    return [draw_case_params(i, seed, size, tumours=tumours) for i in range(n_cases + n_test)]
