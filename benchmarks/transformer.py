"""A small pre-LN transformer on a synthetic sequence task: FFN grown from width 2 vs fixed.

``python -m benchmarks.transformer [--seeds 3] [--epochs 20]`` prints a Markdown table (test
accuracy, parameters, final FFN width). The label needs products of token features summed over
the sequence, which attention alone cannot form: the feed-forward block is the bottleneck.
Default ``GrowthCallback()`` settings; one CPU thread.
"""

from __future__ import annotations

import argparse
import statistics
import warnings

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_grow import GrowthCallback
from lightning_grow.surgery.widen import count_parameters

TOKENS, FEATURES, D_MODEL = 8, 4, 16


class Block(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(D_MODEL), nn.LayerNorm(D_MODEL)
        self.attn = nn.MultiheadAttention(D_MODEL, 2, batch_first=True)
        self.fc1, self.act, self.fc2 = (
            nn.Linear(D_MODEL, hidden),
            nn.GELU(),
            nn.Linear(hidden, D_MODEL),
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


class Classifier(pl.LightningModule):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Linear(FEATURES, D_MODEL)
        self.position = nn.Parameter(0.02 * torch.randn(TOKENS, D_MODEL))
        self.block = Block(hidden)
        self.head = nn.Linear(D_MODEL, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.block(self.embed(x) + self.position).mean(1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


def data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, TOKENS, FEATURES, generator=g)
    y = ((x[..., 0] * x[..., 1] - x[..., 2] * x[..., 3]).sum(1) > 0).long()
    return TensorDataset(x, y)


def run(hidden: int, grow: bool, seed: int, epochs: int) -> tuple[float, int, int]:
    pl.seed_everything(seed, verbose=False)
    model = Classifier(hidden)
    callbacks = [GrowthCallback(verbose=False)] if grow else []
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(model, DataLoader(data(4096, seed), batch_size=64, shuffle=True))
    x, y = data(2048, 10_000 + seed).tensors
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x).argmax(1) == y).float().mean())
    return accuracy, count_parameters(model), model.block.fc1.out_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    print("| pre-LN transformer, d=16, T=8 | test accuracy | parameters | FFN width |")
    print("|---|---|---|---|")
    for label, hidden, grow in [
        ("FFN grown from 2 (TINY)", 2, True),
        ("fixed FFN 2", 2, False),
        ("fixed FFN 64 (4d)", 64, False),
    ]:
        results = [run(hidden, grow, seed, args.epochs) for seed in range(args.seeds)]
        accuracies = [r[0] for r in results]
        spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        params = statistics.mean(r[1] for r in results)
        widths = ", ".join(str(r[2]) for r in results)
        print(
            f"| {label} | {statistics.mean(accuracies):.3f} ± {spread:.3f} | {params / 1e3:.1f}k "
            f"| {widths} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
