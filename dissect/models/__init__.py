"""What is dissected: registered models by name, their weights and their layers.

    >>> from dissect.models import load_model, resolve_layer
    >>> m = load_model("vgg16", weights="none")
    >>> resolve_layer(m, "conv5_3")
    ('features.29', 'conv5_3')
"""

from dissect.models.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LoadedModel,
    ModelSpec,
    add_model_spec,
    apply_state_dict,
    checkpoint_dir,
    fetch_torchvision_weights,
    find_last_spatial_layer,
    from_module,
    get_layer,
    get_model_spec,
    layer_names,
    list_models,
    load_model,
    read_state_dict,
    register_model,
    resolve_layer,
    state_dict_sha256,
)
from dissect.models.toy import TOY_ALIASES, ToyClassifier

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LoadedModel",
    "ModelSpec",
    "TOY_ALIASES",
    "ToyClassifier",
    "add_model_spec",
    "apply_state_dict",
    "checkpoint_dir",
    "fetch_torchvision_weights",
    "find_last_spatial_layer",
    "from_module",
    "get_layer",
    "get_model_spec",
    "layer_names",
    "list_models",
    "load_model",
    "read_state_dict",
    "register_model",
    "resolve_layer",
    "state_dict_sha256",
]
