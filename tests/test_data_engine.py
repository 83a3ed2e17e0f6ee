"""Data folders, checkpoints and learning-rate schedules."""

import math
import os
import pickle
import stat

import numpy as np
import pytest
import torch

from cmim_dense import create_model
from cmim_dense.checkpoint_io import load_checkpoint, save_atomic
from cmim_dense.data import build_classification_data, image_folder_data
from cmim_dense.engine.optim import build_optimizer, clip_latent_weights, lr_factor


def test_image_folder_requires_train_and_val(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="ImageNet-style folder"):
        image_folder_data(tmp_path)


def test_save_atomic_round_trip_and_no_leftovers(tmp_path) -> None:
    model = create_model("resnet18", "irnet", num_classes=3)
    path = tmp_path / "ckpt" / "last.pt"
    save_atomic({"model": model.state_dict(), "meta": {"method": "irnet"}}, path)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]
    loaded = load_checkpoint(path)
    assert loaded["meta"] == {"method": "irnet"}
    create_model("resnet18", "irnet", num_classes=3).load_state_dict(loaded["model"])


def test_atomic_files_get_the_umask_permissions_not_owner_only(tmp_path) -> None:
    previous = os.umask(0o027)
    try:
        save_atomic({"model": {}, "meta": {}}, tmp_path / "a.pt")
        assert stat.S_IMODE((tmp_path / "a.pt").stat().st_mode) == 0o640
        os.umask(0o002)
        save_atomic({"model": {}, "meta": {}}, tmp_path / "a.pt")
        assert stat.S_IMODE((tmp_path / "a.pt").stat().st_mode) == 0o664
    finally:
        os.umask(previous)


class NotAllowed:
    pass


class SystemCall:
    """Unpickled, it would run a shell command (it is never unpickled here)."""

    def __reduce__(self):
        return os.system, ("echo the payload ran",)


def test_a_flipped_byte_in_any_tensor_is_caught_on_load(tmp_path) -> None:
    """The probe's case: 64 bytes overwritten in the middle of a checkpoint loaded silently with
    changed weights.  Every tensor dtype a checkpoint holds, a byte flipped at its first, middle and
    last byte: one line naming the file as corrupted; the intact file loads without the checksum."""
    state = {"model": {"conv.weight": torch.randn(16, 8, 3, 3), "bn.num_batches_tracked": torch.tensor(7),
                       "bank": torch.randn(40, 8).half(), "mask": torch.rand(64) > 0.5},
             "meta": {"method": "irnet"}, "history": [{"epoch": 1}]}
    path = tmp_path / "best.pt"
    save_atomic(state, path)
    data = path.read_bytes()
    loaded = load_checkpoint(path)
    assert set(loaded) == {"model", "meta", "history"}
    assert all(torch.equal(loaded["model"][key], value) for key, value in state["model"].items())
    for key, tensor in state["model"].items():
        raw = tensor.numpy().tobytes()
        start = data.find(raw)
        assert start > 0 and data.find(raw, start + 1) == -1, key
        for offset in (start, start + len(raw) // 2, start + len(raw) - 1):
            corrupt = bytearray(data)
            corrupt[offset] ^= 0x10
            broken = tmp_path / "broken.pt"
            broken.write_bytes(corrupt)
            with pytest.raises(ValueError, match=f"^{broken} is corrupted: its tensors no longer match the checksum"):
                load_checkpoint(broken)


def test_load_checkpoint_rejects_bad_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    for mmap in (False, True):
        with pytest.raises(ValueError, match="not a readable checkpoint"):
            load_checkpoint(corrupt, mmap=mmap)
    unsafe = tmp_path / "unsafe.pt"
    with open(unsafe, "wb") as handle:
        pickle.dump({"model": NotAllowed(), "meta": {}}, handle, protocol=2)  # torch.load's own protocol
    with pytest.raises(ValueError, match="refused: reading it would run code") as refused:
        load_checkpoint(unsafe)
    assert "weights_only" not in str(refused.value) and "\n" not in str(refused.value)  # torch's unsafe advice
    payload = tmp_path / "payload.pt"  # the probe's case: torch's zip format, torch 2.14's other wording
    torch.save({"model": SystemCall(), "meta": {}}, payload)
    with pytest.raises(ValueError, match=r"refused: reading it would run code \(posix.system\)") as refused:
        load_checkpoint(payload)
    assert "weights_only" not in str(refused.value) and "corrupt" not in str(refused.value)
    one_byte = tmp_path / "one_byte.pt"
    one_byte.write_bytes(b"x")
    with pytest.raises(ValueError, match="not a readable checkpoint: the file is corrupt, truncated or of another "
                                         "kind") as refused:
        load_checkpoint(one_byte)
    assert "weights_only" not in str(refused.value) and "\n" not in str(refused.value)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(1)}, plain)
    with pytest.raises(ValueError, match="expected a dict with 'model' and 'meta'"):
        load_checkpoint(plain)
    good = tmp_path / "good.pt"
    save_atomic({"model": {"w": torch.arange(3.0)}, "meta": {"epoch": 2}}, good)
    mapped = load_checkpoint(good, mmap=True)
    assert mapped["meta"] == {"epoch": 2} and torch.equal(mapped["model"]["w"], torch.arange(3.0))


def test_lr_factor_schedules() -> None:
    assert lr_factor(0, 100, "cos", warmup=4) == pytest.approx(0.25)
    assert lr_factor(3, 100, "cos", warmup=4) == pytest.approx(1.0)
    assert lr_factor(4, 100, "cos", warmup=4) == pytest.approx(1.0)
    assert lr_factor(52, 100, "cos", warmup=4) == pytest.approx(0.5)
    assert lr_factor(100, 100, "cos") == pytest.approx(0.0)
    assert lr_factor(25, 100, "linear") == pytest.approx(0.75)
    assert lr_factor(65, 100, "step", milestones=(30, 60, 90)) == pytest.approx(0.01)
    assert math.isclose(lr_factor(29, 100, "step", milestones=(30, 60, 90)), 1.0)


def test_binary_weights_get_their_own_weight_decay_and_clip() -> None:
    model = create_model("resnet18", "bireal", num_classes=2)
    optimizer = build_optimizer(model, "adam", 1e-3, weight_decay=1e-4, binary_weight_decay=0.0)
    binary, other = optimizer.param_groups
    assert binary["weight_decay"] == 0.0 and other["weight_decay"] == 1e-4
    assert sum(p.numel() for p in binary["params"]) == 10_985_472
    with torch.no_grad():
        model.layer1[0].conv1.weight.fill_(3.0)
    clip_latent_weights(model, 1.0)
    assert model.layer1[0].conv1.weight.max() == 1.0


def write_cifar10(root, per_batch: int = 3):
    """A miniature CIFAR-10 folder in the official python-pickle layout (protocol 2, bytes keys)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 255, (per_batch, 3072), dtype=np.uint8)
        data[:, 0] = 255  # red channel of the top-left pixel
        data[:, 1024] = 0  # green channel of the same pixel
        labels = [int(x) for x in rng.integers(0, 10, per_batch)]
        with open(folder / name, "wb") as handle:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data}, handle, protocol=2)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({b"label_names": [b"airplane"] * 10}, handle, protocol=2)
    return folder


def test_cifar_python_folder(tmp_path) -> None:
    write_cifar10(tmp_path)
    data = build_classification_data(str(tmp_path), image_size=32)
    assert data.num_classes == 10 and len(data.train) == 15 and len(data.val) == 3
    image, label = data.val[0]
    assert image.shape == (3, 32, 32) and 0 <= label < 10
    raw = data.val.images[0]
    assert raw.shape == (32, 32, 3) and raw[0, 0, 0] == 255 and raw[0, 0, 1] == 0
    with pytest.raises(ValueError, match="CIFAR images are 32x32"):
        build_classification_data(str(tmp_path), image_size=64)


class Exploit:
    def __reduce__(self):
        return (print, ("owned",))


def test_cifar_reader_refuses_code_in_pickles(tmp_path) -> None:
    folder = write_cifar10(tmp_path)
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump({b"data": Exploit(), b"labels": [0]}, handle, protocol=2)
    with pytest.raises(ValueError, match="print is not allowed in a CIFAR batch file"):
        build_classification_data(str(tmp_path), image_size=32)
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3 is missing"):
        build_classification_data(str(tmp_path), image_size=32)
