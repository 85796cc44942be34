"""Training entries per case, balanced as the seed project did (hash-derived draws, ``dataset.common.seeds``).

See docs/how-to/index.md#what-this-does and docs/explanation/internals.md#balancing-datasetindexbalancepy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from dataset.common.seeds import derive_seed
from dataset.contract.manifest import variant_ref
from dataset.contract.reader import box_slices
from dataset.index.config import IndexConfig
from dataset.index.grid import Zyx, centred_start, grid_boxes, is_padded

Row = dict[str, Any]


@dataclass(frozen=True)
class CaseBalance:
    """What balancing did to one case (for the summary)."""

    foreground_patches: int
    background_patches: int
    foreground_entries: int
    background_entries: int
    with_replacement: int
    background_short: int  # entries wanted but impossible (a case with no background patch)


def patch_rows(
    case_id: str,
    shape_zyx: Zyx,
    starts,
    patch_zyx: Zyx,
    n_pancreas: np.ndarray,
    n_tumour: np.ndarray,
    foreground: np.ndarray,
) -> list[Row]:
    """One row per grid patch (copy 0, stored patch), C order of the grid."""
    rows = []
    for start, n_p, n_t, fg in zip(grid_boxes(starts), n_pancreas.ravel(), n_tumour.ravel(), foreground.ravel()):
        rows.append(
            make_row(case_id, start, patch_zyx, int(n_p), int(n_t), bool(fg), is_padded(start, patch_zyx, shape_zyx))
        )
    return rows


def make_row(
    case_id: str, start: Zyx, size: Zyx, n_p: int, n_t: int, fg: bool, padded: bool, kind: str = "grid", copy: int = 0
) -> Row:
    return {
        "case_id": case_id,
        "z0": start[0],
        "y0": start[1],
        "x0": start[2],
        "dz": size[0],
        "dy": size[1],
        "dx": size[2],
        "n_pancreas": n_p,
        "n_tumour": n_t,
        "foreground": int(fg),
        "padded": int(padded),
        "variant": "",
        "seed": 0,
        "kind": kind,
        "copy": copy,
        "with_replacement": 0,
    }


def background_wanted(n_foreground_entries: int, config: IndexConfig) -> int:
    if n_foreground_entries == 0:
        return config.background_without_foreground
    return math.floor(config.background_ratio * n_foreground_entries + 0.5)


def draw_background(case_id: str, background: list[Row], wanted: int, seed: int) -> list[Row]:
    """``wanted`` background entries: without replacement first, then with (flagged)."""
    if not background:
        return []
    order = sorted(range(len(background)), key=lambda i: derive_seed(seed, "background", case_id, _pos(background[i])))
    chosen = [dict(background[i]) for i in sorted(order[:wanted])]
    uses = dict.fromkeys(order[:wanted], 1)
    for k in range(wanted - len(chosen)):
        i = derive_seed(seed, "background-again", case_id, k) % len(background)
        chosen.append(dict(background[i], copy=uses[i], with_replacement=1))
        uses[i] += 1
    return chosen


def balance_case(case_id: str, rows: list[Row], config: IndexConfig) -> tuple[list[Row], CaseBalance]:
    """Training entries of one case from its grid rows; augmented copies get variant refs."""
    fg = [r for r in rows if r["foreground"]]
    bg = [r for r in rows if not r["foreground"]]
    entries: list[Row] = []
    n_aug = 0
    for row in fg:
        entries.append(dict(row))
        for copy in range(1, config.foreground_copies):
            entries.append(dict(row, copy=copy, variant=variant_ref(case_id, n_aug)))
            n_aug += 1
    wanted = background_wanted(len(fg) * config.foreground_copies, config)
    drawn = draw_background(case_id, bg, wanted, config.seed)
    entries.extend(drawn)
    stats = CaseBalance(
        len(fg),
        len(bg),
        len(fg) * config.foreground_copies,
        len(drawn),
        sum(r["with_replacement"] for r in drawn),
        wanted - len(drawn),
    )
    return entries, stats


def centred_rows(case_id: str, label: np.ndarray, patch_zyx: Zyx, config: IndexConfig) -> list[Row]:
    """nnU-Net-style entries whose centre is a random foreground voxel (off by default).

    Each entry picks tumour with ``centred_tumour_probability`` when the case has
    tumour, else pancreas; counts are exact from the label slab.
    """
    if config.centred_per_case == 0:
        return []
    voxels = {k: np.flatnonzero(label == k) for k in (1, 2)}
    if not (voxels[1].size or voxels[2].size):
        return []
    rng = np.random.default_rng(derive_seed(config.seed, "centred", case_id))
    rows = []
    for k in range(config.centred_per_case):
        tumour = voxels[2].size and (rng.random() < config.centred_tumour_probability or not voxels[1].size)
        pool = voxels[2] if tumour else voxels[1]
        centre = np.unravel_index(pool[rng.integers(pool.size)], label.shape)
        start = centred_start(cast(Zyx, tuple(int(c) for c in centre)), patch_zyx)
        n_p, n_t = _count_box(label, start, patch_zyx)
        fg = n_p + n_t >= config.min_foreground_voxels and (n_t > 0 or not config.require_tumour)
        rows.append(
            make_row(
                case_id,
                start,
                patch_zyx,
                n_p,
                n_t,
                fg,
                is_padded(start, patch_zyx, label.shape),
                kind="centred",
                copy=k,
            )
        )
    return rows


def assign_seeds(rows: list[Row], seed: int) -> None:
    """Each entry's seed for the trainer's online transforms, from what it is."""
    for row in rows:
        row["seed"] = derive_seed(seed, "entry", row["case_id"], row["kind"], _pos(row), row["copy"])


def _count_box(label: np.ndarray, start: Zyx, size: Zyx) -> tuple[int, int]:
    slices = box_slices(start, size, label.shape)
    if slices is None:
        return 0, 0
    block = label[slices[0]]
    return int(np.count_nonzero(block == 1)), int(np.count_nonzero(block == 2))


def _pos(row: Row) -> tuple[int, int, int]:
    return (row["z0"], row["y0"], row["x0"])
