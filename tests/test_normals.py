"""Surface normals: the local plane fit."""

import numpy as np
import pytest

from cmim_dense.data.normals import NYUD_RGB, Intrinsics, normals_from_depth, smallest_eigenvectors


def _angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Degrees between the (..., 3) unit vectors a and b."""
    return np.degrees(np.arccos(np.clip((a.astype(np.float64) * b).sum(-1), -1.0, 1.0)))


def _plane_depth(normal: np.ndarray, distance: float, camera: Intrinsics) -> np.ndarray:
    """z-depth of the plane n . p = -distance (n towards the camera) seen through ``camera``."""
    return (-distance / np.einsum("c,chw->hw", normal, camera.rays())).astype(np.float32)


def test_closed_form_eigenvectors_equal_lapack() -> None:
    points = np.random.default_rng(0).normal(size=(3, 5, 200))
    cov = np.einsum("ikn,jkn->ijn", points, points)
    vectors, determined = smallest_eigenvectors(cov)
    reference = np.linalg.eigh(cov.transpose(2, 0, 1))[1][:, :, 0]
    assert determined.all()
    np.testing.assert_allclose(np.abs((vectors.T * reference).sum(1)), 1.0, atol=1e-12)


def test_plane_fit_recovers_a_tilted_plane_towards_the_camera() -> None:
    normal = np.array([0.3, -0.5, -0.8]) / np.linalg.norm([0.3, -0.5, -0.8])
    depth = _plane_depth(normal, 2.0, NYUD_RGB)
    assert 1.0 < depth.min() and depth.max() < 10.0
    depth[100:140, 200:260] = 0  # a hole
    depth[300, 300] = 0  # a missing pixel among valid ones
    depth[400:, :60] = 0
    depth[420, 30] = 2.5  # an isolated measurement: too few valid neighbours
    fitted = normals_from_depth(depth, NYUD_RGB)
    assert fitted.shape == (480, 640, 3) and fitted.dtype == np.float32
    valid = (fitted != 0).any(-1)
    assert not valid[depth == 0].any() and not valid[420, 30]
    assert valid.sum() > 0.95 * (depth > 0).sum()
    assert _angles(fitted[valid], normal).max() < 0.5
    np.testing.assert_allclose(np.linalg.norm(fitted[valid], axis=-1), 1.0, atol=1e-6)
    # the same plane fitted from its far side would be the same; n . p < 0 everywhere
    assert ((fitted * NYUD_RGB.rays().transpose(1, 2, 0)).sum(-1)[valid] < 0).all()
    with pytest.raises(ValueError, match="does not match"):
        normals_from_depth(depth[:-1], NYUD_RGB)


def test_the_window_averages_out_depth_quantisation() -> None:
    """A wall 2.5 m away turned 40 degrees, its depth quantised as the Kinect's (1/8 px of disparity):
    the 13-px window's error is a few degrees, the 9-px one's twice that (docs/nyud.md)."""
    normal = np.array([np.sin(np.radians(40)), 0.0, -np.cos(np.radians(40))])
    depth = _plane_depth(normal, 2.5, NYUD_RGB)
    focal_baseline = 582.624 * 0.075
    quantised = (focal_baseline / (np.round(focal_baseline / depth * 8) / 8)).astype(np.float32)
    errors = {}
    for window in (9, 13):
        fitted = normals_from_depth(quantised, NYUD_RGB, window)
        errors[window] = _angles(fitted[(fitted != 0).any(-1)], normal).mean()
    assert errors[13] < 5.0 and errors[9] > 1.5 * errors[13]
