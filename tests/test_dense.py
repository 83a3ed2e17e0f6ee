"""Dense heads over binary backbones: smp plug-in, registered heads and tasks, output strides, freezing, loading."""

import pytest
import segmentation_models_pytorch as smp
import torch

from cmim_dense.binary import BinaryConv2d
from cmim_dense.checkpoint_io import save_atomic
from cmim_dense.dense import (HEADS, TASKS, create_dense_model, dense_model_from_backbone, dense_model_from_checkpoint,
                              depth_loss, normals_loss)
from cmim_dense.models import create_model


def save_backbone(path, method: str = "bireal", arch: str = "resnet18", top1: float = 0.5):
    model = create_model(arch, method, num_classes=10)
    meta = {"method": method, "arch": arch, "num_classes": 10, "epoch": 1, "top1": top1, "top5": 0.9,
            "data": "test", "real_weights": False, "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    save_atomic({"model": model.state_dict(), "meta": meta}, path)
    return model


@pytest.mark.parametrize("head,stride", [("deeplabv3", 8), ("deeplabv3", 16), ("deeplabv3plus", 16)])
def test_fp_dense_model_equals_smp_deeplab_over_a_torchvision_dilated_resnet18(head: str, stride: int) -> None:
    """The fp dense model, output for output, against smp's own DeepLabV3/V3+ over its resnet18
    encoder with the same weights, built with the DeepLab papers' ASPP rates written here by hand,
    and re-dilated as torchvision does (smp dilates the first conv of a dilated stage too; ours keeps
    the previous dilation there, which keeps the pretrained function: see test_models).

    Catches: wrong ASPP rates at either stride, decoder_channels or classes not passed on, encoder
    features in the wrong order or with the wrong channel list (the V3+ skip at stride 4), a dilation
    on the wrong conv, an output not upsampled to the input's size."""
    ours = create_dense_model("resnet18", "fp", 5, head, stride, decoder_channels=32).eval()
    rates = {8: (12, 24, 36), 16: (6, 12, 18)}[stride]
    reference = {"deeplabv3": smp.DeepLabV3, "deeplabv3plus": smp.DeepLabV3Plus}[head](
        encoder_name="resnet18", encoder_weights=None, encoder_output_stride=stride, decoder_channels=32,
        decoder_atrous_rates=rates, classes=5).eval()
    for stage, dilation in ([("layer3", 1), ("layer4", 2)] if stride == 8 else [("layer4", 1)]):
        conv = getattr(reference.encoder, stage)[0].conv1
        conv.dilation, conv.padding = (dilation, dilation), (dilation, dilation)
    reference.load_state_dict({k.replace("encoder.backbone.", "encoder."): v for k, v in ours.state_dict().items()})
    # 128 x 160 px: the stride-16 map (8 x 10) is wider than the smallest rate, so every ASPP branch
    # sees more than its centre tap (on a 4 x 6 map all rates >= 6 reduce to 1 x 1 convs and agree)
    x = torch.randn(2, 3, 128, 160)
    with torch.no_grad():
        out = ours(x)
        assert out.shape == (2, 5, 128, 160)
        assert torch.allclose(out, reference(x), atol=1e-5)


def test_frozen_backbone_is_the_checkpoint_and_never_changes(tmp_path) -> None:
    """Catches: a backbone that trains under the head (weights, BatchNorm statistics or RBNN's
    rotations refitted in train mode), features that are not the checkpoint's.  RBNN's BatchNorm
    starts at gamma = 1e-8, which would make every feature ~1e-8 and any comparison at atol 1e-5
    vacuous: the checkpoint gets gammas in [0.5, 1.5]."""
    path = tmp_path / "backbone.pt"
    save_backbone(path, "rbnn")
    checkpoint = torch.load(path, weights_only=True)
    for key, value in checkpoint["model"].items():
        if key.endswith(".weight") and value.dim() == 1:  # BatchNorm gammas (rbnn has no other 1-D weight)
            value.uniform_(0.5, 1.5)
    save_atomic(checkpoint, path)
    backbone = create_model("resnet18", "rbnn", num_classes=10)
    backbone.load_state_dict(checkpoint["model"])
    backbone.eval()
    model, meta = dense_model_from_backbone(str(path), 3, output_stride=16, decoder_channels=32)
    assert meta["method"] == "rbnn"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = backbone.forward_features(x)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    model.train()
    assert not model.encoder.training and model.decoder.training
    assert not any(p.requires_grad for p in model.encoder.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    for _ in range(2):
        loss = model(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm statistics
    features = model.encoder(x)
    # the same weights: stem to layer3 equal the pretrained network's (layer4 is dilated at stride 16:
    # test_models checks the dilated backbone against the undilated one)
    assert [f.shape[1] for f in features] == [3, 64, 64, 128, 256, 512]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(features[1:5], expected[:4]))
    assert not features[-1].requires_grad  # ran under no_grad
    assert model(x).shape == (2, 3, 64, 64)
    assert any(isinstance(m, BinaryConv2d) for m in model.encoder.modules())


def test_unfrozen_backbone_trains(tmp_path) -> None:
    path = tmp_path / "backbone.pt"
    save_backbone(path)
    model, _ = dense_model_from_backbone(str(path), 2, output_stride=16, decoder_channels=16, freeze=False)
    model.train()
    model(torch.randn(2, 3, 32, 32)).mean().backward()
    assert model.encoder.training
    assert model.encoder.backbone.conv1.weight.grad is not None


def test_wrong_checkpoints_fail_clearly(tmp_path) -> None:
    wrong = tmp_path / "wrong.pt"
    model = create_model("resnet34", "bireal", num_classes=10)
    save_atomic({"model": model.state_dict(), "meta": {"method": "bireal", "arch": "resnet18", "num_classes": 10}},
                wrong)
    with pytest.raises(ValueError, match="does not fit a resnet18 bireal model.*unexpected"):
        dense_model_from_backbone(str(wrong), 2)
    cifar = tmp_path / "cifar.pt"
    save_backbone(cifar, arch="resnet18_cifar")
    with pytest.raises(ValueError, match="resnet18_cifar has no stride-2 stem"):
        dense_model_from_backbone(str(cifar), 2)
    plain = tmp_path / "plain.pt"
    torch.save([1, 2, 3], plain)
    with pytest.raises(ValueError, match="not a backbone checkpoint; expected a checkpoint of pretrain/run.py"):
        dense_model_from_backbone(str(plain), 2)
    with pytest.raises(FileNotFoundError):
        dense_model_from_backbone(str(tmp_path / "missing.pt"), 2)


def test_depth_losses_on_valid_pixels_only() -> None:
    pred = torch.tensor([[[1.0, 2.0, 5.0]]])
    target = torch.tensor([[[1.5, 1.0, 0.0]]])  # the last pixel has no ground truth
    assert depth_loss("l1", pred, target).item() == pytest.approx(0.75)
    # berHu: c = 0.2 * 1.0; |e| = 0.5 and 1.0 are above c: (e^2 + c^2) / 2c
    c = 0.2
    assert depth_loss("berhu", pred, target).item() == pytest.approx(((0.25 + c * c) / (2 * c) + (1 + c * c) / (2 * c)) / 2)
    with pytest.raises(ValueError, match="unknown depth loss"):
        depth_loss("l2", pred, target)


class TaskSettings:
    classes, depth_loss, depth_gt, depth_cap, eigen_crop = 13, "l1", "depths", None, False


def task_target(name: str, shape: tuple[int, int]) -> torch.Tensor:
    """A batch of 2 ground truths of task ``name`` at ``shape``, with some pixels invalid."""
    generator = torch.Generator().manual_seed(0)
    if name == "seg":
        target = torch.randint(0, 13, (2, *shape), generator=generator)
        target[:, 0] = 255
    elif name == "depth":
        target = torch.rand(2, *shape, generator=generator) * 5
        target[:, 0] = 0.0
    else:
        target = torch.nn.functional.normalize(torch.randn(2, 3, *shape, generator=generator), dim=1)
        target[:, :, 0] = 0.0
    return target


@pytest.mark.parametrize("head", HEADS.names())
def test_every_head_trains_every_task_over_a_frozen_binary_encoder(head: str, tmp_path) -> None:
    """Each registered head over a frozen IR-Net encoder, for each registered task: the output has
    the task's channels at the input's size, the task loss is finite and reaches the head only,
    and one SGD step lowers it.

    Catches: a head whose arguments the registry does not pass on (widths, strides), an encoder
    that trains or receives gradients under FPN/U-Net, a task whose loss does not fit its output."""
    path = tmp_path / "backbone.pt"
    save_backbone(path, "irnet")
    stride = HEADS.get(head).output_strides[-1]
    for name in TASKS.names():
        task = TASKS.get(name)
        model, _ = dense_model_from_backbone(str(path), task.out_channels(TaskSettings), head, stride, 16)
        model.train()
        x, target = torch.randn(2, 3, 64, 96), task_target(name, (64, 96))
        torch.manual_seed(0)  # the same dropout masks before and after the step
        output = model(x)
        assert output.shape == (2, task.out_channels(TaskSettings), 64, 96)
        loss = task.loss(output, target, TaskSettings)
        loss.backward()
        assert torch.isfinite(loss)
        assert all(p.grad is None for p in model.encoder.parameters())
        head_grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert head_grads and all(g is not None for g in head_grads)
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        optimizer.step()
        torch.manual_seed(0)
        with torch.no_grad():
            assert task.loss(model(x), target, TaskSettings) < loss, (head, name)


def test_heads_refuse_output_strides_they_cannot_work_at() -> None:
    with pytest.raises(ValueError, match="the fpn head works at output stride 32, got 16"):
        create_dense_model("resnet18", "fp", 3, "fpn", 16)
    with pytest.raises(ValueError, match="unknown head 'segformer'; valid: deeplabv3, deeplabv3plus, fpn, unet"):
        create_dense_model("resnet18", "fp", 3, "segformer", 8)


def test_normals_loss_is_one_minus_cosine_on_valid_pixels() -> None:
    """Hand-computed: a prediction of twice the target's length costs 0, one at 90° costs 1, one
    opposite costs 2; the invalid (zero) pixel is left out of the mean."""
    target = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 4)
    pred = torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -3.0], [5.0, 5.0, 5.0]]).T.reshape(1, 3, 1, 4)
    assert normals_loss(pred, target).item() == pytest.approx((0.0 + 1.0 + 2.0) / 3)
    assert normals_loss(pred, torch.zeros_like(target)).item() == 0.0


def test_a_frozen_model_rebuilt_from_its_checkpoint_evaluates_the_backbone_it_trained(tmp_path) -> None:
    """smp's freeze_encoder puts only BatchNorms in eval mode and its eval() skips a frozen encoder: a
    fine-tuned RBNN model rebuilt from last.pt (--evaluate, predict, the grid, the export's round trip)
    kept its backbone in training mode and re-fitted the rotations on its first forward, evaluating
    another backbone than the one its head was trained on.  Catches any encoder module left training."""
    model = create_dense_model("resnet18", "rbnn", 3, "deeplabv3plus", 16, 16)
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith("updated_at"):
            value.fill_(0.5)  # fitted during pretraining, at another progress than a fresh model's
    meta = {"task": "seg", "classes": 40, "out_channels": 3, "head": "deeplabv3plus", "output_stride": 16,
            "decoder_channels": 16, "backbone": "b.pt", "backbone_meta": {"method": "rbnn", "arch": "resnet18"},
            "iteration": 1, "config": {}}
    save_atomic({"model": state, "meta": meta}, tmp_path / "last.pt")
    rebuilt, _ = dense_model_from_checkpoint(tmp_path / "last.pt")
    assert not any(module.training for module in rebuilt.encoder.modules())
    rebuilt.train()  # a fine-tuning loop's call: the head trains, the frozen encoder stays in eval mode
    assert rebuilt.decoder.training and not any(module.training for module in rebuilt.encoder.modules())
    with torch.no_grad():
        rebuilt(torch.randn(2, 3, 64, 64))
    assert all(torch.equal(value, rebuilt.state_dict()[key]) for key, value in state.items() if "encoder" in key)
