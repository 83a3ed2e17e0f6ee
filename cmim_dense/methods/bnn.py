"""BNN (Hubara, Courbariaux et al., NeurIPS 2016): plain sign, clipped straight-through."""

from ..spec import Spec
from . import register
from .recipe import Recipe, TrainingDefaults

RECIPE = register(
    Recipe(
        name="bnn",
        description="BNN: sign(x), sign(W) with no scale, clipped STE; binary 1x1 downsample",
        paper="Hubara et al., Binarized Neural Networks, NeurIPS 2016",
        code="itayhubara/BinaryNet.pytorch",
        block="basic",
        input_binarizer=Spec("sign", estimator=Spec("ste_clip")),
        weight_binarizer=Spec("sign", estimator=Spec("ste")),
        block_act="hardtanh",
        stem_act="hardtanh",
        downsample="binary_conv",
        training=TrainingDefaults(
            optimizer="sgd",
            lr=0.1,
            weight_decay=1e-4,
            epochs=100,
            schedule="step",
            milestones=(30, 60, 90),
            clip_latent_weights=1.0,
        ),
    )
)
