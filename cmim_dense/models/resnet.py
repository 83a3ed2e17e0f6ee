"""Binary ResNet-18/34 backbones (ImageNet and CIFAR stems) built from a method recipe."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..binary import set_progress
from ..methods.recipe import Recipe
from ..registry import Registry
from .blocks import BLOCKS, _TwoConvBlock
from .init import initialize
from .layers import LayerFactory

STAGE_CHANNELS = (64, 128, 256, 512)


@dataclass(frozen=True)
class ArchSpec:
    """Depth and stem of one architecture: ``imagenet`` = 7x7/2 conv + 3x3/2 max-pool,
    ``cifar`` = 3x3/1 conv and no pool (for 32x32 inputs)."""

    layers: tuple[int, int, int, int]
    stem: str
    description: str


ARCHS: Registry[ArchSpec] = Registry("architecture")
ARCHS.add("resnet18", ArchSpec((2, 2, 2, 2), "imagenet", "ResNet-18, ImageNet stem"))
ARCHS.add("resnet34", ArchSpec((3, 4, 6, 3), "imagenet", "ResNet-34, ImageNet stem"))
ARCHS.add("resnet18_cifar", ArchSpec((2, 2, 2, 2), "cifar", "ResNet-18, 3x3 stem for 32x32 inputs"))


class BinaryResNet(nn.Module):
    """A ResNet whose convolutions at binary positions follow ``recipe``.

    The stem conv, the classifier, every BN and (unless the recipe says ``binary_conv``)
    the 1x1 downsample convs stay full precision.  ``output_stride`` (None: the natural 32,
    or 8 for the CIFAR stem) set to 8 or 16 replaces the strides of the last stages by
    dilation (for DeepLab heads); the classifier still works.

    Outputs: ``forward(x)`` gives logits; ``forward_features(x)`` gives the five feature
    maps a dense head needs (stem at /2, layer1..layer4), described by ``feature_info``.
    ``tap_sites()`` names the binary activation sites (see :mod:`cmim_dense.models.taps`).
    """

    def __init__(
        self,
        recipe: Recipe,
        arch: str = "resnet18",
        num_classes: int = 1000,
        output_stride: int | None = None,
        in_chans: int = 3,
        real_weights: bool = False,
    ) -> None:
        super().__init__()
        spec = ARCHS.get(arch)
        recipe = recipe.for_arch(arch)
        self.recipe, self.arch, self.num_classes = recipe, arch, num_classes
        layers = LayerFactory(recipe, real_weights)
        # children are registered in forward order (conv1, bn1, act, maxpool, layer1..4): timm's
        # features_only wrapper runs them in that order
        if spec.stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
            pool: nn.Module = nn.MaxPool2d(3, 2, 1)
            stride = 4
        else:
            self.conv1 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
            pool = nn.Identity()
            stride = 1
        self.bn1 = nn.BatchNorm2d(64)
        self.act = layers.activation(recipe.stem_act, 64)
        self.maxpool = pool
        stem_reduction = stride // 2 if spec.stem == "imagenet" else 1
        natural = [stride * 2**i for i in range(4)]
        output_stride = natural[-1] if output_stride is None else output_stride
        if output_stride not in natural:
            raise ValueError(f"output_stride {output_stride} not possible for {arch}; valid: {natural}")

        block_cls = BLOCKS[recipe.block]
        self.feature_info: list[dict[str, Any]] = [{"num_chs": 64, "reduction": stem_reduction, "module": "act"}]
        cin, dilation = 64, 1
        for index, (depth, cout) in enumerate(zip(spec.layers, STAGE_CHANNELS)):
            stage_stride = 1 if index == 0 else 2
            previous = dilation
            if stride * stage_stride > output_stride:
                dilation *= stage_stride
                stage_stride = 1
            stride *= stage_stride
            blocks = [block_cls(layers, cin, cout, stage_stride, (previous, dilation))]
            blocks += [block_cls(layers, cout, cout, 1, (dilation, dilation)) for _ in range(depth - 1)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
            self.feature_info.append({"num_chs": cout, "reduction": stride, "module": f"layer{index + 1}"})
            cin = cout
        self.output_stride = output_stride

        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head_norm: nn.Module = nn.BatchNorm1d(512) if recipe.head_norm else nn.Identity()
        self.fc = nn.Linear(512, num_classes)
        initialize(self, recipe.init)

    @property
    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def set_progress(self, progress: float) -> None:
        """Drive every schedule of the model (EDE/RBNN/DTE t and k, RBNN rotations)."""
        set_progress(self, progress)

    def tap_sites(self) -> list[list[list[str]]]:
        """Names of the main-path binary convs, nested as [stage][block][conv]."""
        if self.recipe.input_binarizer is None:
            return [[[] for _ in stage] for stage in self.stages]
        sites = []
        for s, stage in enumerate(self.stages, start=1):
            stage_sites = []
            for b, block in enumerate(stage):
                assert isinstance(block, _TwoConvBlock)
                stage_sites.append([f"layer{s}.{b}.{name}" for name in block.main_convs()])
            sites.append(stage_sites)
        return sites

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.act(self.bn1(self.conv1(x)))

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """[stem (/2 or /1), layer1, layer2, layer3, layer4] feature maps."""
        features = [self.forward_stem(x)]
        x = self.maxpool(features[0])
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    def penultimate(self, x: Tensor) -> Tensor:
        """The feature the classifier sees: pooled last stage (and BatchNorm1d where the recipe has it)."""
        return self.head_norm(torch.flatten(self.avgpool(x), 1))

    def forward_head(self, x: Tensor) -> Tensor:
        return self.fc(self.penultimate(x))

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Logits; with ``return_features`` also the :meth:`forward_features` maps (one pass)."""
        features = self.forward_features(x)
        logits = self.forward_head(features[-1])
        return (logits, features) if return_features else logits
