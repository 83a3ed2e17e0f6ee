"""1-bit export: bit packing, the XNOR-popcount convolution, safetensors round trips, the export CLI."""

import math
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from cmim_dense import create_model
from cmim_dense.binary import BinaryConv2d, Spec, binary_sign, set_progress
from cmim_dense.checkpoint_io import save_atomic
from cmim_dense.export import (
    PackedBinaryConv2d,
    export_model,
    load_exported,
    pack_model,
    read_export,
    set_packed,
    xnor_conv2d,
)
from cmim_dense.packed import xnor as xnor_module
from cmim_dense.export.__main__ import main
from cmim_dense.export.agreement import agreement
from cmim_dense.packed.bits import byte_counts_, pack_bits, sum_bytes_, unpack_bits
from cmim_dense.packed.xnor import pack_weight, unpack_weight
from cmim_dense.methods import get_recipe
from cmim_dense.models.blocks import BLOCKS
from cmim_dense.models.layers import LayerFactory

SIGN = Spec("sign", estimator=Spec("ste_clip"))
WSIGN = Spec("sign", estimator=Spec("ste"))
SCALED = Spec("scaled_sign", estimator=Spec("ste_clip"))


def test_popcount_matches_python() -> None:
    words = torch.randint(-(2**63), 2**63 - 1, (2000,), dtype=torch.int64)
    words[:4] = torch.tensor([0, -1, -(2**63), 2**63 - 1])
    expected = torch.tensor([bin(w % 2**64).count("1") for w in words.tolist()])
    tmp = torch.empty_like(words)
    assert torch.equal(sum_bytes_(byte_counts_(words.clone(), tmp), tmp), expected)
    # up to 31 words' byte counts may be added before the horizontal sum (the kernel's accumulation)
    counts = sum(byte_counts_(word.clone(), torch.empty_like(word)) for word in words[:31].split(1))
    assert sum_bytes_(counts, torch.empty_like(counts)).item() == expected[:31].sum().item()


@pytest.mark.parametrize("count", [1, 8, 13, 64, 70])
def test_pack_round_trip(count: int) -> None:
    bits = torch.rand(3, 2, count) > 0.5
    packed = pack_bits(bits)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 2, math.ceil(count / 8))
    assert torch.equal(unpack_bits(packed, count), bits)
    assert pack_bits(torch.tensor([True, False, False, True, False, False, False, False, True])).tolist() == [9, 1]


@pytest.mark.parametrize(("cin", "kernel", "stride", "dilation"), [(3, 3, 1, 1), (70, 3, 2, 1), (64, 3, 1, 2),
                                                                 (130, 1, 2, 1)])
def test_xnor_conv_equals_float_conv_of_signs(cin: int, kernel: int, stride: int, dilation: int) -> None:
    x = torch.randn(2, cin, 9, 11)
    weight = binary_sign(torch.randn(5, cin, kernel, kernel))
    assert torch.equal(unpack_weight(pack_weight(weight), cin), weight)
    out = xnor_conv2d(x >= 0, pack_weight(weight), cin, (stride, stride), (dilation, dilation))
    assert torch.equal(out, F.conv2d(binary_sign(x), weight, None, stride, 0, dilation))


def test_xnor_conv_in_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Partial output blocks, and 36 words per output (more than the 31 byte-count sums of one chunk)."""
    monkeypatch.setattr(xnor_module, "_BLOCK", 96)
    monkeypatch.setattr(xnor_module, "_BLOCK_POSITIONS", 40)
    x = torch.randn(2, 200, 7, 8)
    weight = binary_sign(torch.randn(7, 200, 3, 3))
    out = xnor_conv2d(x >= 0, pack_weight(weight), 200, (1, 1), (1, 1))
    assert torch.equal(out, F.conv2d(binary_sign(x), weight))


@pytest.mark.parametrize("pad_value", [0.0, 1.0, -1.0])
@pytest.mark.parametrize(("stride", "dilation"), [(1, 1), (2, 1), (1, 2)])
def test_packed_layer_padding_is_exact(pad_value: float, stride: int, dilation: int) -> None:
    """Unit weight scale: the packed forward must equal the float one exactly, borders included."""
    conv = BinaryConv2d(70, 6, 3, stride, dilation, dilation, input_binarizer=SIGN, weight_binarizer=WSIGN,
                        pad_value=pad_value).eval()
    x = torch.randn(2, 70, 9, 10)
    layer = PackedBinaryConv2d(conv).eval()
    assert torch.equal(layer(x), conv(x))
    layer.packed = True
    assert torch.equal(layer(x), conv(x))
    if pad_value == 0.0:  # the zero-padding correction is what makes the borders right
        corner = F.conv2d(F.pad(binary_sign(x), (dilation,) * 4, value=1.0), conv.effective_weight(), None,
                          stride, 0, dilation)
        assert not torch.equal(corner, conv(x))


def test_packed_layer_with_scales_bias_and_k_map() -> None:
    conv = BinaryConv2d(16, 8, 3, padding=1, bias=True, input_binarizer=Spec("rsign", estimator=Spec("approx_sign")),
                        weight_binarizer=SCALED, input_scale=True).eval()
    with torch.no_grad():
        conv.input_binarizer.pre.bias.normal_()
        conv.bias.normal_()
    x = torch.randn(2, 16, 6, 7)
    layer = PackedBinaryConv2d(conv).eval()
    assert torch.equal(layer(x), conv(x))
    layer.packed = True
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)


def test_negative_learned_scale_flips_the_bits() -> None:
    conv = BinaryConv2d(4, 3, 3, input_binarizer=SIGN, weight_binarizer=Spec("learned_scale", estimator=Spec("ste")))
    with torch.no_grad():
        conv.weight_binarizer.scale[0] = -0.5
    layer = PackedBinaryConv2d(conv)
    assert layer.weight_scale[0].item() == 0.5
    assert torch.equal(layer.effective_weight(), conv.effective_weight())
    assert torch.equal(layer.binary_weight()[0], -binary_sign(conv.weight[0]))


def test_packed_forward_needs_binary_inputs() -> None:
    layer = PackedBinaryConv2d(BinaryConv2d(4, 4, 3, weight_binarizer=WSIGN))
    with pytest.raises(ValueError, match="binary inputs"):
        layer.packed = True


def randomize(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Random latent weights, then one training forward: BN statistics and (RBNN) re-fitted rotations."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.1)
        set_progress(model, 0.5)
        model.train()
        model(x)
    return model.eval()


def residual_blocks(method: str) -> nn.Module:
    """A real stem and two of the method's residual blocks (binary convs, BN, shortcuts), at 16-32 channels."""
    layers = LayerFactory(get_recipe(method))
    block = BLOCKS[layers.recipe.block]
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), layers.activation("hardtanh", 16),
                         block(layers, 16, 32, 2, (1, 1)), block(layers, 32, 32, 1, (2, 2)))


@pytest.mark.parametrize("method", ["bnn", "xnor", "xnorpp", "bireal", "irnet", "rbnn", "reactnet", "dirnet", "s2bnn"])
def test_every_method_round_trips(method: str, tmp_path: Path) -> None:
    x = torch.randn(2, 3, 9, 10)
    model = randomize(residual_blocks(method), x)
    path = tmp_path / "blocks.safetensors"
    report = export_model(model, path, {"method": method})
    assert report.packed_layers == 4 + (get_recipe(method).downsample == "binary_conv")
    tensors, _ = read_export(path)
    conv = model[3].conv1
    assert tensors["3.conv1.weight_bits"].shape == (32, 3, 3, 2)
    assert torch.equal(unpack_weight(tensors["3.conv1.weight_bits"], 16), binary_sign(conv.effective_weight()))
    rebuilt, _ = load_exported(path, residual_blocks(method))
    packed, _ = load_exported(path, residual_blocks(method), packed=True)
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(rebuilt(x), expected)
        torch.testing.assert_close(packed(x), expected, rtol=1e-5, atol=1e-5)


def test_generic_module_with_binary_padding(tmp_path: Path) -> None:
    def build() -> nn.Module:
        return nn.Sequential(
            BinaryConv2d(3, 8, 3, padding=1, bias=True, input_binarizer=SIGN, weight_binarizer=SCALED, pad_value=-1.0),
            nn.BatchNorm2d(8),
            BinaryConv2d(8, 8, 3, padding=1, input_binarizer=SIGN, weight_binarizer=WSIGN, pad_value=1.0,
                         input_scale=True),
            BinaryConv2d(8, 4, 1, input_binarizer=SIGN),  # real weights stay float
        )

    model = build().eval()
    with torch.no_grad():
        model[0].bias.normal_()
    path = tmp_path / "seq.safetensors"
    export_model(model, path, {"note": "skeleton needed"})
    rebuilt, _ = load_exported(path, build())
    assert isinstance(rebuilt[0], PackedBinaryConv2d) and type(rebuilt[3]) is BinaryConv2d
    x = torch.randn(2, 3, 5, 6)
    assert torch.equal(rebuilt(x), model(x))
    with pytest.raises(ValueError, match="meta lacks arch, method, num_classes .not a backbone: pass the model skeleton"):
        load_exported(path)
    with pytest.raises(ValueError, match="does not fit"):
        load_exported(path, nn.Sequential(BinaryConv2d(3, 8, 3, input_binarizer=SIGN, weight_binarizer=WSIGN)))
    with pytest.raises(ValueError, match="itself a BinaryConv2d"):
        pack_model(BinaryConv2d(3, 8, 3, weight_binarizer=WSIGN))


def test_export_cli_and_rebuild_from_the_file_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = torch.randn(2, 3, 32, 32)
    model = randomize(create_model("resnet18", "reactnet"), x)
    meta = {"method": "reactnet", "arch": "resnet18", "num_classes": 1000, "image_size": 32, "top1": 0.5}
    checkpoint = tmp_path / "best.pt"
    save_atomic({"model": model.state_dict(), "meta": meta}, checkpoint)
    out = tmp_path / "reactnet.safetensors"
    assert main([str(checkpoint), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "outputs identical" in printed and "16 binary convs (10,985,472 weights at 1 bit)" in printed
    ratio = float(printed.split("export is ")[1].split("x smaller")[0])
    assert 10.5 < ratio < 11.1  # DIR-Net: 11.1x on parameters; the file also holds BN statistics and a header
    assert out.stat().st_size < 4.4e6
    before = checkpoint.read_bytes()  # the probe's case: --out naming the input overwrote the checkpoint
    same = f"{tmp_path}/../{tmp_path.name}/best.pt"  # another spelling of the same file
    assert main([str(checkpoint), "--out", same]) == 2
    assert capsys.readouterr().err == (f"error: --out {same} is the checkpoint being exported; "
                                       "write the export to another file\n")
    assert checkpoint.read_bytes() == before

    tensors, metadata = read_export(out)
    assert metadata["meta"] == meta and len(metadata["packed_layers"]) == 16
    bits = tensors["layer2.0.conv1.weight_bits"]
    assert bits.dtype == torch.uint8 and bits.shape == (128, 3, 3, 8)
    assert torch.equal(unpack_weight(bits, 64), binary_sign(model.layer2[0].conv1.effective_weight()))
    assert tensors["layer1.0.conv1.input_binarizer.pre.bias"].shape == (1, 64, 1, 1)  # RSign's shift stays float
    assert "layer2.0.conv1.weight" not in tensors and not any(".weight_binarizer." in key for key in tensors)
    rebuilt, rebuilt_meta = load_exported(out)
    assert rebuilt_meta == meta and not rebuilt.training
    data = out.read_bytes()  # a flipped bit in the packed weights: caught by the checksum in the metadata
    start = data.find(bits.numpy().tobytes())
    corrupt = bytearray(data)
    corrupt[start + bits.numel() // 2] ^= 0x04
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(corrupt)
    with pytest.raises(ValueError, match=f"^{broken} is corrupted: its tensors no longer match the checksum"):
        read_export(broken)
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(rebuilt(x), expected)
        assert len(set_packed(rebuilt)) == 16
        torch.testing.assert_close(rebuilt(x), expected, rtol=1e-4, atol=1e-4)


def test_bad_inputs_give_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "x.safetensors")
    assert main([str(tmp_path / "missing.pt"), "--out", out]) == 2
    assert "does not exist" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    assert main([str(junk), "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.strip().count("\n") == 0
    save_atomic({"model": {}, "meta": {"arch": "resnet18"}}, junk)
    assert main([str(junk), "--out", out]) == 2
    assert capsys.readouterr().err == (f"error: {junk} meta lacks method, num_classes; expected a pretrained backbone "
                                       "(best.pt or last.pt of pretrain/run.py) of this version\n")
    with pytest.raises(ValueError, match="not a safetensors file"):
        read_export(junk)
    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(ValueError, match="not a cmim-dense 1-bit export"):
        read_export(plain)


def test_agreement_compares_image_by_image() -> None:
    """Catches: a difference taken over the whole batch (one tie would fail every image), the wrong axis,
    a signed instead of an absolute difference, the tolerance not applied."""
    bump = torch.zeros(3, 2, 2, 2)
    bump[1, 0, 1, 1], bump[2, 1, 0, 0] = 5e-5, -2e-3
    images = torch.randn(3, 2, 2, 2)
    check = agreement(lambda x: x + bump, lambda x: x, images)
    assert check.differences == pytest.approx((0.0, 5e-5, 2e-3), abs=1e-7)
    assert check.agreeing == 2 and agreement(lambda x: x + bump, lambda x: x, images, tolerance=1e-5).agreeing == 1
    assert check.record() == {"tolerance": 1e-4, "max_abs_differences": list(check.differences), "agreeing_draws": 2}
