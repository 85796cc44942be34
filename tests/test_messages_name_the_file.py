"""Refusals that name the file and say what is wrong with it (issue 18, item 7), one test each."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from helpers import tiny_train_store

from dataset.common.atomic import ReadError, read_json
from dataset.common.configio import ConfigError, load_config
from dataset.common.errors import UsageError
from dataset.common.modelfiles import keras_file_problem
from dataset.index.config import IndexConfig
from pancreas.cli import main
from pancreas.cli_synth import table_lines
from sources.archive import staging_dir
from sources.config import DownloadConfig
from sources.download import DownloadError, archive_name, download_dataset, extract_archive
from sources.msd import MsdDatasetError, load_msd_dataset
from sources.synthetic.msd import make_dataset

NOT_UTF8 = b"\xff\xfe"


def test_non_utf8_json_names_the_file(tmp_path: Path):
    path = tmp_path / "postprocessing.json"
    path.write_bytes(NOT_UTF8)
    with pytest.raises(ReadError, match=rf"^{path}: the postprocessing decision is not UTF-8 text \(byte 0: "):
        read_json(path, "postprocessing decision")


def test_non_utf8_yaml_names_the_file(tmp_path: Path):
    path = tmp_path / "index.yaml"
    path.write_bytes(b"folds: 2\n" + NOT_UTF8)
    with pytest.raises(ConfigError, match=rf"^{path}: not UTF-8 text \(byte 9: invalid start byte\)"):
        load_config(IndexConfig, path)


@pytest.mark.parametrize(
    ("text", "where", "key"),
    [("folds: 2\nfolds: 3\n", "2:1", "folds"), ("a:\n  b: 1\n  b: 2\n", "3:3", "b"), ("- {x: 1, x: 2}\n", "1:10", "x")],
)
def test_duplicate_yaml_keys_are_refused_naming_the_line(tmp_path: Path, text: str, where: str, key: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"^{path}:{where}: key '{key}' is given twice; keep one$"):
        load_config(IndexConfig, path)


def test_keras_file_problems(tmp_path: Path):
    corrupt, h5, good = tmp_path / "corrupt.keras", tmp_path / "model.h5", tmp_path / "model.keras"
    corrupt.write_bytes(bytes(range(256)) * 20)
    h5.write_text("x")
    with zipfile.ZipFile(good, "w") as z:
        z.writestr("config.json", "{}")
    assert (keras_file_problem(corrupt) or "").startswith("not a readable Keras model")
    assert (keras_file_problem(h5) or "").startswith("an HDF5 (.h5) model, not a .keras one")
    assert keras_file_problem(good) is None


def test_init_from_corrupt_keras_or_h5_says_what_it_is(tmp_path: Path):
    from dataset.contract.run import RunError
    from training.finetune import resolve_init_source

    corrupt, h5 = tmp_path / "corrupt.keras", tmp_path / "model.h5"
    corrupt.write_bytes(b"\x00" * 5000)
    h5.write_text("x")
    with pytest.raises(RunError, match=rf"^--init-from {corrupt}: not a readable Keras model"):
        resolve_init_source(corrupt)
    with pytest.raises(RunError, match=rf"^--init-from {h5}: an HDF5 \(.h5\) model, not a .keras one"):
        resolve_init_source(h5)


def test_predict_with_a_corrupt_checkpoint_names_it_before_writing(tmp_path: Path):
    from helpers import write_contract_run

    from prediction.cases import PredictError
    from prediction.predict import predict_cases

    data = make_dataset(tmp_path / "data", 1, seed=0, n_test=1, progress=False)
    run = write_contract_run(tmp_path / "run")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "best.keras").write_bytes(b"\x00" * 100)
    with pytest.raises(PredictError, match=r"best\.keras: not a readable Keras model"):
        predict_cases(run, data / "imagesTs", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def nnunet(tmp_path: Path, **changes) -> Path:
    root = make_dataset(tmp_path / "nn", 2, seed=0, n_test=1, layout="nnunet", progress=False)
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    meta.update(changes)
    (root / "dataset.json").write_text(json.dumps({k: v for k, v in meta.items() if v is not None}))
    return root


def test_nnunet_file_ending_that_does_not_match_names_a_file(tmp_path: Path):
    root = nnunet(tmp_path, file_ending=".nii")
    first = sorted((root / "imagesTr").glob("*_0000.nii.gz"))[0]
    with pytest.raises(
        MsdDatasetError, match=rf"^{first}: ends in '.nii.gz' but dataset.json's 'file_ending' is '.nii'"
    ):
        load_msd_dataset(root)


def test_nnunet_dataset_json_without_channel_names_is_refused(tmp_path: Path):
    root = nnunet(tmp_path, channel_names=None)
    with pytest.raises(MsdDatasetError, match=r"dataset\.json: an nnU-Net v2 dataset\.json without 'channel_names'"):
        load_msd_dataset(root)


def test_download_out_that_is_a_file_is_one_line(tmp_path: Path):
    (tmp_path / "afile").write_text("mine")
    config = DownloadConfig(url="http://127.0.0.1:9/Task07_Pancreas.tar", md5="0" * 32)
    with pytest.raises(DownloadError, match=r"^--out .*afile: exists and is not a folder"):
        download_dataset(config, tmp_path / "afile", progress=False)
    assert (tmp_path / "afile").read_text(encoding="utf-8") == "mine"


@pytest.mark.parametrize(("url", "last"), [("http://h/a/..", "'..'"), ("http://h/a/", "''"), ("http://h/.", "'.'")])
def test_url_without_a_file_name_is_refused(url: str, last: str):
    with pytest.raises(
        DownloadError, match=rf"cannot tell the archive's file name from the URL \(its last segment is {last}\)"
    ):
        archive_name(url)


def test_archive_member_named_like_the_staging_folder_is_refused(tmp_path: Path):
    archive, out = tmp_path / "Task07_Pancreas.tar", tmp_path / "out"
    name = staging_dir(archive, out).name
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo(f"{name}/x.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(DownloadError, match=rf"refusing archive member '{name}': named like the staging folder"):
        extract_archive(archive, out)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("fold", ["-1", "x", "1.5", ""])
def test_fold_that_is_not_a_fold_number(capsys, fold: str):
    with pytest.raises(SystemExit):
        main(["train", "--store", "s", "--out", "r", "--fold", fold])
    assert (
        f"argument --fold: expected a fold number 0, 1, ... (an integer >= 0), got {fold!r}" in capsys.readouterr().err
    )


@pytest.mark.parametrize("fold", [-1, "0", True])
def test_library_fold_that_is_not_a_fold_number(tmp_path: Path, fold):
    from training.config import TrainConfig
    from training.preflight import read_run_inputs

    with pytest.raises(UsageError, match=r"^--fold must be a fold number 0, 1, \.\.\. \(an integer >= 0\), got "):
        read_run_inputs(tiny_train_store(tmp_path / "store"), TrainConfig(), fold)


def test_a_reader_that_leaves_ends_the_command_quietly():
    code = (
        "import sys, pancreas.cli_env as e; e.run = lambda a: print('x' * 200000) or 0; "
        "from pancreas.cli import main; sys.exit(main(['env']))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first write, like `| head` that has its line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_synth_table_keeps_its_columns_apart():
    lines = table_lines(("case", "dtype", "tumour"), [("pancreas_002_0000.nii.gz", "int16_scaled 1/-1024", "yes")])
    assert lines == [
        "case                      dtype                 tumour",
        "pancreas_002_0000.nii.gz  int16_scaled 1/-1024  yes",
    ]
