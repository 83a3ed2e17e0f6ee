"""XNOR-Net (Rastegari et al., ECCV 2016): per-filter L1 weight scale."""

from ..spec import Spec
from . import register
from .recipe import Recipe, TrainingDefaults

RECIPE = register(
    Recipe(
        name="xnor",
        description="XNOR-Net: alpha*sign(W) with alpha = mean|W| per filter, clipped STE",
        paper="Rastegari et al., XNOR-Net, ECCV 2016",
        code="allenai/XNOR-Net (Torch7)",
        block="basic",
        input_binarizer=Spec("sign", estimator=Spec("ste_clip")),
        weight_binarizer=Spec("scaled_sign", estimator=Spec("ste_clip"), scale_grad="through"),
        block_act="hardtanh",
        stem_act="hardtanh",
        downsample="conv",
        training=TrainingDefaults(optimizer="sgd", lr=0.1, weight_decay=1e-4, epochs=100, schedule="cos"),
    )
)
