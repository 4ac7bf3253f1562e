"""Heatmaps: an attribution overlaid on its input, as a PNG.

Red marks features that push the explained class up, blue those that push it down; the stronger,
the more opaque. The input shows through in grey. Small inputs (an 8x8 digit) are scaled up with
nearest-neighbour so each pixel stays a crisp square. numpy and Pillow only: no plotting library
on the serving path.

    >>> png = render_heatmap(np.random.rand(1, 8, 8), np.random.randn(1, 8, 8))
    >>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
"""

from __future__ import annotations

import io

import numpy as np

_RED = np.array([220, 38, 38], dtype=np.float32)
_BLUE = np.array([37, 99, 235], dtype=np.float32)
_MIN_SIDE_PX = 256


def _to_2d(array: np.ndarray) -> np.ndarray:
    """An item as one 2-D plane: images sum their channels; vectors become one row."""
    a = np.asarray(array, dtype=np.float32)
    if a.ndim == 0:
        return a.reshape(1, 1)
    if a.ndim == 1:
        return a.reshape(1, -1)
    if a.ndim == 3:
        channel_axis = 0 if a.shape[0] in (1, 3) else (2 if a.shape[2] in (1, 3) else 0)
        return a.sum(axis=channel_axis)
    if a.ndim == 2:
        return a
    return a.reshape(a.shape[0], -1)


def render_heatmap(item: np.ndarray, attribution: np.ndarray, *, min_side_px: int = _MIN_SIDE_PX) -> bytes:
    """A PNG of `attribution` over `item` (both one input: (C, H, W), (H, W, C), (H, W) or (F,))."""
    from PIL import Image

    base = _to_2d(item)
    heat = _to_2d(attribution)
    if base.shape != heat.shape:
        base = np.zeros_like(heat)
    span = float(base.max() - base.min())
    grey = (base - base.min()) / span if span > 0 else np.zeros_like(base)
    scale = float(np.abs(heat).max())
    strength = np.abs(heat) / scale if scale > 0 else np.zeros_like(heat)
    alpha = (0.85 * strength)[..., None]  # (H, W, 1)
    color = np.where((heat >= 0)[..., None], _RED, _BLUE)  # (H, W, 3)
    grey_rgb = (255.0 * (0.25 + 0.6 * grey))[..., None].repeat(3, axis=-1)
    pixels = (grey_rgb * (1 - alpha) + color * alpha).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)  # (H, W, 3) uint8 -> RGB
    height, width = pixels.shape[:2]
    # scale the short side up to min_side_px, but keep the long side within 4x that (a 1 x 64 strip)
    factor = max(1, min(-(-min_side_px // max(1, min(height, width))), 4 * min_side_px // max(height, width)))
    if factor > 1:
        image = image.resize((width * factor, height * factor), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=1)
    return buffer.getvalue()


def render_heatmaps(inputs: np.ndarray, attributions: np.ndarray) -> list[bytes]:
    """One PNG per row of a batch."""
    return [render_heatmap(x, a) for x, a in zip(inputs, attributions, strict=True)]
