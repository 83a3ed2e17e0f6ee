"""Colours of the NYUD-v2 segmentation classes (40 and 13), void in black.

Class ``k`` (0-based) takes the colour whose red, green and blue bits interleave the bits of
``k + 1`` (most significant colour bits first), the scheme PASCAL VOC made familiar: every
colour is distinct, deterministic, and none is black, which stays reserved for void (255).
"""

from __future__ import annotations

import numpy as np

from ..data.nyud_meta import IGNORE_INDEX, nyud_meta, require_class_count

VOID_COLOUR = (0, 0, 0)


def nyud_palette(classes: int) -> np.ndarray:
    """(classes, 3) uint8 RGB colours of the 0-based NYUD-v2 class ids (``classes`` 40 or 13)."""
    colours = np.zeros((require_class_count(classes), 3), dtype=np.uint8)
    for index in range(classes):
        code = index + 1
        for level in range(8):
            for channel in range(3):
                colours[index, channel] |= ((code >> channel) & 1) << (7 - level)
            code >>= 3
    return colours


def class_names(classes: int) -> tuple[str, ...]:
    """The NYUD-v2 class names in id order (from the shipped meta-data)."""
    return nyud_meta().class_names(classes)


def colorize(labels: np.ndarray, classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(H, W) 0-based class ids -> (H, W, 3) uint8 RGB; ``ignore_index`` is black.

    Any other id outside 0..classes-1 is an error (it would mean the wrong class count).
    """
    labels = np.asarray(labels)
    valid = labels != ignore_index
    if valid.any() and (labels[valid].min() < 0 or labels[valid].max() >= classes):
        raise ValueError(f"labels hold ids outside 0..{classes - 1} (and {ignore_index} = void)")
    table = np.vstack([nyud_palette(classes), np.array([VOID_COLOUR], dtype=np.uint8)])
    return table[np.where(valid, labels, classes).astype(np.int64)]
