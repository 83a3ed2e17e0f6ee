"""Dense models: an smp decoder ("head") over a binary backbone encoder, one registry entry per head.

A :class:`DenseHead` names an smp architecture that takes an encoder by name, the output strides
it works at, and how the toolkit's one width setting (``decoder_channels``) maps onto that
architecture's own arguments.  Adding an smp decoder is one :func:`register_head` call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import segmentation_models_pytorch as smp
from torch import nn

from ..registry import Registry
from .binary_head import binarize_decoder, binary_head_recipe
from .encoder import register_encoder
from .multitask import MultiTaskDenseModel, multitask_from_models

# The DeepLab papers' ASPP rates: (6, 12, 18) at output stride 16, doubled at 8
# (smp uses (12, 24, 36) for both).
ATROUS_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}


@dataclass(frozen=True)
class DenseHead:
    """An smp decoder: ``build`` (the smp model class), the encoder ``output_strides`` it accepts
    (dilated DeepLab encoders at 8 or 16; FPN and U-Net merge the undilated /4 ... /32 pyramid,
    so 32 only) and ``arguments(output_stride, width)``, its own keyword arguments."""

    name: str
    build: Callable[..., smp.SegmentationModel]
    output_strides: tuple[int, ...]
    arguments: Callable[[int, int], dict[str, Any]]
    description: str


HEADS: Registry[DenseHead] = Registry("head")


def register_head(head: DenseHead) -> DenseHead:
    return HEADS.add(head.name, head)


def _deeplab_arguments(output_stride: int, width: int) -> dict[str, Any]:
    return {"encoder_output_stride": output_stride, "decoder_channels": width,
            "decoder_atrous_rates": ATROUS_RATES[output_stride]}


register_head(DenseHead("deeplabv3", smp.DeepLabV3, (8, 16), _deeplab_arguments,
                        "DeepLabV3: ASPP on the last feature map, upsampled to the input (CMIM Sec. 4.5)"))
register_head(DenseHead("deeplabv3plus", smp.DeepLabV3Plus, (8, 16), _deeplab_arguments,
                        "DeepLabV3+: ASPP plus a decoder that merges the /4 features"))
register_head(DenseHead("fpn", smp.FPN, (32,),
                        lambda stride, width: {"decoder_pyramid_channels": width,
                                               "decoder_segmentation_channels": 32 * max(1, width // 64)},
                        "FPN: a top-down pyramid over /4 ... /32, merged at /4 (segmentation blocks width / 2, "
                        "a multiple of 32 for their GroupNorm)"))
register_head(DenseHead("unet", smp.Unet, (32,),
                        lambda stride, width: {"decoder_channels": tuple(max(1, width >> k) for k in range(5))},
                        "U-Net: five upsampling stages with skip connections, widths width, width/2, ..."))


def create_dense_model(arch: str, method: str, out_channels: int | dict[str, int], head: str = "deeplabv3",
                       output_stride: int = 8, decoder_channels: int = 256, real_weights: bool = False,
                       binary_head: str | None = None) -> smp.SegmentationModel | MultiTaskDenseModel:
    """The registered ``head`` with ``out_channels`` outputs over the (arch, method) backbone; with
    ``binary_head`` (a binary method's name) its 3x3 convolutions binarized by that method's recipe
    (:func:`~cmim_dense.dense.binary_head.binarize_decoder`).  ``out_channels`` a dict (task name ->
    outputs): one :class:`~cmim_dense.dense.multitask.MultiTaskDenseModel`, that head once per task
    over one backbone."""
    if isinstance(out_channels, dict):
        return multitask_from_models({name: create_dense_model(arch, method, channels, head, output_stride,
                                                               decoder_channels, real_weights, binary_head)
                                      for name, channels in out_channels.items()})
    entry = HEADS.get(head)
    if output_stride not in entry.output_strides:
        strides = " or ".join(map(str, entry.output_strides))
        raise ValueError(f"the {head} head works at output stride {strides}, got {output_stride}")
    model = entry.build(encoder_name=register_encoder(arch, method, real_weights), encoder_weights=None,
                        classes=out_channels, **entry.arguments(output_stride, decoder_channels))
    if binary_head is not None:
        binarize_decoder(model.decoder, binary_head_recipe(binary_head))
    return model


def freeze_backbone(model: smp.SegmentationModel | MultiTaskDenseModel) -> smp.SegmentationModel | MultiTaskDenseModel:
    """Freeze the encoder for good (the CMIM paper's protocol): no gradients, and every encoder module in
    eval mode.  smp's ``freeze_encoder`` alone puts only the normalisation layers in eval mode, and its
    ``train()``/``eval()`` then skip the encoder, so other modules would stay in training mode: RBNN's
    rotations would be re-fitted on the first forward of a loaded model."""
    model.freeze_encoder()
    model.encoder.eval()
    return model


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters the optimizer trains: those still requiring gradients."""
    return [p for p in model.parameters() if p.requires_grad]
