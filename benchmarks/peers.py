"""Overhead of gradient monitoring, gradsight and its peers, measured side by side in one process.

Every row trains its own copy of the model (same initial weights, AdamW, every step
recorded or logged) in interleaved rounds with a bare loop, so drift and the noise of a
shared machine hit every row alike. Each cell is the median over rounds of
``step time / bare step time in the same round``, with the 25-75 % range of those ratios.

Rows:

* ``floor`` / ``floor_weights``: one ``torch._foreach_norm`` over the gradients (and the
  weights) and one host copy: the least any per-tensor statistic can cost. Every
  gradsight row is also given as its extra time over bare divided by the matching
  floor's (a second table);
* ``gradsight quickstart``: ``gs.watch(model, dir, optimizer=opt)`` and
  ``monitor.step(loss)``, as in the README's quickstart (gradient and weight statistics
  and the loss at every step, ``update_ratio`` at every 10th: the default ``update_ratio=10``);
* ``gradsight quickstart, update_ratio=True``: the quickstart with ``update_ratio`` at
  every recorded step (a copy of the weights before each optimizer step);
* ``gradsight grads only``: ``gs.watch(model, dir, weights=False)``, no optimizer;
* ``gradsight activations=True``: the quickstart plus ``activations=True``;
* ``gradsight histograms=10``: the quickstart plus ``histograms=10`` (skipped, with a
  note, where ``gs.watch`` has no such option);
* ``gradsight quickstart, 2 micro-batches`` / ``... + noise_scale=True``: the quickstart where
  each step accumulates two backward passes of the batch (each loss halved), without and with
  ``noise_scale=True``: the second over the first is the noise scale's cost; ``noise_floor``: the
  first plus a hook per parameter taking the norm of each micro-batch's gradient into a buffer
  made once and one host copy of it a step, the least the noise scale's own work can cost;
* ``Lightning grad_norm``: ``lightning.pytorch.utilities.grad_norm(model, 2)``;
* ``p.grad.norm().item() loop``: ``[p.grad.norm().item() for p in params]``;
* ``wandb.watch(log="gradients")``: offline run, ``log_freq=1``, ``run.log({"loss": ...})``;
* ``TensorBoard add_histogram``: ``SummaryWriter.add_histogram`` of every parameter's gradient.

Models: an MLP of 12 Linear(1024, 1024) layers, batch 16 (parameter-heavy); torchvision
resnet18, batch 16 at 3x64x64; a Hugging Face GPT-2 (4 layers, width 256, random init),
batch 8 of 64 tokens. ``--models scalars`` (not in the default list: TensorBoard's
histogram of every tensor takes about 13 s a step there) adds 20,000 scalar parameters
(a gain per feature, batch 16, ``AdamW(fused=True)``), where the cost per tensor, not
per element, is what counts. Peers are optional installs; a missing one is skipped with
a note.

Each step is timed to its end (on a CUDA device, synchronized before and after). On a CUDA
device, ``cuda_peak_memory`` gives a row's peak memory; ``benchmarks/gpu_check.py`` measures
there, at realistic sizes, with these functions.

``--memory`` adds the memory column: each row's peak resident memory (RSS) over 25 training
steps of an MLP of 12 Linear(W, W) layers, minus bare's, at two widths (``--memory-widths``,
default 1024 and 2048: 50 and 201 MB of weights), so that what is fixed and what grows with
the model are told apart (the last column: extra MB per MB of weights). Each row and width
runs in a process of its own, with glibc's mmap threshold fixed (``MALLOC_MMAP_THRESHOLD_=65536``:
freed tensors leave the process, so RSS follows what is held) and gradsight's kernel built
beforehand into a shared cache; RSS is read after every backward pass, monitoring
step and optimizer step. On a CUDA device, ``cuda_peak_memory`` is the same measurement.

``--first-step`` also measures, in a fresh process on a machine where gradsight's kernel was
never built (it builds it), then in a second one (it loads it), how much longer the first
recorded step of the quickstart takes than a later one, and what it prints.

    python benchmarks/peers.py                   # everything (about 10-20 minutes on 2 cores)
    python benchmarks/peers.py --quick           # fewer rounds, a few minutes
    python benchmarks/peers.py --models mlp --rows quickstart,bare --rounds 30
    python benchmarks/peers.py --models scalars,mlp --rows quickstart,grads --quick
    python benchmarks/peers.py --models none --memory     # the memory column only
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import inspect
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

import gradsight as gs

# -- models ----------------------------------------------------------------------------


@dataclass
class Problem:
    """A model and one batch; ``loss(model)`` runs the forward pass; ``adamw`` are keyword
    arguments of its ``AdamW`` beyond ``lr=1e-4``."""

    label: str
    model: nn.Module
    loss: Callable[[nn.Module], torch.Tensor]
    adamw: dict = field(default_factory=dict)


def mlp_problem(width: int = 1024) -> Problem:
    layers: list[nn.Module] = []
    for i in range(12):
        layers.append(nn.Linear(width, width))
        if i < 11:
            layers.append(nn.ReLU())
    x, y = torch.randn(16, width), torch.randn(16, width)
    return Problem(f"MLP 12x{width}, batch 16", nn.Sequential(*layers), lambda m: nn.functional.mse_loss(m(x), y))


def resnet18_problem(batch: int = 16, size: int = 64, device: str = "cpu") -> Problem:
    import torchvision

    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    return Problem(f"torchvision resnet18, batch {batch}, 3x{size}x{size}",
                   torchvision.models.resnet18(weights=None).to(device),
                   lambda m: nn.functional.cross_entropy(m(x), y))


def gpt2_problem(layers: int = 4, width: int = 256, heads: int = 4, tokens: int = 64, batch: int = 8,
                 vocab: int = 8192, device: str = "cpu") -> Problem:
    """A Hugging Face GPT-2 of random weights built from a config (nothing downloaded); GPT-2 124M
    is ``layers=12, width=768, heads=12, tokens=1024, vocab=50257``."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # its notes on a small random config are not the benchmark's output
    config = GPT2Config(n_layer=layers, n_embd=width, n_head=heads, n_positions=tokens, vocab_size=vocab,
                        bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).to(device)
    ids = torch.randint(0, config.vocab_size, (batch, tokens), device=device)
    return Problem(f"GPT-2 ({layers} layers, width {width}), batch {batch}x{tokens} tokens", model,
                   lambda m: m(input_ids=ids, labels=ids).loss)


class ScalarGains(nn.Module):
    """``n`` scalar parameters (one gain per feature), stacked into one vector in the forward pass."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.gains = nn.ParameterList(nn.Parameter(torch.ones(())) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.stack(list(self.gains))


def scalars_problem() -> Problem:
    # fused AdamW: the default (one loop over the tensors per operation) takes over a second
    # per step on 20,000 tensors here, a bare step that would hide the monitor's cost
    x, y = torch.randn(16, 20_000), torch.randn(16, 20_000)
    return Problem("20,000 scalar parameters, batch 16", ScalarGains(20_000),
                   lambda m: nn.functional.mse_loss(m(x), y), adamw={"fused": True})


MODELS: dict[str, tuple[Callable[[], Problem], str | None]] = {
    "mlp": (mlp_problem, None),
    "scalars": (scalars_problem, None),
    "resnet18": (resnet18_problem, "torchvision"),
    "gpt2": (gpt2_problem, "transformers"),
}

# -- rows ------------------------------------------------------------------------------


class Row:
    """One way of monitoring: ``setup`` once per model copy, ``after_backward`` every step."""

    name = ""
    needs: str | None = None  #: module to import, or None
    micro_batches = 1  #: backward passes accumulated per step (the batch each time, the loss divided)

    def available(self) -> str | None:
        """None when the row can run, else why not."""
        if self.needs is None:
            return None
        try:
            __import__(self.needs)
        except Exception as exc:  # not installed, or broken
            return f"{self.needs} not importable ({type(exc).__name__}: {exc})"
        return None

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer, run_dir: Path) -> None:
        pass

    def after_backward(self, model: nn.Module, loss: torch.Tensor, step: int) -> None:
        pass

    def close(self) -> None:
        pass


class Bare(Row):
    name = "bare"


class Floor(Row):
    """The floor of per-tensor norms: one ``torch._foreach_norm`` pass over the gradients (and
    the weights, for the configuration that also reads them) and one copy of the results
    to the host. Nothing that reads the same tensors can do less."""

    def __init__(self, name: str, weights: bool) -> None:
        self.name = name
        self.weights = weights
        self.last: torch.Tensor | None = None

    def after_backward(self, model, loss, step):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        tensors = grads + ([p.detach() for p in model.parameters()] if self.weights else [])
        self.last = torch.stack(torch._foreach_norm(tensors)).cpu()


class Gradsight(Row):
    def __init__(self, name: str, with_optimizer: bool, micro_batches: int = 1, **options) -> None:
        self.name = name
        self.with_optimizer = with_optimizer
        self.micro_batches = micro_batches
        self.options = options
        self.monitor = None

    def available(self) -> str | None:
        missing = set(self.options) - set(inspect.signature(gs.watch).parameters)
        if missing:
            return f"gs.watch has no option {', '.join(sorted(missing))} in this version"
        return None

    def setup(self, model, optimizer, run_dir):
        optimizer_arg = {"optimizer": optimizer} if self.with_optimizer else {}
        self.monitor = gs.watch(model, run_dir, **optimizer_arg, **self.options)

    def after_backward(self, model, loss, step):
        self.monitor.step(loss)

    def close(self):
        self.monitor.close()


class NoiseFloor(Gradsight):
    """The floor of the noise scale's own work, beside ``accumulate``: that row plus a hook on
    every parameter taking the norm of each micro-batch's gradient into a buffer made once
    (nothing allocated in the backward pass) and one host copy of the buffer a step."""

    def __init__(self, name: str) -> None:
        super().__init__(name, True, micro_batches=2)

    def setup(self, model, optimizer, run_dir):
        super().setup(model, optimizer, run_dir)
        params = [p for p in model.parameters() if p.requires_grad]
        self.norms = torch.zeros(len(params), self.micro_batches, device=params[0].device)
        self.seen = [0] * len(params)

        def hook(i: int, grad: torch.Tensor) -> None:
            torch.linalg.vector_norm(grad, out=self.norms[i, self.seen[i] % self.micro_batches])
            self.seen[i] += 1

        self.handles = [p.register_hook(functools.partial(hook, i)) for i, p in enumerate(params)]

    def after_backward(self, model, loss, step):
        super().after_backward(model, loss, step)
        self.last = self.norms.cpu()

    def close(self):
        for h in self.handles:
            h.remove()
        super().close()


class LightningGradNorm(Row):
    name = "Lightning grad_norm"
    needs = "lightning"

    def setup(self, model, optimizer, run_dir):
        from lightning.pytorch.utilities import grad_norm

        self.grad_norm = grad_norm
        self.last: dict = {}

    def after_backward(self, model, loss, step):
        self.last = self.grad_norm(model, norm_type=2)  # what a LightningModule passes to self.log_dict


class ItemLoop(Row):
    name = "p.grad.norm().item() loop"

    def after_backward(self, model, loss, step):
        [p.grad.norm().item() for p in model.parameters() if p.grad is not None]


class WandbWatch(Row):
    name = 'wandb.watch(log="gradients")'
    needs = "wandb"

    def setup(self, model, optimizer, run_dir):
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(mode="offline", dir=str(run_dir), project="peers")
        self.run.watch(model, log="gradients", log_freq=1)

    def after_backward(self, model, loss, step):
        self.run.log({"loss": loss.item()}, step=step)

    def close(self):
        self.run.finish()


class TensorBoardHistograms(Row):
    name = "TensorBoard add_histogram"
    needs = "tensorboard"

    def setup(self, model, optimizer, run_dir):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir))

    def after_backward(self, model, loss, step):
        for name, p in model.named_parameters():
            if p.grad is not None:
                self.writer.add_histogram(f"{name}/grad", p.grad, step)
        self.writer.add_scalar("loss", loss.item(), step)

    def close(self):
        self.writer.close()


def all_rows() -> dict[str, Row]:
    return {
        "bare": Bare(),
        "floor": Floor("floor: one _foreach_norm over the gradients, one host copy", weights=False),
        "floor_weights": Floor("floor: one _foreach_norm over gradients and weights, one host copy", weights=True),
        "quickstart": Gradsight("gradsight quickstart (optimizer=, default update_ratio=10)", True),
        "quickstart_ur": Gradsight("gradsight quickstart, update_ratio=True", True, update_ratio=True),
        "grads": Gradsight("gradsight grads only (weights=False, no optimizer)", False, weights=False),
        "activations": Gradsight("gradsight quickstart + activations=True", True, activations=True),
        "histograms": Gradsight("gradsight quickstart + histograms=10", True, histograms=10),
        "histograms_all": Gradsight("gradsight quickstart + histograms=True (every step)", True, histograms=True),
        "accumulate": Gradsight("gradsight quickstart, 2 micro-batches", True, micro_batches=2),
        "noise_scale": Gradsight("gradsight quickstart, 2 micro-batches + noise_scale=True", True, micro_batches=2,
                                 noise_scale=True),
        "noise_floor": NoiseFloor("gradsight quickstart, 2 micro-batches + a norm hook per parameter (noise scale's floor)"),
        "lightning": LightningGradNorm(),
        "item": ItemLoop(),
        "wandb": WandbWatch(),
        "tensorboard": TensorBoardHistograms(),
    }


# -- measuring -------------------------------------------------------------------------


@dataclass
class Cell:
    ratio: float  #: median over rounds of this row's step time / bare's
    low: float  #: 25 % quantile of those ratios
    high: float  #: 75 %
    median_ms: float


def device_of(problem: Problem) -> torch.device:
    return next(problem.model.parameters()).device


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously: a step's time is taken when it is done)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: The optimizer every row trains with: ``"adamw"`` (the default) or ``"sgd"`` (``--optimizer``:
#: a cheap step, so the monitoring's share of a step is not diluted by AdamW's passes).
OPTIMIZER = "adamw"


def make_optimizer(problem: Problem, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer of a row's copy of the model (:data:`OPTIMIZER`), lr 1e-4."""
    if OPTIMIZER == "sgd":
        return torch.optim.SGD(model.parameters(), lr=1e-4)
    return torch.optim.AdamW(model.parameters(), lr=1e-4, **problem.adamw)


def train_step(problem: Problem, model: nn.Module, opt: torch.optim.Optimizer, row: Row, step: int) -> None:
    """One training step of a row's copy of the model: forward, backward (``row.micro_batches``
    times, the loss divided by their number), the row's monitoring, the optimizer's step."""
    for _ in range(row.micro_batches):
        loss = problem.loss(model) / row.micro_batches
        loss.backward()
    row.after_backward(model, loss, step)
    opt.step()
    opt.zero_grad(set_to_none=True)


def bench(problem: Problem, rows: dict[str, Row], rounds: int, warmup: int, deadline: float,
          tmp: Path) -> tuple[dict[str, Cell], int]:
    """Interleaved rounds of one step per row; returns the cells and the rounds measured."""
    models = {k: copy.deepcopy(problem.model) for k in rows}
    opts = {k: make_optimizer(problem, m) for k, m in models.items()}
    for key, row in rows.items():
        row.setup(models[key], opts[key], tmp / key)
    steps = dict.fromkeys(rows, 0)
    device = device_of(problem)

    def step(key: str) -> float:
        synchronize(device)
        t0 = time.perf_counter()
        train_step(problem, models[key], opts[key], rows[key], steps[key])
        synchronize(device)
        steps[key] += 1
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {k: [] for k in rows}
    try:
        for _ in range(warmup):  # the first recorded step builds (or loads) gradsight's kernel
            for key in rows:
                step(key)
        done = 0
        while done < rounds and (done < 3 or time.perf_counter() < deadline):
            order = list(rows) if done % 2 == 0 else list(reversed(rows))  # no row always runs after another
            for key in order:
                times[key].append(step(key))
            done += 1
    finally:
        for row in rows.values():
            row.close()
    cells = {}
    for key in rows:
        ratios = [t / b for t, b in zip(times[key], times["bare"])]
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        cells[key] = Cell(statistics.median(ratios), q[0], q[2], statistics.median(times[key]) * 1e3)
    return cells, done


def cuda_peak_memory(problem: Problem, row: Row, steps: int, tmp: Path) -> int:
    """Peak bytes allocated on the problem's CUDA device (``torch.cuda.max_memory_allocated``) while
    ``row`` trains its own copy of the model alone for ``steps`` steps, above what was allocated
    before: the copy, its gradients and AdamW states, activations, and what the row keeps or makes."""
    device = device_of(problem)
    synchronize(device)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    model = copy.deepcopy(problem.model)
    opt = make_optimizer(problem, model)
    row.setup(model, opt, tmp)
    try:
        for step in range(steps):
            train_step(problem, model, opt, row, step)
        synchronize(device)
    finally:
        row.close()
    peak = torch.cuda.max_memory_allocated(device) - before
    del model, opt
    return peak


# -- memory on the CPU ----------------------------------------------------------------

MEMORY_STEPS = 25


def rss_bytes() -> int:
    """This process's resident memory now (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss(problem: Problem, row: Row, steps: int, tmp: Path) -> int:
    """The most resident memory of this process while ``row`` trains ``problem``'s model for
    ``steps`` steps (AdamW), read after every backward pass, monitoring step and optimizer step."""
    model, opt = problem.model, torch.optim.AdamW(problem.model.parameters(), lr=1e-4, **problem.adamw)
    row.setup(model, opt, tmp)
    peak = 0
    try:
        for step in range(steps):
            loss = problem.loss(model)
            loss.backward()
            peak = max(peak, rss_bytes())
            row.after_backward(model, loss, step)
            peak = max(peak, rss_bytes())
            opt.step()
            opt.zero_grad(set_to_none=True)
            peak = max(peak, rss_bytes())
    finally:
        row.close()
    return peak


MEMORY_CHILD = r"""
import sys, warnings, torch
sys.path.insert(0, {bench_dir!r})
from pathlib import Path
from peers import all_rows, mlp_problem, peak_rss
warnings.simplefilter("ignore")
torch.manual_seed(0)
problem = mlp_problem({width})
print(peak_rss(problem, all_rows()[{row!r}], {steps}, Path({run_dir!r})))
"""


def memory_child_env(cache: Path) -> dict[str, str]:
    """The environment of a memory process: glibc returns freed tensors at once, one cache of gradsight's kernel."""
    return {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "GRADSIGHT_CACHE_DIR": str(cache),
            "OMP_NUM_THREADS": str(torch.get_num_threads())}


def measure_peak_rss(row: str, width: int, tmp: Path, steps: int = MEMORY_STEPS) -> int | str:
    """Peak RSS in bytes of ``row`` training the MLP of width ``width`` in a fresh process (the
    kernel built first into a cache in ``tmp`` by :func:`memory_table`); a string saying why on failure."""
    code = MEMORY_CHILD.format(bench_dir=str(Path(__file__).resolve().parent), width=width, row=row, steps=steps,
                               run_dir=str(tmp / f"memory-{row}-{width}"))
    done = subprocess.run([sys.executable, "-c", code], env=memory_child_env(tmp / "kernel-memory"),
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return f"failed ({done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode})"
    return int(done.stdout.split()[-1])


def weight_mb(width: int) -> float:
    """MB of float32 weights of the MLP of 12 Linear(width, width)."""
    return 12 * (width * width + width) * 4 / 1e6


def memory_table(rows: list[str], widths: list[int], tmp: Path, row_names: dict[str, str]) -> None:
    """Print each row's peak RSS minus bare's at each width, and the growth per MB of weights."""
    measure_peak_rss("quickstart", 64, tmp, steps=2)  # builds gradsight's kernel into the shared cache
    bare = {w: measure_peak_rss("bare", w, tmp) for w in widths}
    print("\nPeak resident memory minus bare's (MB), MLP of 12 Linear(W, W), batch 16, AdamW, "
          f"{MEMORY_STEPS} steps, one process per cell\n")
    print("| row | " + " | ".join(f"W={w} ({weight_mb(w):.0f} MB of weights)" for w in widths)
          + " | extra MB per MB of weights |")
    print("| --- |" + " ---: |" * (len(widths) + 1))
    print("| bare (its peak RSS) | " + " | ".join(f"{b / 1e6:.0f} MB" if isinstance(b, int) else b
                                                for b in bare.values()) + " | |")
    for key in rows:
        if key == "bare" or all_rows()[key].available() is not None:
            continue
        extra = {}
        for w in widths:
            peak = measure_peak_rss(key, w, tmp)
            extra[w] = (peak - bare[w]) / 1e6 if isinstance(peak, int) and isinstance(bare[w], int) else None
        cells = [f"{extra[w]:+.0f}" if extra[w] is not None else "failed" for w in widths]
        growth = ""
        if len(widths) >= 2 and extra[widths[0]] is not None and extra[widths[-1]] is not None:
            growth = f"{(extra[widths[-1]] - extra[widths[0]]) / (weight_mb(widths[-1]) - weight_mb(widths[0])):+.2f}"
        print(f"| {row_names[key]} | " + " | ".join(cells) + f" | {growth} |", flush=True)


# -- the first recorded step -----------------------------------------------------------

FIRST_STEP = r"""
import json, sys, time, torch
import gradsight as gs
sys.path.insert(0, {bench_dir!r})
from peers import MODELS
problem = MODELS[{model!r}][0]()
model = problem.model
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **problem.adamw)
times = []
with gs.watch(model, {run_dir!r}, optimizer=opt) as monitor:
    for _ in range(21):
        loss = problem.loss(model)
        loss.backward()
        t0 = time.perf_counter()
        monitor.step(loss)
        times.append(time.perf_counter() - t0)
        opt.step()
        opt.zero_grad()
print(json.dumps(times))
"""


def first_step(model: str, tmp: Path) -> str:
    """One line: the quickstart's ``monitor.step()`` at the first recorded step against the
    median of the next 20, in a fresh process on a machine where gradsight's kernel was never
    built (an empty ``GRADSIGHT_CACHE_DIR``: the first step builds it), then in a second fresh
    process (it loads it); and what each printed on stderr."""
    import json

    cache, scratch = tmp / f"kernel-{model}", tmp / f"tmp-{model}"  # (the latter: no library in a fallback folder)
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    env = {**os.environ, "GRADSIGHT_CACHE_DIR": str(cache), "TMPDIR": str(scratch),
           "OMP_NUM_THREADS": str(torch.get_num_threads())}
    parts = []
    for k, label in enumerate(("never built", "built")):
        code = FIRST_STEP.format(bench_dir=str(Path(__file__).resolve().parent), model=model,
                                 run_dir=str(tmp / f"first-{model}-{k}"))
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            return f"{model}: failed ({done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode})"
        times = json.loads(done.stdout.strip().splitlines()[-1])
        base = statistics.median(times[1:])
        printed = done.stderr.strip()
        parts.append(f"{label}: first step {times[0]:.2f} s ({times[0] - base:+.2f} s over the median later one, "
                     f"{base * 1e3:.1f} ms), stderr {repr(printed[:200]) if printed else 'empty'}")
    return f"{model}: " + "; ".join(parts)


# -- main ------------------------------------------------------------------------------


#: Each gradsight row and the floor row that reads the same tensors.
AGAINST_FLOOR = {"grads": "floor", "quickstart": "floor_weights", "quickstart_ur": "floor_weights",
                 "activations": "floor_weights", "histograms": "floor_weights", "lightning": "floor"}


def extra_over_floor(cells: dict[str, Cell], key: str) -> float | None:
    """A row's extra time over bare divided by its floor row's: 1.0 is the floor itself. None
    where the floor's extra time is lost in the noise (its 25-75 % range of rounds reaches
    bare's time): a ratio to noise says nothing."""
    floor = AGAINST_FLOOR.get(key)
    if floor not in cells or key not in cells or cells[floor].low <= 1.0:
        return None
    return (cells[key].ratio - 1.0) / (cells[floor].ratio - 1.0)


def print_against_floor(results: dict[str, dict[str, Cell]], labels: dict[str, str],
                        row_names: dict[str, str]) -> None:
    """The second table: each row's extra time as a multiple of the floor's extra time."""
    keys = [k for k in AGAINST_FLOOR if any(extra_over_floor(c, k) is not None for c in results.values())]
    if not keys:
        return
    print("\nExtra time over bare, as a multiple of the floor's extra time (1.0: the floor; grads-only rows against "
          "the gradient floor, rows reading weights too against the gradient-and-weight floor; '-' where the "
          "floor's own extra time is within the noise of the rounds)\n")
    print("| row | " + " | ".join(labels[m] for m in results) + " |")
    print("| --- |" + " ---: |" * len(results))
    for key in keys:
        vals = [extra_over_floor(results[m], key) for m in results]
        print(f"| {row_names[key]} (vs {AGAINST_FLOOR[key]}) | "
              + " | ".join("-" if v is None else f"{v:.2f}x" for v in vals) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mlp,resnet18,gpt2", help="comma-separated: " + ", ".join(MODELS))
    ap.add_argument("--rows", default=",".join(all_rows()), help="comma-separated: " + ", ".join(all_rows()))
    ap.add_argument("--rounds", type=int, default=25, help="interleaved rounds per model (default 25)")
    ap.add_argument("--warmup", type=int, default=3, help="rounds run before measuring (default 3)")
    ap.add_argument("--time-limit", type=float, default=600.0,
                    help="seconds per model after warm-up; rounds stop there (at least 3 are run)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch.set_num_threads (default: torch's choice); 1 is steadier on a busy machine")
    ap.add_argument("--quick", action="store_true", help="8 rounds, 2 warm-up, 60 s per model, no --first-step")
    ap.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw",
                    help="every row's optimizer (default adamw; sgd: a cheap step, the monitoring's share undiluted)")
    ap.add_argument("--memory", action="store_true",
                    help="also the memory column: peak RSS minus bare's at two MLP widths, a process per cell")
    ap.add_argument("--memory-widths", default="1024,2048", help="MLP widths of the memory column (default 1024,2048)")
    ap.add_argument("--first-step", action="store_true",
                    help="also time the first recorded step in fresh processes, the kernel never built, then built")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.warmup, args.time_limit = 8, 2, 60.0
    rows_wanted = ["bare"] + [r for r in args.rows.split(",") if r and r != "bare"]
    models_wanted = [m for m in args.models.split(",") if m and m != "none"]
    for name in models_wanted:
        if name not in MODELS:
            raise SystemExit(f"unknown model {name!r}: choose from {', '.join(MODELS)}")
    catalogue = all_rows()
    for name in rows_wanted:
        if name not in catalogue:
            raise SystemExit(f"unknown row {name!r}: choose from {', '.join(catalogue)}")

    if args.threads:
        torch.set_num_threads(args.threads)
    global OPTIMIZER
    OPTIMIZER = args.optimizer
    torch.manual_seed(0)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, device cpu, "
          f"optimizer {OPTIMIZER}, load average {load:.1f} at start")
    notes: list[str] = []
    results: dict[str, dict[str, Cell]] = {}
    labels: dict[str, str] = {}
    row_names = {key: catalogue[key].name for key in rows_wanted}
    tmp = Path(tempfile.mkdtemp(prefix="gradsight-peers-"))
    for model_key in models_wanted:
        make, needs = MODELS[model_key]
        if needs is not None:
            try:
                __import__(needs)
            except Exception as exc:
                notes.append(f"{model_key}: skipped, {needs} not importable ({type(exc).__name__})")
                continue
        torch.manual_seed(0)
        problem = make()
        labels[model_key] = problem.label
        rows: dict[str, Row] = {}
        for key in rows_wanted:
            row = all_rows()[key]  # fresh objects per model
            why = row.available()
            if why is None:
                rows[key] = row
            elif f"{row.name}: skipped" not in " ".join(notes):
                notes.append(f"{row.name}: skipped, {why}")
        t0 = time.perf_counter()
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # peers' deprecation chatter is not the table
            cells, done = bench(problem, rows, args.rounds, args.warmup, t0 + args.time_limit, tmp / model_key)
        results[model_key] = cells
        print(f"  {problem.label}: {done} rounds in {time.perf_counter() - t0:.0f} s, bare step "
              f"{cells['bare'].median_ms:.1f} ms", flush=True)

    if results:
        print_time_tables(results, labels, rows_wanted, row_names)
    for note in notes:
        print(f"\nnote: {note}")
    if args.memory:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"\nMemory column (load average {load:.1f} at its start):")
        memory_table(rows_wanted, [int(w) for w in args.memory_widths.split(",")], tmp, row_names)
    if args.first_step and not args.quick:
        print("\nFirst recorded step, fresh process, gradsight's kernel never built, then built (quickstart):")
        for model_key in results:
            print("  " + first_step(model_key, tmp), flush=True)
    shutil.rmtree(tmp, ignore_errors=True)


def print_time_tables(results: dict[str, dict[str, Cell]], labels: dict[str, str], rows_wanted: list[str],
                      row_names: dict[str, str]) -> None:
    """The step-time table and the table against the floor."""
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nMedian step time / bare, same round (25-75 % of rounds); load average {load_end:.1f} at end\n")
    header = "| row | " + " | ".join(labels[m] for m in results) + " |"
    print(header)
    print("| --- |" + " ---: |" * len(results))
    for key in rows_wanted:
        cells = [results[m].get(key) for m in results]
        if all(c is None for c in cells):
            continue
        text = []
        for c in cells:
            if c is None:
                text.append("skipped")
            elif key == "bare":
                text.append(f"{c.median_ms:.1f} ms")
            else:
                text.append(f"{c.ratio:.2f}x ({c.low:.2f}-{c.high:.2f})")
        print(f"| {row_names[key]} | " + " | ".join(text) + " |")
    print_against_floor(results, labels, row_names)


if __name__ == "__main__":
    main()
