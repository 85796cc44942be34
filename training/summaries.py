"""TensorBoard event writing with TensorFlow alone: TensorFlow 2.21 no longer installs ``tensorboard``.

See docs/explanation/internals.md#tensorboard-events-trainingsummariespy.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2


def _metadata(plugin: str, data_class: int) -> bytes:
    meta = summary_pb2.SummaryMetadata()
    meta.plugin_data.plugin_name = plugin
    meta.plugin_data.content = b""  # the plugins' version-0 data: empty
    meta.data_class = data_class
    return meta.SerializeToString()


SCALAR_METADATA = _metadata("scalars", summary_pb2.DATA_CLASS_SCALAR)
IMAGE_METADATA = _metadata("images", summary_pb2.DATA_CLASS_BLOB_SEQUENCE)


def write_scalar(tag: str, value: float, step: int) -> None:
    """One scalar into the default writer (inside ``writer.as_default()``)."""
    tf.summary.write(tag, tf.constant(float(value), tf.float32), step=step, metadata=SCALAR_METADATA)


def write_image(tag: str, image: np.ndarray, step: int) -> None:
    """A float (height, width) or (height, width, channels) image in [0, 1] mapped to 0..255."""
    array = np.asarray(image, np.float32)
    if array.ndim == 2:
        array = array[..., None]
    levels = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    png = tf.io.encode_png(levels)
    height, width = levels.shape[:2]
    tensor = tf.stack([tf.as_string(width), tf.as_string(height), png])
    tf.summary.write(tag, tensor, step=step, metadata=IMAGE_METADATA)
