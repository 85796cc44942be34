"""How many CPU threads TensorFlow computes with (``pancreas predict --threads``).

TensorFlow fixes its thread pools when its runtime starts (the first op or model): set them before.
One function, so every caller (the CLI, a Dask worker) sets them the same way.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def set_tensorflow_threads(n: int | None) -> int:
    """At most ``n`` threads in each of TensorFlow's intra-op pool (inside one op: a convolution)
    and inter-op pool (independent ops side by side); ``None``: TensorFlow's default (every core).

    Returns the intra-op threads in effect. Once TensorFlow has started it keeps its pools: one
    warning says so, and the count it runs with is returned.
    """
    if n is not None and n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    import tensorflow as tf

    if n is not None:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(n)
            tf.config.threading.set_inter_op_parallelism_threads(n)
        except RuntimeError:
            log.warning(
                "--threads %d: TensorFlow has already started with %d threads and keeps them", n, tensorflow_threads()
            )
    return tensorflow_threads()


def tensorflow_threads() -> int:
    """TensorFlow's intra-op threads: as set, or (0: its default) the cores this process may use."""
    import tensorflow as tf

    from dataset.common.devices import cpu_threads

    return tf.config.threading.get_intra_op_parallelism_threads() or cpu_threads()
