"""The main tensor of what a model (or one module) returns: one rule for every reader.

The monitor's activation hooks, ``gs.probe``, ``gs.path_lengths``, the computation graph and the
check-up behind ``gradsight doctor`` all take the tensor they measure, trace or backpropagate
from with :func:`main_output`.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

__all__ = ["main_output"]


def main_output(output: object) -> Tensor | None:
    """The main floating-point tensor of a model's or a module's output, or ``None``.

    The rule, in order:

    1. a floating-point tensor is itself; any other tensor (integer ids, a bool mask) is
       ``None``;
    2. an output with floating-point ``logits`` (a Hugging Face ``ModelOutput``, a mapping with a
       ``"logits"`` key, an object with a ``logits`` attribute) gives its logits, even when a
       ``loss`` comes first;
    3. a tuple, list or mapping (its values, in order) gives the first item for which this rule
       finds a tensor, depth first: ``(logits, hidden)`` -> ``logits``, ``(ids, scores)`` -> ``scores``;
    4. anything else (``None``, numbers, other objects) is ``None``.
    """
    if isinstance(output, Tensor):
        return output if output.is_floating_point() else None
    logits = output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
    if isinstance(logits, Tensor) and logits.is_floating_point():
        return logits
    items = output.values() if isinstance(output, Mapping) else output if isinstance(output, (tuple, list)) else ()
    for item in items:
        found = main_output(item)
        if found is not None:
            return found
    return None
