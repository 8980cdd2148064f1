"""The doctor's calibration population: healthy networks from the libraries people use.

Every network trains from random initialization (Adam or its usual optimizer, its usual
loss) on random data, or on real data for a subset, recorded as ``gradsight doctor``
records (:func:`doctor_cases.record`: activations, update ratios at every step,
histograms every 4th step). The recorded runs are judged at 5, 20 and 100 steps (a view
of the first k steps of one 100-step run: the doctor sees at step k exactly what a k-step
check-up records) and every rule's statistic is written out, so that thresholds are set
from the healthy distribution (``benchmarks/doctor_calibrate.py``).

    python benchmarks/doctor_population.py list                      # the networks, by family
    python benchmarks/doctor_population.py record --out runs/pop     # record every network (skips done ones)
    python benchmarks/doctor_population.py record --out runs/pop -k timm_ --jobs 2
    python benchmarks/doctor_population.py measure --runs runs/pop   # statistics and findings at 5/20/100 steps

The networks live in ``doctor_nets_timm.py``, ``doctor_nets_hf.py`` and
``doctor_nets_torch.py`` (a module whose library is not installed is left out, said once).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from doctor_cases import Training, record  # noqa: E402

#: Steps at which the population is judged; the runs are recorded for the largest.
CHECKPOINTS = (5, 20, 100)
#: The fewest values a BatchNorm may normalize per channel (batch x positions) in a healthy
#: recipe: an ImageNet CNN fed 32-pixel images in batches of 4 normalizes 4 values per channel
#: at its 1x1 last stage, and its gradients reach 1e4-1e6 (measured on the first population).
MIN_BN_VALUES = 32
#: A healthy run's loss never exceeds this multiple of its first value ...
MAX_LOSS_RISE = 3.0
#: ... and the median of its last 5 values stays below this multiple (random labels: nothing to
#: learn, so a healthy run stays near its start; a diverging one does not).
MAX_LOSS_END = 1.5


@dataclass(frozen=True)
class Net:
    """One healthy network of the population.

    Attributes:
        name: unique identifier (``timm_resnet18``, ``hf_llama_tiny``, ...).
        family: the architecture family cross-validation splits on (``resnet``, ``vit``,
            ``llama``, ``lstm``, ...): the networks of one family are all fitted or all
            held out.
        source: the library it comes from (``timm``, ``torchvision``, ``transformers``,
            ``diffusers``, ``peft``, ``torch``, ``gradsight``).
        build: returns the :class:`Training` (called after ``torch.manual_seed(0)``; its
            ``steps`` is replaced by the recording's).
        data: ``random`` or the real dataset it trains on (``mnist5k``, ``fashion-mnist``,
            ``pystdlib``).
        note: what it is, when the name does not say.
    """

    name: str
    family: str
    source: str
    build: Callable[[], Training]
    data: str = "random"
    note: str = ""


NET_MODULES = ("doctor_nets_torch", "doctor_nets_timm", "doctor_nets_hf")
#: Networks kept out of the calibration (``--unseen``): never used to write or tune a rule.
UNSEEN_MODULES = ("doctor_nets_unseen",)


def load_nets(verbose: bool = True, unseen: bool = False) -> list[Net]:
    """Every network of the installed libraries, in module order; names are unique
    (``unseen``: the networks kept out of the calibration instead)."""
    nets: list[Net] = []
    for module_name in UNSEEN_MODULES if unseen else NET_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            if verbose:
                print(f"[population] {module_name} left out: {exc}", file=sys.stderr)
            continue
        nets.extend(module.NETS)
    names = [n.name for n in nets]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"network names used twice: {sorted(dup)}")
    return nets


def select(nets: list[Net], patterns: list[str]) -> list[Net]:
    return [n for n in nets if not patterns or any(p in n.name for p in patterns)]


def record_net(net: Net, out: Path, steps: int) -> dict:
    """Record ``net`` for ``steps`` steps into ``out/<name>``; a summary dict (error included)."""
    import torch

    run_dir = out / net.name
    start = time.perf_counter()
    entry = {"name": net.name, "family": net.family, "source": net.source, "data": net.data, "steps": steps}
    try:
        torch.manual_seed(0)
        training = dataclasses.replace(net.build(), steps=steps)
        entry["bn_values"] = bn_values(training)
        torch.manual_seed(0)
        training = dataclasses.replace(net.build(), steps=steps)
        record(training, run_dir, net.name)
        entry["error"] = None
    except Exception as exc:  # a crash is a result of its own
        entry["error"] = f"{type(exc).__name__}: {exc}"
        entry["traceback"] = traceback.format_exc()
    entry["seconds"] = round(time.perf_counter() - start, 2)
    return entry


def bn_values(training: Training) -> int | None:
    """The fewest values any BatchNorm of the model normalizes per channel in one training
    forward pass (batch x spatial positions); None without BatchNorm."""
    import torch
    from torch import nn

    from doctor_faults import _buffers_kept

    seen: list[int] = []

    def hook(module, args):
        x = args[0]
        seen.append(x.numel() // max(x.shape[1], 1))

    handles = [m.register_forward_pre_hook(hook) for m in training.model.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        with _buffers_kept(training.model), torch.no_grad():
            x, y = training.batch(torch.Generator().manual_seed(1234))
            training.loss(training.model, x, y)
    finally:
        for h in handles:
            h.remove()
    return min(seen) if seen else None


def health(run_dir: Path, entry: dict) -> str | None:
    """Why a recorded run is not a healthy member of the population, or None: judged
    without the doctor, from the recipe (:data:`MIN_BN_VALUES`) and the loss
    (:data:`MAX_LOSS_RISE`, :data:`MAX_LOSS_END`)."""
    import math

    from gradsight.store.view import RunView

    bn = entry.get("bn_values")
    if bn is not None and bn < MIN_BN_VALUES:
        return f"BatchNorm over {bn} values per channel (< {MIN_BN_VALUES})"
    with RunView(run_dir) as view:
        metrics = view.metrics()
    if "loss" not in metrics.columns:
        return None
    loss = [float(v) for v in metrics["loss"] if math.isfinite(float(v))]
    if len(loss) < 6 or not loss[0] > 0:
        return None
    end = sorted(loss[-5:])[2]
    if max(loss) > MAX_LOSS_RISE * loss[0]:
        return f"loss rose {max(loss) / loss[0]:.3g}x (from {loss[0]:.3g} to {max(loss):.3g})"
    if end > MAX_LOSS_END * loss[0]:
        return f"loss ended {end / loss[0]:.3g}x its start ({loss[0]:.3g} -> {end:.3g})"
    return None


def _done(out: Path) -> dict[str, dict]:
    path = out / "index.jsonl"
    if not path.exists():
        return {}
    entries = {}
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            entries[entry["name"]] = entry
    return entries


def _record_main(args) -> int:
    import torch

    torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    done = _done(out)
    nets = [n for n in select(load_nets(unseen=args.unseen), args.patterns)
            if args.redo or n.name not in done or done[n.name].get("steps") != args.steps]
    if args.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(_record_by_name, n.name, str(out), args.steps, args.threads, args.unseen)
                       for n in nets]
            for fut in futures:
                _log(out, fut.result())
    else:
        for net in nets:
            _log(out, record_net(net, out, args.steps))
    return 0


def _record_by_name(name: str, out: str, steps: int, threads: int, unseen: bool = False) -> dict:
    import torch

    torch.set_num_threads(threads)
    net = next(n for n in load_nets(verbose=False, unseen=unseen) if n.name == name)
    return record_net(net, Path(out), steps)


def _log(out: Path, entry: dict) -> None:
    status = "ok" if entry["error"] is None else f"CRASH {entry['error']}"
    print(f"{entry['name']}: {status} ({entry['seconds']} s)", file=sys.stderr, flush=True)
    with open(out / "index.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")


def _check_main(args) -> int:
    """Build every network and print the BatchNorm values per channel of its recipe."""
    import torch

    torch.set_num_threads(args.threads)
    for net in select(load_nets(unseen=args.unseen), args.patterns):
        torch.manual_seed(0)
        try:
            bn = bn_values(net.build())
        except Exception as exc:  # noqa: BLE001
            bn = f"{type(exc).__name__}: {exc}"
        flag = "  < MIN" if isinstance(bn, int) and bn < MIN_BN_VALUES else ""
        print(f"{net.name}\t{bn}{flag}", flush=True)
    return 0


def _list_main(args) -> int:
    nets = select(load_nets(unseen=args.unseen), args.patterns)
    by_family: dict[str, list[str]] = {}
    for n in nets:
        by_family.setdefault(f"{n.source}/{n.family}", []).append(n.name)
    for fam, names in sorted(by_family.items()):
        print(f"{fam}: {', '.join(names)}")
    print(f"{len(nets)} networks, {len({n.family for n in nets})} families, "
          f"{sum(n.data != 'random' for n in nets)} on real data")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="the networks, by family")
    p.add_argument("-k", dest="patterns", action="append", default=[])
    p = sub.add_parser("record", help="record the networks (skips those already recorded)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=max(CHECKPOINTS))
    p.add_argument("-k", dest="patterns", action="append", default=[],
                   help="only networks whose name contains this (repeatable)")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads per job (default 1)")
    p.add_argument("--redo", action="store_true", help="record again networks already recorded")
    p = sub.add_parser("check", help="the BatchNorm values per channel of every network's recipe")
    p.add_argument("-k", dest="patterns", action="append", default=[])
    p.add_argument("--threads", type=int, default=1)
    for p in sub.choices.values():
        p.add_argument("--unseen", action="store_true",
                       help="the networks kept out of the calibration (doctor_nets_unseen.py) instead")
    args = parser.parse_args(argv)
    return {"list": _list_main, "record": _record_main, "check": _check_main}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
