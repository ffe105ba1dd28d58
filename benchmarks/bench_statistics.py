"""Throughput of the statistics hooks: moment accumulation versus a plain matmul.

Run by hand::

    .venv/bin/python -m benchmarks.bench_statistics [--threads 1] [--repeats 5] [--only conv]

For a Linear pair 512→512→512 at batch 256 and a Conv pair 64→64→64 channels (3×3, padding 1,
32×32 maps) at batch 64 it prints, per pair: the FLOPs of the matrix products one batch's
accumulation performs, the time of that accumulation, the time a plain square matmul needs for
the same FLOPs (measured in the same run), their ratio (the target is ≥ 0.5), and the time of a
training step (forward, backward, SGD step) with the statistics window closed and open.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_grow.statistics._moment_sums import SumLayout
from lightning_grow.statistics.accumulator import PairStatistics
from lightning_grow.topology.pairs import find_growable_pairs

__all__ = ["accumulation_flops", "main"]


def accumulation_flops(
    layout: SumLayout, batch: int, out_positions: int, hidden: int
) -> dict[str, int]:
    """FLOPs (2 per multiply-add) of the GEMMs that accumulate one batch, per moment.

    ``out_positions`` is the number of output positions of ``second`` per sample (1 for a Linear
    ``second``), ``hidden`` the number of hidden positions per sample (1 for Linear → Linear).
    ``Mx`` and ``P`` include their noise twins (same products, split by sample parity).
    """
    rows = batch * out_positions  # the contracted dimension of [v | h]-side products
    x_rows = layout.d_x * layout.slots
    return {
        "M": 2 * rows * layout.d_v * layout.d_h,
        "S": 2 * rows * layout.d_h * layout.d_h,
        "Sx": 2 * batch * hidden * layout.d_x**2,
        "Mx": 2 * rows * x_rows * layout.d_v,
        "P": 2 * rows * x_rows * layout.d_h,
    }


def _timed(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn`` in seconds, after one warm-up call."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_seconds_for(flops: int, repeats: int, device: torch.device) -> float:
    """Time a square float32 matmul takes for ``flops`` (sizes capped at 4096, then scaled)."""
    size = max(64, min(4096, round((flops / 2) ** (1 / 3))))
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    out = torch.empty(size, size, device=device)
    seconds = _timed(lambda: torch.mm(a, b, out=out), repeats, device)
    return seconds * flops / (2 * size**3)


@dataclass
class Row:
    name: str
    gflop: float
    accumulate_ms: float
    matmul_ms: float
    step_closed_ms: float
    step_open_ms: float
    flop_shares: dict[str, float]

    @property
    def fraction(self) -> float:
        return self.matmul_ms / self.accumulate_ms


def bench_pair(
    name: str, model: nn.Module, inputs: Tensor, repeats: int, device: torch.device
) -> Row:
    """Accumulation throughput and step times for the first growable pair of ``model``."""
    model = model.to(device)
    inputs = inputs.to(device)
    pair = find_growable_pairs(model)[0]
    stats = PairStatistics(pair)

    # One batch's x, h and ∂loss/∂z2, captured once, so that the accumulation is timed alone.
    first_input = inputs
    hidden = model[1](pair.first(first_input))
    z2 = pair.second(hidden)
    (grad,) = torch.autograd.grad(z2.square().mean(), z2)
    hidden, first_input = hidden.detach(), first_input.detach()
    stats.open()

    def accumulate() -> None:
        stats._accumulate(first_input, hidden, grad)

    accumulate_s = _timed(accumulate, repeats, device)
    out_positions = grad[0, 0].numel() if grad.dim() == 4 else 1
    hidden_positions = hidden[0, 0].numel() if hidden.dim() == 4 else 1
    breakdown = accumulation_flops(stats._layout, inputs.shape[0], out_positions, hidden_positions)
    flops = sum(breakdown.values())
    matmul_s = matmul_seconds_for(flops, repeats, device)

    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(inputs).square().mean().backward()
        optimizer.step()

    stats.close()
    closed_s = _timed(step, repeats, device)
    stats.open()
    open_s = _timed(step, repeats, device)
    stats.remove()
    shares = {moment: count / flops for moment, count in breakdown.items()}
    return Row(
        name, flops / 1e9, accumulate_s * 1e3, matmul_s * 1e3, closed_s * 1e3, open_s * 1e3, shares
    )


def print_table(rows: list[Row]) -> None:
    header = (
        f"{'pair':<34} {'GFLOP':>8} {'accum ms':>10} {'matmul ms':>10} {'fraction':>9} "
        f"{'step ms':>9} {'step+stats ms':>14}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row.name:<34} {row.gflop:>8.2f} {row.accumulate_ms:>10.1f} {row.matmul_ms:>10.1f} "
            f"{row.fraction:>9.2f} {row.step_closed_ms:>9.1f} {row.step_open_ms:>14.1f}"
        )
    print("\nshare of the accumulation FLOPs per moment (Mx and P include their noise twins):")
    for row in rows:
        shares = "  ".join(f"{name} {share:.0%}" for name, share in row.flop_shares.items())
        print(f"{row.name:<34} {shares}")


def main(argv: list[str] | None = None) -> list[Row]:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median)")
    parser.add_argument("--only", choices=("linear", "conv"), default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    rows = []
    if args.only in (None, "linear"):
        linear = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512))
        rows.append(
            bench_pair(
                "linear 512-512-512, batch 256", linear, torch.randn(256, 512), args.repeats, device
            )
        )
    if args.only in (None, "conv"):
        conv = nn.Sequential(
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1)
        )
        inputs = torch.randn(64, 64, 32, 32)
        rows.append(
            bench_pair("conv 64-64-64 3x3 32x32, batch 64", conv, inputs, args.repeats, device)
        )
    print(f"threads={torch.get_num_threads()} device={device} torch={torch.__version__}")
    print_table(rows)
    return rows


if __name__ == "__main__":
    main()
