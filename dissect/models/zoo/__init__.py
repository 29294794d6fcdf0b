"""The model zoo: one module per family, each registering its models where they are defined.

Importing this package registers every family; a new family is one more module here.
"""

from dissect.models.zoo import places365, proggan, torchvision, toy

__all__ = ["places365", "proggan", "torchvision", "toy"]
