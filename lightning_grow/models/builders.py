"""Tiny starting networks built from plain ``torch.nn`` layers: MLP, CNN and a narrow ResNet-18.

Every builder returns an ordinary module that ``torch.fx`` can trace, so the growth machinery finds
its growable pairs without any annotation. Each instance remembers how it was built in
``init_config`` (a LightningCLI-style ``{"class_path": ..., "init_args": ...}`` dict): the
classifier stores it in its hyperparameters so ``load_from_checkpoint`` can rebuild the starting
architecture when the module was created from Python rather than from the CLI.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

__all__ = ["CNN", "MLP", "CifarResNet18", "resnet18"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
}


def _init_config(cls: type, **init_args: Any) -> dict[str, Any]:
    # Tuples become lists so that the config survives YAML dumps and weights-only checkpoint loads.
    init_args = {k: list(v) if isinstance(v, tuple) else v for k, v in init_args.items()}
    return {"class_path": f"lightning_grow.models.{cls.__name__}", "init_args": init_args}


def _activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}"
        ) from None


class MLP(nn.Sequential):
    """Multi-layer perceptron ``flatten → (Linear → activation [→ Dropout]) × L → Linear``.

    Layers are named ``fc1 … fcL`` and ``head`` so growth logs read ``"fc1 -> fc2"``. Each hidden
    layer and the next Linear form a growable pair.

    Parameters
    ----------
    in_features
        Size of the (flattened) input.
    hidden
        Width of every hidden layer, e.g. ``(2, 2)`` for a 64-2-2-10 network.
    num_classes
        Number of outputs.
    activation
        ``"relu"``, ``"gelu"``, ``"silu"``, ``"tanh"``, ``"leaky_relu"`` or ``"elu"``.
    dropout
        Dropout probability after each activation (no Dropout module when 0).
    """

    def __init__(
        self,
        in_features: int = 64,
        hidden: Sequence[int] = (2, 2),
        num_classes: int = 10,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        hidden = tuple(int(width) for width in hidden)
        if any(width < 1 for width in hidden):
            raise ValueError(f"hidden widths must be >= 1, got {hidden}")
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        width_in = in_features
        for index, width in enumerate(hidden, start=1):
            layers[f"fc{index}"] = nn.Linear(width_in, width)
            layers[f"act{index}"] = _activation(activation)
            if dropout > 0:
                layers[f"drop{index}"] = nn.Dropout(dropout)
            width_in = width
        layers["head"] = nn.Linear(width_in, num_classes)
        super().__init__(layers)
        self.init_config = _init_config(
            MLP,
            in_features=in_features,
            hidden=hidden,
            num_classes=num_classes,
            activation=activation,
            dropout=dropout,
        )


class CNN(nn.Sequential):
    """Small CNN: ``(conv3×3 [→ BatchNorm] → ReLU [→ MaxPool]) × L → flatten → Linear``.

    The last convolution block feeds ``flatten → head`` directly (no pooling in between) so that
    pair is growable, and so is every ``conv_i → conv_{i+1}`` pair when ``pool`` is off.

    Parameters
    ----------
    in_channels
        Channels of the input images.
    channels
        Output channels of each convolution block, e.g. ``(4, 8)``.
    num_classes
        Number of outputs.
    image_size
        Height (= width) of the input images.
    batch_norm
        Insert BatchNorm2d after each convolution (the convolutions then have no bias).
    pool
        Insert ``MaxPool2d(2)`` after every block but the last. Halves the map at each block;
        pairs across a pooling layer are not growable.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (4, 8),
        num_classes: int = 10,
        image_size: int = 8,
        batch_norm: bool = True,
        pool: bool = False,
    ) -> None:
        channels = tuple(int(width) for width in channels)
        if not channels or any(width < 1 for width in channels):
            raise ValueError(
                f"channels must be a non-empty sequence of widths >= 1, got {channels}"
            )
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        size, width_in = image_size, in_channels
        for index, width in enumerate(channels, start=1):
            layers[f"conv{index}"] = nn.Conv2d(width_in, width, 3, padding=1, bias=not batch_norm)
            if batch_norm:
                layers[f"bn{index}"] = nn.BatchNorm2d(width)
            layers[f"relu{index}"] = nn.ReLU()
            if pool and index < len(channels):
                layers[f"pool{index}"] = nn.MaxPool2d(2)
                size //= 2
            width_in = width
        if size < 1:
            raise ValueError(f"image_size {image_size} is too small for {len(channels)} pools")
        layers["flatten"] = nn.Flatten()
        layers["head"] = nn.Linear(width_in * size * size, num_classes)
        super().__init__(layers)
        self.init_config = _init_config(
            CNN,
            in_channels=in_channels,
            channels=channels,
            num_classes=num_classes,
            image_size=image_size,
            batch_norm=batch_norm,
            pool=pool,
        )


def _narrow_resnet(model: ResNet, width_factor: float, cifar_stem: bool) -> None:
    """Narrow every BasicBlock's intermediate channels in place and optionally swap the stem.

    The residual stream keeps its standard widths (64, 128, 256, 512): it is read by the skip
    connections and is therefore not growable; the intermediate channels (conv1 → bn1 → relu →
    conv2 inside each block) are.
    """
    if width_factor <= 0:
        raise ValueError(f"width_factor must be positive, got {width_factor}")
    new_convs: list[nn.Conv2d] = []
    if cifar_stem:
        # 32×32 inputs: a 3×3 stride-1 stem and no max-pool keep enough spatial resolution.
        model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
        new_convs.append(model.conv1)
    for block in model.modules():
        if not isinstance(block, BasicBlock):
            continue
        planes = block.conv2.out_channels
        middle = max(1, round(planes * width_factor))
        block.conv1 = nn.Conv2d(
            block.conv1.in_channels, middle, 3, stride=block.stride, padding=1, bias=False
        )
        block.bn1 = nn.BatchNorm2d(middle)
        block.conv2 = nn.Conv2d(middle, planes, 3, stride=1, padding=1, bias=False)
        new_convs += [block.conv1, block.conv2]
    # Same initialisation as torchvision's ResNet constructor; new BatchNorms already are (1, 0).
    for conv in new_convs:
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")


class CifarResNet18(ResNet):
    """Torchvision ResNet-18 with narrow BasicBlock interiors (the class form for YAML configs).

    Parameters
    ----------
    width_factor
        Intermediate channels of each BasicBlock are ``max(1, round(planes * width_factor))``
        (``planes`` = 64, 128, 256, 512): ``1/64`` gives 1, 2, 4, 8; ``1/4`` gives 16 … 128;
        ``1.0`` is the standard ResNet-18.
    num_classes
        Number of outputs of the final ``fc``.
    cifar_stem
        3×3 stride-1 ``conv1`` and no max-pool (for 32×32 images) instead of the ImageNet stem.
    """

    def __init__(
        self, width_factor: float = 1 / 64, num_classes: int = 10, cifar_stem: bool = True
    ) -> None:
        super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
        _narrow_resnet(self, width_factor, cifar_stem)
        self.init_config = _init_config(
            CifarResNet18, width_factor=width_factor, num_classes=num_classes, cifar_stem=cifar_stem
        )


def resnet18(
    width_factor: float = 1 / 64, num_classes: int = 10, cifar_stem: bool = True
) -> ResNet:
    """A plain ``torchvision.models.ResNet`` (BasicBlock, [2, 2, 2, 2]) with narrow block interiors.

    Same architecture and arguments as :class:`CifarResNet18`, but the returned object's type is
    exactly ``torchvision.models.ResNet``.

    Parameters
    ----------
    width_factor
        See :class:`CifarResNet18`.
    num_classes
        Number of outputs.
    cifar_stem
        See :class:`CifarResNet18`.

    Returns
    -------
    ResNet
        The network, with ``init_config`` pointing at :class:`CifarResNet18` (same state dict).
    """
    model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
    _narrow_resnet(model, width_factor, cifar_stem)
    model.init_config = _init_config(
        CifarResNet18, width_factor=width_factor, num_classes=num_classes, cifar_stem=cifar_stem
    )
    return model
