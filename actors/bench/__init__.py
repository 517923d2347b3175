"""The benchmark suite behind ``scripts/bench``: contactor beside raw runc and containerd.

``main`` runs it; ``figures`` says what is measured and in which order, ``contactor``
and ``peers`` drive each system, ``report`` turns the samples into a table, JSON and a plot.
"""

from actors.bench.main import main

__all__ = ["main"]
