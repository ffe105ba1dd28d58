"""What a new user hits: bad arguments, silent skips, partial growth, side effects, late saves."""

from __future__ import annotations

import math

import pytest

from lightning_grow import GrowthCallback
from lightning_grow.topology import GrowthConfigurationError
from tests.helpers import permissive_callback
from tests.test_callback import _Regression, _regression_loader, _trainer

# ---------------------------------------------------------------------------------------------
# 2. Arguments are checked at construction (or at setup, when they need the model)


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"significance_margin": -1}, ValueError, "significance_margin"),
        ({"significance_margin": math.inf}, ValueError, "significance_margin"),
        ({"gain_threshold": math.nan}, ValueError, "gain_threshold"),
        ({"gain_threshold": 2.0}, ValueError, "gain_threshold"),
        ({"min_loss_decrease": math.nan}, ValueError, "min_loss_decrease"),
        ({"statistics_samples": 2.5}, TypeError, "statistics_samples"),
        ({"warmup_steps": 1.5}, TypeError, "warmup_steps"),
        ({"patience": True}, TypeError, "patience"),
        ({"max_width": {"net.0 -> net.2": -1}}, ValueError, r"max_width\['net.0 -> net.2'\]"),
        ({"max_width": {"net.0 -> net.2": 2.5}}, TypeError, "max_width"),
        ({"max_width": 0}, ValueError, "max_width"),
        ({"pairs": 42}, TypeError, "pairs"),
        ({"pairs": []}, ValueError, "pairs"),
        ({"network": 3}, TypeError, "network"),
        ({"amplitude_range": (math.nan, 1.0)}, ValueError, "amplitude_range"),
        ({"stop_fraction": math.nan}, ValueError, "stop_fraction"),
    ],
)
def test_bad_arguments_fail_at_construction_naming_the_argument(arguments, error, message) -> None:
    with pytest.raises(error, match=message):
        GrowthCallback(**arguments)


def test_good_arguments_of_every_kind_are_accepted() -> None:
    GrowthCallback(
        significance_margin=0,
        gain_threshold=1,
        statistics_samples=64,
        max_width={"net.0 -> net.2": 3},
        pairs=("net.0 -> net.2",),
        network="net",
        amplitude_range=[0.5, 0.5],
        seed=-3,
    )


def _setup_error(**options) -> str:
    trainer = _trainer([permissive_callback(**options)], max_steps=1)
    with pytest.raises(GrowthConfigurationError) as caught:
        trainer.fit(_Regression(), _regression_loader())
    return str(caught.value)


def test_an_unknown_max_width_key_is_refused_at_setup_listing_the_pairs() -> None:
    message = _setup_error(max_width={"net.0 -> net.3": 4})  # a typo: the pair is net.0 -> net.2
    assert "'net.0 -> net.3'" in message and "'net.0 -> net.2'" in message


def test_an_unknown_network_is_refused_at_setup_listing_the_children() -> None:
    message = _setup_error(network="nope")
    assert "network='nope'" in message and "['net']" in message
