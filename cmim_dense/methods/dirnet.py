"""DIR-Net (Qin et al., IJCV 2023): IMB, DTE and RBD, as reconstructed in docs/methods.md."""

from ..binary.spec import Spec
from . import register
from .recipe import Recipe, TrainingDefaults

DTE = Spec("dte", t_min=0.1, t_max=10.0, scale="std")

RECIPE = register(
    Recipe(
        name="dirnet",
        description="DIR-Net (reconstruction): IMB weights, distribution-sensitive DTE, RBD distillation",
        paper="Qin et al., Distribution-sensitive Information Retention for Accurate BNN, IJCV 2023",
        code="none released",
        block="bireal",
        input_binarizer=Spec("sign", estimator=DTE),
        weight_binarizer=Spec("libra_pb", estimator=DTE),
        block_act="hardtanh",
        stem_act="hardtanh",
        downsample="conv",
        head_norm=True,
        teacher="required",
        training=TrainingDefaults(
            optimizer="sgd", lr=0.1, weight_decay=1e-4, epochs=100, schedule="cos", loss="ce+rbd"
        ),
        arch_overrides={"resnet18_cifar": {"block": "basic", "stem_act": "identity"}},
    )
)
