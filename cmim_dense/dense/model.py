"""DeepLab models over binary backbones: built from a pretraining checkpoint, frozen by default."""

from __future__ import annotations

from typing import Any

import segmentation_models_pytorch as smp
from torch import nn

from ..engine.checkpoint import load_checkpoint_as
from .encoder import BinaryResNetEncoder, register_encoder

HEADS = {"deeplabv3": smp.DeepLabV3, "deeplabv3plus": smp.DeepLabV3Plus}
# The DeepLab papers' ASPP rates: (6, 12, 18) at output stride 16, doubled at 8
# (smp uses (12, 24, 36) for both).
ATROUS_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}


def create_dense_model(arch: str, method: str, out_channels: int, head: str = "deeplabv3", output_stride: int = 8,
                       decoder_channels: int = 256, real_weights: bool = False) -> smp.SegmentationModel:
    """A DeepLabV3 (default) or DeepLabV3+ head with ``out_channels`` outputs over the (arch, method) backbone."""
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; valid: {', '.join(HEADS)}")
    if output_stride not in ATROUS_RATES:
        raise ValueError(f"output stride must be 8 or 16, got {output_stride}")
    return HEADS[head](
        encoder_name=register_encoder(arch, method, real_weights),
        encoder_weights=None,
        encoder_output_stride=output_stride,
        decoder_channels=decoder_channels,
        decoder_atrous_rates=ATROUS_RATES[output_stride],
        classes=out_channels,
    )


def dense_model_from_backbone(path: str, out_channels: int, head: str = "deeplabv3", output_stride: int = 8,
                              decoder_channels: int = 256, freeze: bool = True
                              ) -> tuple[smp.SegmentationModel, dict[str, Any]]:
    """The dense model over the backbone saved at ``path`` by ``pretrain/run.py``, and that backbone's meta.

    ``freeze`` (the CMIM paper's protocol): no backbone parameter is trained, its BatchNorm
    statistics stay fixed, and it runs under ``no_grad``; only the head learns.
    """
    checkpoint = load_checkpoint_as(path, "backbone")
    meta = checkpoint["meta"]
    model = create_dense_model(meta["arch"], meta["method"], out_channels, head, output_stride, decoder_channels,
                               meta.get("real_weights", False))
    encoder: BinaryResNetEncoder = model.encoder
    encoder.load_backbone(checkpoint["model"], str(path))
    if freeze:
        model.freeze_encoder()  # requires_grad off, BatchNorm in eval; smp's train() then skips the encoder
        encoder.eval()
    return model, meta


def head_parameters(model: smp.SegmentationModel) -> list[nn.Parameter]:
    """The parameters the optimizer trains: those still requiring gradients."""
    return [p for p in model.parameters() if p.requires_grad]
