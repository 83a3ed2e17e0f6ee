"""Full-precision ResNet (He et al., CVPR 2016): the baseline and teacher architecture."""

from . import register
from .recipe import Recipe, TrainingDefaults

RECIPE = register(
    Recipe(
        name="fp",
        description="full-precision ResNet (torchvision layout): baseline and teacher",
        paper="He et al., Deep Residual Learning for Image Recognition, CVPR 2016",
        code="pytorch/vision (torchvision.models.resnet)",
        block="basic",
        input_binarizer=None,
        weight_binarizer=None,
        block_act="relu",
        stem_act="relu",
        downsample="conv",
        training=TrainingDefaults(optimizer="sgd", lr=0.1, weight_decay=1e-4, epochs=100, schedule="cos"),
    )
)
