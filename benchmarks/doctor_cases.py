"""The doctor's case suite: healthy networks it must leave alone, sick ones it must flag.

Every case trains a small network from random initialization for a few steps on
random data, recorded with :func:`gradsight.watch` (with the optimizer and
``update_ratio="whole"``, so every layer's update ratio is recorded at every step, with histograms and precision headroom every 4th step, and with
activation statistics unless the case says otherwise),
then runs :func:`gradsight.diagnose` on the run. A healthy case passes when no
finding is ``warning`` or worse; a sick case passes when every expected code is
among the findings at ``warning`` or worse. A case whose recording or diagnosis
raises fails.

    python benchmarks/doctor_cases.py                 # every case; Markdown table on stdout
    python benchmarks/doctor_cases.py -k gpt2 -k vit  # cases whose name contains a pattern
    python benchmarks/doctor_cases.py --keep runs/cases

Exits with status 1 when a case fails. About a minute on two CPU cores.
``tests/diagnosis/test_doctor_cases.py`` runs the same cases under pytest.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import gradsight as gs

HEALTHY = "healthy"
SICK = "sick"

Batch = tuple[Tensor, Tensor]


@dataclass
class Training:
    """What one case trains: the model, its optimizer, batches and loss.

    Attributes:
        model: the network, randomly initialized.
        optimizer: its optimizer (``update_ratio`` is recorded through it).
        batch: ``batch(generator) -> (inputs, targets)``, a fresh random batch.
        loss: ``loss(model, inputs, targets) -> scalar loss``.
        steps: optimizer steps.
        activations: record module and residual-block statistics (``gs.watch(activations=)``).
        scaler: a ``torch.amp.GradScaler`` (with ``autocast``), or None.
        autocast: dtype of a CPU ``torch.autocast`` around the forward pass, or None.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    batch: Callable[[torch.Generator], Batch]
    loss: Callable[[nn.Module, Tensor, Tensor], Tensor]
    steps: int
    activations: bool = True
    scaler: torch.amp.GradScaler | None = None
    autocast: torch.dtype | None = None


@dataclass(frozen=True)
class Case:
    """One network and the verdict it should get.

    Attributes:
        name: short identifier.
        kind: ``"healthy"`` or ``"sick"``.
        expected: finding codes a sick case must get (empty for healthy ones).
        build: returns the :class:`Training` (called after ``torch.manual_seed(0)``).
        why: what is wrong with the network, or why it is a fair healthy example.
    """

    name: str
    kind: str
    expected: frozenset[str]
    build: Callable[[], Training]
    why: str


@dataclass
class CaseResult:
    """A case's findings, or the error that stopped it (and its traceback), and its wall time in seconds."""

    case: Case
    findings: list[gs.Finding] = field(default_factory=list)
    error: str | None = None
    traceback: str | None = None
    seconds: float = 0.0

    @property
    def flagged(self) -> set[str]:
        """Codes of the findings at ``warning`` or worse."""
        return {f.code for f in self.findings if f.severity >= "warning"}

    @property
    def passed(self) -> bool:
        if self.error is not None:
            return False
        if self.case.kind == HEALTHY:
            return not self.flagged
        return self.case.expected <= self.flagged


# -- losses and data --------------------------------------------------------------------

def _cross_entropy(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(model(x), y)


def _mse(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return F.mse_loss(model(x).float(), y)


def _next_token(model: nn.Module, ids: Tensor, _: Tensor) -> Tensor:
    return model(input_ids=ids, labels=ids).loss


def _images(shape: tuple[int, ...], classes: int = 10, batch: int = 8) -> Callable[[torch.Generator], Batch]:
    def make(gen: torch.Generator) -> Batch:
        return torch.randn((batch, *shape), generator=gen), torch.randint(0, classes, (batch,), generator=gen)

    return make


def _regression(features: int, outputs: int = 1, batch: int = 16) -> Callable[[torch.Generator], Batch]:
    def make(gen: torch.Generator) -> Batch:
        return torch.randn(batch, features, generator=gen), torch.randn(batch, outputs, generator=gen)

    return make


def _tokens(vocab: int, length: int, batch: int = 8) -> Callable[[torch.Generator], Batch]:
    def make(gen: torch.Generator) -> Batch:
        ids = torch.randint(0, vocab, (batch, length), generator=gen)
        return ids, ids

    return make


def _classification(model: nn.Module, shape: tuple[int, ...], optimizer: Callable[..., torch.optim.Optimizer],
                    *, batch: int = 16, steps: int = 4, **options) -> Training:
    """Cross-entropy on random inputs of ``shape`` and random labels of 10 classes."""
    return Training(model, optimizer(model.parameters()), _images(shape, batch=batch), _cross_entropy, steps,
                    **options)


def _adam(params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-3)


def _adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-3)


def _mlp(widths: list[int], activation: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(widths) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


# -- healthy networks -------------------------------------------------------------------

def _resnet18() -> Training:
    from torchvision.models import resnet18

    return _classification(resnet18(num_classes=10), (3, 32, 32),
                           lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9), batch=8)


def _vit() -> Training:
    from torchvision.models import VisionTransformer

    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                              num_classes=10)
    return _classification(model, (3, 32, 32), _adamw, batch=8)


def _gpt2() -> Training:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=32))
    return Training(model, _adamw(model.parameters()), _tokens(vocab=100, length=16), _next_token, steps=4)


# -- sick networks ----------------------------------------------------------------------

def _sigmoid_mlp() -> Training:
    model = _mlp([64] + [32] * 20 + [10], nn.Sigmoid)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            nn.init.zeros_(m.bias)
    return _classification(model, (64,), lambda params: torch.optim.SGD(params, lr=0.1), steps=3)


def _plain_cnn() -> Training:
    return _classification(gs.models.create_model("plain56", in_channels=1), (1, 28, 28), _adam, batch=8,
                           activations=False)


class _DeadLayerNet(nn.Module):
    """A ReLU MLP whose middle layer's bias is so negative that none of its units fires."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 64)
        self.fc3 = nn.Linear(64, 64)
        self.head = nn.Linear(64, 10)
        with torch.no_grad():
            self.fc2.bias.fill_(-100.0)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = F.relu(self.fc3(x))
        return self.head(x)


def _dead_layer() -> Training:
    return _classification(_DeadLayerNet(), (32,), lambda params: torch.optim.SGD(params, lr=0.01))


def _diverging_lr() -> Training:
    model = _mlp([16, 64, 64, 1], nn.ReLU)
    return Training(model, torch.optim.SGD(model.parameters(), lr=50.0), _regression(16), _mse, steps=10)


class _UnusedParameterNet(nn.Module):
    """A classifier with an auxiliary head that ``forward`` never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.body = _mlp([32, 64, 64], nn.ReLU)
        self.head = nn.Linear(64, 10)
        self.aux_head = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.body(x)))


def _unused_parameter() -> Training:
    return _classification(_UnusedParameterNet(), (32,), _adam)


def _fp16_overflow() -> Training:
    model = _mlp([32, 64, 64, 1], nn.ReLU)
    # a loss scale above what fp16 activation gradients can hold: the first steps
    # overflow, and the scaler skips each one and halves the scale
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24, growth_interval=1000)
    return Training(model, torch.optim.SGD(model.parameters(), lr=0.01), _regression(32), _mse, steps=12,
                    scaler=scaler, autocast=torch.float16)


def _fp16_underflow() -> Training:
    model = _mlp([32, 64, 64, 1], nn.ReLU)
    # a small loss (a sum of many terms averaged, a tiny regularizer, ...) under a loss
    # scale of 1 that never grows: most gradient elements are below fp16's range
    scaler = torch.amp.GradScaler("cpu", init_scale=1.0, growth_interval=1000)
    return Training(model, torch.optim.SGD(model.parameters(), lr=0.01), _regression(32),
                    lambda m, x, y: _mse(m, x, y) * 1e-6, steps=12, scaler=scaler, autocast=torch.float16)


class _GatedBlock(nn.Module):
    """``x + gate * branch(x)``; the gate is a buffer, so it never learns."""

    def __init__(self, width: int, gate: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        self.register_buffer("gate", torch.tensor(gate))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.gate * self.fc2(F.relu(self.fc1(x)))


class _IdleBranchNet(nn.Module):
    """A residual MLP whose middle block's branch is switched off (gate 0)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Linear(32, width)
        self.blocks = nn.Sequential(_GatedBlock(width, 1.0), _GatedBlock(width, 0.0), _GatedBlock(width, 1.0))
        self.head = nn.Linear(width, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))


def _idle_branch() -> Training:
    return _classification(_IdleBranchNet(), (32,), _adam)


def _codes(*codes: str) -> frozenset[str]:
    return frozenset(codes)


CASES: list[Case] = [
    Case("resnet18", HEALTHY, _codes(), _resnet18,
         "torchvision ResNet-18 (BatchNorm, in-place residual adds), 3x32x32 inputs, SGD with momentum"),
    Case("vit", HEALTHY, _codes(), _vit,
         "torchvision VisionTransformer, 2 pre-LN blocks; its head and class token start at zero"),
    Case("gpt2", HEALTHY, _codes(), _gpt2,
         "Hugging Face GPT-2, 2 pre-LN blocks, tied token embedding; next-token loss on 16 random tokens, "
         "so the position embedding's rows 16-31 get no gradient"),
    Case("sigmoid_mlp", SICK, _codes("vanishing_gradients"), _sigmoid_mlp,
         "20 sigmoid layers with Xavier init: the sigmoid's slope (at most 1/4) shrinks the gradient at every layer"),
    Case("plain56_run", SICK, _codes("exploding_gradients"), _plain_cnn,
         "the zoo's batch-normed plain-56, recorded as `gradsight demo` records it (parameter gradients only, "
         "no activations): gradients grow toward the input at initialization (Yang et al. 2019)"),
    Case("dead_layer", SICK, _codes("dead_units"), _dead_layer,
         "a ReLU MLP whose middle layer has bias -100: none of its units ever fires, so it and every layer "
         "before it get exactly zero gradient"),
    Case("diverging_lr", SICK, _codes("nonfinite"), _diverging_lr,
         "SGD with learning rate 50 on a regression MLP: the weights blow up to Inf and then NaN"),
    Case("unused_parameter", SICK, _codes("no_gradient"), _unused_parameter,
         "an auxiliary head defined in __init__ that forward never calls"),
    Case("fp16_overflow", SICK, _codes("amp_skipped_steps"), _fp16_overflow,
         "fp16 autocast with a GradScaler whose initial scale (2^24) overflows the fp16 gradients: the scaler "
         "skips 8 of 12 steps while it halves the scale"),
    Case("fp16_underflow", SICK, _codes("amp_underflow"), _fp16_underflow,
         "fp16 autocast with a GradScaler kept at scale 1 and a loss 10^6 times smaller than the MSE: most "
         "gradient elements are below half fp16's smallest subnormal and become 0"),
    Case("idle_branch", SICK, _codes("idle_branch"), _idle_branch,
         "a residual MLP whose middle block multiplies its branch by a fixed 0: the block does nothing "
         "and can never learn to"),
]


# -- running ----------------------------------------------------------------------------

def record(training: Training, run_dir: Path, name: str) -> None:
    """Train ``training`` for its steps, recorded into ``run_dir``."""
    model, optimizer, scaler = training.model, training.optimizer, training.scaler
    gen = torch.Generator().manual_seed(0)
    model.train()
    with gs.watch(model, run_dir, optimizer=optimizer, scaler=scaler, activations=training.activations,
                  histograms=4, update_ratio="whole", through_time=True, overwrite=True, name=name) as monitor:
        for _ in range(training.steps):
            x, y = training.batch(gen)
            with _autocast(training.autocast):
                loss = training.loss(model, x, y)
            (scaler.scale(loss) if scaler is not None else loss).backward()
            monitor.step(loss)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)


def _autocast(dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()


def run_case(case: Case, tmp_dir: str | Path) -> CaseResult:
    """Record ``case`` into ``tmp_dir/<name>`` and diagnose it; errors are caught into the result."""
    start = time.perf_counter()
    result = CaseResult(case)
    try:
        run_dir = Path(tmp_dir) / case.name
        torch.manual_seed(0)
        record(case.build(), run_dir, case.name)
        result.findings = gs.diagnose(run_dir)
    except Exception as exc:  # a crash is a verdict of its own
        result.error = f"{type(exc).__name__}: {exc}"
        result.traceback = traceback.format_exc()
    result.seconds = time.perf_counter() - start
    return result


def run_cases(cases: list[Case], tmp_dir: str | Path) -> Iterator[CaseResult]:
    for case in cases:
        yield run_case(case, tmp_dir)


def _findings_cell(result: CaseResult) -> str:
    if result.error is not None:
        return f"**crash**: `{result.error}`"
    if not result.findings:
        return "none"
    return ", ".join(f"`{f.code}` ({f.severity})" for f in result.findings)


def confusion_table(results: list[CaseResult]) -> str:
    """The results as a Markdown table: case, kind, expected codes, findings, pass/fail."""
    lines = ["| case | kind | expected | findings | result |", "| --- | --- | --- | --- | --- |"]
    for r in results:
        expected = ", ".join(f"`{c}`" for c in sorted(r.case.expected)) or "no warning or worse"
        lines.append(f"| {r.case.name} | {r.case.kind} | {expected} | {_findings_cell(r)} | "
                     f"{'pass' if r.passed else '**FAIL**'} |")
    return "\n".join(lines)


def summary(results: list[CaseResult]) -> str:
    """One line: passes per kind and the total time."""
    parts = []
    for kind in (HEALTHY, SICK):
        of_kind = [r for r in results if r.case.kind == kind]
        parts.append(f"{kind}: {sum(r.passed for r in of_kind)}/{len(of_kind)} pass")
    return "; ".join(parts) + f"; {sum(r.seconds for r in results):.1f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", dest="patterns", action="append", default=[],
                        help="run only cases whose name contains this (repeatable)")
    parser.add_argument("--keep", type=Path, help="keep the recorded runs in this directory")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = [c for c in CASES if not args.patterns or any(p in c.name for p in args.patterns)]
    with contextlib.ExitStack() as stack:
        tmp_dir = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gradsight-cases-")))
        results = []
        for result in run_cases(cases, tmp_dir):
            print(f"{result.case.name}: {'pass' if result.passed else 'FAIL'} ({result.seconds:.1f} s)",
                  file=sys.stderr)
            if result.error is not None:
                print(result.traceback, file=sys.stderr)
            results.append(result)
    print(confusion_table(results))
    print()
    print(summary(results))
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
