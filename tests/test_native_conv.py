"""The compiled XNOR-popcount convolution: exact against the float path, fused epilogues, build cache, fallback."""

from __future__ import annotations

import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cmim_dense import create_model
from cmim_dense.binary import BinaryConv2d, Spec, binary_sign, set_progress
from cmim_dense.export import PackedBinaryConv2d, export_model, load_exported, set_packed
from cmim_dense.packed import conv as packed_module
from cmim_dense.export.agreement import agreement
from cmim_dense.packed.native import (
    ConvGeometry,
    NativeKernelWarning,
    PackedBits,
    cpu_isa,
    native_library,
    xnor_conv2d_native,
)
from cmim_dense.packed.native.build import build_library, torch_openmp_runtime
from cmim_dense.packed.native.kernel import ISAS, threshold_epilogue, weight_tiles
from cmim_dense.packed.xnor import pack_weight

NATIVE = native_library()
pytestmark = pytest.mark.skipif(NATIVE is None, reason="no C++ compiler: the native kernel cannot be built")
ISA_LIST = list(ISAS[: ISAS.index(cpu_isa(NATIVE)) + 1]) if NATIVE is not None else []
SIGN = Spec("sign", estimator=Spec("ste_clip"))
SCALED = Spec("scaled_sign", estimator=Spec("ste_clip"))

# (batch, C_in, C_out, H, W, kernel, stride, padding, dilation)
SHAPES = [(1, 64, 64, 9, 9, 3, 1, 1, 1), (2, 3, 5, 9, 11, 3, 1, 1, 1), (2, 65, 13, 10, 7, 3, 2, 1, 1),
          (1, 130, 17, 12, 19, 3, 1, 2, 2), (3, 70, 9, 8, 8, 1, 2, 0, 1), (1, 200, 33, 14, 30, 3, 2, 1, 1),
          (2, 64, 8, 5, 40, 3, 1, 0, 1), (1, 129, 24, 6, 5, 3, 1, 2, 1)]


def run_kernel(x: torch.Tensor, weight: torch.Tensor, shape: tuple[int, ...], pad_value: float, isa: str,
               **kwargs: object) -> torch.Tensor:
    """The kernel on +-1 ``weight`` with alpha = 1, beta = 0: the integer sums as floats."""
    _, cin, cout, _, _, kernel, stride, padding, dilation = shape
    geometry = ConvGeometry(cin, cout, (kernel, kernel), (stride, stride), (padding, padding), (dilation, dilation),
                            pad_value)
    tap_sums = weight.sum(1).flatten(1).to(torch.int32).contiguous() if pad_value == 0 and padding else None
    return xnor_conv2d_native(NATIVE, x, geometry, weight_tiles(pack_weight(weight)), torch.ones(cout),
                              torch.zeros(cout), tap_sums=tap_sums, isa=isa, **kwargs)


def float_conv_of_signs(xb: torch.Tensor, weight: torch.Tensor, shape: tuple[int, ...],
                        pad_value: float) -> torch.Tensor:
    _, _, _, _, _, _, stride, padding, dilation = shape
    if pad_value:
        return F.conv2d(F.pad(xb, (padding,) * 4, value=pad_value), weight, None, stride, 0, dilation)
    return F.conv2d(xb, weight, None, stride, padding, dilation)


@pytest.mark.parametrize("isa", ISA_LIST)
@pytest.mark.parametrize("pad_value", [0.0, 1.0, -1.0])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_integer_sums_are_exact(shape: tuple[int, ...], pad_value: float, isa: str) -> None:
    """dot = K - 2 popcount(x XOR w), borders included, equals F.conv2d of the +-1 tensors bit for bit."""
    n, cin, cout, h, w, kernel, *_ = shape
    x = torch.randn(n, cin, h, w)
    weight = binary_sign(torch.randn(cout, cin, kernel, kernel))
    out = run_kernel(x, weight, shape, pad_value, isa)
    assert torch.equal(out, float_conv_of_signs(binary_sign(x), weight, shape, pad_value))
    shift = torch.randn(n, cin)  # the sign of x + shift (ReActNet's RSign, RBNN's centring) is packed in the kernel
    out = run_kernel(x, weight, shape, pad_value, isa, shift=shift)
    assert torch.equal(out, float_conv_of_signs(binary_sign(x + shift[:, :, None, None]), weight, shape, pad_value))


@pytest.mark.parametrize("isa", ISA_LIST)
def test_long_rows_of_all_mismatching_words(isa: str) -> None:
    """Every bit differs (popcount 64 per word) over 72 words per output: a kernel that lets 8-bit byte counts
    run past 31 steps (AVX2) or drops a step overflows or miscounts here, not on random bits."""
    shape = (1, 512, 16, 5, 9, 3, 1, 1, 1)
    x = -torch.ones(1, 512, 5, 9)
    weight = torch.ones(16, 512, 3, 3)
    weight[1::2] = -1.0
    out = run_kernel(x, weight, shape, 0.0, isa)
    assert torch.equal(out, float_conv_of_signs(binary_sign(x), weight, shape, 0.0))
    assert out[0, 0, 2, 4] == -9 * 512


def unpack_layout(bits: PackedBits) -> torch.Tensor:
    """The +-1 activation a :class:`PackedBits` holds, ``(N, C, H, W)``."""
    layout = bits.layout
    rows = torch.arange(layout.height) + layout.pad_h
    columns = torch.arange(layout.width) + layout.pad_w
    words = bits.words[:, :, rows][:, :, :, columns % layout.phases, columns // layout.phases]  # (N, words, H, W)
    channels = torch.arange(layout.channels)
    return ((words[:, channels // 64] >> (channels % 64).view(-1, 1, 1)) & 1).float() * 2 - 1


@pytest.mark.parametrize("isa", ISA_LIST)
def test_threshold_epilogue_writes_the_sign_of_the_affine_output(isa: str) -> None:
    """BN + sign fused as sign * dot >= threshold (flipped for negative scales) equals the unfused sign, and
    the bits land in the next conv's layout, which then computes exactly the conv of those signs."""
    n, cin, cmid, cout, h, w = 2, 70, 75, 6, 9, 10
    x = torch.randn(n, cin, h, w)
    first = binary_sign(torch.randn(cmid, cin, 3, 3))
    second = binary_sign(torch.randn(cout, cmid, 3, 3))
    alpha, beta = torch.randn(cmid, dtype=torch.float64), 20 * torch.randn(cmid, dtype=torch.float64)
    alpha[:5] = -alpha[:5].abs()
    alpha[5], beta[5] = 0.0, -1.0  # a zero scale: the constant sign of beta
    geometry = ConvGeometry(cin, cmid, (3, 3), (1, 1), (1, 1), (1, 1), 0.0)
    following = ConvGeometry(cmid, cout, (3, 3), (2, 2), (2, 2), (2, 2), 0.0)  # zero padding: +1 words, corrected
    tiles, tap_sums = weight_tiles(pack_weight(first)), first.sum(1).flatten(1).to(torch.int32).contiguous()
    ones, zeros = torch.ones(cmid), torch.zeros(cmid)
    dot = xnor_conv2d_native(NATIVE, x, geometry, tiles, ones, zeros, tap_sums=tap_sums, isa=isa).double()
    affine = alpha.view(1, -1, 1, 1) * dot + beta.view(1, -1, 1, 1)
    bits = xnor_conv2d_native(NATIVE, x, geometry, tiles, ones, zeros, tap_sums=tap_sums, isa=isa,
                              bits=(*threshold_epilogue(alpha, beta, 9 * cin), following))
    assert isinstance(bits, PackedBits)
    signs = unpack_layout(bits)
    assert torch.equal(signs, binary_sign(affine).float())
    assert (signs[:, :5] < 0).any() and (signs[:, :5] > 0).any()  # the flipped comparison is exercised
    assert bits.layout.words == 2 and ((bits.words[:, 1] >> (cmid - 64)) == 0).all()  # bits past C_mid are 0
    out = xnor_conv2d_native(NATIVE, bits, following, weight_tiles(pack_weight(second)), torch.ones(cout),
                             torch.zeros(cout), tap_sums=second.sum(1).flatten(1).to(torch.int32).contiguous(),
                             isa=isa)
    assert torch.equal(out, F.conv2d(signs, second, None, 2, 2, 2))


def test_folded_batchnorm_and_bias_match_the_unfused_layers() -> None:
    conv = BinaryConv2d(65, 24, 3, 2, 1, bias=True, input_binarizer=Spec("rsign", estimator=Spec("approx_sign")),
                        weight_binarizer=SCALED).eval()
    bn = torch.nn.BatchNorm2d(24).eval()
    with torch.no_grad():
        for tensor in (conv.bias, conv.input_binarizer.pre.bias, bn.weight, bn.bias, bn.running_mean):
            tensor.normal_()
        bn.weight[:3] *= -1
        bn.running_var.uniform_(0.5, 2.0)
    layer = PackedBinaryConv2d(conv).eval()
    layer.packed = True
    layer.fold(bn)
    x = torch.randn(2, 65, 11, 9)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), bn(conv(x)), rtol=1e-5, atol=1e-5)


def test_fallback_without_the_kernel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """CMIM_DENSE_NATIVE=0, or a compiler that does not exist: the pure-PyTorch path, same outputs; the
    failed build says so in one warning line."""
    conv = BinaryConv2d(33, 16, 3, padding=1, input_binarizer=SIGN, weight_binarizer=SCALED).eval()
    layer = PackedBinaryConv2d(conv).eval()
    layer.packed = True
    x = torch.randn(2, 33, 7, 8)
    calls = []
    monkeypatch.setattr(packed_module, "xnor_conv2d_native",
                        lambda *a, **k: calls.append(1) or xnor_conv2d_native(*a, **k))
    with torch.no_grad():
        native = layer(x)
        assert calls
        monkeypatch.setenv("CMIM_DENSE_NATIVE", "0")
        torch.testing.assert_close(layer(x), native, rtol=1e-6, atol=1e-6)
        monkeypatch.setenv("CMIM_DENSE_NATIVE", "1")
        monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
        monkeypatch.setenv("CMIM_DENSE_CACHE", str(tmp_path / "cache"))
        calls.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fallback = layer(x)
            layer(x)
        assert not calls
    torch.testing.assert_close(fallback, native, rtol=1e-6, atol=1e-6)
    assert len(caught) == 1 and caught[0].category is NativeKernelWarning  # once per process, not per call
    message = str(caught[0].message)
    assert "\n" not in message and "no C++ compiler found" in message and "pure-PyTorch" in message


def test_build_is_cached_atomically(tmp_path: Path) -> None:
    built = build_library(tmp_path)
    assert built.build_seconds is not None and built.build_seconds > 0
    assert [p.name for p in tmp_path.iterdir()] == [built.path.name]  # no temporary file left behind
    assert built.path.name.startswith("xnor_conv-") and built.path.suffix == ".so"
    again = build_library(tmp_path)
    assert again.path == built.path and again.build_seconds is None


def dynamic_entries(library: Path, tag: str) -> list[str]:
    """The values of one tag (NEEDED, SONAME, RUNPATH) in a shared library's dynamic section (readelf -d)."""
    listing = subprocess.run(["readelf", "-d", str(library)], capture_output=True, text=True, check=True).stdout
    return [line.split("[", 1)[1].rstrip("]") for line in listing.splitlines() if f"({tag})" in line]


def openmp_runtimes_mapped() -> set[str]:
    lines = Path("/proc/self/maps").read_text().splitlines()
    return {line.split()[-1] for line in lines if "/" in line and Path(line.split()[-1]).name.startswith(("libgomp",
                                                                                                          "libiomp"))}


@pytest.mark.skipif(shutil.which("readelf") is None or not Path("/proc/self/maps").is_file(),
                    reason="needs readelf and /proc (Linux)")
def test_the_kernel_runs_on_torchs_openmp_runtime(tmp_path: Path) -> None:
    """The library is linked against the OpenMP runtime file torch loaded, found again at load time by its
    folder, and the process then holds that one runtime: one thread team for torch's ops and the kernel.

    Catches: a kernel linked against the compiler's own runtime (plain -fopenmp), which beside a wheel's
    renamed copy (libgomp-<hash>.so.1) makes two teams spin against each other on the same cores."""
    runtime = torch_openmp_runtime()
    assert runtime is not None and runtime.name.startswith(("libgomp", "libiomp"))
    if any((Path(torch.__file__).parent / "lib").glob("libgomp*")):
        assert runtime.parent == Path(torch.__file__).parent / "lib"  # not OpenCV's, also mapped here
    before = openmp_runtimes_mapped()
    built = build_library(tmp_path)
    assert dynamic_entries(runtime, "SONAME")[0] in dynamic_entries(built.path, "NEEDED")
    assert str(runtime.parent) in ":".join(dynamic_entries(built.path, "RUNPATH")).split(":")
    assert openmp_runtimes_mapped() == before  # loading the kernel brought no runtime of its own


def randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Random latent weights and BatchNorm statistics (some scales negative), in eval mode."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.1)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.005, 0.02)
    set_progress(model, 0.5)
    return model.eval()


@pytest.mark.parametrize("method", ["bireal", "irnet", "rbnn", "reactnet", "bnn"])
def test_exported_backbone_runs_on_the_kernel(method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ResNet-18 loaded from its .safetensors export with packed=True: every binary conv on the kernel (BNN's
    basic blocks passing packed bits from conv1 to conv2), outputs equal to the float model's on at least 6
    of 8 images (a sign tie on one image is float rounding, cmim_dense.export.agreement; a wrong kernel
    misses on all)."""
    x = torch.randn(8, 3, 64, 64)
    model = randomize(create_model("resnet18", method, num_classes=10))
    path = tmp_path / f"{method}.safetensors"
    export_model(model, path, {"arch": "resnet18", "method": method, "num_classes": 10})
    packed, _ = load_exported(path, packed=True)
    inputs = []
    monkeypatch.setattr(packed_module, "xnor_conv2d_native",
                        lambda native, x, *a, **k: inputs.append(type(x)) or xnor_conv2d_native(native, x, *a, **k))
    check = agreement(packed, model, x)
    packed_convs = sum(isinstance(m, PackedBinaryConv2d) for m in packed.modules())
    assert len(inputs) == packed_convs >= 16
    assert inputs.count(PackedBits) == (8 if method == "bnn" else 0)  # conv2 of each basic block
    assert check.agreeing >= 6, check


def test_a_fused_model_switched_off_runs_the_float_path_and_a_half_switched_one_says_so(tmp_path: Path) -> None:
    """BNN's basic blocks pass packed bits from conv1 to conv2 on the kernel.  ``set_packed(model, False)``
    switches both back to floats (same outputs as the float model); switching off only a consumer leaves it
    receiving bits, which it refuses in one line naming the fix."""
    x = torch.randn(2, 3, 32, 32)
    model = randomize(create_model("resnet18", "bnn", num_classes=10))
    path = tmp_path / "bnn.safetensors"
    export_model(model, path, {"arch": "resnet18", "method": "bnn", "num_classes": 10})
    packed, _ = load_exported(path, packed=True)
    block = packed.layer1[0]
    assert block.conv1.bn is not None and isinstance(block.bn1, torch.nn.Identity)
    with torch.no_grad():
        set_packed(packed, False)
        torch.testing.assert_close(packed(x), model(x), rtol=1e-4, atol=1e-4)
        set_packed(packed, True)
        block.conv2.packed = False
        with pytest.raises(ValueError, match=r"^packed bits reach a layer whose packed forward is off: .*set_packed"):
            packed(x)
