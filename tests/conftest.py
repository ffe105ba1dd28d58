import os

import pytest
import torch

# Tiny models run several times faster single-threaded on small CI machines.
torch.set_num_threads(1)
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
