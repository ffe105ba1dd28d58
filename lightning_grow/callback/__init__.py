"""The Lightning integration: :class:`GrowthCallback` and its plumbing.

* :mod:`~lightning_grow.callback.growth`: the callback (hooks, decisions, DDP re-wrap).
* ``_state``: schedule building and the callback's checkpoint state.
* ``_budget_keeper``: measuring and keeping the compute and memory budgets.
* ``_spread``: spreading a decision's solves over the DDP ranks.
* ``_arguments``: argument checks with clear messages.
* ``_lightning``: Lightning, DDP and torchmetrics details (every private API used is there).
* ``_summary``, :mod:`~lightning_grow.callback.progress`: the CLI's fit summary and epoch lines.
"""

from lightning_grow.callback.growth import GrowthCallback

__all__ = ["GrowthCallback"]
