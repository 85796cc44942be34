"""The trainer records its flip augmentation in the run's input contract; predict mirrors along it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from dataset.common.records import record_to_dict
from dataset.contract.run import RunFingerprints, read_input_contract, write_input_contract
from training.config import AugmentConfig, TrainConfig
from training.preflight import RunInputs, input_contract


def inputs() -> RunInputs:
    return RunInputs(
        store=Path("store"),
        catalog=SimpleNamespace(config={}),
        train_rows=[],
        val_rows=[],
        patch_size_zyx=(16, 32, 32),
        val_patch_size_zyx=(16, 48, 48),
        fingerprints=RunFingerprints("s", "i", "p"),
    )


@pytest.mark.parametrize(
    ("augment", "recorded", "mirror"),
    [
        (AugmentConfig(), {"flip_axes": [1, 2], "flip_probability": 0.5}, (1, 2)),
        (AugmentConfig(flip_axes=(0, 2), flip_probability=0.3), {"flip_axes": [0, 2], "flip_probability": 0.3}, (0, 2)),
        (AugmentConfig(flip_probability=0.0), {"flip_axes": [1, 2], "flip_probability": 0.0}, ()),
    ],
)
def test_input_contract_records_the_flips(tmp_path: Path, augment, recorded, mirror):
    contract = input_contract(inputs(), TrainConfig(augment=augment))
    write_input_contract(tmp_path, contract)
    back = read_input_contract(tmp_path)
    assert record_to_dict(back)["flip_augment"] == recorded and back.mirror_axes == mirror
