"""Synthetic MSD Task07-format datasets: parameters per case, rasterisation, writing.

``make_dataset`` writes exactly the layout of the Medical Segmentation Decathlon's
Task07_Pancreas (``dataset.json``, ``imagesTr/``, ``labelsTr/``, ``imagesTs/``) plus
one addition of ours: ``labelsTs/`` holds the truth of the test cases (not listed in
``dataset.json``, like nothing in MSD) so the demo can score held-out predictions.
Like the real archive, ``imagesTr/`` and ``labelsTr/`` also hold a macOS
``._pancreas_001.nii.gz`` junk file, so loaders are tested against it.

Each case draws its parameters from ``numpy.random.default_rng([seed, case_index])``
(adding cases never changes earlier ones); the first cases cycle deterministically
through storage orientations (LPS, RAS, z-flipped, x/y-swapped) and dtypes (int16,
int16 with NIfTI scl_slope/scl_inter, float32, int32), case index 3 is thin
(20 slices of 2 mm) and every sixth case is stored as uncompressed ``.nii``.
The anatomy itself is ``pancreas.synthetic.phantom`` (pure numpy, physical millimetres).
"""
from __future__ import annotations

import gzip
import logging
import struct
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from dataset.common.files import atomic_path, remove_stale_temporaries, write_json_atomic
from pancreas.synthetic.phantom import Anatomy, add_ct_noise, render_phantom

log = logging.getLogger(__name__)

SIZES = ("small", "full")
DTYPES = ("int16", "int16_scaled", "float32", "int32")
# storage direction matrices (row-major), all describing the same physical patient
ORIENTATIONS: dict[str, tuple[float, ...]] = {
    "LPS": (1, 0, 0, 0, 1, 0, 0, 0, 1),
    "RAS": (-1, 0, 0, 0, -1, 0, 0, 0, 1),
    "LPI": (1, 0, 0, 0, 1, 0, 0, 0, -1),        # slices stored top to bottom
    "PLS": (0, 1, 0, 1, 0, 0, 0, 0, 1),         # first array axis runs along y
}
ORIENTATION_CYCLE = ("LPS", "RAS", "LPI", "PLS")
THIN_CASE_INDEX = 3
THIN_SLICES, THIN_THICKNESS_MM = 20, 2.0
REFERENCE_FOV_MM = 410.0  # a 512 x 0.8 mm field of view: the phantom's native scale
# (slope, intercept) choices for scaled int16 storage: HU = slope * stored + intercept
SCALINGS = ((0.5, -1024.0), (2.0, -1000.0), (1.0, -1024.0))
LABELS = {"0": "background", "1": "pancreas", "2": "cancer"}
JUNK_NAME = "._pancreas_001.nii.gz"


@dataclass(frozen=True)
class CaseParams:
    """Everything drawn for one case; ``make_case`` renders it deterministically.

    Grid fields are in ITK order (per stored array axis i, j, k); ``direction`` is the
    row-major direction matrix. ``scl_slope``/``scl_inter`` apply only to
    ``dtype == "int16_scaled"`` (1/0 otherwise).
    """

    index: int
    name: str
    size: str
    orientation: str
    direction: tuple[float, ...]
    grid_size: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    dtype: str
    scl_slope: float
    scl_inter: float
    compressed: bool
    noise_sd_hu: float
    noise_seed: int
    anatomy: Anatomy = field(default_factory=Anatomy)

    @property
    def filename(self) -> str:
        return self.name + (".nii.gz" if self.compressed else ".nii")


def case_name(index: int) -> str:
    """MSD-style name: case index 0 is ``pancreas_001``."""
    return f"pancreas_{index + 1:03d}"


def _grid(direction: tuple[float, ...], phys_size: np.ndarray, phys_spacing: np.ndarray,
          centre: np.ndarray) -> tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...]]:
    """Stored size, spacing and origin of a grid with physical extents centred on ``centre``."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    phys_axis = np.abs(d).argmax(axis=0)  # physical axis each stored axis runs along
    size = phys_size[phys_axis].astype(int)
    spacing = phys_spacing[phys_axis]
    origin = centre - d @ (spacing * (size - 1) / 2.0)
    return tuple(int(v) for v in size), tuple(float(v) for v in spacing), tuple(float(v) for v in origin)


def draw_case_params(index: int, seed: int = 0, size: str = "small") -> CaseParams:
    """Draw one case's parameters from ``default_rng([seed, index])``."""
    if size not in SIZES:
        raise ValueError(f"size {size!r} is not one of {SIZES}")
    if index < 0 or seed < 0:
        raise ValueError(f"case index {index} and seed {seed} must be >= 0")
    rng = np.random.default_rng([seed, index])
    thin = index == THIN_CASE_INDEX
    inplane = float(rng.uniform(0.6, 1.0) if size == "small" else rng.uniform(0.7, 0.9))
    if size == "small":
        n_xy = int(np.clip(round(rng.uniform(90.0, 115.0) / inplane), 64, 128))
        thickness = float(rng.uniform(1.5, 5.0))
        n_z = int(np.clip(round(rng.uniform(60.0, 120.0) / thickness), 20, 60))
    else:
        n_xy = 512
        thickness = float(rng.uniform(2.0, 3.0))
        n_z = int(rng.integers(90, 111))
    if thin:
        thickness, n_z = THIN_THICKNESS_MM, THIN_SLICES
    fov = n_xy * inplane
    scale = fov / REFERENCE_FOV_MM
    # the table position: somewhere plausible in scanner coordinates
    centre = np.array([rng.uniform(-20, 20), rng.uniform(-40, 40), rng.uniform(-900, -300)])
    shift_xy = rng.uniform(-0.04, 0.04, size=2) * fov
    shift_z = rng.uniform(-3.0, 3.0) if thin else rng.uniform(-0.1, 0.1) * n_z * thickness
    fov_centre = centre + np.array([shift_xy[0], shift_xy[1], shift_z])

    orientation = ORIENTATION_CYCLE[index % len(ORIENTATION_CYCLE)]
    direction = tuple(float(v) for v in ORIENTATIONS[orientation])
    grid_size, spacing, origin = _grid(direction, np.array([n_xy, n_xy, n_z]),
                                       np.array([inplane, inplane, thickness]), fov_centre)
    dtype = DTYPES[(index + index // len(DTYPES)) % len(DTYPES)]
    slope, inter = SCALINGS[int(rng.integers(len(SCALINGS)))] if dtype == "int16_scaled" else (1.0, 0.0)

    body = (rng.uniform(180, 195), rng.uniform(132, 148))
    has_tumour = bool(rng.random() < 0.8)
    anatomy = Anatomy(
        centre_mm=tuple(float(v) for v in centre),
        inplane_scale=scale,
        body_semi_axes_mm=tuple(float(v) for v in body),
        fat_thickness_mm=float(rng.uniform(12, 25)),
        muscle_thickness_mm=float(rng.uniform(8, 12)),
        visceral_hu=float(rng.uniform(-60, -20)),
        fat_hu=float(rng.uniform(-110, -90)),
        muscle_hu=float(rng.uniform(40, 60)),
        liver_hu=float(rng.uniform(55, 70)),
        spleen_hu=float(rng.uniform(50, 65)),
        kidney_cortex_hu=float(rng.uniform(150, 180)),
        kidney_medulla_hu=float(rng.uniform(100, 130)),
        bone_hu=float(rng.uniform(450, 600)),
        aorta_hu=float(rng.uniform(180, 250)),
        ivc_hu=float(rng.uniform(130, 170)),
        duodenum_hu=float(rng.uniform(0, 30)),
        pancreas_hu=float(rng.uniform(100, 130)),
        pancreas_x_range_mm=(float(rng.uniform(-62, -48)), float(rng.uniform(78, 92))),
        pancreas_body_y_mm=float(rng.uniform(-8, -2)),
        pancreas_tail_rise_mm=float(rng.uniform(20, 35)),
        pancreas_z_tilt=float(rng.uniform(0.05, 0.2)),
        pancreas_yz_shear=float(rng.uniform(-0.3, 0.3)),
        pancreas_radii_mm=(float(rng.uniform(11, 14)), float(rng.uniform(8, 10)), float(rng.uniform(7, 9))),
        min_pancreas_radius_mm=6.5 if size == "full" else 7.0,
        has_tumour=has_tumour,
        tumour_position=float(rng.uniform(0.1, 0.85)),
        tumour_offset=(float(rng.uniform(-0.2, 0.2)), float(rng.uniform(-0.2, 0.2))),
        tumour_semi_axes_mm=tuple(float(v) for v in rng.uniform(2.0, 5.5, size=3)),
        tumour_hu=float(rng.uniform(20, 50)),
    )
    return CaseParams(
        index=index, name=case_name(index), size=size, orientation=orientation,
        direction=direction, grid_size=grid_size, spacing_mm=spacing, origin_mm=origin,
        dtype=dtype, scl_slope=slope, scl_inter=inter, compressed=index % 6 != 5,
        noise_sd_hu=float(rng.uniform(10, 20)), noise_seed=int(rng.integers(2**31)),
        anatomy=anatomy,
    )


def reoriented(params: CaseParams, orientation: str) -> CaseParams:
    """The same patient and field of view stored with another direction matrix."""
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation {orientation!r} is not one of {tuple(ORIENTATIONS)}")
    old = np.asarray(params.direction).reshape(3, 3)
    phys_axis = np.abs(old).argmax(axis=0)
    phys_size, phys_spacing = np.zeros(3, int), np.zeros(3)
    phys_size[phys_axis] = params.grid_size
    phys_spacing[phys_axis] = params.spacing_mm
    centre = np.asarray(params.origin_mm) + old @ (np.asarray(params.spacing_mm) * (np.asarray(params.grid_size) - 1) / 2)
    direction = tuple(float(v) for v in ORIENTATIONS[orientation])
    size, spacing, origin = _grid(direction, phys_size, phys_spacing, centre)
    return replace(params, orientation=orientation, direction=direction, grid_size=size,
                   spacing_mm=spacing, origin_mm=origin)


def grid_coordinates(params: CaseParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LPS x, y, z (mm) of every voxel centre as arrays broadcastable to (z, y, x) order.

    Physical point = origin + direction @ (spacing * index); with an axis-aligned
    direction each physical coordinate varies along a single array axis.
    """
    d = np.asarray(params.direction, dtype=float).reshape(3, 3)
    coords = []
    for p in range(3):
        total = np.full((1, 1, 1), params.origin_mm[p])
        for a in range(3):  # stored ITK axis a is numpy axis 2 - a
            if d[p, a] != 0.0:
                shape = [1, 1, 1]
                shape[2 - a] = params.grid_size[a]
                idx = np.arange(params.grid_size[a], dtype=float).reshape(shape)
                total = total + d[p, a] * params.spacing_mm[a] * idx
        coords.append(total)
    return coords[0], coords[1], coords[2]


def _to_image(array: np.ndarray, params: CaseParams) -> sitk.Image:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(params.spacing_mm)
    img.SetOrigin(params.origin_mm)
    img.SetDirection(params.direction)
    return img


def render_case(params: CaseParams) -> tuple[np.ndarray, np.ndarray]:
    """Noisy HU (float32) and label (uint8) arrays in stored (z, y, x) order."""
    hu, label = render_phantom(*grid_coordinates(params), params.anatomy)
    # blur ~0.5 mm in-plane (slice axis: the thick slices already average)
    d = np.abs(np.asarray(params.direction).reshape(3, 3))
    sigma = tuple(0.0 if d[2, 2 - ax] else 0.5 / params.spacing_mm[2 - ax] for ax in range(3))
    hu = add_ct_noise(hu, params.noise_sd_hu, sigma, np.random.default_rng(params.noise_seed))
    return hu, label


def make_case(index: int, seed: int = 0, size: str = "small") -> tuple[sitk.Image, sitk.Image]:
    """Render case ``index``: (float32 HU image before dtype storage, uint8 label).

    Its parameters are ``draw_case_params(index, seed, size)``.
    """
    params = draw_case_params(index, seed, size)
    hu, label = render_case(params)
    return _to_image(hu, params), _to_image(label, params)


def stored_array(hu: np.ndarray, params: CaseParams) -> np.ndarray:
    """The values written to disk for ``params.dtype`` (HU = slope * stored + intercept)."""
    if params.dtype == "float32":
        return hu.astype(np.float32)
    raw = np.rint((hu - params.scl_inter) / params.scl_slope)
    info = np.iinfo(np.int32 if params.dtype == "int32" else np.int16)
    return np.clip(raw, info.min, info.max).astype(info.dtype)


def _nifti_bytes(img: sitk.Image, slope: float = 1.0, inter: float = 0.0) -> bytes:
    """Uncompressed NIfTI-1 bytes from SimpleITK, with scl_slope/scl_inter patched in.

    SimpleITK's writer always records slope 1 / intercept 0, so scaling is written by
    editing the header's float32 fields at byte offsets 112 and 116.
    """
    with tempfile.TemporaryDirectory(prefix="synth") as tmp:
        path = Path(tmp) / "case.nii"
        sitk.WriteImage(img, str(path), useCompression=False)
        data = bytearray(path.read_bytes())
    endian = "<" if struct.unpack("<i", data[:4])[0] == 348 else ">"
    if (slope, inter) != (1.0, 0.0):
        struct.pack_into(endian + "ff", data, 112, slope, inter)
    return bytes(data)


def write_nifti(path: Path, img: sitk.Image, slope: float = 1.0, inter: float = 0.0) -> None:
    """Write atomically; ``.gz`` names are gzipped with mtime 0 so bytes are reproducible."""
    data = _nifti_bytes(img, slope, inter)
    with atomic_path(path, keep_identical=True) as tmp:
        if path.name.endswith(".gz"):
            with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                        compresslevel=1, mtime=0) as gz:
                gz.write(data)
        else:
            tmp.write_bytes(data)


def write_case(folder_images: Path, folder_labels: Path, index: int, seed: int, size: str) -> CaseParams:
    """Render case ``index`` and write its image and label; return its parameters."""
    params = draw_case_params(index, seed, size)
    hu, label = render_case(params)
    write_nifti(folder_images / params.filename, _to_image(stored_array(hu, params), params),
                params.scl_slope, params.scl_inter)
    write_nifti(folder_labels / params.filename, _to_image(label, params))
    return params


def _write_junk(folder: Path, seed: int) -> None:
    """A macOS AppleDouble resource file, as the real archive has next to its cases."""
    rng = np.random.default_rng([seed, 1_000_003])
    data = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + rng.bytes(int(rng.integers(16, 64)))
    with atomic_path(folder / JUNK_NAME, keep_identical=True) as tmp:
        tmp.write_bytes(data)


def dataset_json(train: list[CaseParams], test: list[CaseParams], seed: int, size: str) -> dict:
    """The MSD ``dataset.json`` for the written cases."""
    return {
        "name": "Pancreas",
        "description": f"Synthetic pancreas and tumour CT phantoms (seed {seed}, size {size}), "
                       "in the Medical Segmentation Decathlon Task07 layout",
        "reference": "synthetic (pancreas synth)",
        "licence": "CC-BY-SA 4.0",
        "release": "1.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": dict(LABELS),
        "numTraining": len(train),
        "numTest": len(test),
        "training": [{"image": f"./imagesTr/{p.filename}", "label": f"./labelsTr/{p.filename}"}
                     for p in train],
        "test": [f"./imagesTs/{p.filename}" for p in test],
    }


def make_dataset(out_dir: str | Path, n_cases: int, seed: int = 0, size: str = "small",
                 n_test: int | None = None, progress: bool = True) -> Path:
    """Write ``n_cases`` labelled and ``n_test`` (default max(1, n_cases // 4)) test cases.

    Test case j is case index ``n_cases + j``. ``dataset.json`` is written last, so a
    folder with one is complete. Returns ``out_dir``.
    """
    if n_cases < 1:
        raise ValueError(f"--cases must be >= 1, got {n_cases}")
    n_test = max(1, n_cases // 4) if n_test is None else n_test
    if n_test < 0:
        raise ValueError(f"--test must be >= 0, got {n_test}")
    if size not in SIZES:
        raise ValueError(f"size {size!r} is not one of {SIZES}")
    out = Path(out_dir)
    folders = {k: out / k for k in ("imagesTr", "labelsTr", "imagesTs", "labelsTs")}
    for f in folders.values():
        f.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(f)
    train, test = [], []
    for i in tqdm(range(n_cases + n_test), desc="synth", unit="case", disable=not progress):
        if i < n_cases:
            train.append(write_case(folders["imagesTr"], folders["labelsTr"], i, seed, size))
        else:
            test.append(write_case(folders["imagesTs"], folders["labelsTs"], i, seed, size))
    for key in ("imagesTr", "labelsTr"):
        _write_junk(folders[key], seed)
    write_json_atomic(out / "dataset.json", dataset_json(train, test, seed, size), keep_identical=True)
    log.info("wrote %d training and %d test cases to %s", len(train), len(test), out)
    return out


def dataset_params(n_cases: int, seed: int = 0, size: str = "small",
                   n_test: int | None = None) -> list[CaseParams]:
    """Parameters of the cases ``make_dataset`` writes, training first (nothing rendered)."""
    n_test = max(1, n_cases // 4) if n_test is None else n_test
    return [draw_case_params(i, seed, size) for i in range(n_cases + n_test)]
