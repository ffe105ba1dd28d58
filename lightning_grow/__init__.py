"""lightning_grow: grow neural networks while they train (TINY) as a Lightning callback."""

from lightning_grow.events import GrowthEvent

__all__ = ["GrowthEvent"]
__version__ = "0.1.0"
