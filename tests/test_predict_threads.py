"""``pancreas predict --threads N``: TensorFlow's pools set before it starts, refusals, the record."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import write_contract_run

from pancreas.cli import main
from prediction.config import PredictConfig
from prediction.predict import predict_cases
from sources.synthetic.msd import make_dataset

FRESH_PROCESS = """
import logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(levelname)s %(message)s")
import tensorflow as tf
from prediction.threads import set_tensorflow_threads
print("first", set_tensorflow_threads(1), tf.config.threading.get_inter_op_parallelism_threads())
tf.constant(1.0) + 1.0  # TensorFlow starts here
print("again", set_tensorflow_threads(2))
"""


def test_threads_are_set_before_tensorflow_starts_and_kept_after():
    out = subprocess.run([sys.executable, "-c", FRESH_PROCESS], capture_output=True, text=True, check=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith(("first", "again", "WARNING"))]
    assert lines == [
        "first 1 1",
        "WARNING --threads 2: TensorFlow has already started with 1 threads and keeps them",
        "again 1",
    ]


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_a_thread_count_below_one_is_refused_in_one_line(capsys, value: str):
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "--model", "r", "--input", "i", "--out", "o", "--threads", value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --threads: expected a number of threads >= 1, got {value!r}" in err


def test_the_library_refuses_zero_threads():
    from prediction.threads import set_tensorflow_threads

    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        set_tensorflow_threads(0)


def three_classes(batch: np.ndarray) -> np.ndarray:
    return np.concatenate([1.0 - batch, 0.5 * batch, 0.5 * batch], axis=-1)


def test_each_case_records_the_threads_of_its_timings(tmp_path: Path):
    from prediction.threads import tensorflow_threads

    data = make_dataset(tmp_path / "msd", 1, seed=0, n_test=1, progress=False)
    run = write_contract_run(tmp_path / "run")
    # TensorFlow has started in this process (other tests, or now): the count it keeps is recorded
    summary = predict_cases(
        run, data, tmp_path / "out", PredictConfig(), predict_fn=three_classes, threads=1, progress=False
    )
    case = json.loads((tmp_path / "out" / "predictions.json").read_text(encoding="utf-8"))["cases"]
    assert not summary.failed, summary.table()
    assert [c["threads"] for c in case.values()] == [summary.threads] == [tensorflow_threads()]
    assert f"TensorFlow threads: {summary.threads}" in summary.table()
    other = predict_cases(run, data, tmp_path / "other", PredictConfig(), predict_fn=three_classes, progress=False)
    assert other.threads is None and "TensorFlow threads" not in other.table()  # no Keras model: not TensorFlow's
