"""The reference the rendered-image tests (unit) compare pixels with: PS3.3's pseudo-code
written out one value at a time.

`reference_voi` takes one value through a VOI LUT function: LINEAR (PS3.3 C.11.2.1.2.1),
LINEAR_EXACT and SIGMOID (C.11.2.1.3); `reference_gray` renders stored grey values to 8 bits,
value by value: rescale slope and intercept, the `Window`, and for MONOCHROME1 the inversion.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dicomrst.imaging.params import Window


def reference_voi(x: float, c: float, w: float, function: str, ymin: float = 0, ymax: float = 255) -> float:
    if function == "LINEAR":
        if x <= c - 0.5 - (w - 1) / 2:
            return ymin
        if x > c - 0.5 + (w - 1) / 2:
            return ymax
        return ((x - (c - 0.5)) / (w - 1) + 0.5) * (ymax - ymin) + ymin
    if function == "LINEAR_EXACT":
        if x <= c - w / 2:
            return ymin
        if x > c + w / 2:
            return ymax
        return ((x - c) / w + 0.5) * (ymax - ymin) + ymin
    assert function == "SIGMOID"
    exponent = -4 * (x - c) / w
    if exponent > 700:  # exp() overflows a float; the value is ymin to the last digit
        return ymin
    return (ymax - ymin) / (1 + math.exp(exponent)) + ymin


def reference_gray(stored: Any, slope: float, intercept: float, window: Window, monochrome1: bool) -> Any:
    out = np.empty(stored.shape, dtype=np.uint8)
    for index, value in np.ndenumerate(stored):
        y = reference_voi(float(value) * slope + intercept, window.center, window.width, window.function)
        level = math.floor(y + 0.5)
        out[index] = 255 - level if monochrome1 else level
    return out
