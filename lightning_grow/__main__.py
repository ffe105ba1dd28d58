"""``python -m lightning_grow fit --config configs/digits_mlp.yaml``."""

from lightning_grow.cli import main

if __name__ == "__main__":
    main()
