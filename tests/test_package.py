"""``pancreas package``: a 2-fold synthetic CV packaged, verified, predicted as its runs; crafted zips refused."""

from __future__ import annotations

import io
import json
import re
import shutil
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from test_crossval import two_folds  # noqa: F401 - the fixture: 4 preprocessed cases, 2-fold index, 2 runs
from test_export import _random_model

from dataset.contract.package import PACKAGE_NAME, PROBE_NAME
from dataset.contract.run import checkpoint_path, read_input_contract
from pancreas.cli import main
from prediction.packages import CACHE_ENV

CASE = "pancreas_001"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """Every test unpacks into its own cache folder, never the user's."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


def _save_with_optimiser(model, path: Path) -> None:
    """A checkpoint as training leaves ``last.keras``: compiled, with the optimiser's variables."""
    from training.checkpoints import save_model_atomic

    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    save_model_atomic(model, path)


@pytest.fixture(scope="module")
def cv(two_folds, tmp_path_factory):  # noqa: F811 - the imported fixture
    """(data, runs, CV_DIR, MODEL.zip): two real tiny U-Nets mirrored along x, scored by evaluate --cv, packaged."""
    root = tmp_path_factory.mktemp("package")
    data, store, template_runs, _folds = two_folds
    runs = []
    for k, template in enumerate(template_runs):
        run = root / "runs" / f"fold_{k}"
        run.mkdir(parents=True)
        contract = json.loads((template / "input_contract.json").read_text(encoding="utf-8"))
        contract["flip_augment"] = {"flip_axes": [2], "flip_probability": 0.5}
        (run / "input_contract.json").write_text(json.dumps(contract), encoding="utf-8")
        _save_with_optimiser(_random_model(10 + k), checkpoint_path(run, "last"))
        _random_model(20 + k).save(checkpoint_path(run, "best"))
        (run / "history.csv").write_text("epoch,loss\n0,1.0\n", encoding="utf-8")
        runs.append(run)
    cv_dir = root / "cv"
    argv = ["evaluate", "--cv", *map(str, runs), "--store", str(store), "--out", str(cv_dir), "--no-progress"]
    assert main(argv) in (0, 1)
    package = root / "dist" / "MODEL.zip"
    assert main(["package", "--cv", str(cv_dir), "--out", str(package)]) == 0
    return data, runs, cv_dir, package


def _labels(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.glob("*.nii.gz"))}


def test_the_package_holds_what_it_lists(cv):
    _data, runs, cv_dir, package = cv
    with zipfile.ZipFile(package) as archive:
        names = archive.namelist()
        record = json.loads(archive.read(PACKAGE_NAME))
        card = archive.read("MODEL.md").decode("utf-8")
        checkpoint = io.BytesIO(archive.read("model_0/checkpoints/last.keras"))
    assert names[0] == PACKAGE_NAME and sorted(record["members"]) == sorted(names[1:])
    assert record["version"] == 1 and record["checkpoint"] == "last"  # the checkpoint the CV scored
    for k in range(2):
        assert {f"model_{k}/input_contract.json", f"model_{k}/history.csv", f"model_{k}/checkpoints/last.keras"} <= set(
            names
        )
        assert f"model_{k}/checkpoints/best.keras" not in names
    assert {"postprocessing.json", "probe.npz", "report/report.json", "report/report.csv", "report/report.html"} <= set(
        names
    )
    assert any(n.startswith("report/pictures/") for n in names)
    with zipfile.ZipFile(checkpoint) as keras_zip, zipfile.ZipFile(checkpoint_path(runs[0], "last")) as original:
        assert len(keras_zip.read("model.weights.h5")) < len(original.read("model.weights.h5"))  # no optimiser
    report = json.loads((cv_dir / "report.json").read_text(encoding="utf-8"))
    dice = report["summary"]["pancreas"]["dice"]["mean"]
    assert f"{dice:.3f} /" in card and "checkpoint `last`" in card and "| 5.0 mm |" in card and "| 2.0 mm |" in card
    assert "4 labelled case(s) in 2 fold(s)" in card and "Intended use and limits" in card


def test_predicting_with_the_package_gives_the_runs_label_maps_bit_for_bit(cv, tmp_path, cache):
    data, runs, cv_dir, package = cv
    moved = tmp_path / "elsewhere" / "MODEL.zip"  # only the zip travels
    moved.parent.mkdir()
    shutil.copyfile(package, moved)
    image = str(data / "imagesTr" / f"{CASE}.nii.gz")
    by_runs, by_zip, by_folder = tmp_path / "runs", tmp_path / "zip", tmp_path / "folder"
    argv = ["predict", "--input", image, "--no-progress"]
    decision = str(cv_dir / "postprocessing.json")
    assert (
        main(
            [
                *argv,
                "--model",
                *map(str, runs),
                "--set",
                "checkpoint=last",
                "--postprocessing",
                decision,
                "--out",
                str(by_runs),
            ]
        )
        == 0
    )
    assert main([*argv, "--model", str(moved), "--out", str(by_zip)]) == 0
    unpacked = next((cache / "packages").iterdir())
    assert main([*argv, "--model", str(unpacked), "--out", str(by_folder)]) == 0
    expected = _labels(by_runs)
    assert list(expected) == [f"{CASE}.nii.gz"] and expected[f"{CASE}.nii.gz"].any()
    for folder in (by_zip, by_folder):
        found = _labels(folder)
        assert list(found) == list(expected)
        assert all(np.array_equal(found[k], expected[k]) and found[k].dtype == expected[k].dtype for k in expected)
    assert [p.name for p in (cache / "packages").iterdir()] == [unpacked.name]  # unpacked once, reused
    record = json.loads((by_zip / "predictions.json").read_text(encoding="utf-8"))
    assert record["package"] == str(moved) and record["package_sha256"].startswith(unpacked.name)
    assert json.loads((by_runs / "predictions.json").read_text(encoding="utf-8"))["package"] is None


def test_verify_passes_with_one_line_for_the_zip_and_its_folder(cv, capsys, cache):
    assert main(["package", "--verify", str(cv[3])]) == 0
    assert main(["package", "--verify", str(next((cache / "packages").iterdir()))]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2
    for line in out:
        assert re.search(r": OK: format version 1, \d+ members .* 2 model\(s\) agree, largest probe difference", line)
    assert out[0].split()[-1] == out[1].split()[-1]  # the same package hash for the zip and its folder


def _rewrite(package: Path, out: Path, change) -> Path:
    """A copy of ``package`` with ``change(name, data) -> data | None`` applied to each member (None: left out)."""
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = change(info.filename, src.read(info))
            if data is not None:
                dst.writestr(info.filename, data)
    return out


def _one_byte_changed(name: str, data: bytes) -> bytes:
    if name != "model_1/input_contract.json":
        return data
    return data.replace(b"{", b" ", 1)


def _member_removed(name: str, data: bytes) -> bytes | None:
    return None if name == "model_0/history.csv" else data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_one_byte_changed, r"member 'model_1/input_contract.json' has SHA-256 \w+\.\.\., package.json says"),
        (_member_removed, r"member 'model_0/history.csv' listed in package.json is missing"),
    ],
    ids=["one-byte", "removed"],
)
def test_verify_fails_in_one_line_naming_the_first_failure(cv, tmp_path, capsys, change, message):
    bad = _rewrite(cv[3], tmp_path / "bad.zip", change)
    assert main(["package", "--verify", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and re.search(message, err), err
    assert not (tmp_path / "cache").exists()  # refused before anything was unpacked


def test_verify_fails_when_a_probe_output_differs(cv, tmp_path, capsys):
    import hashlib

    with zipfile.ZipFile(cv[3]) as archive:
        probe = dict(np.load(io.BytesIO(archive.read(PROBE_NAME))))
        record = json.loads(archive.read(PACKAGE_NAME))
    probe["output_1"] = probe["output_1"] + np.float32(0.05)
    buffer = io.BytesIO()
    np.savez(buffer, **probe)
    record["members"][PROBE_NAME] = {
        "size": len(buffer.getvalue()),
        "sha256": hashlib.sha256(buffer.getvalue()).hexdigest(),
    }
    edited = {PROBE_NAME: buffer.getvalue(), PACKAGE_NAME: json.dumps(record).encode()}
    bad = _rewrite(cv[3], tmp_path / "bad.zip", lambda name, data: edited.get(name, data))
    assert main(["package", "--verify", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "model_1 gives probabilities on the probe that differ" in err and "tolerance 0.01" in err


def _newer_version(name: str, data: bytes) -> bytes:
    if name != PACKAGE_NAME:
        return data
    record = json.loads(data)
    record["version"] = 2
    return json.dumps(record).encode()


def _crafted(kind: str, path: Path, package: Path) -> Path:
    """A zip that must be refused before anything is written."""
    if kind == "newer":
        return _rewrite(package, path, _newer_version)
    if kind == "extra":
        shutil.copyfile(package, path)
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr("model_0/notes.txt", "not listed")
        return path
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(PACKAGE_NAME, "{}")
        if kind == "absolute":
            archive.writestr(zipfile.ZipInfo("/etc/evil"), "x")
        elif kind == "dotdot":
            archive.writestr("model_0/../../evil", "x")
        elif kind == "link":
            info = zipfile.ZipInfo("model_0/link")
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
        elif kind == "duplicate":
            archive.writestr("MODEL.md", "a")
            with pytest.warns(UserWarning, match="Duplicate name"):
                archive.writestr("MODEL.md", "b")
        elif kind == "case":
            archive.writestr("model_0/a", "a")
            archive.writestr("Model_0/a", "b")
        elif kind == "bomb":
            archive.writestr("probe.npz", bytes(8 << 20))  # 8 MiB of zeros deflate to about 8 kB
        elif kind == "many":
            for i in range(4096):
                archive.writestr(f"m{i}", b"")
        elif kind == "declared":
            archive.writestr("probe.npz", b"small")
            archive.filelist[-1].file_size = 3 << 30  # the central directory claims 3 GiB
    return path


CRAFTED = {
    "absolute": "refusing member '/etc/evil': absolute path; nothing was unpacked",
    "dotdot": "refusing member 'model_0/../../evil': path contains '..'; nothing was unpacked",
    "link": "refusing member 'model_0/link': symbolic link; nothing was unpacked",
    "duplicate": "refusing member 'MODEL.md': its name appears twice; nothing was unpacked",
    "case": r"refusing member 'Model_0/a': its name differs from 'model_0/a' only in case",
    "bomb": r"refusing member 'probe.npz': compression ratio \d+:1, more than 200:1 \(a zip bomb\?\)",
    "declared": "refusing member 'probe.npz': declares 3221225472 bytes uncompressed, more than a member may hold",
    "many": r"crafted.zip: 4097 members, more than a package may hold \(4096\)",
    "extra": "refusing member 'model_0/notes.txt': not listed in package.json",
    "newer": r"package.json: written by a newer pancreas-seg \(format version 2; this one reads 1\)",
}


@pytest.mark.parametrize("kind", sorted(CRAFTED))
def test_a_crafted_zip_is_refused_in_one_line_writing_nothing(cv, tmp_path, capsys, kind):
    (tmp_path / "in").mkdir()
    bad = _crafted(kind, tmp_path / "in" / "crafted.zip", cv[3])
    out = tmp_path / "out"
    argv = ["predict", "--model", str(bad), "--input", str(cv[0] / "imagesTr" / f"{CASE}.nii.gz"), "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and re.search(CRAFTED[kind], err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no cache folder, no output folder
    assert main(["package", "--verify", str(bad)]) == 1
    assert re.search(CRAFTED[kind], capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_an_existing_file_is_replaced_only_when_it_is_a_package(cv, tmp_path, capsys):
    _data, runs, _cv_dir, package = cv
    mine = tmp_path / "MODEL.zip"
    mine.write_bytes(b"my own notes")
    argv = ["package", "--model", str(runs[0]), "--out", str(mine)]
    assert main(argv) == 2
    assert "is not a `pancreas package` zip" in capsys.readouterr().err
    assert mine.read_bytes() == b"my own notes" and sorted(p.name for p in tmp_path.iterdir()) == ["MODEL.zip"]
    shutil.copyfile(package, mine)
    killed, other = tmp_path / ".MODEL.zip.k1ll3d.pancreas-tmp.zip", tmp_path / ".OTHER.zip.k1ll3d.pancreas-tmp.zip"
    killed.write_bytes(b"half a zip")
    other.write_bytes(b"another package's")
    staged = tmp_path / ".MODEL.zip.k1ll3d.pancreas-tmp"  # a killed package's staging folder
    (staged / "model_0").mkdir(parents=True)
    (staged / "model_0" / "config.json").write_text("{}")
    assert main(argv) == 0
    assert not killed.exists() and not staged.exists() and other.exists()  # only this output's are swept
    # the members were staged beside MODEL.zip and nothing of them is left
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".OTHER.zip.k1ll3d.pancreas-tmp.zip",
        ".pancreas.lock",
        "MODEL.zip",
    ]
    assert "replaced the earlier package" in capsys.readouterr().out
    with zipfile.ZipFile(mine) as archive:
        record = json.loads(archive.read(PACKAGE_NAME))
        card = archive.read("MODEL.md").decode("utf-8")
    assert record["checkpoint"] == "best" and len(record["models"]) == 1 and "postprocessing" not in record
    assert "Not scored" in card and "Postprocessing: none packaged" in card
    assert read_input_contract(runs[0]).fold == record["models"][0]["fold"]


def test_a_changed_cache_folder_is_refused_and_a_package_goes_alone(cv, tmp_path, cache, capsys):
    data, runs, _cv_dir, package = cv
    argv = ["predict", "--input", str(data / "imagesTr" / f"{CASE}.nii.gz"), "--no-progress"]
    assert main(["package", "--verify", str(package)]) == 0  # unpacks into the cache
    capsys.readouterr()
    (next((cache / "packages").iterdir()) / "MODEL.md").write_text("edited", encoding="utf-8")
    assert main([*argv, "--model", str(package), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip()
    assert "member 'MODEL.md' holds 6 bytes, package.json says" in err and "remove it and rerun" in err
    assert main([*argv, "--model", str(package), str(runs[0]), "--out", str(tmp_path / "p")]) == 2
    assert "a model package is given alone" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"postprocessing": "/etc/passwd"}, r"postprocessing '/etc/passwd' is not the listed member"),
        ({"postprocessing": "../cv/postprocessing.json"}, r"postprocessing '\.\./cv/postprocessing\.json' is not the"),
        ({"checkpoint": "x"}, r"checkpoint 'x' is not one of best, last"),
    ],
)
def test_a_record_pointing_outside_its_members_is_refused(cv, change, message):
    """What predict joins to the package folder (the decision, the checkpoint) must be a member the hashes pin."""
    from dataset.contract.package import PackageError, read_package_record

    package = cv[3]
    record = json.loads(zipfile.ZipFile(package).read(PACKAGE_NAME))
    read_package_record(json.dumps(record).encode(), str(package))  # as packaged: accepted
    with pytest.raises(PackageError, match=message):
        read_package_record(json.dumps({**record, **change}).encode(), str(package))
    unlisted = {**record, "members": {k: v for k, v in record["members"].items() if k != PROBE_NAME}}
    with pytest.raises(PackageError, match=r"members do not list probe\.npz"):
        read_package_record(json.dumps(unlisted).encode(), str(package))


def test_a_zip_replaced_between_its_check_and_its_unpacking_is_refused(cv, tmp_path):
    """Unpacking writes only what the check listed and checks the folder again before it is used."""
    from dataset.contract.package import PackageError
    from prediction.package_zip import read_zip_package, unpack_zip

    checked = read_zip_package(cv[3])
    swapped = _crafted("extra", tmp_path / "swapped.zip", cv[3])  # the same package plus a member
    with pytest.raises(PackageError, match=r"refusing member 'model_0/notes.txt': not listed in package.json"):
        unpack_zip(swapped, tmp_path / "a", checked)
    other = _rewrite(cv[3], tmp_path / "other.zip", lambda name, data: data + b" " if name == "MODEL.md" else data)
    (tmp_path / "b").mkdir()
    with pytest.raises(PackageError, match=r"member 'MODEL.md' holds \d+ bytes"):
        unpack_zip(other, tmp_path / "b", checked)
