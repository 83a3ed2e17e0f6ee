"""S2-BNN (Shen et al., CVPR 2021): ReActNet's binary network trained without labels
by guided distribution calibration from a real-valued teacher."""

import dataclasses

from . import register
from .reactnet import RECIPE as REACTNET
from .recipe import TrainingDefaults

RECIPE = register(
    dataclasses.replace(
        REACTNET,
        name="s2bnn",
        description="S2-BNN: ReActNet binarizers trained without labels from a real teacher's distribution",
        paper="Shen et al., S2-BNN: Self-supervised BNNs via Guided Distribution Calibration, CVPR 2021",
        code="szq0214/S2-BNN",
        training=TrainingDefaults(
            optimizer="adam", lr=3e-4, weight_decay=0.0, epochs=200, schedule="linear", loss="gdc",
            distill_temperature=0.2, two_stage=True
        ),
    )
)
