"""A full disk never leaves a torn file under its final name, and says so in one line naming the file
and its folder: each writer whose library can stop short silently is read back before the rename."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import pytest
import SimpleITK as sitk

from dataset.common.atomic import TMP_SUFFIX, write_json_atomic
from dataset.common.crashpoints import ENOSPC_ENV
from dataset.common.verify import WriteError, is_no_space, no_space, short_write
from dataset.contract import augmented, store
from pancreas.cli import main
from preprocess import output
from preprocess.output import write_image_atomic

if TYPE_CHECKING:
    from dataset.contract.run import InputContract


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if TMP_SUFFIX in p.name)


def label_image(value: int) -> sitk.Image:
    image = sitk.GetImageFromArray(np.full((6, 20, 24), value, np.uint8))
    image.SetSpacing((0.8, 0.8, 2.5))
    return image


def torn_writer(real, how: str):
    """``sitk.WriteImage`` on a disk that filled: the file keeps half its bytes ("short") or has
    its second half zeroed ("hole"), and nothing is raised."""

    def write(image, name, *args, **kwargs):
        real(image, name, *args, **kwargs)
        size = os.path.getsize(name)
        if how == "short":
            os.truncate(name, size // 2)
        else:
            with open(name, "r+b") as fh:
                fh.seek(size // 2)
                fh.write(bytes(size - size // 2))

    return write


@pytest.mark.parametrize(("name", "how"), [("case.nii.gz", "short"), ("case.nii.gz", "hole"), ("case.nii", "short")])
def test_a_torn_nifti_is_refused_and_the_old_file_kept(name, how, tmp_path, monkeypatch):
    target = tmp_path / name
    write_image_atomic(label_image(1), target)
    before = target.read_bytes()
    monkeypatch.setattr(output.sitk, "WriteImage", torn_writer(sitk.WriteImage, how))
    with pytest.raises(OSError, match=rf"{name}: .*(reached the disk|read back whole).*is {tmp_path} full\?") as err:
        write_image_atomic(label_image(2), target)
    assert "\n" not in str(err.value) and not str(err.value).startswith("[Errno")
    assert target.read_bytes() == before and temporaries(tmp_path) == []


def test_a_nifti_with_no_space_names_the_file_and_folder(tmp_path, monkeypatch):
    target = tmp_path / "case.nii.gz"
    monkeypatch.setenv(ENOSPC_ENV, "case.nii.gz:written")
    with pytest.raises(OSError, match="No space left on device writing") as err:
        write_image_atomic(label_image(2), target)
    assert str(err.value) == f"No space left on device writing {target} (folder {tmp_path})"
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(target)
    assert not target.exists() and temporaries(tmp_path) == []


def test_any_atomic_write_with_no_space_names_the_file(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "predictions.json"
    monkeypatch.setenv(ENOSPC_ENV, "predictions:written")
    with pytest.raises(OSError, match=r"^No space left on device writing .*predictions\.json \(folder .*sub\)$"):
        write_json_atomic(target, {"v": 1}, point="predictions")
    assert temporaries(target.parent) == []


def test_a_real_enospc_inside_the_block_names_the_file(tmp_path):
    from dataset.common.atomic import atomic_path

    target = tmp_path / "x.bin"
    with pytest.raises(WriteError, match=r"writing .*x\.bin"), atomic_path(target):
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OSError, match="^other$"), atomic_path(target):  # other errors pass unchanged
        raise OSError("other")
    assert os.listdir(tmp_path) == []


class TornH5:
    """``create_h5`` on a disk that filled: the file is cut in half after it closes, silently."""

    def __init__(self, path):
        self.path, self.file = path, store.h5py.File(path, "w")

    def __enter__(self):
        return self.file

    def __exit__(self, *exc):
        self.file.close()
        os.truncate(self.path, os.path.getsize(self.path) // 2)


def test_a_torn_shard_is_refused_and_the_old_one_kept(tmp_path, monkeypatch):
    target = tmp_path / "cases" / "pancreas_001.h5"
    image = np.arange(4 * 8 * 8, dtype=np.uint8).reshape(4, 8, 8)
    store.write_shard(target, image, None, {"case_id": "pancreas_001"})
    before = target.read_bytes()
    monkeypatch.setattr(store, "create_h5", TornH5)
    with pytest.raises(OSError, match=r"pancreas_001\.h5: the HDF5 file just written does not read back whole"):
        store.write_shard(target, image, image, {"case_id": "pancreas_001"})
    assert target.read_bytes() == before and temporaries(target.parent) == []


def test_a_torn_augmented_shard_is_refused(tmp_path, monkeypatch):
    target = tmp_path / "augmented" / "pancreas_001.h5"
    patches = np.zeros((2, 4, 8, 8), np.uint8)
    monkeypatch.setattr(augmented, "create_h5", TornH5)
    with pytest.raises(OSError, match=r"augmented/pancreas_001\.h5: the HDF5 file just written"):
        augmented.write_augmented_shard(target, patches, patches, {"fingerprint": "f"})
    assert not target.exists() and temporaries(target.parent) == []


def test_a_torn_keras_checkpoint_is_refused_and_the_old_one_kept(tmp_path, monkeypatch):
    import keras

    from training.checkpoints import save_model_atomic

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="dense")])
    target = tmp_path / "last.keras"
    save_model_atomic(model, target)
    before = target.read_bytes()
    real = type(model).save

    def torn_save(self, name, *args, **kwargs):
        real(self, name, *args, **kwargs)
        os.truncate(name, os.path.getsize(name) // 2)

    monkeypatch.setattr(type(model), "save", torn_save)
    with pytest.raises(OSError, match=r"last\.keras: the zip file just written does not read back whole"):
        save_model_atomic(model, target)
    assert target.read_bytes() == before and temporaries(tmp_path) == []


def test_a_full_disk_in_tensorflows_export_is_one_line_naming_the_export(tmp_path, monkeypatch):
    import tensorflow as tf

    from training import export

    def save_v2_fails(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, "/x/variables_temp/part-0; No space left on device")

    monkeypatch.setattr(export, "_write_export", save_v2_fails)
    out = tmp_path / "exp"
    summary = export.ExportSummary(out, tmp_path, "best", tmp_path / "best.keras", (), 4, False)
    with pytest.raises(OSError, match="No space left on device writing") as err:
        export._write_export_naming_full_disk(tmp_path / "tmp", cast("InputContract", None), summary, None)
    assert str(err.value) == f"No space left on device writing {out} (folder {tmp_path})"


def test_the_cli_prints_a_full_disk_as_its_message_alone(monkeypatch, capsys):
    import pancreas.cli_env as module

    def run(args):
        raise no_space("/out/pred/case.nii.gz")

    monkeypatch.setattr(module, "run", run)
    assert main(["env"]) == 2
    assert capsys.readouterr().err == (
        "pancreas env: error: No space left on device writing /out/pred/case.nii.gz (folder /out/pred)\n"
    )


def test_short_write_and_is_no_space_messages():
    assert str(short_write("/a/b.h5", 5, 10)) == "/a/b.h5: only 5 of 10 bytes reached the disk (is /a full?)"
    assert is_no_space(OSError(errno.ENOSPC, "x")) and is_no_space(RuntimeError("..; No space left on device"))
    assert not is_no_space(OSError(errno.EACCES, "Permission denied"))


def test_naming_full_disk_names_the_folder_a_library_writes_into(tmp_path):
    from dataset.common.verify import naming_full_disk

    run_dir = tmp_path / "run"
    with pytest.raises(WriteError, match=rf"^No space left on device writing {run_dir} \(folder {tmp_path}\)$"):
        with naming_full_disk(run_dir):  # Keras' CSVLogger, TensorFlow's event writer
            raise OSError(errno.ENOSPC, "No space left on device")
    named = short_write(run_dir / "last.keras", 1, 2)
    with pytest.raises(WriteError) as err, naming_full_disk(run_dir):
        raise named
    assert err.value is named  # already names its file
    with pytest.raises(KeyError), naming_full_disk(run_dir):
        raise KeyError("a bug keeps its type")


@pytest.mark.parametrize("writer", ["shard", "augmented"])
def test_an_hdf5_shard_with_no_space_keeps_the_old_one_and_names_it(writer, tmp_path, monkeypatch):
    target = tmp_path / writer / "pancreas_001.h5"
    patches = np.ones((1, 4, 8, 8), np.uint8)

    def write() -> None:
        if writer == "shard":
            store.write_shard(target, patches[0], None, {"case_id": "pancreas_001"})
        else:
            augmented.write_augmented_shard(target, patches, patches, {"fingerprint": "f"})

    write()
    before = target.read_bytes()
    monkeypatch.setenv(ENOSPC_ENV, f"{writer}:written")
    with pytest.raises(WriteError, match=rf"^No space left on device writing {target} \(folder {target.parent}\)$"):
        write()
    assert target.read_bytes() == before and temporaries(target.parent) == []


def test_a_keras_checkpoint_with_no_space_keeps_the_old_one_and_names_it(tmp_path, monkeypatch):
    import keras

    from training.checkpoints import save_model_atomic

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="dense")])
    target = tmp_path / "best.keras"
    save_model_atomic(model, target, point="checkpoint-best")
    before = target.read_bytes()
    monkeypatch.setenv(ENOSPC_ENV, "checkpoint-best:written")
    with pytest.raises(WriteError, match=rf"^No space left on device writing {target} "):
        save_model_atomic(model, target, point="checkpoint-best")
    assert target.read_bytes() == before and temporaries(tmp_path) == []
