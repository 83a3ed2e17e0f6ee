"""S2-BNN (Shen et al., CVPR 2021): label-free training by guided distribution calibration."""

from ..binary.spec import Spec
from . import register
from .recipe import Recipe, TrainingDefaults

RECIPE = register(
    Recipe(
        name="s2bnn",
        description="S2-BNN: ReActNet binarizers trained without labels from a real teacher's distribution",
        paper="Shen et al., S2-BNN: Self-supervised BNNs via Guided Distribution Calibration, CVPR 2021",
        code="szq0214/S2-BNN",
        block="bireal",
        input_binarizer=Spec("rsign", estimator=Spec("approx_sign")),
        weight_binarizer=Spec("scaled_sign", estimator=Spec("ste_clip"), scale_grad="none"),
        block_act="rprelu",
        stem_act="identity",
        downsample="avgpool_conv",
        init="uniform_small",
        teacher="required",
        training=TrainingDefaults(
            optimizer="adam", lr=3e-4, weight_decay=0.0, epochs=200, schedule="linear", loss="gdc", two_stage=True
        ),
    )
)
