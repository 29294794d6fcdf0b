"""What is dissected: registered models by name, their weights and their layers.

    >>> from dissect.models import load_model, resolve_layer
    >>> m = load_model("vgg16", weights="none")
    >>> resolve_layer(m, "conv5_3")
    ('features.29', 'conv5_3')

Importing this package registers the model zoo (:mod:`dissect.models.zoo`).
"""

from dissect.models import zoo  # registers every family of the zoo
from dissect.models.latents import output_range, quantize, sample_z, to_unit
from dissect.models.loading import (
    LayerCall,
    LoadedModel,
    choose_default_layer,
    find_generator_layer,
    find_last_spatial_layer,
    from_module,
    get_layer,
    import_user_module,
    layer_names,
    load_model,
    with_class_names,
    module_calls,
    paper_name,
    resolve_layer,
    spatial_layers,
)
from dissect.models.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelSpec,
    add_model_spec,
    get_model_spec,
    is_registered,
    list_models,
    register_model,
)
from dissect.models.weights import (
    WEIGHTS_DIR,
    WeightsSource,
    apply_state_dict,
    checkpoint_dir,
    default_class_names,
    fetch_torchvision_checkpoint,
    fetch_torchvision_weights,
    read_class_names,
    read_state_dict,
    resolve_weights,
    state_dict_sha256,
    torchvision_weights,
)
from dissect.models.zoo.toy import TOY_ALIASES, ToyClassifier, ToyGenerator

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LayerCall",
    "LoadedModel",
    "ModelSpec",
    "TOY_ALIASES",
    "ToyClassifier",
    "ToyGenerator",
    "WEIGHTS_DIR",
    "WeightsSource",
    "add_model_spec",
    "apply_state_dict",
    "checkpoint_dir",
    "choose_default_layer",
    "default_class_names",
    "fetch_torchvision_checkpoint",
    "fetch_torchvision_weights",
    "find_generator_layer",
    "find_last_spatial_layer",
    "from_module",
    "get_layer",
    "get_model_spec",
    "import_user_module",
    "is_registered",
    "layer_names",
    "list_models",
    "load_model",
    "with_class_names",
    "module_calls",
    "output_range",
    "paper_name",
    "quantize",
    "read_class_names",
    "read_state_dict",
    "register_model",
    "resolve_layer",
    "resolve_weights",
    "sample_z",
    "spatial_layers",
    "state_dict_sha256",
    "to_unit",
    "torchvision_weights",
]
