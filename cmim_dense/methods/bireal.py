"""Bi-Real Net (Liu et al., ECCV 2018): shortcut per binary conv, ApproxSign."""

from ..spec import Spec
from . import register
from .recipe import Recipe, TrainingDefaults

RECIPE = register(
    Recipe(
        name="bireal",
        description="Bi-Real: real shortcut around every binary conv, ApproxSign, magnitude-aware sign(W)",
        paper="Liu et al., Bi-Real Net, ECCV 2018 (IJCV 2020)",
        code="liuzechun/Bi-Real-net",
        block="bireal",
        input_binarizer=Spec("sign", estimator=Spec("approx_sign")),
        weight_binarizer=Spec("scaled_sign", estimator=Spec("ste_clip"), scale_grad="detached"),
        block_act="identity",
        stem_act="identity",
        downsample="avgpool_conv",
        init="uniform_small",
        training=TrainingDefaults(
            optimizer="adam",
            lr=1e-3,
            weight_decay=0.0,
            binary_weight_decay=0.0,
            epochs=256,
            batch_size=512,
            schedule="linear",
            label_smoothing=0.1,
        ),
    )
)
