"""The model zoo: one module per family, each registering its models where they are defined.

Importing this package registers every family; a new family is one more module here. The
libraries of prefixed names (``timm:``, ``hf:``, ``openclip:``) register their prefix here
and import their library only when one of their names is used.
"""

from dissect.models.zoo import huggingface, openclip, places365, proggan, timm_models, torchvision, toy

__all__ = ["huggingface", "openclip", "places365", "proggan", "timm_models", "torchvision", "toy"]
