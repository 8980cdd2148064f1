"""Probes: one-off measurements of a network's gradients (not recorded during training)."""

from gradsight.probes.paths import path_lengths
from gradsight.probes.shattering import shattering

__all__ = ["path_lengths", "shattering"]
