"""Compute accounting: published Bi-Real-18 figures, hand-counted layers, model parts, the summary CLI."""

import json
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch
from torch import nn

from cmim_dense import create_model
from cmim_dense.accounting import Totals, count_model
from cmim_dense.binary import BinaryConv2d, Spec
from cmim_dense.checkpoint_io import save_atomic
from cmim_dense.model_summary import dense_parts
from cmim_dense.summary import main

SIGN = Spec("sign", estimator=Spec("ste_clip"))
WSIGN = Spec("sign", estimator=Spec("ste"))


def test_bireal18_matches_published_figures() -> None:
    """Bi-Real Net / ReActNet tables at 224x224: 1.68e9 BOPs, 1.37e8 FLOPs, 1.63e8 OPs, 33.6 vs 374.1 Mbit."""
    ours = count_model(create_model("resnet18", "bireal"), (3, 224, 224)).totals()
    fp = count_model(create_model("resnet18", "fp"), (3, 224, 224)).totals()
    # exact counts: 16 binary 3x3 convs; stem 118,013,952 + 3 downsamples x 6,422,528 + FC 512,000
    assert ours.bops == 1_676_279_808
    assert ours.flops == 118_013_952 + 3 * 6_422_528 + 512_000
    assert ours.binary_params == 10_985_472 and ours.real_params == 11_689_512 - 10_985_472
    assert ours.bops == pytest.approx(1.68e9, rel=3e-3)
    assert ours.flops == pytest.approx(1.37e8, rel=1e-2)
    assert ours.ops == pytest.approx(1.63e8, rel=1e-2)
    assert ours.bits == pytest.approx(33.6e6, rel=5e-3)
    assert fp.bops == 0 and fp.flops == pytest.approx(1.81e9, rel=3e-3)
    assert fp.bits == 11_689_512 * 32 and fp.bits == pytest.approx(374.1e6, rel=1e-4)
    assert fp.ops / ours.ops == pytest.approx(11.1, rel=1e-2)
    assert fp.bits / ours.bits == pytest.approx(11.1, rel=1e-2)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 2, 1, bias=False)  # 8x4x4 out
        self.bn = nn.BatchNorm2d(8)
        self.binary = BinaryConv2d(8, 16, 3, padding=1, input_binarizer=SIGN,
                                   weight_binarizer=Spec("rotation", estimator=Spec("rbnn")))  # RBNN: theta, alpha
        self.kmap = BinaryConv2d(16, 16, 3, padding=1, input_binarizer=SIGN, weight_binarizer=WSIGN, input_scale=True)
        self.real_weights = BinaryConv2d(16, 4, 1, input_binarizer=Spec("rsign", estimator=Spec("approx_sign")))
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.real_weights(self.kmap(self.binary(self.bn(self.stem(x)))))
        return self.fc(x.mean(dim=(2, 3)))


def test_hand_counted_layers() -> None:
    accounting = count_model(Tiny(), (3, 8, 8))
    rows = {layer.name: layer for layer in accounting.layers}
    assert list(rows) == ["stem", "bn", "binary", "kmap", "real_weights", "fc"]
    assert rows["stem"].totals == Totals(real_params=216, flops=8 * 4 * 4 * 3 * 9)
    assert rows["bn"].totals == Totals(real_params=16) and rows["bn"].output_shape == (8, 4, 4)
    assert rows["binary"].totals == Totals(real_params=32, binary_params=1152, bops=16 * 16 * 8 * 9)
    assert rows["kmap"].totals == Totals(binary_params=2304, bops=16 * 16 * 16 * 9, flops=16 * 9)  # K-map box filter
    # binary inputs but real weights: real MACs; RSign's shift (16) belongs to the conv's row
    assert rows["real_weights"].totals == Totals(real_params=64 + 16, flops=4 * 16 * 16)
    assert rows["fc"].totals == Totals(real_params=25, flops=20) and rows["fc"].output_shape == (5,)
    assert accounting.totals().bits == 1152 + 2304 + 32 * (216 + 16 + 32 + 80 + 25)


@pytest.mark.parametrize("method", ["reactnet", "xnorpp"])
def test_every_parameter_counted_once(method: str) -> None:
    model = create_model("resnet18_cifar", method, num_classes=10)
    totals = count_model(model, (3, 8, 8)).totals()
    assert totals.real_params + totals.binary_params == sum(p.numel() for p in model.parameters())
    assert totals.binary_params >= 10_985_472  # the 16 binary 3x3 convs (RBNN's CIFAR layout adds 1x1 ones)


def test_parts_of_a_deeplab_model() -> None:
    model = smp.DeepLabV3(encoder_name="resnet18", encoder_weights=None, encoder_output_stride=8, classes=3)
    accounting = count_model(model, (3, 32, 48))
    parts = accounting.parts({"backbone": ["encoder."], "head": ["decoder.", "segmentation_head."]})
    total = accounting.totals()
    assert parts["backbone"] + parts["head"] == total
    # smp's ResNet-18 encoder at output stride 8 is our fp ResNet-18 at output stride 8 without its classifier
    ours = count_model(create_model("resnet18", "fp", num_classes=1, output_stride=8), (3, 32, 48))
    assert parts["backbone"].flops == ours.totals().flops - ours.totals(["fc"]).flops
    with pytest.raises(ValueError, match="no part"):
        accounting.parts({"backbone": ["encoder."], "head": ["decoder."]})
    with pytest.raises(ValueError, match="parts"):
        accounting.parts({"all": [""], "head": ["decoder.", "segmentation_head."]})


def test_cli_counts_a_method(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "summary.json"
    assert main(["--method", "bireal", "--arch", "resnet18_cifar", "--classes", "10", "--image-size", "32",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "OPs = BOPs/64 + FLOPs" in printed and "layer4.1.conv2" in printed and "fp resnet18_cifar" in printed
    data = json.loads(out.read_text())
    totals, fp = data["totals"], data["fp_baseline"]["totals"]
    layers = {layer["name"]: layer for layer in data["layers"]}
    assert layers["layer1.0.conv1"]["bops"] == 64 * 32 * 32 * 64 * 9 and layers["layer1.0.conv1"]["flops"] == 0
    assert layers["conv1"]["flops"] == 64 * 32 * 32 * 3 * 9 and layers["conv1"]["output_shape"] == [64, 32, 32]
    assert totals["bops"] == sum(layer["bops"] for layer in data["layers"])
    assert totals["ops"] == totals["bops"] / 64 + totals["flops"]
    assert data["ratios"]["ops"] == pytest.approx(fp["ops"] / totals["ops"])
    assert data["ratios"]["storage"] == pytest.approx(fp["bits"] / totals["bits"])
    assert fp["real_params"] == totals["real_params"] + totals["binary_params"]
    assert layers["fc"]["output_shape"] == [10]  # --classes sizes the classifier of a --method model


def test_cli_reads_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = create_model("resnet18_cifar", "irnet", num_classes=10)
    path = tmp_path / "last.pt"
    save_atomic({"model": model.state_dict(), "meta": {"method": "irnet", "arch": "resnet18_cifar",
                                                       "num_classes": 10}}, path)
    assert main([str(path), "--image-size", "32x16"]) == 0
    printed = capsys.readouterr().out
    assert "per 3x32x16 image" in printed and "irnet" in printed
    assert main([str(path)]) == 0  # a checkpoint that records no training size: ImageNet's
    assert "per 3x224x224 image" in capsys.readouterr().out
    save_atomic({"model": model.state_dict(), "meta": {"method": "irnet", "arch": "resnet18_cifar",
                                                       "num_classes": 10, "image_size": 24}}, path)
    assert main([str(path)]) == 0  # by default the size it was trained at
    assert "per 3x24x24 image" in capsys.readouterr().out


def test_cli_bad_inputs_give_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "missing.pt")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    assert main([str(junk)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.strip().count("\n") == 0
    torch.save({"weights": torch.zeros(1)}, junk)
    assert main([str(junk)]) == 2
    assert "not a cmim-dense checkpoint" in capsys.readouterr().err
    torch.save({"model": {}, "meta": {"method": "bnn"}}, junk)
    for head in ([], ["--head", "deeplabv3"]):
        assert main([str(junk), *head]) == 2
        assert capsys.readouterr().err == (f"error: {junk} is a checkpoint whose meta names neither a task nor an "
                                           "arch; expected a pretrained backbone (best.pt or last.pt of "
                                           "pretrain/run.py)\n")
    assert main(["--method", "nosuch"]) == 2
    assert "unknown method" in capsys.readouterr().err


def test_dense_summary_splits_backbone_and_head() -> None:
    os8 = dense_parts("bireal", "resnet18", "deeplabv3", 8, (96, 128), classes=40)
    os16 = dense_parts("bireal", "resnet18", "deeplabv3", 16, (96, 128), classes=40)
    # the FP head is all real MACs and dominates the binary backbone's OPs; stride 16 cuts it ~4x
    assert os8["head"].bops == 0 and os8["head"].flops > 5 * os8["backbone"].ops
    assert 3.5 < os8["head"].flops / os16["head"].flops < 4.5
    assert os8["backbone"].binary_params == os16["backbone"].binary_params == 10_985_472
    fpn = dense_parts("bireal", "resnet18", "fpn", 32, (96, 128), classes=40, decoder_channels=64)
    assert fpn["backbone"].binary_params == 10_985_472 and 0 < fpn["head"].flops < os16["head"].flops / 4
