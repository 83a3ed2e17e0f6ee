"""NYUD-v2: shipped meta-data, the v7.3 reader, prepare, the dataset, joint transforms, synthetic scenes."""

from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import torch

from cmim_dense.data import NYUDv2
from cmim_dense.data.nyud import JointTransform
from cmim_dense.data.nyud_mat import LabeledMat, write_labeled_mat
from cmim_dense.data.nyud_meta import derive_meta, nyud_meta, read_split_file
from cmim_dense.data.nyud_prepare import is_prepared, prepare_nyud
from cmim_dense.data.synthetic_nyud import ensure_synthetic_nyud, raw_ids

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "nyuv2"


def test_shipped_meta_follows_the_official_conventions() -> None:
    meta = nyud_meta()
    assert (len(meta.train), len(meta.test)) == (795, 654)
    assert sorted(meta.train + meta.test) == list(range(1, 1450))
    assert len(meta.lut40) == 895 and meta.lut40[0] == 0 and set(meta.lut40[1:]) == set(range(1, 41))
    assert meta.names40[meta.lut40[21] - 1] == "wall" and meta.names40[meta.lut40[11] - 1] == "floor"
    assert meta.names40[meta.lut40[20] - 1] == "otherprop"  # raw "unknown" is a class, not void
    assert list(meta.names13) == sorted(meta.names13) and len(meta.lut13) == 41
    floor_mat = meta.names40.index("floor mat") + 1
    assert meta.names13[meta.lut13[floor_mat] - 1] == "floor"


@pytest.mark.skipif(not SHARED.is_dir(), reason="the official meta-data files are not beside the project")
def test_shipped_meta_equals_the_official_files() -> None:
    assert derive_meta(SHARED) == nyud_meta()


def test_split_file_errors_name_the_problem(tmp_path) -> None:
    import scipy.io

    with pytest.raises(FileNotFoundError, match="expected the official splits.mat"):
        read_split_file(tmp_path / "absent.mat")
    (tmp_path / "torn.mat").write_bytes(b"not matlab")
    with pytest.raises(ValueError, match="not a readable MATLAB file"):
        read_split_file(tmp_path / "torn.mat")
    scipy.io.savemat(tmp_path / "half.mat", {"trainNdxs": np.arange(1, 4)[:, None]})
    with pytest.raises(ValueError, match="lacks testNdxs"):
        read_split_file(tmp_path / "half.mat")
    scipy.io.savemat(tmp_path / "overlap.mat", {"trainNdxs": np.array([[1], [2]]), "testNdxs": np.array([[2], [3]])})
    with pytest.raises(ValueError, match="share 1 frames"):
        read_split_file(tmp_path / "overlap.mat")
    scipy.io.savemat(tmp_path / "ok.mat", {"trainNdxs": np.array([[1], [4]]), "testNdxs": np.array([[2], [3]])})
    assert read_split_file(tmp_path / "ok.mat") == ((1, 4), (2, 3))


def _frames(n: int, h: int = 8, w: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 200, (n, h, w, 3), dtype=np.uint8)
    images[:, 0, 0] = (255, 0, 0)  # a red marker in the top-left corner of every frame
    depths = (np.arange(n * h * w, dtype=np.float32).reshape(n, h, w) + 1) / 100
    labels = rng.integers(0, 895, (n, h, w))
    labels[:, -1, -1] = 0
    return {"images": images, "depths": depths, "labels": labels}


def _split(path: Path, train: list[int], test: list[int]) -> Path:
    scipy.io.savemat(str(path), {"trainNdxs": np.array(train, np.uint16)[:, None],
                                 "testNdxs": np.array(test, np.uint16)[:, None]})
    return path


def test_v73_layout_is_read_upright_and_prepared_through_both_mappings(tmp_path) -> None:
    f = _frames(5)
    mat = tmp_path / "labeled.mat"
    write_labeled_mat(mat, f["images"], f["depths"], f["labels"], raw_depths=f["depths"] * 0,
                      names=nyud_meta().raw_names)
    with h5py.File(mat, "r") as raw:  # what h5py sees: MATLAB's axes reversed
        assert raw["images"].shape == (5, 3, 12, 8) and raw["labels"].shape == (5, 12, 8)
    assert open(mat, "rb").read(19) == b"MATLAB 7.3 MAT-file"
    out = prepare_nyud(mat, tmp_path / "prepared", _split(tmp_path / "s.mat", [4, 2], [1, 5]), progress=False)
    train = NYUDv2(out, "train")
    assert len(train) == 2 and list(train.frames) == [2, 4]  # frames in file order, 1-based
    assert len(NYUDv2(out, "test")) == 2
    sample = train[1]  # frame 4
    assert sample["frame"] == 4
    assert sample["image"].shape == (8, 12, 3) and tuple(sample["image"][0, 0]) == (255, 0, 0)
    np.testing.assert_array_equal(sample["image"], f["images"][3])
    np.testing.assert_array_equal(sample["depth"], f["depths"][3])
    meta = nyud_meta()
    raw = f["labels"][3]
    expected40 = np.array(meta.lut40)[raw] - 1
    expected40[raw == 0] = 255
    np.testing.assert_array_equal(sample["label"], expected40)
    assert sample["label"][-1, -1] == 255
    expected13 = np.array(meta.lut13)[np.array(meta.lut40)[raw]] - 1
    expected13[raw == 0] = 255
    np.testing.assert_array_equal(NYUDv2(out, "train", classes=13)[1]["label"], expected13)
    assert NYUDv2(out, "train", depth="rawDepths")[1]["depth"].max() == 0
    # the constant baselines' statistics of the training split (frames 2 and 4)
    assert train.mean_depth == pytest.approx(float(f["depths"][[1, 3]].astype(np.float64).mean()))
    labels40 = np.array(meta.lut40)[f["labels"][[1, 3]]] - 1
    labels40[f["labels"][[1, 3]] == 0] = 255
    counts = np.bincount(labels40.ravel(), minlength=256)
    counts[255] = 0
    assert train.majority_class == counts.argmax()
    with pytest.raises(ValueError, match="no pixel with ground-truth depth"):
        NYUDv2(out, "train", depth="rawDepths").mean_depth


def test_default_split_is_the_official_one(tmp_path) -> None:
    f = _frames(3)
    mat = tmp_path / "small.mat"
    write_labeled_mat(mat, f["images"], f["depths"], f["labels"])
    with pytest.raises(ValueError, match="outside 1..3"):
        prepare_nyud(mat, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_bad_files_give_one_line_errors_and_no_layout(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LabeledMat(tmp_path / "missing.mat")
    text = tmp_path / "notes.mat"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a MATLAB v7.3"):
        LabeledMat(text)
    f = _frames(4, 32, 32)
    good = tmp_path / "good.mat"
    write_labeled_mat(good, f["images"], f["depths"], f["labels"])
    truncated = tmp_path / "truncated.mat"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    split = _split(tmp_path / "s.mat", [1, 2], [3, 4])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        prepare_nyud(truncated, tmp_path / "out", split, progress=False)
    with h5py.File(tmp_path / "other.mat", "w") as other:
        other["images"] = np.zeros((1, 3, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="lacks the variable"):
        LabeledMat(tmp_path / "other.mat")
    f["labels"][3, 0, 0] = 900  # the last frame is bad: the run fails after writing three frames
    bad = tmp_path / "bad.mat"
    write_labeled_mat(bad, f["images"], f["depths"], f["labels"])
    with pytest.raises(ValueError, match="frame 4 has raw label 900"):
        prepare_nyud(bad, tmp_path / "out", split, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out")) == []
    prepare_nyud(good, tmp_path / "out", split, progress=False)
    with pytest.raises(FileExistsError, match="already prepared; pass --force"):
        prepare_nyud(good, tmp_path / "out", split, progress=False)
    assert is_prepared(prepare_nyud(good, tmp_path / "out", split, force=True, progress=False))
    with pytest.raises(FileNotFoundError, match="prepare_nyud.py"):
        NYUDv2(tmp_path / "nowhere")


def _sample(h: int = 16, w: int = 16) -> dict[str, np.ndarray]:
    v, u = np.mgrid[0:h, 0:w]
    image = np.stack([(u * 10 + v) % 251, u * 5, v * 5], axis=-1).astype(np.uint8)
    label = (u % 7).astype(np.uint8)
    label[0] = 255
    depth = (image[..., 0].astype(np.float32) + 1) / 50
    return {"image": image, "label": label, "depth": depth}


def test_joint_transform_moves_image_label_and_depth_together() -> None:
    sample = _sample()
    transform = JointTransform((0, 0, 0), (1, 1, 1), crop=(8, 8), scale=(1.0, 1.0))
    for seed in range(8):
        transform.seed(seed)
        out = transform(sample)
        red = (out["image"][0] * 255).round()
        torch.testing.assert_close(out["depth"], (red + 1) / 50)  # same crop and flip for both
        label = out["label"]
        assert set(label.unique().tolist()) <= set(range(7)) | {255}
        # the label column pattern u % 7 is consistent with the image's u * 5 channel
        u = (out["image"][1] * 255 / 5).round().long()
        valid = label != 255
        assert torch.equal(label[valid], (u % 7)[valid])
    transform.seed(3)
    first = transform(sample)["image"]
    transform.seed(3)
    assert torch.equal(transform(sample)["image"], first)


def test_zoom_divides_depth_and_padding_is_void() -> None:
    sample = _sample()
    sample["depth"][:] = 3.0
    sample["label"][:] = 2
    zoom_in = JointTransform((0, 0, 0), (1, 1, 1), crop=(8, 8), scale=(2.0, 2.0), flip=False)(sample)
    assert torch.allclose(zoom_in["depth"], torch.full((8, 8), 1.5))  # twice as close
    zoom_out = JointTransform((0, 0, 0), (1, 1, 1), crop=(12, 12), scale=(0.5, 0.5), flip=False)(sample)
    content = zoom_out["label"] == 2
    assert content.sum() == 64 and (zoom_out["label"][~content] == 255).all()
    assert torch.allclose(zoom_out["depth"][content], torch.tensor(6.0)) and (zoom_out["depth"][~content] == 0).all()


def test_synthetic_nyud_is_a_prepared_official_layout(tmp_path) -> None:
    root = ensure_synthetic_nyud(tmp_path, train=6, test=4, height=32, width=48, seed=1)
    assert is_prepared(root)
    with LabeledMat(tmp_path / "synthetic-6+4-32x48-seed1" / "nyu_depth_v2_labeled.mat") as mat:
        assert (mat.frames, mat.height, mat.width) == (10, 32, 48) and mat.raw_names() == nyud_meta().raw_names
    train, test = NYUDv2(root, "train"), NYUDv2(root, "test", depth="rawDepths")
    assert (len(train), len(test)) == (6, 4)
    names = set(train.class_names)
    seen = {train.class_names[c] for i in range(6) for c in np.unique(train[i]["label"]) if c != 255}
    assert {"wall", "floor"} <= seen <= names and seen <= set(raw_ids())
    depth = train.array("depth")
    assert depth.min() > 0.3 and depth.max() < 12.0
    assert (test.array("depth") == 0).any()  # raw depth has holes
    assert ensure_synthetic_nyud(tmp_path, train=6, test=4, height=32, width=48, seed=1) == root  # reused
