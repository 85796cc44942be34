"""Connected-component clean-up of a label map: pure numpy/scipy, no files; the input is never changed.

``keep_largest_component`` (the config's ``largest_component``) and ``apply_postprocessing`` (a
``postprocessing.json`` decision). The rule:
docs/explanation/internals.md#connected-component-clean-up-predictionpostprocesspy.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from dataset.contract.postprocessing import PostprocessingDecision
from prediction.cases import PredictError

CONNECTIVITY_26 = np.ones((3, 3, 3), bool)
PANCREAS, TUMOUR = 1, 2


def largest_component_mask(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean mask (the mask itself if it has <= 1)."""
    components, n = ndimage.label(mask, structure=CONNECTIVITY_26)
    if n <= 1:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def keep_largest_component(labels: np.ndarray, mode: str) -> np.ndarray:
    """Remove all but the largest 26-connected component ("foreground": of all non-zero
    labels together, so a tumour touching the gland survives; "per_class": of each label)."""
    if mode == "off":
        return labels
    out = labels.copy()
    if mode == "foreground":
        mask = labels > 0
        out[mask & ~largest_component_mask(mask)] = 0
    elif mode == "per_class":
        for value in np.unique(labels):
            if value:
                mask = labels == value
                out[mask & ~largest_component_mask(mask)] = 0
    else:
        raise PredictError(f"unknown largest_component mode {mode!r}")
    return out


def keep_largest_gland(labels: np.ndarray) -> np.ndarray:
    """Step 1 (module docstring): labels 1 and 2 outside the largest foreground component -> 0."""
    return keep_largest_component(labels, "foreground")


def keep_largest_tumour(labels: np.ndarray) -> np.ndarray:
    """Step 2 (module docstring): label 2 outside the largest tumour component -> 1 inside
    gland tissue (a foreground component holding label 1), else 0."""
    tumour = labels == TUMOUR
    removed = tumour & ~largest_component_mask(tumour)
    out = labels.copy()
    if not removed.any():
        return out
    components, _ = ndimage.label(labels > 0, structure=CONNECTIVITY_26)
    with_gland = np.unique(components[labels == PANCREAS])
    out[removed] = 0
    out[removed & np.isin(components, with_gland)] = PANCREAS
    return out


_STEPS = {"pancreas": keep_largest_gland, "tumour": keep_largest_tumour}


def apply_postprocessing(labels: np.ndarray, decision: PostprocessingDecision) -> np.ndarray:
    """The decision's clean-up of a (z, y, x) label map, as the module docstring defines it."""
    out = labels.copy()
    for region in decision.regions:  # pancreas first, then tumour
        out = _STEPS[region](out)
    return out


__all__ = [
    "CONNECTIVITY_26",
    "apply_postprocessing",
    "keep_largest_component",
    "keep_largest_gland",
    "keep_largest_tumour",
    "largest_component_mask",
]
