"""``compare``: train every (family, depth) combination with the same seed and data order.

Writes, into ``out``::

    results.csv, results.md     network, layers, parameters, train/test error, test accuracy, time
                                (language models: train/test loss and test bits per byte)
    runs/<network>-<layers>/    each run's store (gs.open_run)
    figures/gradflow-<network>-<layers>.png   gradient norm by layer, first and last step
    figures/gradflow-all.png    every run, relative depth 0..1, first step and late in training
    figures/training-curves.png training loss per recorded step, train/test error per epoch
                                (language models: train/test loss in bits per byte)

and returns a :class:`CompareResult` (``gradsight compare`` adds ``report.html``). Each run's
config records, besides the settings, the conditions its numbers depend on
(:func:`reproducibility`): with the same settings, torch build, CPU and number of threads, a
run is recreated bit for bit on the CPU.

Everything is checked before anything is trained (families, depths, recipe, device, dataset
and its files, the output directory). The results are written into a hidden sibling directory
that is renamed to ``out`` at the end, and removed if anything fails or is interrupted, so
``out`` is either complete or absent.

On a byte-level corpus (``pystdlib``, ``text:PATH``) the families are language models (registered
with ``input_kind="tokens"``), trained on windows of ``context`` bytes (the recipe's unless given)
and built with ``vocab_size=256``; ``limit`` then keeps the first ``limit`` bytes of each split.
"""

from __future__ import annotations

import csv
import logging
import os
import platform
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from gradsight.data import DatasetSplits, TextSplits, is_text_dataset, list_datasets, load_dataset
from gradsight.models import list_models, model_info
from gradsight.plots import training
from gradsight.store.query import DEFAULT_ROLES, first_last_ratios, layer_matrix
from gradsight.store.roles import Role
from gradsight.store.reader import open_run
from gradsight.store.view import RunView
from gradsight.train.recipes import Recipe, get_recipe
from gradsight.instrument.options import check_options
from gradsight.train.runner import RUNNER_SETS, TrainResult, resolve_device, train
from gradsight.train.tasks import DEFAULT_CONTEXT

__all__ = ["CompareResult", "check_depth", "compare", "format_markdown", "parse_list", "reproducibility"]

log = logging.getLogger(__name__)

TABLE_COLUMNS = ("network", "layers", "parameters", "train_error", "test_error", "test_accuracy", "time_s")
#: The results table of language models (runs on a byte-level corpus).
LM_TABLE_COLUMNS = ("network", "layers", "parameters", "train_loss", "test_loss", "test_bits_per_byte", "time_s")


@dataclass
class CompareResult:
    """What :func:`compare` made: the output directory, one :class:`TrainResult` per run (with
    its run directory), the files written (tables and figures) and the conditions of the runs."""

    out: Path
    results: list[TrainResult] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    command: str = ""
    reproducibility: dict[str, Any] = field(default_factory=dict)

    @property
    def table(self) -> list[dict[str, Any]]:
        """The results table, one row (``TrainResult.row()``) per run, in training order."""
        return [r.row() for r in self.results]

    @property
    def tables(self) -> list[Path]:
        """``results.csv`` and ``results.md``."""
        return [p for p in self.files if p.suffix in (".csv", ".md")]

    @property
    def figures(self) -> list[Path]:
        """The PNG figures: one gradient flow per run, the overlay, the training curves."""
        return [p for p in self.files if p.suffix == ".png"]

    @property
    def run_dirs(self) -> list[Path]:
        return [r.run_dir for r in self.results]


def parse_list(text: str | Sequence[Any], what: str, convert: type = str) -> list[Any]:
    """``"plain,resnet"`` -> ``["plain", "resnet"]`` (``convert`` each; duplicates dropped, order kept)."""
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else list(text)
    out: list[Any] = []
    for item in items:
        if item == "":
            continue
        try:
            value = convert(item)
        except (TypeError, ValueError):
            raise ValueError(f"{what} must be a comma-separated list of {convert.__name__}s; got {item!r}") from None
        if value not in out:
            out.append(value)
    if not out:
        raise ValueError(f"{what}: give at least one value")
    return out


def check_depth(family: str, depth: int) -> None:
    """``ValueError`` unless ``family`` is a registered model that can be built with ``depth``
    (the registry's metadata says which depths a family has)."""
    try:
        info = model_info(family, depth=depth)
    except ValueError as exc:
        if family not in list_models():
            raise
        raise ValueError(f"depth {depth} is not valid for {family!r}: {exc}") from None
    except TypeError:
        raise ValueError(f"{family!r} has no depth to choose; pick a family such as plain, resnet or mlp") from None
    if info.depth != depth:
        raise ValueError(f"depth {depth} is not valid for {family!r}: it is {info.depth} layers deep")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def reproducibility(device: str | torch.device = "cpu") -> dict[str, Any]:
    """The conditions, besides seed and settings, that a run's numbers depend on.

    On the CPU, training is recreated bit for bit when all of these are the same: the torch
    build (``torch``: its version with the MKL/oneDNN kernels it ships), the CPU (``cpu``,
    and ``cpu_capability``, the vector instructions torch dispatches to) and the number of
    torch threads (``threads``: sums are split per thread, so the last bits differ from the
    first step and the difference grows over training). ``deterministic`` is
    ``torch.are_deterministic_algorithms_enabled()`` (on the CPU it changed nothing for the
    CIFAR-style CNNs measured in docs/results.md); on a GPU, ``gpu`` and ``cudnn`` are added.
    """
    device = torch.device(device)
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def run_key(family: str, depth: int) -> str:
    """How runs, figures and rows are named: ``plain-20``."""
    return f"{family}-{depth}"


def _fraction(x: float) -> str:
    return f"{x:.4f}"


def format_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The results table in Markdown: errors as fractions, accuracy in percent, time in seconds;
    for language models (rows of ``LM_TABLE_COLUMNS``) losses in nats per byte and test bits per byte."""
    if rows and "test_bits_per_byte" in rows[0]:
        return _format_lm_markdown(rows)
    header = "| network | layers | parameters | train error | test error | test accuracy | time (s) |"
    rule = "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    lines = [header, rule]
    for r in rows:
        lines.append(
            f"| {r['network']} | {r['layers']} | {r['parameters']:,} | {_fraction(r['train_error'])} | "
            f"{_fraction(r['test_error'])} | {100 * r['test_accuracy']:.2f}% | {r['time_s']:.0f} |"
        )
    return "\n".join(lines)


def _format_lm_markdown(rows: Sequence[dict[str, Any]]) -> str:
    header = "| network | layers | parameters | train loss | test loss | test bits per byte | time (s) |"
    lines = [header, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(
            f"| {r['network']} | {r['layers']} | {r['parameters']:,} | {r['train_loss']:.4f} | "
            f"{r['test_loss']:.4f} | {r['test_bits_per_byte']:.3f} | {r['time_s']:.0f} |"
        )
    return "\n".join(lines)


def _per_epoch_markdown(results: Sequence[TrainResult]) -> str:
    epochs = max(len(r.epochs) for r in results)
    language = results[0].task == "next-token"
    what = "train / test loss" if language else "train / test error"
    header = "| epoch | " + " | ".join(f"{r.network}-{r.depth} {what}" for r in results) + " |"
    rule = "| ---: |" + " ---: |" * len(results)
    lines = [header, rule]
    for e in range(epochs):
        cells = []
        for r in results:
            m = r.epochs[e] if e < len(r.epochs) else None
            if m is None:
                cells.append("")
            elif language:
                cells.append(f"{m.train_loss:.4f} / {m.test_loss:.4f}")
            else:
                cells.append(f"{m.train_error:.4f} / {m.test_error:.4f}")
        lines.append(f"| {e + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _grad_flow_markdown(run_dirs: dict[str, Path]) -> str:
    """Gradient norm of the first weighted layer, the median one, the one before the head and the head,
    and the first/last-layer ratio (:func:`gradsight.store.query.first_last_ratios` over the weighted
    layers, the head left out), at the first recorded step and late in training."""
    header = ("| run | step | first layer | median layer | layer before the head | head "
              "| first / last weighted layer |")
    lines = [header, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for key, path in run_dirs.items():
        with RunView(path) as run:
            steps = sorted(set(training.first_and_late_steps(run)))
            values = layer_matrix(run, "grad_norm", steps=steps, role=DEFAULT_ROLES)
            ratios = first_last_ratios(layer_matrix(run, "grad_norm", role=Role.RATIO, steps=steps))
            names = list(values.columns)
            before_head = names[-2] if len(names) > 1 else names[-1]
            for step in steps:
                row = values.loc[step]
                lines.append(
                    f"| {key} | {step} | {row[names[0]]:.3g} | {row.median():.3g} | {row[before_head]:.3g} | "
                    f"{row[names[-1]]:.3g} | {ratios[step]:.3g} |"
                )
    return "\n".join(lines)


def _write_tables(tmp: Path, results: Sequence[TrainResult], run_dirs: dict[str, Path], header: str) -> list[Path]:
    language = results[0].task == "next-token"
    csv_path = tmp / "results.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LM_TABLE_COLUMNS if language else TABLE_COLUMNS)
        writer.writeheader()
        for r in results:
            writer.writerow(r.row())
    md_path = tmp / "results.md"
    if language:
        legend = ("Losses: next-byte cross-entropy in nats, averaged over every position of every window. Train "
                  "loss: running average over the last epoch's mini-batches (training mode); test loss: the model "
                  "at the end of training, in eval mode, on fixed windows of the test split; bits per byte: test "
                  "loss / ln 2; time: training and evaluation, wall clock.")
    else:
        legend = ("Train error: running average over the last epoch's mini-batches (training mode); test error and "
                  "accuracy: the model at the end of training, in eval mode; time: training and evaluation, wall "
                  "clock.")
    md_path.write_text(
        f"{header}\n\n{format_markdown([r.row() for r in results])}\n\n{legend}\n\n"
        f"## Per epoch\n\n{_per_epoch_markdown(results)}\n\n"
        "## Gradient norm by layer (weighted layers, input to output)\n\n"
        f"{_grad_flow_markdown(run_dirs)}\n"
    )
    return [csv_path, md_path]


def _write_figures(tmp: Path, run_dirs: dict[str, Path]) -> list[Path]:
    fig_dir = tmp / "figures"
    written = []
    for key, path in run_dirs.items():
        with open_run(path) as run:
            fig = training.grad_flow(run, title=f"Gradient norm by layer: {key}")
            written.append(training.save_png(fig, fig_dir / f"gradflow-{key}.png"))
    runs = list(run_dirs.values())
    written.append(training.save_png(training.grad_flow_overlay(runs), fig_dir / "gradflow-all.png"))
    written.append(training.save_png(training.training_curves(runs), fig_dir / "training-curves.png"))
    return written


def _staging_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial-{os.getpid()}"


def compare(
    models: Sequence[str] | str = ("plain", "resnet"),
    depths: Sequence[int] | str = (20, 56),
    dataset: str | DatasetSplits = "mnist5k",
    *,
    out: str | Path,
    epochs: int | None = None,
    recipe: str | Recipe = "lecture",
    seed: int = 0,
    device: str = "auto",
    data_dir: str | Path | None = None,
    download: bool = True,
    every: int | str = "auto",
    activations: bool = False,
    histograms: bool | int = False,
    watch: Mapping[str, Any] | None = None,
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    command: str = "",
    context: int | None = None,
    warmup: int | None = None,
) -> CompareResult:
    """Train every combination of ``models`` (families) and ``depths`` and write tables and figures.

    Args:
        models: families, e.g. ``["plain", "resnet"]`` or ``"plain,resnet"`` (registered models that take a ``depth``: ``gs.models.list_models()``).
        depths: depths, e.g. ``[20, 56]``; 6n+2 for the CNN families.
        dataset: a dataset name (``gradsight.data.list_datasets()``, or ``text:PATH``) or loaded splits.
        out: the output directory; must not exist unless ``overwrite``.
        epochs: epochs per run (default: the recipe's).
        recipe: ``"lecture"``, ``"he2016"`` or ``"gpt"`` (or a :class:`Recipe`).
        seed: the same for every run: same initial weights for the plain/residual twins (their
            parameters are identical), same data order for all.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        data_dir, download: where to find the full datasets (see ``load_dataset``).
        every: the runs' recording schedule (``"auto"`` or every k-th step).
        activations: also record activation and residual-split statistics.
        histograms: also record log2 gradient histograms and precision headroom at every
            (True) or every k-th recorded step (:func:`gradsight.watch`'s ``histograms=``).
        watch: more :func:`gradsight.watch` options for every run, passed through to
            :func:`~gradsight.train.train` (its ``watch=``); its entries win over ``activations``
            and ``histograms``.
        limit: use only the first ``limit`` training and test samples (bytes of a text corpus; smoke tests).
        overwrite: replace ``out`` if it exists (only once the new results are complete).
        progress: progress bars per epoch.
        command: the command line to quote in results.md.
        context: window length of language models (default: the recipe's, else 64).
        warmup: linear learning-rate warmup steps, replacing the recipe's (0: none).

    Returns:
        A :class:`CompareResult`.

    Raises:
        ValueError: bad input (``DatasetError`` for a dataset); raised before anything is
            trained or written.
    """
    # -- check everything before training anything ------------------------------------------
    families = parse_list(models, "--models")
    depth_list = parse_list(depths, "--depths", int)
    for family in families:
        for depth in depth_list:
            check_depth(family, depth)
    recipe = get_recipe(recipe)
    if warmup is not None:
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0 steps (0: none), got {warmup}")
        recipe = replace(recipe, warmup_steps=warmup)
    if context is not None:
        if context < 1:
            raise ValueError(f"context must be >= 1, got {context}")
        recipe = replace(recipe, context=context)
    if epochs is not None and epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    options = check_options({"activations": activations, "histograms": histograms, **(watch or {})}, "compare",
                            taken=RUNNER_SETS)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    dev = resolve_device(device)
    if (isinstance(dataset, str) and not is_text_dataset(dataset)
            and dataset.strip().lower().replace("_", "-") not in list_datasets()):
        raise ValueError(f"unknown dataset {dataset!r}; valid datasets: {', '.join(list_datasets())}, "
                         "or text:PATH (a local text file or folder)")
    out = Path(out)
    if out.exists() and not overwrite:
        raise ValueError(f"{out} already exists; choose another --out or pass --overwrite")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory")
    if isinstance(dataset, str):
        data = load_dataset(dataset, data_dir=data_dir, download=download, limit=limit)
    else:
        data = dataset if limit is None else _limited(dataset, limit)
    text = isinstance(data, TextSplits)
    for family in families:
        kind = model_info(family, depth=depth_list[0]).input_kind
        if text and kind != "tokens":
            raise ValueError(f"{family!r} takes {kind or 'unknown'} inputs, not tokens; dataset {data.name!r} "
                             "needs a language model (a family registered with input_kind='tokens')")
        if not text and kind == "tokens":
            raise ValueError(f"{family!r} is a language model; train it on a text dataset (pystdlib or text:PATH), "
                             f"not {data.name!r}")
    if text:
        context = recipe.context or DEFAULT_CONTEXT
        shortest = min(data.num_train, data.num_test)
        if shortest < context + 1:
            raise ValueError(f"dataset {data.name!r} has a split of {shortest} bytes, too short for windows of "
                             f"{context} bytes (needs {context + 1}); raise --limit or lower --context")
    out.parent.mkdir(parents=True, exist_ok=True)

    epochs = recipe.epochs if epochs is None else epochs
    tmp = _staging_dir(out)
    if tmp.exists():
        shutil.rmtree(tmp)
    result = CompareResult(out=out, command=command, reproducibility=reproducibility(dev))
    try:
        tmp.mkdir()
        run_dirs: dict[str, Path] = {}
        grid = [(f, d) for f in families for d in depth_list]
        for index, (family, depth) in enumerate(grid, start=1):
            key = run_key(family, depth)
            log.info("training %s (%d/%d)", key, index, len(grid))
            run_dirs[key] = tmp / "runs" / key
            result.results.append(
                train(family, data, recipe, depth=depth, epochs=epochs, seed=seed, device=dev,
                      run_dir=run_dirs[key], every=every, watch=options, name=key,
                      network=family, layers=depth, progress=progress, context=context,
                      config={"reproducibility": result.reproducibility,
                              "compare": {"models": families, "depths": depth_list, "limit": limit,
                                          "warmup": recipe.warmup_steps}})
            )
        header = _header(data, recipe, epochs, seed, result.reproducibility, limit, command, context)
        files = _write_tables(tmp, result.results, run_dirs, header)
        files += _write_figures(tmp, run_dirs)
        _publish(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.files = [out / p.relative_to(tmp) for p in files]
    for r in result.results:
        r.run_dir = out / r.run_dir.relative_to(tmp)
    return result


def _publish(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished staging directory to ``out`` (replacing an old ``out`` if allowed)."""
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} appeared while training; the results were not written")
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def _limited(data: DatasetSplits | TextSplits, limit: int) -> DatasetSplits | TextSplits:
    if isinstance(data, TextSplits):
        return data.limited(limit)
    return replace(data, train_x=data.train_x[:limit], train_y=data.train_y[:limit],
                   test_x=data.test_x[:limit], test_y=data.test_y[:limit])


def _header(data: DatasetSplits | TextSplits, recipe: Recipe, epochs: int, seed: int, conditions: dict[str, Any],
            limit: int | None, command: str, context: int | None = None) -> str:
    text = isinstance(data, TextSplits)
    lines = ["# Byte-level language models" if text else "# Plain vs residual networks", ""]
    if command:
        lines += ["```bash", command, "```", ""]
    if text:
        subset = f" (first {limit} bytes of each split)" if limit else ""
        python = f", Python {data.python_version}" if data.python_version else ""
        what = (f"{data.num_train:,} training and {data.num_test:,} test bytes (from {data.train_files} and "
                f"{data.test_files} files{python}), windows of {context} bytes, "
                f"{recipe.steps_per_epoch(data.num_train)} batches per epoch")
    else:
        subset = f" (first {limit} samples of each split)" if limit else ""
        what = f"{data.num_train:,} training and {data.num_test:,} test images"
    lines.append(
        f"Dataset **{data.name}**{subset}: {what}. "
        f"Recipe **{recipe.name}** ({recipe.summary()}), {epochs} epoch(s), "
        f"seed {seed}, device {conditions['device']}, torch {conditions['torch']}, "
        f"{conditions['threads']} thread(s) on {conditions['cpu']} ({conditions['cpu_capability']})."
    )
    return "\n".join(lines)
