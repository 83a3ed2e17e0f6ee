"""Surface normals: the plane fit, the synthetic rooms' exact normals, the prepared layout, the
dataset and transform, and the angular-error meter."""

import json
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import maximum_filter, minimum_filter

from cmim_dense.data import NYUDv2
from cmim_dense.data.normals import NYUD_RGB, Intrinsics, normals_from_depth, plane_fit_window, smallest_eigenvectors
from cmim_dense.data.nyud import JointTransform
from cmim_dense.data.nyud_mat import write_labeled_mat
from cmim_dense.data.nyud_prepare import prepare_nyud, prepared_meta
from cmim_dense.data.synthetic_nyud import (
    FOCAL_640,
    camera_rays,
    ensure_synthetic_nyud,
    raw_ids,
    render_scene,
    synthetic_camera,
)
from cmim_dense.metrics import NormalsMeter

from .test_nyud_data import _frames, _sample, _split


def _angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Degrees between the (..., 3) unit vectors a and b."""
    return np.degrees(np.arccos(np.clip((a.astype(np.float64) * b).sum(-1), -1.0, 1.0)))


def _plane_depth(normal: np.ndarray, distance: float, camera: Intrinsics) -> np.ndarray:
    """z-depth of the plane n . p = -distance (n towards the camera) seen through ``camera``."""
    return (-distance / np.einsum("c,chw->hw", normal, camera.rays())).astype(np.float32)


def test_intrinsics_scale_with_the_frame_and_match_the_renderer() -> None:
    assert NYUD_RGB.scaled(640, 480) == NYUD_RGB
    half = NYUD_RGB.scaled(320, 240)
    assert (half.fx, half.fy) == pytest.approx((518.858 / 2, 519.470 / 2))
    assert (half.cx + 0.5, half.cy + 0.5) == pytest.approx(((324.582 + 0.5) / 2, (252.736 + 0.5) / 2))
    built_in = Intrinsics(FOCAL_640, FOCAL_640, 319.5, 239.5, 640, 480).scaled(128, 96)
    camera = synthetic_camera(96, 128)
    for name in ("fx", "fy", "cx", "cy"):
        assert getattr(camera, name) == pytest.approx(getattr(built_in, name), abs=1e-9)
    assert (camera.cx, camera.cy, camera.width, camera.height) == (63.5, 47.5, 128, 96)
    np.testing.assert_array_equal(camera_rays(96, 128), camera.rays())  # the renderer's rays are the record's
    assert (plane_fit_window(640), plane_fit_window(320), plane_fit_window(128)) == (13, 7, 3)


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


def test_rendered_normals_are_exact_unit_and_oriented() -> None:
    ids = raw_ids()
    for seed in range(3):
        frame = render_scene(96, 128, np.random.default_rng(seed))
        pitch = np.random.default_rng(seed).uniform(0.0, 0.25)  # render_scene's first draw
        normals = frame["normals"]
        assert normals.shape == (96, 128, 3) and normals.dtype == np.float32
        valid = (normals != 0).any(-1)
        np.testing.assert_array_equal(valid, frame["raw_depth"] > 0)
        np.testing.assert_allclose(np.linalg.norm(normals[valid], axis=-1), 1.0, atol=1e-6)
        rays = synthetic_camera(96, 128).rays().transpose(1, 2, 0)
        assert ((normals * rays).sum(-1)[valid] < 0).all()  # towards the camera
        floor = valid & (frame["labels"] == ids["floor"])
        up = np.array([0.0, -np.cos(pitch), -np.sin(pitch)])  # -y, tilted by the pitch
        np.testing.assert_allclose(normals[floor], np.broadcast_to(up, normals[floor].shape), atol=1e-6)
        back = np.array([0.0, np.sin(pitch), -np.cos(pitch)])
        wall = normals[valid & (frame["labels"] == ids["wall"])]
        kinds = [np.abs(wall - v).max(-1) < 1e-6 for v in (back, (1.0, 0.0, 0.0), (-1.0, 0.0, 0.0))]
        assert (kinds[0] | kinds[1] | kinds[2]).all() and kinds[0].any()


def test_rendered_normals_agree_with_the_plane_fit_of_their_depth() -> None:
    """Away from edges (the window on one surface: one label, one exact normal) the fit of the
    rendered depth finds the exact normal up to float32 rounding (measured over 20 frames: median
    0.000, 99th percentile 0.018 degrees); over every valid pixel, edges included, the median is
    0.000 and 10 % of the pixels, within a window of an edge, are more than 1.4 degrees off."""
    camera, window = synthetic_camera(96, 128), plane_fit_window(128)
    interior_errors, all_errors = [], []
    rng = np.random.default_rng(0)
    for _ in range(4):
        frame = render_scene(96, 128, rng)
        exact, labels = frame["normals"], frame["labels"]
        fitted = normals_from_depth(frame["depth"], camera)
        valid = (exact != 0).any(-1) & (fitted != 0).any(-1)
        one_surface = (labels > 0) & (minimum_filter(labels, window) == maximum_filter(labels, window))
        for c in range(3):
            one_surface &= (minimum_filter(np.where(valid, exact[..., c], np.inf), window)
                            == maximum_filter(np.where(valid, exact[..., c], -np.inf), window))
        errors = _angles(exact, fitted)
        interior_errors.append(errors[valid & one_surface])
        all_errors.append(errors[valid])
    interior, everywhere = np.concatenate(interior_errors), np.concatenate(all_errors)
    assert len(interior) > 0.6 * len(everywhere)
    assert np.median(interior) < 0.01 and np.percentile(interior, 99) < 0.05
    assert np.median(everywhere) < 0.01 and (everywhere < 11.25).mean() > 0.9


def _mat_with_depth(tmp_path, raw: bool) -> tuple:
    frames = _frames(4, 24, 32)
    depths = np.stack([_plane_depth(np.array([0.0, -0.6, -0.8]), 1.0, NYUD_RGB.scaled(32, 24))] * 4)
    raw_depths = depths.copy()
    raw_depths[:, 5:9, 10:14] = 0
    mat = tmp_path / "labeled.mat"
    write_labeled_mat(mat, frames["images"], depths, frames["labels"], raw_depths=raw_depths if raw else None)
    return mat, _split(tmp_path / "s.mat", [1, 3], [2, 4]), depths, raw_depths


@pytest.mark.parametrize("raw", [True, False])
def test_prepared_layout_holds_plane_fitted_normals(tmp_path, raw: bool) -> None:
    mat, split, depths, raw_depths = _mat_with_depth(tmp_path, raw)
    out = prepare_nyud(mat, tmp_path / "prepared", split, progress=False)
    stored = np.load(out / "train" / "normals.npy")
    assert stored.shape == (2, 24, 32, 3) and stored.dtype == np.float16
    camera, window = NYUD_RGB.scaled(32, 24), plane_fit_window(32)
    source = raw_depths if raw else depths
    np.testing.assert_array_equal(stored[1], normals_from_depth(source[2], camera, window).astype(np.float16))
    assert (stored[:, 5:9, 10:14] == 0).all() == raw  # invalid where the raw depth is missing
    meta = prepared_meta(out)["normals"]
    assert meta["source"] == ("rawDepths" if raw else "depths") and meta["window"] == window == 3
    assert meta["method"] == "local plane fit" and meta["intrinsics"]["fx"] == pytest.approx(518.858 / 20)
    assert meta["frame"].startswith("camera: x right, y down, z forward")
    sample = NYUDv2(out, "test", normals=True)[0]  # frame 2
    assert sample["normals"].dtype == np.float32 and sample["normals"].shape == (24, 32, 3)
    np.testing.assert_array_equal(sample["normals"], np.load(out / "test" / "normals.npy")[0])
    assert "normals" not in NYUDv2(out, "test")[0]


def test_precomputed_normals_are_copied_and_checked(tmp_path) -> None:
    mat, split, _, _ = _mat_with_depth(tmp_path, raw=True)
    given = np.zeros((4, 24, 32, 3), np.float32)
    given[..., 2] = -np.arange(1, 5)[:, None, None] / 4  # frame k's z component is -k/4
    np.save(tmp_path / "normals.npy", given)
    out = prepare_nyud(mat, tmp_path / "prepared", split, progress=False, normals=tmp_path / "normals.npy")
    np.testing.assert_array_equal(np.load(out / "train" / "normals.npy")[..., 2], given[[0, 2], ..., 2])
    assert prepared_meta(out)["normals"]["method"] == "precomputed"
    np.save(tmp_path / "short.npy", given[:3])
    with pytest.raises(ValueError, match=r"holds normals of shape \(3, 24, 32, 3\), expected \(4, 24, 32, 3\)"):
        prepare_nyud(mat, tmp_path / "other", split, progress=False, normals=tmp_path / "short.npy")


def test_a_layout_from_before_normals_serves_seg_and_depth_and_names_the_fix(tmp_path) -> None:
    mat, split, depths, _ = _mat_with_depth(tmp_path, raw=True)
    out = prepare_nyud(mat, tmp_path / "prepared", split, progress=False)
    meta = json.loads((out / "meta.json").read_text())
    del meta["normals"]
    (out / "meta.json").write_text(json.dumps(meta))
    for split_name in ("train", "test"):
        (out / split_name / "normals.npy").unlink()
    np.testing.assert_array_equal(NYUDv2(out, "train")[0]["depth"], depths[0])
    with pytest.raises(ValueError, match=r"prepared before surface normals existed; prepare it again with "
                                         r"datasets/prepare_nyud.py --force$"):
        NYUDv2(out, "train", normals=True)


def test_synthetic_cache_from_before_normals_is_rebuilt_with_exact_normals(tmp_path) -> None:
    root = ensure_synthetic_nyud(tmp_path, train=3, test=2, height=24, width=32, seed=0)
    assert prepared_meta(root)["normals"]["method"] == "precomputed"
    images = np.load(root / "train" / "images.npy")
    exact = np.load(root.parent / "normals.npy")
    frames = np.load(root / "train" / "frames.npy")
    np.testing.assert_array_equal(np.load(root / "train" / "normals.npy"), exact[frames - 1].astype(np.float16))
    meta = json.loads((root / "meta.json").read_text())
    del meta["normals"]
    (root / "meta.json").write_text(json.dumps(meta))
    assert ensure_synthetic_nyud(tmp_path, train=3, test=2, height=24, width=32, seed=0) == root
    assert "normals" in prepared_meta(root)
    np.testing.assert_array_equal(np.load(root / "train" / "images.npy"), images)


def _sample_with_normals(h: int = 16, w: int = 16) -> dict[str, np.ndarray]:
    sample = _sample(h, w)
    v, u = np.mgrid[0:h, 0:w]
    normals = np.stack([u - w / 2 + 0.5, v - h / 2 + 0.5, -np.full((h, w), 8.0)], axis=-1)
    sample["normals"] = (normals / np.linalg.norm(normals, axis=-1, keepdims=True)).astype(np.float32)
    return sample


def test_joint_transform_flips_normals_with_x_negated_and_pads_with_zero() -> None:
    sample = _sample_with_normals()
    transform = JointTransform((0, 0, 0), (1, 1, 1), crop=(16, 16), scale=(1.0, 1.0))
    flips = 0
    for seed in range(8):
        transform.seed(seed)
        out = transform(sample)
        column = out["image"][1, 0] * 255 / 5  # the image's green channel is 5 u
        flipped = bool(column[0] > column[-1])
        expected = sample["normals"][:, ::-1] * np.array([-1, 1, 1], np.float32) if flipped else sample["normals"]
        assert out["normals"].dtype == torch.float32 and out["normals"].shape == (3, 16, 16)
        torch.testing.assert_close(out["normals"], torch.from_numpy(expected.transpose(2, 0, 1).copy()), rtol=0,
                                   atol=0)
        flips += flipped
    assert 0 < flips < 8
    padded = JointTransform((0, 0, 0), (1, 1, 1), crop=(24, 24), scale=(1.0, 1.0), flip=False)(sample)
    content = padded["label"] != 255
    content |= padded["depth"] > 0
    assert (padded["normals"][:, ~content] == 0).all() and content.sum() == 256
    assert (padded["normals"].norm(dim=0)[content] - 1).abs().max() < 1e-6
    zoomed = JointTransform((0, 0, 0), (1, 1, 1), crop=(8, 8), scale=(2.0, 2.0), flip=False)(sample)
    assert torch.isin(zoomed["normals"][2], torch.from_numpy(sample["normals"][..., 2])).all()  # kept, not scaled


def _unit(degrees: float) -> list[float]:
    """A unit vector at ``degrees`` from (0, 0, 1), in the x-z plane."""
    return [math.sin(math.radians(degrees)), 0.0, math.cos(math.radians(degrees))]


def test_normals_meter_by_hand() -> None:
    meter = NormalsMeter()
    # image 1: errors 0 (a target of float16-like length 0.999), 10 (a prediction of length 2.5) and 20
    # degrees, and a pixel without ground truth; image 2: 29 and 90 degrees and a zero prediction (90)
    pred1 = torch.tensor([[0, 0, 3.0], [2.5 * c for c in _unit(10)], _unit(20), [1.0, 1.0, 1.0]])
    target1 = torch.tensor([[0, 0, 0.999], [0, 0, 1.0], [0, 0, 1.0], [0, 0, 0.0]])
    pred2 = torch.tensor([_unit(29), [0, 1.0, 0], [0, 0, 0.0]])
    target2 = torch.tensor([[0, 0, 1.0]] * 3)
    meter.update(pred1.T.reshape(1, 3, 2, 2), target1.T.reshape(1, 3, 2, 2))
    meter.update(pred2.T.reshape(1, 3, 1, 3), target2.T.reshape(1, 3, 1, 3))
    meter.update(torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2))  # no ground truth: not an image
    errors = [0, 10, 20, 29, 90, 90]
    r = meter.compute()
    assert (r["pixels"], r["images"]) == (6, 2)
    assert r["mean_angle"] == pytest.approx(sum(errors) / 6)
    assert r["median_angle"] == pytest.approx((20 + 29) / 2, abs=0.006)  # half a 0.01-degree bin
    assert r["rmse_angle"] == pytest.approx(math.sqrt(sum(e * e for e in errors) / 6))
    assert (r["within_11_25"], r["within_22_5"], r["within_30"]) == pytest.approx((2 / 6, 3 / 6, 4 / 6))
    assert meter.compute(reduce=False) == r
    odd = NormalsMeter()
    odd.update(pred2.T.reshape(1, 3, 1, 3), target2.T.reshape(1, 3, 1, 3))
    assert odd.compute()["median_angle"] == pytest.approx(90, abs=0.006)
    with pytest.raises(ValueError, match=r"must both be \(N, 3, H, W\)"):
        meter.update(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2))
    with pytest.raises(ValueError, match="no pixel with a ground-truth normal"):
        NormalsMeter().compute()
