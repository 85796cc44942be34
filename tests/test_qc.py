"""``pancreas qc`` (evaluation/qc.py): table values on hand-built cases, flags, errors, folder rules, the page."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from matplotlib import image as mpimg

from dataset.common.paths import OutputInsideInputError
from dataset.contract.store import shard_path
from evaluation.qc import (
    COLUMNS,
    RECORDED,
    STORED_GRID,
    QcError,
    QcParams,
    add_outlier_flags,
    level_percentiles,
    picture_name,
    robust_z,
    run_qc,
)
from pancreas.cli import main
from pancreas.testing.store import failed_record, write_case, write_catalog_for

SHAPE = (20, 32, 32)
ODD_ID = "x<b>&\"y'"  # a case id a page must escape
# case: (gland box (z, y, x) sizes, first corner, tumour voxels (a 2x2x2 cube or none), gland level)
CASES = {
    "a": ((6, 6, 6), (7, 13, 13), 8, 150),
    "b": ((6, 6, 7), (7, 13, 13), 8, 151),
    "c": ((6, 7, 7), (7, 13, 13), 8, 152),
    "d": ((7, 7, 7), (7, 13, 13), 8, 153),
    "big": ((8, 9, 15), (6, 11, 8), 8, 151),  # 1080 voxels: 5x a's gland
    "dark": ((6, 6, 6), (7, 13, 13), 8, 40),  # another contrast phase
    "edge": ((6, 6, 6), (0, 13, 13), 8, 152),  # reaches the first slice
    "notum": ((6, 6, 6), (7, 13, 13), 0, 150),
    ODD_ID: ((6, 7, 6), (7, 13, 13), 8, 151),
}
BODY_LEVEL, TUMOUR_LEVEL = 60, 100
ORIGINAL = {"original_spacing": np.array([0.7, 0.7, 2.5]), "original_size": np.array([512, 512, 90])}


def case_arrays(box, corner, tumour: int, gland_level: int) -> tuple[np.ndarray, np.ndarray]:
    """Image levels: 0 outside a body box, BODY_LEVEL in it, the gland at its level, the tumour darker."""
    label = np.zeros(SHAPE, np.uint8)
    image = np.zeros(SHAPE, np.uint8)
    image[:, 4:28, 4:28] = BODY_LEVEL
    gland = tuple(slice(c, c + n) for c, n in zip(corner, box))
    label[gland], image[gland] = 1, gland_level
    if tumour:
        cube = tuple(slice(c + 1, c + 3) for c in corner)
        label[cube], image[cube] = 2, TUMOUR_LEVEL
    return image, label


def build_store(store: Path, cases=CASES, broken: bool = True) -> Path:
    records = {}
    for seed, (case_id, (box, corner, tumour, level)) in enumerate(cases.items()):
        image, label = case_arrays(box, corner, tumour, level)
        attrs = {"spacing": np.array([1.0, 1.0, 1.0]), **(ORIGINAL if case_id == "d" else {})}
        records[case_id] = write_case(store, case_id, label, seed=seed, image=image, attrs=attrs)
    if broken:
        records["broken"] = write_case(store, "broken", np.zeros(SHAPE, np.uint8), attrs={"spacing": [1, 1, 1]})
        shard_path(store, "broken").write_bytes(b"not an HDF5 file")
        records["failed"] = failed_record("failed", "synthetic failure")
    write_catalog_for(store, records)
    return store


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    root = tmp_path_factory.mktemp("qc")
    store = build_store(root / "store")
    summary = run_qc(store, root / "qc", progress=False)
    record = json.loads((root / "qc" / "qc.json").read_text(encoding="utf-8"))
    return summary, {r["case"]: r for r in record["cases"]}, record, root


# ---- the pure parts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_level_percentiles_are_numpys_inverted_cdf(seed):
    rng = np.random.default_rng(seed)
    levels = rng.integers(0, 256, size=(7, 9, 11), dtype=np.uint8)
    mask = rng.random(levels.shape) < 0.3
    expected = [round(float(np.percentile(levels[mask], q, method="inverted_cdf")) / 255, 4) for q in (5, 50, 95)]
    assert level_percentiles(levels, mask) == expected
    assert level_percentiles(levels, np.zeros(levels.shape, bool)) == [None, None, None]


def test_robust_z_by_hand():
    # median 11, |deviations| 1 0 1 1 39 -> MAD 1; z = 0.6745 * (x - 11)
    z = robust_z({"a": 10, "b": 11, "c": 12, "d": 10, "e": 50})
    expected = {"a": -0.6745, "b": 0.0, "c": 0.6745, "d": -0.6745, "e": 39 * 0.6745}
    assert z == pytest.approx(expected, abs=1e-3)
    assert robust_z({"a": 1.0, "b": 2.0}) == {"a": None, "b": None}  # too few to judge
    assert robust_z({"a": 5.0, "b": 5.0, "c": 5.0}) == {"a": 0.0, "b": 0.0, "c": 0.0}
    # MAD 0 (most equal): the mean absolute deviation stands in, 0.4 / 0.7979 -> z of 2 = 0.7979 * 2 / 0.4
    assert robust_z({"a": 0, "b": 0, "c": 0, "d": 0, "e": 2})["e"] == pytest.approx(3.99, abs=1e-3)


def test_flags_need_enough_glands():
    rows = [
        {"case": c, "status": "ok", "no_gland": False, "parenchyma_p50_intensity": 0.5, "gland_ml": v}
        for c, v in (("a", 1.0), ("b", 50.0))
    ]
    flagged = add_outlier_flags(rows, QcParams())
    assert [r["gland_volume_outlier"] for r in flagged] == [None, None]


def test_params_are_checked():
    with pytest.raises(QcError, match="outlier_z must be positive, got -1"):
        QcParams(outlier_z=-1)


def test_picture_names_are_plain_files():
    assert picture_name("case_001") == "pictures/case_001.png"
    odd = picture_name(ODD_ID)
    assert re.fullmatch(r"pictures/x_b___y_-[0-9a-f]{8}\.png", odd)
    assert picture_name("../x") != picture_name("__x") and "/" not in picture_name("../x")[9:]


# ---- one run over the store -------------------------------------------------------------------------------


def test_volumes_match_the_boxes(done):
    _, rows, _, _ = done
    for case_id, (box, _, tumour, _) in CASES.items():
        row = rows[case_id]
        assert row["gland_ml"] == pytest.approx(np.prod(box) / 1000), case_id
        assert row["tumour_ml"] == pytest.approx(tumour / 1000), case_id
        assert row["tumour_count"] == (1 if tumour else 0), case_id
        assert (row["stored_shape_z"], row["stored_shape_y"], row["stored_shape_x"]) == SHAPE


def test_intensity_percentiles_by_hand(done):
    _, rows, _, _ = done
    a = rows["a"]
    # the gland of a: 208 voxels at 150 and 8 of tumour at 100, 3.7 % of it: below the 5th percentile
    assert (a["gland_p5_intensity"], a["gland_p50_intensity"]) == (round(150 / 255, 4), round(150 / 255, 4))
    assert a["parenchyma_p50_intensity"] == round(150 / 255, 4)
    # body: every voxel above the darkest level (0): the 11520 voxels of the body box, 216 of them gland
    body = [a[f"body_p{q}_intensity"] for q in (5, 50, 95)]
    assert body == [round(BODY_LEVEL / 255, 4)] * 3


def test_flags_on_the_constructed_outliers(done):
    summary, rows, record, _ = done
    expected = {
        "big": ["gland_volume_outlier"],
        "dark": ["gland_intensity_outlier"],
        "edge": ["label_touches_edge"],
        "notum": ["no_tumour"],
    }
    assert record["flagged"] == expected
    assert {c: list(f) for c, f in summary.flagged.items()} == expected
    assert rows["big"]["gland_volume_z"] > 3.5 and abs(rows["a"]["gland_volume_z"]) < 3.5
    assert rows["a"]["no_gland"] is False and rows["a"]["label_touches_edge"] is False


def test_original_geometry_is_the_shards_or_said_missing(done):
    _, rows, _, _ = done
    d, a = rows["d"], rows["a"]
    assert d["geometry_source"] == RECORDED
    assert (d["original_spacing_z_mm"], d["original_spacing_y_mm"], d["original_spacing_x_mm"]) == (2.5, 0.7, 0.7)
    assert d["original_slices"] == 90
    assert a["geometry_source"] == STORED_GRID
    assert (a["original_spacing_z_mm"], a["original_slices"]) == (1.0, SHAPE[0])


def test_unreadable_and_failed_cases_are_error_rows(done):
    summary, rows, record, root = done
    assert set(record["errors"]) == {"broken", "failed"} == set(summary.errors)
    assert rows["broken"]["status"] == "error" and rows["broken"]["error"].startswith("broken: ")
    assert "cannot read shard" in rows["broken"]["error"] and "\n" not in rows["broken"]["error"]
    assert rows["failed"]["error"] == "failed: not in the store (preprocessing failed: synthetic failure)"
    assert rows["broken"]["picture"] is None and rows["broken"]["gland_ml"] is None
    ok = [c for c, r in rows.items() if r["status"] == "ok"]
    assert sorted(ok) == sorted(CASES)  # the others are all done
    assert all((root / "qc" / rows[c]["picture"]).is_file() for c in ok)


def test_csv_has_every_column_and_row(done):
    _, rows, _, root = done
    with open(root / "qc" / "qc.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == list(COLUMNS)
    assert [r["case"] for r in table] == sorted(rows)
    big = next(r for r in table if r["case"] == "big")
    assert (big["gland_volume_outlier"], big["no_tumour"], big["error"]) == ("true", "false", "")


def test_record_names_its_store_and_parameters(done):
    _, _, record, root = done
    from dataset.contract.catalog import read_catalog
    from dataset.contract.fingerprints import store_fingerprint

    assert record["store_fingerprint"] == store_fingerprint(read_catalog(root / "store"))
    assert record["store"] == str((root / "store").resolve())
    assert record["parameters"]["outlier_z"] == 3.5 and record["complete"] is True


def test_page_escapes_the_odd_id_and_every_link_resolves(done):
    _, _, _, root = done
    page = (root / "qc" / "index.html").read_text(encoding="utf-8")
    assert "x&lt;b&gt;&amp;&quot;y&#x27;" in page and ODD_ID not in page and "<b>" not in page
    links = re.findall(r'(?:href|src)="([^"]+)"', page)
    files = [unquote(link) for link in links if not link.startswith("#")]
    assert len(files) == 2 * len(CASES)  # a thumbnail and its link per drawn case
    assert all((root / "qc" / f).is_file() for f in files), files
    anchors = {link[1:] for link in links if link.startswith("#")}
    assert anchors and all(f'id="{a}"' in page for a in anchors)


def test_page_in_a_real_browser(done, tmp_path):
    """Every thumbnail loads in Chromium, the odd id's too."""
    from browser import picture_states

    root = done[3]
    states = picture_states(root / "qc" / "index.html", tmp_path)
    assert len(states) == len(CASES)
    assert [s for s in states if not s["complete"] or not s["width"]] == []


def test_pictures_are_not_blank(done):
    _, rows, _, root = done
    for case_id in ("a", "edge", ODD_ID):
        pixels = mpimg.imread(root / "qc" / rows[case_id]["picture"])[..., :3]
        assert pixels.shape[0] > 300 and pixels.std() > 0.1, case_id
        green = np.all(np.abs(pixels - np.array([0, 158, 115]) / 255) < 0.08, axis=-1)  # the gland's outline
        assert green.sum() > 50, case_id


# ---- the output folder ------------------------------------------------------------------------------------


def small_store(root: Path) -> Path:
    return build_store(root / "store", {k: CASES[k] for k in ("a", "b", "c")}, broken=False)


def test_out_inside_the_store_is_refused(tmp_path):
    store = small_store(tmp_path)
    for out in (store, store / "qc", store / "cases"):
        with pytest.raises(OutputInsideInputError, match=r"^--out .* the store .*: outputs never go into a folder"):
            run_qc(store, out, progress=False)
    assert not (store / "qc").exists() and not (store / "cases" / "qc.json").exists()


def test_someone_elses_folder_is_refused_and_left_alone(tmp_path):
    store, out = small_store(tmp_path), tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(QcError, match=r"holds 1 entries \(e\.g\. notes\.txt\) but no qc\.json"):
        run_qc(store, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    (out / "qc.json").write_text('{"something": "else"}')
    with pytest.raises(QcError, match="not a qc record"):
        run_qc(store, out, progress=False)


def test_rerun_is_byte_identical_and_drops_pictures_of_gone_cases(tmp_path):
    store, out = small_store(tmp_path), tmp_path / "qc"
    run_qc(store, out, progress=False)
    (out / "extra.txt").write_text("a person's note beside the outputs")
    first = {n: (out / n).read_bytes() for n in ("qc.json", "qc.csv", "index.html")}
    run_qc(store, out, progress=False)
    assert {n: (out / n).read_bytes() for n in first} == first
    from dataset.contract.catalog import read_catalog, write_catalog

    catalog = read_catalog(store)
    write_catalog(store, catalog.ordered(["a", "b"]))
    run_qc(store, out, progress=False)
    assert sorted(p.name for p in (out / "pictures").iterdir()) == ["a.png", "b.png"]
    assert (out / "extra.txt").is_file()


def test_a_killed_first_run_can_be_rerun(tmp_path, monkeypatch):
    store, out = small_store(tmp_path), tmp_path / "qc"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("evaluation.qc.add_outlier_flags", killed)
    with pytest.raises(KeyboardInterrupt):
        run_qc(store, out, progress=False)
    assert json.loads((out / "qc.json").read_text(encoding="utf-8"))["complete"] is False
    monkeypatch.undo()
    assert run_qc(store, out, progress=False).cases == 3


# ---- the command ------------------------------------------------------------------------------------------


def test_cli_end_to_end(tmp_path, capsys):
    store, out = build_store(tmp_path / "store"), tmp_path / "qc"
    assert main(["qc", "--store", str(store), "--out", str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].startswith(f"qc of {len(CASES) + 2} case(s) in ") and "4 flagged, 2 unreadable" in lines[0]
    assert "  flagged  big: gland_volume_outlier" in lines
    assert "  flagged  dark: gland_intensity_outlier" in lines
    assert any(line.startswith("  error    broken: ") for line in lines)
    assert lines[-1] == f"  open     {out / 'index.html'}"
    assert main(["qc", "--store", str(store), "--out", str(store / "qc")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pancreas qc: error: --out ") and "inside the store" in err
    assert main(["qc", "--store", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "not a preprocessed store" in capsys.readouterr().err
