"""Our binary ResNet as a segmentation_models_pytorch encoder plug-in.

smp builds encoders by name from ``smp.encoders.encoders``; :func:`register_encoder` adds one
entry per (arch, method) so that ``smp.DeepLabV3(encoder_name=...)`` builds the binary
backbone.  Dilation for output stride 8/16 is native to :class:`BinaryResNet` (it also
de-strides the average-pool shortcuts of Bi-Real-style blocks, which smp's ``make_dilated``
cannot, since that only rewrites ``nn.Conv2d``), so ``make_dilated`` only checks the stride.

A frozen encoder on a CPU runs its forward on the packed XNOR-popcount kernel (:mod:`cmim_dense.packed`):
a packed copy of the float backbone, built on first use and rebuilt whenever the float weights
change, while the float backbone stays the model's state (what is saved, loaded and exported).
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from segmentation_models_pytorch.encoders._base import EncoderMixin
from torch import Tensor, nn

from ..methods import list_recipes
from ..models import create_model
from ..models.loading import load_strict
from ..packed import PackedInference, runs_on_the_kernel


class BinaryResNetEncoder(nn.Module, EncoderMixin):
    """Returns ``[x, f/2, f/4, f/8, f/16, f/32]`` (the last ones at /8 or /16 when dilated).

    While its parameters are frozen (``requires_grad`` False everywhere) the backbone always
    runs in eval mode (BatchNorm statistics fixed) and under ``no_grad``; then, with
    ``packed_inference`` (the default), float32 CPU inputs go through the packed kernel, which
    gives the float forward's features up to float rounding and sign ties (docs/export.md).  The
    float path stays for GPUs, autocast, ``torch.compile``, an encoder being trained, and backbones
    with no binary convolution to pack.
    """

    def __init__(self, arch: str, method: str, real_weights: bool = False, depth: int = 5,
                 output_stride: int = 32) -> None:
        super().__init__()
        if depth != 5:
            raise ValueError(f"the binary ResNet encoder has depth 5, got {depth}")
        if arch not in ("resnet18", "resnet34"):
            raise ValueError(f"dense heads need an ImageNet-layout backbone (resnet18 or resnet34), got {arch!r}: "
                             "resnet18_cifar has no stride-2 stem")
        self.backbone = create_model(arch, method, num_classes=1, real_weights=real_weights,
                                     output_stride=None if output_stride == 32 else output_stride)
        self.backbone.fc = nn.Identity()  # classification head unused under a dense decoder
        self._depth, self._in_channels, self._output_stride = depth, 3, output_stride
        self._out_channels = [3] + [info["num_chs"] for info in self.backbone.feature_info]
        self.packed_inference = True
        self._packed = PackedInference()

    @property
    def frozen(self) -> bool:
        return not any(p.requires_grad for p in self.parameters())

    def train(self, mode: bool = True) -> BinaryResNetEncoder:
        return super().train(mode and not self.frozen)

    def forward(self, x: Tensor) -> list[Tensor]:
        if self.frozen:  # train() keeps a frozen encoder in eval mode (BatchNorm statistics fixed)
            with torch.no_grad():
                backbone = self._packed.of(self.backbone) if self._on_the_kernel(x) else self.backbone
                return [x, *backbone.forward_features(x)]
        return [x, *self.backbone.forward_features(x)]

    def _on_the_kernel(self, x: Tensor) -> bool:
        """Whether this frozen forward of ``x`` runs on the packed kernel (see the class docstring)."""
        return (self.packed_inference and x.device.type == "cpu" and x.dtype == torch.float32
                and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()
                and runs_on_the_kernel(self.backbone))

    def make_dilated(self, output_stride: int) -> None:
        if output_stride != self._output_stride:
            raise ValueError(f"encoder built for output stride {self._output_stride}, asked for {output_stride}")

    def load_backbone(self, state: dict[str, Tensor], source: str) -> None:
        """Load a pretraining checkpoint's weights (its classifier is dropped), strictly."""
        load_strict(self.backbone, {k: v for k, v in state.items() if not k.startswith("fc.")}, source)


def register_encoder(arch: str, method: str, real_weights: bool = False) -> str:
    """Register the (arch, method) binary backbone with smp and return its encoder name."""
    name = f"cmim-{arch}-{method}" + ("-real-weights" if real_weights else "")
    smp.encoders.encoders[name] = {
        "encoder": BinaryResNetEncoder,
        "pretrained_settings": {},
        "params": {"arch": arch, "method": method, "real_weights": real_weights},
    }
    return name


def register_encoders() -> list[str]:
    """Register every (ImageNet-stem arch, method) backbone with smp and return the encoder names."""
    return [register_encoder(arch, recipe.name) for arch in ("resnet18", "resnet34") for recipe in list_recipes()]


register_encoders()  # on import: cmim_dense.plugins imports this module once the library is imported
