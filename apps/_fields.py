"""Synthetic gridded fields in numpy, shared by the example apps that make their data with it.

The downscaling and post-processing apps (AP1, AP4's TensorFlow variant, AP5) build their
temperatures, orographies and forecast errors from `smooth_fields`, and the downscaling apps
stand in for a coarse model's grid with `coarsen`. Both are deterministic given the random
generator, so an app's data depends only on its ``--seed`` and size.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["coarsen", "smooth_fields"]


def smooth_fields(rng: np.random.Generator, count: int, side: int, length_px: float) -> np.ndarray:
    """``count`` square random fields, ``side`` points a side, correlated over ``length_px``.

    White noise filtered by a Gaussian spectrum (periodic at the edges), scaled to unit
    standard deviation over all the fields together; a field much smaller than its correlation
    length is close to one random constant.

    Returns:
        Float64 fields of shape ``(count, side, side)``.
    """
    noise = rng.standard_normal((count, side, side))
    k = np.fft.fftfreq(side)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    spectrum = np.exp(-2 * (math.pi * length_px) ** 2 * k2)
    fields = np.fft.ifft2(np.fft.fft2(noise) * spectrum).real
    return fields / fields.std()


def coarsen(fields: np.ndarray, factor: int) -> np.ndarray:
    """Block means over ``factor`` x ``factor`` points, repeated back onto the fine grid: what a
    model ``factor`` times coarser sees, on the fine grid.

    Args:
        fields: ``(count, side, side)``, ``side`` a multiple of ``factor``.
        factor: fine grid points per coarse grid point along each axis.
    """
    n, side, _ = fields.shape
    blocks = side // factor
    coarse = fields.reshape(n, blocks, factor, blocks, factor).mean(axis=(2, 4))
    return coarse.repeat(factor, axis=1).repeat(factor, axis=2)
