"""Segmentation networks behind one registry: `create_model(name, num_classes)`; every forward returns SegOutput."""
from etc_core.models import lraspp, mobilenet, pspnet  # noqa: F401  (registers the models)
from etc_core.models._builder import PairedDropout2d, PretrainedWeightsError, SegOutput, freeze, paired_dropout
from etc_core.models._registry import create_model, is_model, list_models, register_model

__all__ = ["PairedDropout2d", "PretrainedWeightsError", "SegOutput", "create_model", "freeze", "is_model",
           "list_models", "paired_dropout", "register_model"]
