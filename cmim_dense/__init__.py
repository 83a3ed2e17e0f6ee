"""cmim-dense: binary ResNet backbones, CMIM pretraining and dense-prediction transfer."""

from .methods import get_recipe, list_recipes
from .models import create_model, list_archs

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "get_recipe", "list_archs", "list_recipes"]
