"""The two residual block layouts of binary ResNets (docs/methods.md, "Architectures")."""

from __future__ import annotations

from torch import Tensor, nn

from .layers import LayerFactory


class _TwoConvBlock(nn.Module):
    """Two 3x3 convs at binary positions, each followed by BN; subclasses wire the shortcuts.

    ``dilation`` gives (conv1, conv2) dilations: when a stage is dilated instead of strided,
    its first block keeps the previous dilation on conv1, as torchvision does.
    """

    FOLDABLE = (("conv1", "bn1"), ("conv2", "bn2"))  # (conv, the BatchNorm on its output): packed.fuse folds them

    def __init__(self, layers: LayerFactory, cin: int, cout: int, stride: int, dilation: tuple[int, int]) -> None:
        super().__init__()
        self.conv1 = layers.conv(cin, cout, 3, stride, dilation[0])
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = layers.block_activation(cout)
        self.conv2 = layers.conv(cout, cout, 3, 1, dilation[1])
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = layers.block_activation(cout)
        destrided_step = dilation[0] if dilation[1] != dilation[0] else 0
        self.downsample = layers.downsample(cin, cout, stride, destrided_step)

    def main_convs(self) -> list[str]:
        """Names of the convolutions on the main path, in forward order."""
        return ["conv1", "conv2"]

    def shortcut(self, x: Tensor) -> Tensor:
        return x if self.downsample is None else self.downsample(x)


class BasicBlock(_TwoConvBlock):
    """Layout A (BNN, XNOR-Net, torchvision; CIFAR RBNN/CMIM): one shortcut per block.

    out = act2(BN(conv2(act1(BN(conv1(x))))) + shortcut(x)).
    """

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class BiRealBlock(_TwoConvBlock):
    """Layout B (Bi-Real, ReActNet, ImageNet IR-Net/RBNN): a real shortcut around every conv.

    h = act1(BN(conv1(x)) + shortcut(x)); out = act2(BN(conv2(h)) + h).
    Two of these per ResNet "block" give Bi-Real-18's 16 single-conv blocks.
    """

    def forward(self, x: Tensor) -> Tensor:
        h = self.act1(self.bn1(self.conv1(x)) + self.shortcut(x))
        return self.act2(self.bn2(self.conv2(h)) + h)


BLOCKS: dict[str, type[_TwoConvBlock]] = {"basic": BasicBlock, "bireal": BiRealBlock}
