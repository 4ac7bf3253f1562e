"""Common corruptions (after Hendrycks & Dietterich, 2019): Gaussian noise, blur, and contrast.

Each is a pure function of a float batch (N, C, H, W) or (N, H, W, C) and a severity, clipped to the
data's valid range. Noise is seeded so an audit is reproducible.

    >>> x = np.full((2, 1, 8, 8), 0.5, dtype=np.float32)
    >>> float(contrast(x, 0.5).std()), gaussian_noise(x, 0.1, seed=0).shape
    (0.0, (2, 1, 8, 8))
"""

from __future__ import annotations

import numpy as np

# severities an audit uses by default: noise std, blur sigma (pixels), contrast factor (1 = unchanged)
NOISE_SIGMAS = (0.05, 0.1, 0.2, 0.3)
BLUR_SIGMAS = (0.5, 1.0, 1.5)
CONTRAST_FACTORS = (0.5, 0.3, 0.1)


def spatial_axes(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """The (H, W) axes of an image batch (N, C, H, W) or (N, H, W, C) with 1 or 3 channels, else None."""
    if len(shape) != 4:
        return None
    if shape[1] in (1, 3) and min(shape[2:]) >= 4:
        return (2, 3)
    if shape[3] in (1, 3) and min(shape[1:3]) >= 4:
        return (1, 2)
    return None


def gaussian_noise(x: np.ndarray, sigma: float, *, seed: int = 0, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, sigma, size=x.shape).astype(x.dtype)
    return np.clip(x + noise, low, high)


def blur(x: np.ndarray, sigma: float, *, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """Gaussian blur over the image plane only (not across channels or the batch)."""
    from scipy.ndimage import gaussian_filter

    axes = spatial_axes(x.shape)
    if axes is None:
        raise ValueError(f"blur needs an image batch (N, C, H, W) or (N, H, W, C). Received: shape={x.shape}")
    sigmas = [0.0] * x.ndim
    for axis in axes:
        sigmas[axis] = sigma
    return np.clip(gaussian_filter(x, sigma=sigmas, mode="nearest"), low, high).astype(x.dtype)


def contrast(x: np.ndarray, factor: float, *, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """Pull every image towards its own mean: factor 1 keeps it, 0 makes it flat grey."""
    axes = tuple(range(1, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    return np.clip((x - mean) * factor + mean, low, high).astype(x.dtype)
