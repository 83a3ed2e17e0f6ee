"""RBNN (Lin et al., NeurIPS 2020): bi-rotated weights, training-aware sign approximation."""

from ..spec import Spec
from . import register
from .recipe import Recipe, TrainingDefaults

RECIPE = register(
    Recipe(
        name="rbnn",
        description="RBNN: learned bi-rotation of standardized weights, training-aware estimator",
        paper="Lin et al., Rotated Binary Neural Network, NeurIPS 2020",
        code="lmbxmu/RBNN",
        block="bireal",
        input_binarizer=Spec("standardized_sign", estimator=Spec("rbnn", t_min=1e-2, t_max=10.0, activation=True)),
        weight_binarizer=Spec("rotation", estimator=Spec("rbnn", t_min=1e-2, t_max=10.0)),
        block_act="hardtanh",
        stem_act="hardtanh",
        downsample="conv",
        head_norm=True,
        init="rbnn",
        training=TrainingDefaults(
            optimizer="sgd", lr=0.1, weight_decay=1e-4, epochs=150, batch_size=512, schedule="cos"
        ),
        arch_overrides={
            # the official CIFAR ResNet-18 keeps PyTorch's initialisation (BN gamma 1e-8 is in its
            # ImageNet and ResNet-20 files only)
            "resnet18_cifar": {"block": "basic", "downsample": "binary_conv", "stem_act": "identity",
                               "init": "pytorch"}
        },
    )
)
