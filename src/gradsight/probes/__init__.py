"""Probes: one-off measurements of a network's gradients (not recorded during training)."""

from gradsight.probes.paths import path_lengths
from gradsight.probes.probe import probe
from gradsight.probes.shattered_gradients import shattering

__all__ = ["path_lengths", "probe", "shattering"]
