"""ReActNet-18 (Liu et al., ECCV 2020): RSign, RPReLU, distributional loss, two steps."""

from ..spec import Spec
from . import register
from .recipe import Recipe, TrainingDefaults

RECIPE = register(
    Recipe(
        name="reactnet",
        description="ReActNet-18: Bi-Real layout with RSign/RPReLU, KD from a real teacher, two steps",
        paper="Liu et al., ReActNet, ECCV 2020",
        code="liuzechun/ReActNet",
        block="bireal",
        input_binarizer=Spec("rsign", estimator=Spec("approx_sign")),
        weight_binarizer=Spec("scaled_sign", estimator=Spec("ste_clip"), scale_grad="none"),
        block_act="rprelu",
        stem_act="identity",
        downsample="avgpool_conv",
        init="uniform_small",
        teacher="required",
        training=TrainingDefaults(
            optimizer="adam",
            lr=5e-4,
            weight_decay=1e-5,  # step 1: on 4-D parameters only; step 2: none (the official scripts)
            decay_scope="conv",
            second_stage_weight_decay=0.0,
            epochs=120,
            schedule="linear",
            loss="kd",
            two_stage=True,
        ),
    )
)
