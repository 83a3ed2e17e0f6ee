"""The built-in pretraining world (object photographs of the synthetic rooms): deterministic,
split, balanced, object-centric, in range, fast, and learnable by a binary ResNet-18."""

import time

import numpy as np
import pytest
import torch

from cmim_dense.data import SyntheticObjects, build_classification_data
from cmim_dense.data.synthetic_nyud import CLASSES
from cmim_dense.data.synthetic_objects import render_object, render_object_with_labels, sample_generator
from cmim_dense.engine import resolve_config, run_pretraining


def test_same_seed_same_images_and_samples_do_not_depend_on_the_split_size() -> None:
    a = SyntheticObjects(26, image_size=24, seed=3)
    image, label = a[7]
    assert image.shape == (3, 24, 24) and image.dtype == torch.float32 and label == 7
    assert torch.equal(image, SyntheticObjects(26, image_size=24, seed=3)[7][0])
    assert torch.equal(image, SyntheticObjects(13, image_size=24, seed=3)[7][0])  # a prefix of the larger split
    assert not torch.equal(image, SyntheticObjects(26, image_size=24, seed=4)[7][0])


def test_train_and_validation_share_no_image() -> None:
    train = SyntheticObjects(130, image_size=16, seed=0, split="train").images()
    val = SyntheticObjects(130, image_size=16, seed=0, split="val").images()
    assert len({bytes(image.numpy()) for image in train}) == 130  # no duplicate within a split either
    assert not {bytes(image.numpy()) for image in train} & {bytes(image.numpy()) for image in val}
    assert (train.float() - val.float()).abs().mean() > 10  # independent draws, not near copies


def test_classes_are_the_scene_classes_and_balanced() -> None:
    data = SyntheticObjects(39, image_size=16)
    assert data.classes == list(CLASSES) and len(CLASSES) == 13
    labels = [data[i][1] for i in range(len(data))]
    assert labels == data.targets and np.bincount(labels).tolist() == [3] * 13
    assert SyntheticObjects(10, num_classes=5, image_size=16).targets == [0, 1, 2, 3, 4] * 2
    with pytest.raises(IndexError):
        data[39]
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticObjects(10, num_classes=14)
    with pytest.raises(ValueError, match="split"):
        SyntheticObjects(10, split="test")
    with pytest.raises(ValueError, match="unknown class"):
        render_object("lamp", 16, sample_generator(0, "train", 0))


def test_values_use_the_range_and_are_normalised_by_the_worlds_statistics() -> None:
    data = SyntheticObjects(260, image_size=32)
    raw = data.images().float() / 255
    assert raw.amin() < 0.05 and raw.amax() > 0.95  # dark corners and bright ceilings both occur
    per_image = raw.std(dim=(1, 2, 3))
    assert per_image.min() > 0.02  # sensor noise and shading: no image is flat
    images = torch.stack([data[i][0] for i in range(len(data))])
    mean, std = torch.tensor(data.mean)[:, None, None], torch.tensor(data.std)[:, None, None]
    torch.testing.assert_close(images, (raw - mean) / std)
    channel_mean, channel_std = images.mean(dim=(0, 2, 3)), images.std(dim=(0, 2, 3))
    assert channel_mean.abs().max() < 0.15 and (channel_std - 1).abs().max() < 0.15


def test_each_image_is_centred_on_its_class_which_fills_much_of_the_frame() -> None:
    """The label map behind every image: the centre pixel is the class, which covers on average
    at least 30 % of a frame (door, the narrowest, ~35 %; walls, floors, ceilings ~90 %)."""
    for index, name in enumerate(CLASSES):
        cover = []
        for sample in range(12):
            _, labels = render_object_with_labels(name, 32, sample_generator(5, "train", sample))
            assert labels[16, 16] == index, (name, sample)
            cover.append((labels == index).mean())
        assert np.mean(cover) > 0.3, (name, cover)


def test_rendering_takes_milliseconds() -> None:
    """About 1 ms per 32 px image on one core; the bound leaves 20x for a loaded machine."""
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for index in range(130):
        render_object(CLASSES[index % 13], 32, rng)
    assert (time.perf_counter() - start) / 130 < 0.02


def test_checkpoints_describe_the_world() -> None:
    data = build_classification_data("synthetic", 24, seed=2, synthetic_samples=52)
    assert data.description == "synthetic(objects, 13 classes, 52/13, 24px, seed 2)"
    assert (len(data.train), len(data.val), data.num_classes) == (52, 13, 13)
    assert data.mean == SyntheticObjects.mean and data.std == SyntheticObjects.std
    assert len(build_classification_data("synthetic", 24, 2, 52, synthetic_val_samples=26).val) == 26


def test_a_binary_resnet18_learns_the_world_in_seconds(tmp_path) -> None:
    """IR-Net (ResNet-18, ImageNet stem), 2 epochs of 520 images at 32 px: about 5 s on 2 quiet CPU cores.

    Chance is 1/13 = 7.7 %; the bar is three times chance, 23.1 %, which on the 130 validation
    images lies 6.6 standard errors (sqrt(p(1 - p) / 130) = 2.3 %) above a chance-level model, so
    a network that has not learned cannot pass by luck.  Measured: 42-51 % (seeds 0-2)."""
    chance = 1 / 13
    config = resolve_config("irnet", {
        "epochs": 2, "synthetic_samples": 520, "image_size": 32, "batch_size": 32, "optimizer": "adam",
        "lr": 2e-3, "schedule": "cos", "out": str(tmp_path / "irnet"), "progress_bar": False,
    })
    result = run_pretraining(config)
    assert result["history"][-1]["val_top1"] >= 3 * chance, result["history"]
