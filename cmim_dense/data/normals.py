"""Surface normals from depth: NYUD-v2's camera and a documented local plane fit.

Camera frame (OpenCV): x right, y down, z forward.  Pixel (u, v) (0-based column and row; the
pixel's centre sits at integer coordinates) with z-depth z (what a depth camera reads, 0 =
missing) is the point ``p = z * ((u - cx) / fx, (v - cy) / fy, 1)``.

**Plane fit.**  The normal at a pixel is that of the total-least-squares plane through the 3D
points of the valid pixels in the ``window`` x ``window`` square centred on it: the eigenvector
of the smallest eigenvalue of their 3x3 covariance (Hoppe et al., SIGGRAPH 1992).  For all pixels
at once, the window means of x, y, z and of their six products come from box filters (pixels
outside the frame or without depth add nothing), ``cov = E[p p^T] - E[p] E[p]^T`` in float64,
and each 3x3 eigenproblem is solved in closed form: the smallest eigenvalue by the trigonometric
formula of Smith (Commun. ACM 4(4), 1961), its eigenvector as the largest cross product of two
rows of ``cov - lambda I`` (Kopp, 2008) -- the vector ``numpy.linalg.eigh`` gives, several times
faster.  The normal is turned towards the camera (``n . p < 0``) and is unit length; it is
(0, 0, 0) = invalid where the centre pixel has no depth, where fewer than half of the window's
pixels inside the frame have depth, or where those points do not span a plane.

**Window.**  13 px at 640 wide, scaled with the frame width (odd, at least 3: 3 px at 128 wide),
so that it covers the same part of the scene at every resolution.  Chosen on an assumed model
of the Kinect's depth quantisation (disparity rounded to 1/8 px; 582.6 px depth focal length,
7.5 cm baseline): over 24 planes 1.5-3.5 m away turned 0-60 degrees, the fit's mean error is 17.6 / 6.9
/ 3.3 / 2.3 degrees for windows of 5 / 9 / 13 / 15 px (docs/nyud.md).  A larger window blurs
more: the fit mixes surfaces up to ``window // 2`` px (6 px at 640 wide) from a crease or an
occlusion edge, where its normal is not that of either surface.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import uniform_filter

WINDOW_640 = 13  # plane-fit window (pixels) at 640 wide
MIN_VALID = 0.5  # fraction of the window's in-frame pixels that must have depth
FRAME = "camera: x right, y down, z forward; unit vectors towards the camera; (0, 0, 0) = invalid"


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics (pixels) of a ``width`` x ``height`` frame; (cx, cy) in 0-based pixel
    coordinates, pixel (u, v)'s centre at (u, v)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def scaled(self, width: int, height: int) -> Intrinsics:
        """The same camera with its frame resized to ``width`` x ``height``: focal lengths scale with
        their axis, and so does the principal point measured from the frame's corner (pixel u's
        centre is u + 0.5 from the edge)."""
        return Intrinsics(self.fx * width / self.width, self.fy * height / self.height,
                          (self.cx + 0.5) * width / self.width - 0.5, (self.cy + 0.5) * height / self.height - 0.5,
                          width, height)

    def rays(self) -> np.ndarray:
        """(3, H, W) float64 ``((u - cx) / fx, (v - cy) / fy, 1)``: pixel (u, v) at z-depth z is ``z * ray``."""
        v, u = np.mgrid[0:self.height, 0:self.width].astype(np.float64)
        return np.stack([(u - self.cx) / self.fx, (v - self.cy) / self.fy, np.ones_like(u)])


# NYUD-v2's RGB camera (the toolbox's camera_params.m; its principal point is MATLAB's 1-based one)
NYUD_RGB = Intrinsics(fx=518.858, fy=519.470, cx=325.582 - 1, cy=253.736 - 1, width=640, height=480)


def plane_fit_window(width: int) -> int:
    """The plane-fit window for frames ``width`` pixels wide: WINDOW_640 scaled, odd, at least 3."""
    return max(3, 2 * round((WINDOW_640 * width / 640 - 1) / 2) + 1)


def normals_from_depth(depth: np.ndarray, intrinsics: Intrinsics, window: int | None = None) -> np.ndarray:
    """(H, W, 3) float32 unit normals of ``depth`` (H, W) metres (0 = missing) by the local plane
    fit of the module docstring over ``window`` x ``window`` pixels (default :func:`plane_fit_window`)."""
    if depth.shape != (intrinsics.height, intrinsics.width):
        raise ValueError(f"depth of shape {depth.shape} does not match the {intrinsics.width}x{intrinsics.height} "
                         "camera")
    window = plane_fit_window(intrinsics.width) if window is None else window
    if window < 3 or window % 2 == 0:
        raise ValueError(f"the plane-fit window must be odd and at least 3, got {window}")
    z = np.asarray(depth, dtype=np.float64)
    valid = np.isfinite(z) & (z > 0)
    points = intrinsics.rays() * np.where(valid, z, 0.0)

    def mean(a: np.ndarray) -> np.ndarray:  # window mean, zeros outside the frame
        return uniform_filter(a, window, mode="constant")

    inside, count = mean(np.ones_like(z)), mean(valid.astype(np.float64))
    n = np.maximum(count, 1e-12)
    centre = [mean(points[i]) / n for i in range(3)]
    cov = np.empty((3, 3) + z.shape)
    for i in range(3):
        for j in range(i, 3):
            cov[i, j] = cov[j, i] = mean(points[i] * points[j]) / n - centre[i] * centre[j]
    normal, determined = smallest_eigenvectors(cov)
    normal *= np.where((normal * points).sum(axis=0) > 0, -1.0, 1.0)
    normal[:, ~(valid & determined & (count >= MIN_VALID * inside))] = 0.0
    return np.ascontiguousarray(normal.transpose(1, 2, 0), dtype=np.float32)


def smallest_eigenvectors(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit eigenvectors (3, ...) of the smallest eigenvalue of symmetric 3x3 matrices ``cov``
    (3, 3, ...), and where they are determined (the two larger eigenvalues clear of it)."""
    q = np.trace(cov) / 3
    off = cov[0, 1] ** 2 + cov[0, 2] ** 2 + cov[1, 2] ** 2
    p = np.sqrt(((cov[0, 0] - q) ** 2 + (cov[1, 1] - q) ** 2 + (cov[2, 2] - q) ** 2 + 2 * off) / 6)
    eye = np.eye(3).reshape(3, 3, *([1] * q.ndim))
    shifted = (cov - q * eye) / np.where(p > 0, p, 1.0)
    r = np.clip(_det3(shifted) / 2, -1.0, 1.0)
    smallest = q + 2 * p * np.cos(np.arccos(r) / 3 + 2 * np.pi / 3)
    rows = cov - smallest * eye
    crosses = np.stack([np.cross(rows[0], rows[1], axis=0), np.cross(rows[0], rows[2], axis=0),
                        np.cross(rows[1], rows[2], axis=0)])
    squares = np.einsum("kc...,kc...->k...", crosses, crosses)
    best = squares.argmax(axis=0)
    vector = np.take_along_axis(crosses, best[None, None], axis=0)[0]
    length = np.sqrt(np.take_along_axis(squares, best[None], axis=0)[0])
    determined = (p > 0) & (length > 1e-10 * (3 * q) ** 2)
    return vector / np.where(determined, length, 1.0), determined


def _det3(m: np.ndarray) -> np.ndarray:
    """Determinants of 3x3 matrices (3, 3, ...)."""
    return (m[0, 0] * (m[1, 1] * m[2, 2] - m[1, 2] * m[2, 1]) - m[0, 1] * (m[1, 0] * m[2, 2] - m[1, 2] * m[2, 0])
            + m[0, 2] * (m[1, 0] * m[2, 1] - m[1, 1] * m[2, 0]))
