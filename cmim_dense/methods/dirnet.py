"""DIR-Net (Qin et al., IJCV 2023): IR-Net's architecture with IMB, DTE and RBD, as
reconstructed in docs/methods.md (no official code exists)."""

import dataclasses

from ..spec import Spec
from . import register
from .irnet import RECIPE as IRNET
from .recipe import TrainingDefaults

DTE = Spec("dte", t_min=0.1, t_max=10.0, scale="std")

RECIPE = register(
    dataclasses.replace(
        IRNET,
        name="dirnet",
        description="DIR-Net (reconstruction): IMB weights, distribution-sensitive DTE, RBD distillation",
        paper="Qin et al., Distribution-sensitive Information Retention for Accurate BNN, IJCV 2023",
        code="none released",
        input_binarizer=Spec("sign", estimator=DTE),
        weight_binarizer=Spec("libra_pb", estimator=DTE),
        teacher="required",
        training=TrainingDefaults(
            optimizer="sgd", lr=0.1, weight_decay=1e-4, epochs=100, schedule="cos", loss="ce+rbd"
        ),
    )
)
