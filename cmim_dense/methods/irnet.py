"""IR-Net (Qin et al., CVPR 2020): Libra-PB weights and the Error Decay Estimator."""

from ..spec import Spec
from . import register
from .recipe import Recipe, TrainingDefaults

EDE = Spec("ede", t_min=0.1, t_max=10.0)

RECIPE = register(
    Recipe(
        name="irnet",
        description="IR-Net: Libra-PB (balanced, standardized, 2^s-scaled) weights, EDE backward",
        paper="Qin et al., Forward and Backward Information Retention for Accurate BNNs, CVPR 2020",
        code="htqin/IR-Net",
        block="bireal",
        input_binarizer=Spec("sign", estimator=EDE),
        weight_binarizer=Spec("libra_pb", estimator=EDE),
        block_act="hardtanh",
        stem_act="hardtanh",
        downsample="conv",
        head_norm=True,
        training=TrainingDefaults(
            optimizer="sgd",
            lr=0.1,
            nesterov=True,
            weight_decay=1e-4,
            epochs=100,
            schedule="step",
            milestones=(30, 60, 90),
            warmup_epochs=4,
        ),
        arch_overrides={"resnet18_cifar": {"block": "basic", "stem_act": "identity"}},
    )
)
