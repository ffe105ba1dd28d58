"""When, where, how many and how far: schedule, selection, amplitude search, statistics budget.

* :mod:`~lightning_grow.decision.policy`: the schedule's phases and the per-pair selection.
* :mod:`~lightning_grow.decision.planner`: one decision, from moments to neurons to install.
* :mod:`~lightning_grow.decision.amplitude`: trying candidates without surgery; the line search.
* :mod:`~lightning_grow.decision.budget`: what statistics cost and how to spread them.
"""
