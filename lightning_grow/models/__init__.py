"""Starting networks (tiny MLP / CNN / narrow ResNet-18) and a generic classifier module."""

from lightning_grow.models.builders import CNN, MLP, CifarResNet18, resnet18
from lightning_grow.models.classifier import ClassifierModule

__all__ = ["CNN", "MLP", "CifarResNet18", "ClassifierModule", "resnet18"]
