"""What the scanner adds to the phantom: partial-volume blur and CT-like correlated noise."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def smoothing_noise_gain(sigma_vox: tuple[float, ...]) -> float:
    """Factor by which Gaussian smoothing with ``sigma_vox`` shrinks white-noise SD."""
    gain = 1.0
    for sg in sigma_vox:
        if sg > 0:
            delta = np.zeros(41)
            delta[20] = 1.0
            w = ndimage.gaussian_filter1d(delta, sg, mode="constant")
            gain *= float(np.sqrt(np.sum(w**2)))
    return gain


def add_ct_noise(
    hu: np.ndarray, noise_sd_hu: float, sigma_vox: tuple[float, ...], rng: np.random.Generator
) -> np.ndarray:
    """Slightly blur (partial volume) and add correlated Gaussian noise of SD ``noise_sd_hu``.

    The noise is drawn white, scaled up by the smoothing gain and blurred with the image,
    so the final noise SD is about ``noise_sd_hu`` with a CT-like grain.
    """
    gain = smoothing_noise_gain(sigma_vox)
    noisy = hu + rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(noise_sd_hu / gain)
    return ndimage.gaussian_filter(noisy, sigma_vox, mode="nearest", truncate=3.0).astype(np.float32)
