"""Binary dense heads: an smp decoder whose 3x3 convolutions are 1-bit, built from a method's recipe.

Every ``conv 3x3 -> norm -> ReLU`` of an smp decoder (DeepLabV3/V3+'s ASPP branches and their
3x3 fusion convs, FPN's segmentation blocks, U-Net's decoder blocks; a depthwise-separable 3x3
counts as one 3x3 conv) becomes a :class:`BinaryHeadUnit`, the Bi-Real layout the binary backbones
use: ``act(norm(conv(input_norm(x))) + shortcut(x))``, ``conv`` a
:class:`~cmim_dense.binary.BinaryConv2d` with the recipe's input and weight binarizers, the
recipe's block activation in place of the ReLU.  ``input_norm`` (a learned threshold per channel)
is there because a decoder's inputs are not centred: most come out of a ReLU, and sign(ReLU(v)) is
+1 everywhere.  The shortcut is real-valued and, where the width changes, parameter-free
(:class:`ChannelBypass`).  The 1x1 convolutions and the output layer stay full precision, as the
first and last layers of the binary backbones do.  docs/binary_heads.md: the layouts, the choices
measured, and what this takes from BiDense and Bi-MTDP and what it does not.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..methods import get_recipe
from ..methods.recipe import Recipe
from ..models.layers import LayerFactory

NORMS = (nn.BatchNorm2d, nn.GroupNorm)


class BinaryHeadUnit(nn.Module):
    """``act(norm(conv(input_norm(x))) + shortcut(x))``: one binary 3x3 convolution of a centred input,
    with a real-valued shortcut."""

    FOLDABLE = (("conv", "norm"),)  # packed.fuse folds a BatchNorm norm into the packed conv

    def __init__(self, layers: LayerFactory, cin: int, cout: int, dilation: int, norm: nn.Module) -> None:
        super().__init__()
        self.input_norm = _norm_like(norm, cin)
        self.conv = layers.conv(cin, cout, 3, 1, dilation)
        self.norm = norm
        self.shortcut = nn.Identity() if cin == cout else ChannelBypass(cout)
        self.act = layers.block_activation(cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(self.input_norm(x))) + self.shortcut(x))


class ChannelBypass(nn.Module):
    """The real-valued input brought to ``channels`` along the channel axis, with no parameters and no
    multiply-add per channel pair: channel groups averaged (C_in a multiple of C_out), each channel
    repeated (C_out a multiple of C_in), otherwise the mean of ceil(C_in / C_out) windows of C_out
    consecutive channels at offsets spread evenly from 0 to C_in - C_out (every input channel in at
    least one), or the channels tiled and cut to C_out (views and adds: docs/binary_heads.md says why
    not a 1x1 conv or pooling over channels)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: Tensor) -> Tensor:
        cin, cout = x.shape[1], self.channels
        if cin % cout == 0:
            return x.unflatten(1, (cout, cin // cout)).mean(2)
        if cout % cin == 0:
            return x.repeat_interleave(cout // cin, dim=1)
        if cin < cout:
            return x.repeat(1, -(-cout // cin), 1, 1)[:, :cout]
        windows = -(-cin // cout)
        offsets = [round(k * (cin - cout) / (windows - 1)) for k in range(windows)]
        return sum(x[:, offset:offset + cout] for offset in offsets) / windows

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


def _norm_like(norm: nn.Module, channels: int) -> nn.Module:
    if isinstance(norm, nn.GroupNorm):
        return nn.GroupNorm(norm.num_groups, channels)
    return nn.BatchNorm2d(channels)


def _conv3x3(module: nn.Module) -> tuple[int, int, int] | None:
    """(in, out, dilation) of a dense 3x3 conv, or of smp's depthwise-separable 3x3 (depthwise then
    pointwise); None for anything else."""
    if isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3) and module.groups == 1:
        return module.in_channels, module.out_channels, module.dilation[0]
    children = list(module.children()) if isinstance(module, nn.Sequential) else []
    if (len(children) == 2 and all(isinstance(c, nn.Conv2d) for c in children)
            and children[0].kernel_size == (3, 3) and children[0].groups == children[0].in_channels
            and children[1].kernel_size == (1, 1)):
        return children[0].in_channels, children[1].out_channels, children[0].dilation[0]
    return None


def binarize_decoder(decoder: nn.Module, recipe: Recipe) -> int:
    """Replace, in place, every run of three consecutive children ``3x3 conv, norm, ReLU`` of ``decoder``'s
    modules by a :class:`BinaryHeadUnit` of ``recipe`` (in the conv's place; the norm's and the ReLU's
    places become identities, so a forward that calls them in turn, as smp's decoders and sequences do,
    runs the unit); returns how many were replaced."""
    layers = LayerFactory(recipe)
    replaced = 0
    for module in list(decoder.modules()):
        children = list(module.named_children())
        for (conv_name, conv), (norm_name, norm), (act_name, act) in zip(children, children[1:], children[2:]):
            shape = _conv3x3(conv)
            if shape is None or not isinstance(norm, NORMS) or not isinstance(act, nn.ReLU):
                continue
            cin, cout, dilation = shape
            setattr(module, conv_name, BinaryHeadUnit(layers, cin, cout, dilation, norm))
            setattr(module, norm_name, nn.Identity())
            setattr(module, act_name, nn.Identity())
            replaced += 1
    if replaced == 0:
        raise ValueError("this head has no 3x3 conv -> norm -> ReLU to binarize")
    return replaced


def binary_head_recipe(name: str) -> Recipe:
    """The recipe that ``--binary-head NAME`` binarizes a head with; a one-line error for a method without
    binary convolutions (an unknown name: the recipes registry's)."""
    recipe = get_recipe(name)
    if not recipe.is_binary:
        raise ValueError(f"--binary-head needs a binary method (its recipe binarizes the head), got {name!r}")
    return recipe
