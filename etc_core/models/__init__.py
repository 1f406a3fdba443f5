"""Segmentation networks behind one registry: `create_model(name, num_classes)` builds one, `from_weights(name,
num_classes, state_dict)` rebuilds a trained one; every forward takes `normalize`d frames and returns SegOutput."""
from etc_core.models import lraspp, mobilenet, pspnet  # noqa: F401  (registers the models)
from etc_core.models._builder import PairedDropout2d, PretrainedWeightsError, SegOutput, freeze, paired_dropout
from etc_core.models._registry import create_model, from_weights, is_model, list_models, register_model
from etc_core.models.preprocess import MEAN_RGB, STD_RGB, normalize

__all__ = ["MEAN_RGB", "PairedDropout2d", "PretrainedWeightsError", "STD_RGB", "SegOutput", "create_model", "freeze",
           "from_weights", "is_model", "list_models", "normalize", "paired_dropout", "register_model"]
