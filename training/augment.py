"""Online spatial and intensity transforms of one training patch, as TensorFlow graph ops.

Every function here is deterministic given its parameters; the random draws are made in
``training.pipeline.draw_augment_params`` from a stateless seed, so a draw is reproducible
(and a resumed run sees the same transforms). Arrays are (z, y, x).

* ``rotate_scale``: one in-plane (y, x) rotation and isotropic in-plane scaling about the patch
  centre, the same for every slice; the image bilinear, the label nearest neighbour (never a new
  class); outside the patch both are mirrored (``REFLECT``) so no artificial edge appears.
* ``gaussian_blur``: separable 3D Gaussian, reflected borders.
* ``simulate_low_resolution``: nearest-neighbour down to ``zoom`` of every edge, cubic back up
  (nnU-Net's SimulateLowResolutionTransform: orders 0 and 3).
* ``gamma``: ``image ** gamma`` on [0, 1] (the image is already there, so no rescaling).

The probabilities and ranges: ``training.config.AugmentConfig``; what they cost per patch:
``bench/pipeline.py --augment-table`` (docs/benchmarks.md).
"""

from __future__ import annotations

import math

import tensorflow as tf

BLUR_TRUNCATE = 3.0  # kernel half-width in sigmas (SciPy's gaussian_filter uses 4; 3 keeps 99.7%)


def rotation_scale_matrix(angle, scale, height, width):
    """The 8 projective-transform coefficients mapping an output (x, y) to its input point:
    rotation by ``angle`` (radians) and magnification ``scale`` about the centre of an
    ``height`` x ``width`` plane (``tf.raw_ops.ImageProjectiveTransformV3``'s convention)."""
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    cx = (tf.cast(width, tf.float32) - 1.0) / 2.0
    cy = (tf.cast(height, tf.float32) - 1.0) / 2.0
    a0, a1, b0, b1 = cos, -sin, sin, cos
    a2 = cx - a0 * cx - a1 * cy
    b2 = cy - b0 * cx - b1 * cy
    return tf.stack([a0, a1, a2, b0, b1, b2, 0.0, 0.0])


def _transform_slices(volume, matrix, interpolation: str):
    """``volume`` (z, y, x) with every slice mapped by ``matrix``; dtype kept."""
    shape = tf.shape(volume)
    images = volume[..., None]
    transforms = tf.tile(matrix[None], [shape[0], 1])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=shape[1:3],
        fill_value=0.0,
        interpolation=interpolation,
        fill_mode="REFLECT",
    )
    return out[..., 0]


def rotate_scale(image, label, angle, scale):
    """Rotate (radians) and magnify every axial slice of ``image`` (float) and ``label``
    (integer classes) by the same in-plane transform: bilinear for the image, nearest for the label."""
    shape = tf.shape(image)
    matrix = rotation_scale_matrix(angle, scale, shape[1], shape[2])
    return _transform_slices(image, matrix, "BILINEAR"), _transform_slices(label, matrix, "NEAREST")


def gaussian_kernel(sigma, radius: int):
    """A normalised 1D Gaussian of ``2 * radius + 1`` taps for a (traced) ``sigma``."""
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    weights = tf.exp(-0.5 * tf.square(x / sigma))
    return weights / tf.reduce_sum(weights)


def blur_radius(max_sigma: float) -> int:
    """Taps on each side of the kernel for the largest sigma drawn."""
    return max(1, math.ceil(BLUR_TRUNCATE * max_sigma))


def gaussian_blur(image, sigma, radius: int):
    """Separable Gaussian smoothing of a (z, y, x) float image, borders reflected."""
    kernel = gaussian_kernel(sigma, radius)
    x = image[None, ..., None]
    for axis in range(3):
        pad = [[0, 0]] * 5
        pad[axis + 1] = [radius, radius]
        x = tf.pad(x, pad, mode="REFLECT")
        shape = [1, 1, 1, 1, 1]
        shape[axis] = 2 * radius + 1
        x = tf.nn.conv3d(x, tf.reshape(kernel, shape), strides=[1] * 5, padding="VALID")
    return x[0, ..., 0]


def _resize_two_axes(volume, size, method: str):
    """Resize axes 1 and 2 of a (n, a, b) float volume to ``size`` (two ints)."""
    return tf.image.resize(volume[..., None], size, method=method)[..., 0]


def simulate_low_resolution(image, zoom):
    """Nearest-neighbour down to ``zoom`` (0, 1] of every edge, cubic back to the shape."""
    shape = tf.shape(image)
    small = tf.maximum(tf.cast(tf.round(tf.cast(shape, tf.float32) * zoom), tf.int32), 1)
    x = _resize_two_axes(image, small[1:3], "nearest")  # in-plane down: (z, y', x')
    x = tf.transpose(x, [1, 0, 2])  # (y', z, x')
    x = _resize_two_axes(x, tf.stack([small[0], small[2]]), "nearest")  # z down
    x = _resize_two_axes(x, tf.stack([shape[0], small[2]]), "bicubic")  # z back up
    x = tf.transpose(x, [1, 0, 2])  # (z, y', x')
    return _resize_two_axes(x, shape[1:3], "bicubic")


def gamma(image, value):
    """``image ** value`` on [0, 1] (clipped first: noise may have left it slightly outside)."""
    return tf.pow(tf.clip_by_value(image, 0.0, 1.0), value)


__all__ = [
    "blur_radius",
    "gamma",
    "gaussian_blur",
    "gaussian_kernel",
    "rotate_scale",
    "rotation_scale_matrix",
    "simulate_low_resolution",
]
