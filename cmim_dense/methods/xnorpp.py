"""XNOR-Net++ (Bulat and Tzimiropoulos, BMVC 2019): learned per-channel scale."""

from ..spec import Spec
from . import register
from .recipe import Recipe, TrainingDefaults

RECIPE = register(
    Recipe(
        name="xnorpp",
        description="XNOR-Net++: Gamma*sign(W) with a learned per-channel Gamma, Bi-Real layout",
        paper="Bulat and Tzimiropoulos, XNOR-Net++, BMVC 2019",
        code="none released",
        block="bireal",
        input_binarizer=Spec("sign", estimator=Spec("ste_clip")),
        weight_binarizer=Spec("learned_scale", estimator=Spec("ste_clip")),
        block_act="identity",
        stem_act="identity",
        downsample="avgpool_conv",
        training=TrainingDefaults(optimizer="sgd", lr=0.1, weight_decay=1e-4, epochs=100, schedule="cos"),
    )
)
