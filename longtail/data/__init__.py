"""Datasets: one module per family, imbalance injection, and the sources the training loop reads.

``FAMILIES`` maps each ``data.name`` to its :class:`~longtail.data.base.Family`; the families
register themselves when their module is imported below.
"""

from longtail.data.base import FAMILIES, Family, get, names, register

__all__ = ["FAMILIES", "Family", "get", "names", "register"]
