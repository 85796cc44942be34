"""Per-class epoch Dice from accumulated TP/FP/FN counts."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from training.metrics import ClassDice, dice_metrics


def one_hot(labels):
    return np.eye(3, dtype=np.float32)[np.asarray(labels)]


def test_accumulates_counts_not_batch_ratios():
    m = ClassDice(1)
    # batch 1: truth 1 at 0,1; pred 1 at 1,2 -> TP 1, FP 1, FN 1 (batch Dice 0.5)
    m.update_state(one_hot([[1, 1, 0, 0]]), one_hot([[0, 1, 1, 0]]))
    assert float(m.result()) == pytest.approx(0.5)
    # batch 2: 8 voxels of class 1, all found -> TP 8 (batch Dice 1.0)
    m.update_state(one_hot([[1] * 8]), one_hot([[1] * 8]))
    # epoch: 2*9 / (2*9 + 1 + 1) = 0.9, not the batch mean 0.75
    assert float(m.result()) == pytest.approx(0.9)
    m.reset_state()
    m.update_state(one_hot([[2, 2]]), one_hot([[1, 0]]))  # predicted 1 where truth is 2
    assert float(m.result()) == pytest.approx(0.0)


def test_argmax_of_probabilities_and_absent_class():
    pancreas, tumour = dice_metrics()
    y = one_hot([[0, 1, 1, 0]])
    p = np.array([[[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.5, 0.4, 0.1], [0.3, 0.3, 0.4]]], np.float32)
    pancreas.update_state(y, p)  # pred (0, 1, 0, 2): TP 1, FN 1, FP 0 -> 2/3
    tumour.update_state(y, p)  # tumour: TP 0, FP 1 -> 0
    assert float(pancreas.result()) == pytest.approx(2 / 3)
    assert float(tumour.result()) == pytest.approx(0.0)
    empty = ClassDice(2)
    empty.update_state(one_hot([[0, 1]]), one_hot([[0, 1]]))  # tumour in neither
    assert float(empty.result()) == pytest.approx(1.0)
    assert pancreas.name == "dice_pancreas" and tumour.name == "dice_tumour"


def test_class_indices_like_one_hot():
    a, b = ClassDice(1), ClassDice(1)
    labels = np.array([[1, 1, 0, 2]], np.uint8)
    pred = one_hot([[0, 1, 1, 2]])
    a.update_state(labels, pred)
    b.update_state(one_hot(labels), pred)
    assert float(a.result()) == float(b.result()) == pytest.approx(0.5)


def test_serialisable():
    m = ClassDice(2, name="tumour_dice")
    clone = keras.metrics.deserialize(keras.metrics.serialize(m))
    assert isinstance(clone, ClassDice) and clone.class_id == 2 and clone.name == "tumour_dice"
