"""Continuing a run: ``gs.watch(..., resume=True)`` or ``resume=STEP``.

The run's step axis goes on where the earlier part stopped (``resume=True``: after the
last step it recorded) or at a given step (``resume=STEP``: a training resumed from a
checkpoint of that step; what the earlier part recorded from it on belonged to the
training that was abandoned, and is removed). A recorded step is never written twice:
``monitor.step(step=s)`` and ``monitor.log(..., step=s)`` before that step raise.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradsight._errors import RunError
from gradsight._text import few
from gradsight.store.writer import Earlier


@dataclass(frozen=True)
class Resumption:
    """Where a resumed run goes on.

    ``start`` is the index of the first ``monitor.step()`` call without ``step=`` (and
    where the schedule goes on); ``floor`` the smallest step this part may write (None: a
    new run, any); ``cut`` the step from which the earlier part's values are removed
    (None: none), ``removed`` how many of its recorded steps that removes.
    """

    start: int = 0
    floor: int | None = None
    cut: int | None = None
    removed: int = 0


NEW_RUN = Resumption()


def plan(earlier: Earlier | None, resume: bool | int) -> Resumption:
    """Where the run goes on, from what it had recorded (``earlier``; None: no run there) and
    ``resume`` (False, True or a step)."""
    at = None if isinstance(resume, bool) else int(resume)
    if earlier is None or earlier.last_step is None:  # nothing recorded: a new run (at the given step)
        return Resumption(start=at or 0)
    if at is None:
        return Resumption(start=earlier.last_step + 1, floor=earlier.last_step + 1)
    if at > earlier.last_step:
        return Resumption(start=at, floor=at)
    return Resumption(start=at, floor=at, cut=at, removed=sum(s >= at for s in earlier.steps))


def check_model(earlier: Earlier, param_names: Sequence[str], run_dir: Path) -> None:
    """Refuse to continue a run of another model (other parameter names).

    Raises:
        RunError: naming a few parameters only the run or only the model has.
    """
    if not earlier.params or set(earlier.params) == set(param_names):
        return
    only_run = [n for n in earlier.params if n not in set(param_names)]
    only_model = [n for n in param_names if n not in set(earlier.params)]

    def named(names: list[str]) -> str:
        return few(names, 3) if names else "none"

    raise RunError(f"cannot resume the run in {run_dir}: it was recorded from another model (parameters only in "
                   f"the run: {named(only_run)}; only in this model: {named(only_model)}); pass overwrite=True to "
                   "replace it or choose another run_dir")


def meta(earlier: Earlier, new: dict[str, Any], resumption: Resumption, name_given: bool,
         config_given: bool) -> dict[str, Any]:
    """The metadata of a resumed run: this part's (``new``), keeping the earlier part's start
    time, and its name and config unless given again, and one more entry in ``resumed``."""
    out = dict(new)
    out.pop("start_time", None)
    if not name_given and "name" in earlier.meta:
        out["name"] = earlier.meta["name"]
    if not config_given and "config" in earlier.meta:
        out["config"] = earlier.meta["config"]
    entry = {"step": resumption.start, "time": time.time(), "previous_status": earlier.status,
             "steps_removed": resumption.removed, "host": socket.gethostname(), "pid": os.getpid()}
    history = earlier.meta.get("resumed")
    out["resumed"] = [*(history if isinstance(history, list) else []), entry]
    return out


def describe(resumption: Resumption, earlier: Earlier, run_dir: Path) -> str:
    """The warning of a resume that removes recorded steps."""
    last = earlier.last_step
    return (f"gradsight: resuming {run_dir} at step {resumption.cut} (resume={resumption.cut}) removes what it "
            f"recorded from step {resumption.cut} to {last}: {resumption.removed} recorded step(s) of the training "
            "that went on from there before it was resumed")


def refuse_step(step: int, resumption: Resumption, resume: bool | int, run_dir: Path) -> ValueError:
    """The error of a step before the one a resumed run goes on at."""
    if resume is True:
        how = (f"it recorded up to step {resumption.floor - 1}, and resume=True continues after it; to go on from a "
               f"checkpoint of an earlier step S, pass resume=S to gs.watch, which removes the steps recorded from "
               "S on")
    else:
        how = f"resume={resume} continues it there"
    return ValueError(f"step={step} is before step {resumption.floor}, where the resumed run in {run_dir} goes on: "
                      f"{how}; a recorded step is never written twice")
