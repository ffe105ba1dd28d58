"""PairStatistics against brute-force moments, and the hooks' hygiene (no effect, no leaks)."""

from __future__ import annotations

import copy
import gc
import warnings
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_grow.statistics.accumulator import PairStatistics, reduce_statistics
from lightning_grow.topology.pairs import (
    GrowablePair,
    GrowthConfigurationError,
    find_growable_pairs,
)

F64 = torch.float64
FIELDS = ("S", "M", "Sx", "Mx", "P", "v_sq", "Mx_noise", "P_noise")
SIGNAL_FIELDS = ("S", "M", "Sx", "Mx", "P", "v_sq")


# ---------------------------------------------------------------- brute force
def run_layers(model: nn.Sequential, pair: GrowablePair, x: Tensor) -> tuple[Tensor, ...]:
    """Input of first, input of second, output z2 of second (a graph leaf) and the logits."""
    layers = list(model)
    i, j = layers.index(pair.first), layers.index(pair.second)
    for layer in layers[:i]:
        x = layer(x)
    h = x
    for layer in layers[i:j]:
        h = layer(h)
    z2 = pair.second(h.detach()).detach().requires_grad_(True)
    out = z2.clone()  # later in-place ops must not touch z2
    for layer in layers[j + 1 :]:
        out = layer(out)
    return x.detach(), h.detach(), z2, out


def per_sample_v(z2: Tensor, losses: Tensor) -> Tensor:
    """``v_i = -∂ℓ_i/∂z2[i]``, one autograd call per sample."""
    rows = []
    for i in range(losses.shape[0]):
        (grad,) = torch.autograd.grad(losses[i], z2, retain_graph=True)
        rows.append(-grad[i])
    return torch.stack(rows)


def with_one(t: Tensor, bias: bool) -> Tensor:
    return torch.cat([t, t.new_ones(1)]) if bias else t


def positions(pair: GrowablePair, x: Tensor, h: Tensor, v: Tensor) -> list:
    """Per output position ``q``: ``(x_(q, j) for every slot j, h_q, v_q)`` by explicit loops."""
    first, second = pair.first, pair.second
    if isinstance(first, nn.Linear):
        if x.dim() == 2:  # a sequence: every position is summed, like a 1×1 convolution
            return [item for t in range(x.shape[0]) for item in positions(pair, x[t], h[t], v[t])]
        return [
            (with_one(x, first.bias is not None)[None], with_one(h, second.bias is not None), v)
        ]
    (kh, kw), (s1h, s1w), (p1h, p1w) = first.kernel_size, first.stride, first.padding
    padded = F.pad(x, (p1w, p1w, p1h, p1h))

    def patch(ph: int, pw: int) -> Tensor:  # first's input patch at hidden position (ph, pw)
        window = padded[:, ph * s1h : ph * s1h + kh, pw * s1w : pw * s1w + kw]
        return with_one(window.reshape(-1), first.bias is not None)

    hidden_h, hidden_w = (h.shape[-2], h.shape[-1]) if h.dim() == 3 else (None, None)
    if isinstance(second, nn.Linear):
        size = (
            int((x.shape[-2] + 2 * p1h - kh) / s1h) + 1,
            int((x.shape[-1] + 2 * p1w - kw) / s1w) + 1,
        )
        xs = torch.stack([patch(a, b) for a in range(size[0]) for b in range(size[1])])
        return [(xs, with_one(h, second.bias is not None), v)]
    (k2h, k2w), (s2h, s2w), (p2h, p2w) = second.kernel_size, second.stride, second.padding
    result = []
    for qh in range(v.shape[-2]):
        for qw in range(v.shape[-1]):
            xs, hs = [], []
            for jh in range(k2h):
                for jw in range(k2w):
                    ph, pw = qh * s2h - p2h + jh, qw * s2w - p2w + jw
                    inside = 0 <= ph < hidden_h and 0 <= pw < hidden_w
                    xs.append(patch(ph, pw) if inside else torch.zeros_like(patch(0, 0)))
                    hs.append(h[:, ph, pw] if inside else h.new_zeros(h.shape[0]))
            h_q = torch.stack(hs, dim=1).reshape(-1)  # (c, j) order, c major
            result.append((torch.stack(xs), with_one(h_q, second.bias is not None), v[:, qh, qw]))
    return result


def brute_force(pair: GrowablePair, batches: list[tuple[Tensor, Tensor, Tensor]]) -> dict:
    """Moments from per-sample tensors; ε_i = ±1 by the sample's position in its batch."""
    sums: dict[str, Tensor | float] = {}
    n = 0
    for x, h, v in batches:
        for i in range(x.shape[0]):
            eps = 1.0 if i % 2 == 0 else -1.0
            n += 1
            for xs, h_q, v_q in positions(pair, x[i], h[i], v[i]):
                terms = {
                    "S": torch.outer(h_q, h_q),
                    "M": torch.outer(v_q, h_q),
                    "Sx": xs.T @ xs,  # Σ_j x_(q,j) x_(q,j)ᵀ = Σ_p c_p x_p x_pᵀ
                    "Mx": torch.einsum("ja,c->acj", xs, v_q).reshape(xs.shape[1], -1),
                    "P": torch.einsum("ja,i->aji", xs, h_q),
                    "v_sq": v_q.square().sum(),
                }
                terms["Mx_noise"], terms["P_noise"] = eps * terms["Mx"], eps * terms["P"]
                for name, term in terms.items():
                    sums[name] = sums.get(name, 0.0) + term
    return {name: value / n for name, value in sums.items()} | {"n": n}


def reference_batch(model: nn.Sequential, pair: GrowablePair, x: Tensor, y: Tensor):
    x_in, h, z2, out = run_layers(model, pair, x)
    return x_in, h, per_sample_v(z2, F.cross_entropy(out, y, reduction="none"))


def train_step(model: nn.Module, x: Tensor, y: Tensor, reduction: str = "mean") -> None:
    F.cross_entropy(model(x), y, reduction=reduction).backward()


def assert_moments(stats: PairStatistics, expected: dict, fields=FIELDS, **tolerance) -> None:
    moments = stats.moments()
    moments.check(stats.pair.geometry())
    assert moments.n == expected["n"]
    for name in fields:
        actual = getattr(moments, name)
        torch.testing.assert_close(actual, expected[name].to(actual.dtype), **tolerance)


# ---------------------------------------------------------------- moments
def mlp() -> nn.Sequential:
    # ReLU(inplace=True) right after `second` must not disturb the gradient of z2.
    return nn.Sequential(
        nn.Linear(5, 7), nn.ReLU(inplace=True), nn.Linear(7, 4), nn.ReLU(inplace=True),
        nn.Linear(4, 3),
    ).to(F64)  # fmt: skip


@pytest.mark.parametrize("sync_free", [False, True])
def test_linear_pair_matches_per_sample_brute_force(sync_free: bool) -> None:
    model = mlp()
    pair = find_growable_pairs(model)[0]
    stats = PairStatistics(pair, dtype=F64, sync_free=sync_free)
    data = [(torch.randn(6, 5, dtype=F64), torch.randint(0, 3, (6,))) for _ in range(2)]
    with stats:
        for x, y in data:
            train_step(model, x, y)
    expected = brute_force(pair, [reference_batch(model, pair, x, y) for x, y in data])
    assert_moments(stats, expected)


class MeanOverSequence(nn.Module):
    def forward(self, z: Tensor) -> Tensor:
        return z.mean(dim=1)


def test_linear_pair_on_sequences_sums_over_positions() -> None:
    model = nn.Sequential(
        nn.Linear(5, 6), nn.SiLU(), nn.Linear(6, 4, bias=False), MeanOverSequence(), nn.Linear(4, 3)
    ).to(F64)
    pair = find_growable_pairs(model)[0]
    stats = PairStatistics(pair, dtype=F64)
    x, y = torch.randn(5, 3, 5, dtype=F64), torch.randint(0, 3, (5,))
    with stats:
        train_step(model, x, y)
    assert_moments(stats, brute_force(pair, [reference_batch(model, pair, x, y)]))


@pytest.mark.parametrize(
    ("s1", "p1", "s2", "p2", "chunk", "biases"),
    [
        (1, 0, 2, 0, 2**26, (True, True)),
        (1, 1, 2, 1, 1, (False, True)),
        (2, 1, 1, 0, 2**26, (True, False)),
        (2, 0, 2, 1, 1, (False, False)),
        (1, 1, 1, 1, 1, (True, True)),
    ],
)
@pytest.mark.parametrize("sync_free", [False, True])
def test_conv_pair_matches_brute_force(
    s1: int, p1: int, s2: int, p2: int, chunk: int, biases: tuple[bool, bool], sync_free: bool
) -> None:
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=s1, padding=p1, bias=biases[0]),
        nn.BatchNorm2d(3),
        nn.Tanh(),
        nn.Conv2d(3, 2, (3, 2), stride=s2, padding=p2, bias=biases[1]),
        nn.Flatten(),
        nn.LazyLinear(3),
    ).to(F64)
    x = torch.randn(5, 2, 9, 8, dtype=F64)
    model(x)
    pair = find_growable_pairs(model)[0]
    # chunk=1: one sample a chunk
    stats = PairStatistics(pair, dtype=F64, chunk_elements=chunk, sync_free=sync_free)
    y = torch.randint(0, 3, (5,))
    with stats:
        train_step(model, x, y)
    # BatchNorm in train mode: recompute the reference from the same batch statistics.
    expected = brute_force(pair, [reference_batch(model, pair, x, y)])
    assert_moments(stats, expected)


@pytest.mark.parametrize("sync_free", [False, True])
def test_conv_to_linear_pair_matches_brute_force(sync_free: bool) -> None:
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.GELU(), nn.Flatten(), nn.Linear(3 * 4 * 3, 4),
        nn.ReLU(), nn.Linear(4, 3),
    ).to(F64)  # fmt: skip
    pair = find_growable_pairs(model)[0]
    assert pair.kind == "conv_linear"
    stats = PairStatistics(pair, dtype=F64, chunk_elements=1, sync_free=sync_free)
    data = [(torch.randn(n, 2, 7, 5, dtype=F64), torch.randint(0, 3, (n,))) for n in (3, 4)]
    with stats:
        for x, y in data:
            train_step(model, x, y)
    expected = brute_force(pair, [reference_batch(model, pair, x, y) for x, y in data])
    assert_moments(stats, expected)


def test_moments_do_not_depend_on_how_samples_are_batched() -> None:
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3, stride=2))
    model = nn.Sequential(*model, nn.Flatten(), nn.Linear(2 * 2 * 2, 3)).to(F64)
    x, y = torch.randn(8, 2, 5, 5, dtype=F64), torch.randint(0, 3, (8,))
    results = []
    for sizes in ([8], [3, 5], [2, 2, 2, 2]):
        stats = [PairStatistics(pair, dtype=F64) for pair in find_growable_pairs(model)]
        for s in stats:
            s.open()
        for xb, yb in zip(x.split(sizes), y.split(sizes)):
            train_step(model, xb, yb)
        results.append([s.moments() for s in stats])
        for s in stats:
            s.remove()
    for moments in results[1:]:
        for got, want in zip(moments, results[0]):
            assert got.n == want.n == 8
            for name in SIGNAL_FIELDS:
                torch.testing.assert_close(getattr(got, name), getattr(want, name))


def test_float32_accumulation_and_bfloat16_training() -> None:
    model = mlp().float()
    pair = find_growable_pairs(model)[0]
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    stats = PairStatistics(pair)
    with stats:
        train_step(model, x, y)
    expected = brute_force(pair, [tuple(t.double() for t in reference_batch(model, pair, x, y))])
    assert stats.moments().S.dtype == torch.float32
    assert_moments(stats, expected, rtol=1e-5, atol=1e-6)
    model = model.to(torch.bfloat16)
    stats.remove()
    stats = PairStatistics(pair)
    with stats:
        train_step(model, x.bfloat16(), y)
    assert stats.moments().Mx.dtype == torch.float32
    expected = brute_force(pair, [reference_batch(model.double(), pair, x.bfloat16().double(), y)])
    # bf16 has 8 mantissa bits: the model itself differs from its float64 copy at ~1e-2.
    assert_moments(stats, expected, rtol=0.1, atol=0.05)


# ---------------------------------------------------------------- scaling and skipping
def test_gradient_scale_and_loss_reduction() -> None:
    model = mlp()
    pair = find_growable_pairs(model)[0]
    x, y = torch.randn(6, 5, dtype=F64), torch.randint(0, 3, (6,))
    plain = PairStatistics(pair, dtype=F64)
    with plain:
        train_step(model, x, y)
    plain.remove()
    scaled = PairStatistics(pair, dtype=F64)
    scaled.gradient_scale = 3.0
    with scaled:
        train_step(model, x, y)
    scaled.remove()
    summed = PairStatistics(pair, dtype=F64, loss_reduction="sum")
    with summed:
        train_step(model, x, y, reduction="sum")
    a, b, c = plain.moments(), scaled.moments(), summed.moments()
    for name, factor in {
        "S": 1,
        "Sx": 1,
        "P": 1,
        "M": 3,
        "Mx": 3,
        "Mx_noise": 3,
        "v_sq": 9,
    }.items():
        torch.testing.assert_close(getattr(b, name), factor * getattr(a, name))
        torch.testing.assert_close(getattr(c, name), getattr(a, name))


@pytest.mark.parametrize("sync_free", [False, True])
def test_non_finite_batches_are_skipped_entirely(sync_free: bool) -> None:
    model = mlp()
    pair = find_growable_pairs(model)[0]
    good = (torch.randn(6, 5, dtype=F64), torch.randint(0, 3, (6,)))
    stats = PairStatistics(pair, dtype=F64, sync_free=sync_free)
    with stats:
        train_step(model, *good)
        for poison in (float("inf"), float("nan")):
            (F.cross_entropy(model(torch.randn(4, 5, dtype=F64)), good[1][:4]) * poison).backward()
    assert stats.skipped_batches == 2 and stats.num_samples == 6
    assert_moments(stats, brute_force(pair, [reference_batch(model, pair, *good)]))


# ---------------------------------------------------------------- hooks: effect, pairing, leaks
def grads_and_output(model: nn.Module, x: Tensor, y: Tensor) -> list[Tensor]:
    model.zero_grad()
    out = model(x)
    F.cross_entropy(out, y).backward()
    return [out.detach()] + [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("window_open", [False, True])
def test_hooks_change_no_output_and_no_gradient(window_open: bool) -> None:
    model = mlp()
    reference = copy.deepcopy(model)
    stats = PairStatistics(find_growable_pairs(model)[0])
    x, y = torch.randn(6, 5, dtype=F64), torch.randint(0, 3, (6,))
    if window_open:
        stats.open()
    for got, want in zip(grads_and_output(model, x, y), grads_and_output(reference, x, y)):
        assert torch.equal(got, want)
    assert stats.num_samples == (6 if window_open else 0)


def test_closed_window_stores_nothing() -> None:
    model = mlp()
    stats = PairStatistics(find_growable_pairs(model)[0])
    x = torch.randn(6, 5, dtype=F64, requires_grad=True)
    out = model(x)
    probe = weakref.ref(x)
    out.sum().backward()
    del x, out
    gc.collect()
    assert probe() is None and stats.num_samples == 0
    assert not stats.flat_sums().any() and stats._pending_input is None


def test_no_tensor_is_kept_when_backward_never_runs_or_the_window_closes_first() -> None:
    model = mlp()
    stats = PairStatistics(find_growable_pairs(model)[0])
    stats.open()
    x = torch.randn(6, 5, dtype=F64, requires_grad=True)
    probe = weakref.ref(x)
    out = model(x)
    del x, out
    gc.collect()
    assert probe() is None
    out = model(torch.randn(6, 5, dtype=F64))
    stats.close()  # closed between forward and backward: the batch does not count
    out.sum().backward()
    assert stats.num_samples == 0
    # An output kept after backward (e.g. for logging) keeps the graph's nodes and their hooks
    # alive: the hook must have let go of the batch's tensors.
    stats.open()
    x = torch.randn(6, 5, dtype=F64)
    probe = weakref.ref(x)
    out = model(x)
    out.sum().backward()
    del x
    gc.collect()
    assert probe() is None and stats.num_samples == 6


def test_eval_mode_and_no_grad_forwards_are_ignored() -> None:
    model = mlp()
    stats = PairStatistics(find_growable_pairs(model)[0])
    with stats:
        with torch.no_grad():
            model(torch.randn(4, 5, dtype=F64))
        model.eval()
        model(torch.randn(4, 5, dtype=F64)).sum().backward()
    assert stats.num_samples == 0


def test_remove_takes_the_hooks_away() -> None:
    model = mlp()
    pair = find_growable_pairs(model)[0]
    stats = PairStatistics(pair)
    assert len(pair.first._forward_hooks) == len(pair.second._forward_hooks) == 1
    stats.remove()
    assert not pair.first._forward_hooks and not pair.second._forward_hooks
    with pytest.raises(RuntimeError, match="removed"):
        stats.open()


def test_module_called_twice_pairs_each_output_with_its_own_inputs() -> None:
    model = mlp()
    pair = find_growable_pairs(model)[0]
    a, b = torch.randn(4, 5, dtype=F64), torch.randn(3, 5, dtype=F64)
    ya, yb = torch.randint(0, 3, (4,)), torch.randint(0, 3, (3,))
    twice = PairStatistics(pair, dtype=F64, loss_reduction="sum")
    with twice:
        loss = F.cross_entropy(model(a), ya, reduction="sum")
        (loss + F.cross_entropy(model(b), yb, reduction="sum")).backward()
    expected = brute_force(
        pair, [reference_batch(model, pair, a, ya), reference_batch(model, pair, b, yb)]
    )
    assert_moments(twice, expected)


def count_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance on some torch objects warns of deprecations
        warnings.simplefilter("ignore")
        return sum(1 for obj in gc.get_objects() if isinstance(obj, Tensor))


def test_no_memory_growth_over_many_windows() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    stats = PairStatistics(find_growable_pairs(model)[0])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))

    def steps(count: int) -> None:
        for step in range(count):
            if step % 10 == 0:
                stats.open()
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            if step % 10 == 9:
                stats.moments()
                stats.close()
                stats.reset()

    steps(100)
    before = count_tensors()
    steps(1000)
    assert count_tensors() == before


# ---------------------------------------------------------------- flat sums and reduction
def test_reduce_statistics_sums_all_pairs_with_one_call() -> None:
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 3), nn.Flatten())
    model = nn.Sequential(*model, nn.Linear(2 * 2 * 2, 3)).to(F64)
    stats = [PairStatistics(pair, dtype=F64) for pair in find_growable_pairs(model)]
    for s in stats:
        s.open()
    train_step(model, torch.randn(5, 2, 6, 6, dtype=F64), torch.randint(0, 3, (5,)))
    before = [s.flat_sums() for s in stats]
    moments = [s.moments() for s in stats]
    calls = []

    def fake_all_reduce(t: Tensor) -> Tensor:  # two ranks holding the same sums
        calls.append(t.shape)
        return t + t.clone()

    reduce_statistics(stats, fake_all_reduce)
    assert len(calls) == 1 and calls[0] == (sum(b.numel() for b in before),)
    for s, flat, single in zip(stats, before, moments):
        torch.testing.assert_close(s.flat_sums(), 2 * flat)
        assert s.num_samples == 10 and s.skipped_batches == 0
        for name in FIELDS:
            torch.testing.assert_close(getattr(s.moments(), name), getattr(single, name))
    with pytest.raises(ValueError, match="expects"):
        stats[0].load_flat_sums(torch.zeros(3, dtype=F64))


def test_reset_empties_and_empty_statistics_refuse_moments() -> None:
    model = mlp()
    stats = PairStatistics(find_growable_pairs(model)[0])
    with stats:
        train_step(model, torch.randn(4, 5, dtype=F64), torch.randint(0, 3, (4,)))
    assert stats.num_samples == 4 and stats.elapsed_seconds > 0
    stats.reset()
    assert stats.num_samples == 0 and not stats.is_open
    with pytest.raises(ValueError, match="no samples"):
        stats.moments()


def test_oversized_moment_buffer_is_refused_with_the_pair_name() -> None:
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Flatten(), nn.Linear(16 * 64 * 64, 2))
    (pair,) = find_growable_pairs(model)
    with pytest.raises(
        GrowthConfigurationError, match=r"pair 0 -> 2 need a buffer of shape .* for M and S"
    ):
        PairStatistics(pair)
