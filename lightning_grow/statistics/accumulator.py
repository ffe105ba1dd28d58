"""Streaming moment accumulators on a growable pair's layers, and their cross-rank reduction.

:class:`PairStatistics` hooks ``first`` and ``second`` of a :class:`GrowablePair`. While a window
is open, every training forward (grad enabled, modules in train mode) stores ``first``'s input
``x`` and ``second``'s input ``h`` in a closure attached to ``second``'s output ``z2``; when the
gradient of ``z2`` arrives, the batch's contribution to the moments of
:mod:`lightning_grow.solver.moments` is added to float32 sums and the stored tensors are dropped.
The gradient comes from a tensor hook on ``z2`` rather than a module backward hook, which breaks
with ``ReLU(inplace=True)``; a hook registered before an in-place op still receives the gradient of
the pre-modification value, i.e. of ``second``'s pre-activation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_grow.solver.moments import PairMoments
from lightning_grow.statistics._moment_sums import SumLayout, batch_sums
from lightning_grow.statistics._sampled_sums import ConvIndex, conv_index, sampled_conv_sums
from lightning_grow.topology.pairs import GrowablePair, GrowthConfigurationError, layer_problem

__all__ = ["LazyMoments", "PairStatistics", "reduce_statistics"]

LossReduction = Literal["mean", "sum"]


class PairStatistics:
    """Moments of one growable pair, accumulated from ordinary training batches.

    Parameters
    ----------
    pair
        The pair whose layers are hooked.
    loss_reduction
        ``"mean"`` when the training loss averages over the batch (the captured gradient is then
        multiplied by the batch size to get per-sample ``v_i``), ``"sum"`` when it sums.
    dtype
        Accumulation dtype (float32; float64 for exact checks).
    chunk_elements
        Rough bound on the temporary elements of one chunk of a convolutional batch (the batch is
        processed in chunks of samples to bound memory).
    max_buffer_elements
        Largest moment buffer accepted; larger ones raise :class:`GrowthConfigurationError`.
    sync_free
        Decide whether a batch is finite on the device, without a host synchronisation (the
        batch's sums go through a scratch buffer). ``None``: on accelerators, not on the CPU
        (where the check is free and the sums go straight into the accumulators).
    images_per_batch
        Accumulate only this many images of each batch, drawn at random (``None``: all). The
        moments stay per-image averages; ``num_samples`` counts the images used.
    positions
        For conv→conv pairs: output positions drawn per image (and as many hidden positions
        for ``Sx``), an unbiased estimate of the exact sums
        (:mod:`lightning_grow.statistics._sampled_sums`). ``None``: every position.
    seed
        Seed of the image and position draws.

    Attributes
    ----------
    gradient_scale
        Multiplies captured gradients (``accumulate_grad_batches / amp_scale`` under Lightning).
    elapsed_seconds
        Host time spent in accumulation since the last :meth:`reset` (on a GPU this is the time
        to launch the kernels, not to run them).

    Notes
    -----
    The sums cover only batches whose gradient of ``z2`` was received while the window was open;
    batches whose gradient (or contribution) is not finite are skipped and counted in
    :attr:`skipped_batches`.
    """

    def __init__(
        self,
        pair: GrowablePair,
        *,
        loss_reduction: LossReduction = "mean",
        dtype: torch.dtype = torch.float32,
        chunk_elements: int = 2**26,
        max_buffer_elements: int = 2**28,
        sync_free: bool | None = None,
        images_per_batch: int | None = None,
        positions: int | None = None,
        seed: int = 0,
    ) -> None:
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"loss_reduction must be 'mean' or 'sum', not {loss_reduction!r}")
        for name, layer in ((pair.first_name, pair.first), (pair.second_name, pair.second)):
            problem = layer_problem(layer)
            if problem is not None:
                raise GrowthConfigurationError(f"pair {pair.name}: {name}: {problem}")
        self.pair = pair
        self.loss_reduction = loss_reduction
        self.dtype = dtype
        self.chunk_elements = chunk_elements
        self.max_buffer_elements = max_buffer_elements
        self.sync_free = sync_free
        for name, value in (("images_per_batch", images_per_batch), ("positions", positions)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive integer or None, got {value}")
        self.images_per_batch = images_per_batch
        self.positions = positions
        self._generator = torch.Generator().manual_seed(seed)
        self._conv_index: ConvIndex | None = None
        self._deferring = False
        self._deferred: list[tuple[Tensor, Tensor, Tensor, float]] = []
        self.gradient_scale = 1.0
        self.elapsed_seconds = 0.0
        self._layout = self._checked_layout()
        self._sums: Tensor | None = None  # one flat buffer: every sum, then n and skipped
        self._scratch: Tensor | None = None  # one batch's sums, reused while the window is open
        self._open = False
        self._generation = 0  # bumped by reset(): gradients of older forwards are ignored
        self._pending_input: Tensor | None = None
        self._handles = [
            pair.first.register_forward_hook(self._on_first_forward),
            pair.second.register_forward_hook(self._on_second_forward),
        ]

    # ------------------------------------------------------------------ window
    def open(self, *, defer: bool = False) -> None:
        """Start accumulating from the next training forward.

        ``defer=True`` only keeps references to each batch's tensors, to be accumulated by
        :meth:`flush` once the sampling is known (the budget plans it after the first batch).
        """
        if not self._handles:
            raise RuntimeError(f"statistics of {self.pair.name} were removed")
        self._open = True
        self._deferring = defer

    def flush(self) -> None:
        """Accumulate the deferred batches with the current sampling, and stop deferring."""
        deferred, self._deferred, self._deferring = self._deferred, [], False
        for x, h, grad, scale in deferred:
            self.gradient_scale = scale
            self._accumulate(x, h, grad)

    def close(self) -> None:
        """Stop accumulating (pending forwards whose backward comes later are ignored)."""
        self._open = False
        self._deferred, self._deferring = [], False
        self._pending_input = None
        self._scratch = None

    def reset(self) -> None:
        """Drop the sums; the pair may have grown since, so the layout is derived again."""
        self._sums = None
        self._deferred = []
        self._scratch = None
        self._generation += 1
        self._pending_input = None
        self.elapsed_seconds = 0.0
        self._layout = self._checked_layout()

    def remove(self) -> None:
        """Remove the hooks for good (the sums stay readable)."""
        self.close()
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> PairStatistics:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        """Whether training forwards are being accumulated."""
        return self._open

    @property
    def num_samples(self) -> int:
        """Samples (images, for convolutions) covered by the sums."""
        return 0 if self._sums is None else round(float(self._sums[-2]))

    @property
    def skipped_batches(self) -> int:
        """Batches dropped because their gradient or contribution was not finite."""
        return 0 if self._sums is None else round(float(self._sums[-1]))

    # ------------------------------------------------------------------ results
    def moments(self) -> PairMoments:
        """The moments: the sums divided by the number of samples.

        Raises
        ------
        ValueError
            When no sample was accumulated.
        """
        n = self.num_samples
        if n == 0:
            raise ValueError(f"no samples were accumulated for pair {self.pair.name}")
        assert self._sums is not None
        layout = self._layout
        parts = layout.split(self._sums)
        d_x, d_v, d_h, slots = layout.d_x, layout.d_v, layout.d_h, layout.slots
        # P can be the largest tensor of all (d_x·J·d_h): it stays a view of the divided sum.
        xr_total = torch.add(parts["XR_even"], parts["XR_odd"]).div_(n)
        xr_noise = torch.sub(parts["XR_even"], parts["XR_odd"]).div_(n)

        def update_from_first(xr: Tensor) -> tuple[Tensor, Tensor]:
            # rows (a, j), columns [v | h]: Mx is reordered to (c, j) columns, c major.
            mx = xr[:, :d_v].reshape(d_x, slots, d_v).transpose(1, 2).reshape(d_x, d_v * slots)
            return mx.contiguous(), xr[:, d_v:].reshape(d_x, slots, d_h)

        mx, p = update_from_first(xr_total)
        mx_noise, p_noise = update_from_first(xr_noise)
        rh = parts["RH"]
        s, sx = rh[d_v:], parts["Sx"]
        return PairMoments(
            S=(s + s.T) / (2 * n),
            M=rh[:d_v] / n,
            Sx=(sx + sx.T) / (2 * n),
            Mx=mx,
            P=p,
            v_sq=parts["v_sq"].reshape(()) / n,
            n=n,
            Mx_noise=mx_noise,
            P_noise=p_noise,
        )

    def flat_sums(self) -> Tensor:
        """All sums in one 1-D buffer (the sample and skipped-batch counts last), for reduction.

        A copy: changing it does not change the statistics (see :meth:`load_flat_sums`).
        """
        if self._sums is None:
            return torch.zeros(self._layout.total, dtype=self.dtype, device=self._device())
        return self._sums.clone()

    def load_flat_sums(self, sums: Tensor) -> None:
        """Replace the sums by ``sums`` (a buffer shaped like :meth:`flat_sums`, e.g. reduced)."""
        if sums.dim() != 1 or sums.numel() != self._layout.total:
            raise ValueError(
                f"pair {self.pair.name} expects {self._layout.total} flat sums, got shape "
                f"{tuple(sums.shape)}"
            )
        if self._sums is not None and self._sums.device == sums.device:
            self._sums.copy_(sums)
        else:
            self._sums = sums.detach().to(dtype=self.dtype, device=self._device()).clone()

    def _live_sums(self) -> Tensor:
        """The accumulator itself (allocated as zeros when empty): no copy, for reductions."""
        if self._sums is None:
            self._sums = torch.zeros(self._layout.total, dtype=self.dtype, device=self._device())
        return self._sums

    # ------------------------------------------------------------------ hooks
    def _capturing(self, module: nn.Module, output: Any) -> bool:
        return (
            self._open
            and module.training
            and torch.is_grad_enabled()
            and isinstance(output, Tensor)
            and output.requires_grad
        )

    def _on_first_forward(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self._capturing(module, output):
            self._pending_input = args[0]

    def _on_second_forward(self, module: nn.Module, args: tuple, output: Any) -> None:
        first_input, self._pending_input = self._pending_input, None
        if first_input is None or not self._capturing(module, output):
            return
        # The closure owns the only extra references to x and h; it empties itself on use so
        # that a graph kept alive after backward (e.g. a logged output) holds nothing.
        held = [first_input, args[0]]
        generation = self._generation

        def on_gradient(grad: Tensor) -> None:
            if not held:
                return
            x, h = held
            held.clear()
            if self._open and self._generation == generation:
                if self._deferring:
                    self._deferred.append((x, h, grad, self.gradient_scale))
                else:
                    self._accumulate(x, h, grad)

        output.register_hook(on_gradient)

    def _accumulate(self, x: Tensor, h: Tensor, grad: Tensor) -> None:
        started = time.perf_counter()
        with torch.no_grad():
            layout = self._layout
            # The weights' shapes change exactly when the geometry does (growth, or a
            # neighbour's); comparing them is ~50x cheaper than building the geometry.
            if self._weight_shapes() != self._layout_shapes:
                raise RuntimeError(
                    f"the layers of pair {self.pair.name} changed shape while its statistics "
                    "window was open; call reset() after growing"
                )
            first, second = self.pair.first_handler, self.pair.second_handler
            if grad.dim() == second.unbatched_dims:
                x, h, grad = x[None], h[None], grad[None]
            # A Conv1d's (B, C, L) as a Conv2d's (B, C, 1, L): the conv sums are written in 2-D.
            x, h, grad = first.to_map(x), second.to_map(h), second.to_map(grad)
            batch = grad.shape[0]
            scale = -self.gradient_scale * (batch if self.loss_reduction == "mean" else 1)
            if self.images_per_batch is not None and self.images_per_batch < batch:
                # A uniform draw keeps the per-image averages unbiased; the per-sample scale
                # above still uses the whole batch, over which the loss was averaged.
                keep = torch.randperm(batch, generator=self._generator)[: self.images_per_batch]
                keep = keep.sort().values.to(grad.device)
                x, h, grad = x[keep], h[keep], grad[keep]
                batch = grad.shape[0]
            v = grad.detach().to(self.dtype) * scale
            x, h = x.detach().to(self.dtype), h.detach().to(self.dtype)
            if self._sums is None:
                self._sums = v.new_zeros(layout.total)
            sync_free = v.device.type != "cpu" if self.sync_free is None else self.sync_free
            if sync_free:
                self._accumulate_on_device(layout, x, h, v, batch)
            elif bool(torch.isfinite(x.sum() + h.sum() + v.sum())):  # a free check on the CPU
                self._batch_sums(x, h, v, self._sums, overwrite=False)
                self._sums[-2] += batch
            else:
                self._sums[-1] += 1
        self.elapsed_seconds += time.perf_counter() - started

    def _accumulate_on_device(
        self, layout: SumLayout, x: Tensor, h: Tensor, v: Tensor, batch: int
    ) -> None:
        """Accept or drop the batch without a host synchronisation (accelerators)."""
        assert self._sums is not None
        scratch = self._scratch
        if scratch is None or scratch.numel() != layout.total or scratch.device != v.device:
            # Reused while the window is open: a fresh large buffer per batch is slow to map.
            scratch = self._scratch = v.new_empty(layout.total)
        self._batch_sums(x, h, v, scratch, overwrite=True)
        # Any inf/NaN in v, x or h reaches v_sq, S or Sx and hence the total: one reduction is
        # much cheaper than an elementwise isfinite. A rejected batch adds zeros.
        accepted = torch.isfinite(scratch.sum()).to(self.dtype)
        scratch[-2] = batch
        scratch.nan_to_num_(0.0, 0.0, 0.0)
        self._sums.addcmul_(scratch, accepted)
        self._sums[-1] += 1.0 - accepted

    def _batch_sums(self, x: Tensor, h: Tensor, v: Tensor, out: Tensor, overwrite: bool) -> None:
        """One batch's sums into ``out``: exact, or position-sampled for conv→conv pairs."""
        layout = self._layout
        if self.positions is None or layout.geometry.kind != "conv":
            batch_sums(self.pair, layout, x, h, v, self.chunk_elements, out, overwrite)
            return
        if overwrite:
            out.zero_()
        index = self._conv_index
        sizes = ((x.shape[-2], x.shape[-1]), (h.shape[-2], h.shape[-1]))
        if index is None or (index.input_size, index.hidden_size) != sizes:
            first, second = self.pair.first, self.pair.second
            output_size = (v.shape[-2], v.shape[-1])
            index = conv_index(first, second, *sizes, output_size, device=x.device)  # type: ignore[arg-type]
            self._conv_index = index
        sampled_conv_sums(
            index,
            layout.split(out),
            x,
            h,
            v,
            positions=self.positions,
            first_bias=layout.geometry.first_bias,
            second_bias=layout.geometry.second_bias,
            generator=self._generator,
        )

    # ------------------------------------------------------------------ helpers
    def _device(self) -> torch.device:
        return self.pair.first.weight.device

    def _weight_shapes(self) -> tuple[torch.Size, torch.Size]:
        return self.pair.first.weight.shape, self.pair.second.weight.shape

    def _checked_layout(self) -> SumLayout:
        layout = SumLayout.of(self.pair.geometry())
        self._layout_shapes = self._weight_shapes()
        for name, shape in layout.shapes.items():
            elements = math.prod(shape)
            if elements > self.max_buffer_elements:
                raise GrowthConfigurationError(
                    f"the statistics of pair {self.pair.name} need a buffer of shape {shape} for "
                    f"{layout.holds[name]} ({elements / 1e6:.0f}M elements, above the limit of "
                    f"{self.max_buffer_elements / 1e6:.0f}M). Leave this pair out (name the pairs "
                    "explicitly) or make the hidden map smaller (e.g. pool before the flatten)."
                )
        return layout


def reduce_statistics(
    stats: Sequence[PairStatistics], reduce_fn: Callable[[Tensor], Tensor]
) -> None:
    """Sum-reduce the statistics of several pairs with one collective.

    Parameters
    ----------
    stats
        The statistics to reduce, identical in order and layout on every rank.
    reduce_fn
        Sums a 1-D tensor across ranks (e.g. ``lambda t: strategy.reduce(t, reduce_op="sum")``).
    """
    # The buffers can reach gigabytes for wide conv pairs: concatenate the live accumulators
    # (one copy) and copy the result back in place.
    flats = [statistics._live_sums() for statistics in stats]
    if not flats:
        return
    reduced = reduce_fn(torch.cat(flats))
    total = sum(flat.numel() for flat in flats)
    if reduced.shape != (total,):
        raise ValueError(f"reduce_fn returned shape {tuple(reduced.shape)}, expected ({total},)")
    for statistics, part in zip(stats, torch.split(reduced, [f.numel() for f in flats])):
        statistics.load_flat_sums(part)


class LazyMoments(Mapping[str, PairMoments]):
    """The moments of several pairs, computed one pair at a time when asked for.

    A decision then holds one pair's moments (the largest temporaries of a solve) at a time
    instead of every pair's at once. Pairs without samples are absent.
    """

    def __init__(self, statistics: Mapping[str, PairStatistics]) -> None:
        self._statistics = {name: s for name, s in statistics.items() if s.num_samples}

    def __getitem__(self, name: str) -> PairMoments:
        return self._statistics[name].moments()

    def __iter__(self) -> Iterator[str]:
        return iter(self._statistics)

    def __len__(self) -> int:
        return len(self._statistics)
