"""DDP and FSDP2 on 2 CPU processes (gloo), and DDP on 2 GPUs (NCCL) where there are: rank 0's
store equals a single-process run on the global batch, number for number; other ranks write
nothing."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import gradsight as gs
from gradsight.instrument.distributed import Local, resolve
from gradsight.store.writer import NullWriter, StoreWriter, Writer
from tests.instrument import dist_workers

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")

WORLD = 2
TIMEOUT_S = 150


def _spawn(target, out: Path, *args) -> None:
    """Runs ``target(rank, WORLD, init file, out, *args)`` in ``WORLD`` spawned processes; fails
    with the ranks' tracebacks when one fails or hangs."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=dist_workers.run_to_end, args=(target, rank, WORLD, str(out / "init"), str(out), *args),
                         daemon=True)
             for rank in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(TIMEOUT_S)
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
        p.join()
    errors = "\n".join(f.read_text() for f in sorted(out.glob("error-rank*.txt")))
    assert not hung, f"distributed workers did not finish within {TIMEOUT_S} s\n{errors}"
    assert all(p.exitcode == 0 for p in procs), f"exit codes {[p.exitcode for p in procs]}\n{errors}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Runs both cases on 2 spawned ranks and the single-process reference."""
    out = tmp_path_factory.mktemp("distributed")
    _spawn(dist_workers.worker, out)
    dist_workers.reference(out / "reference")
    return out


def _values(run_dir: Path) -> dict[tuple[int, str, str, str], float]:
    frame = gs.open_run(run_dir).frame()
    return {(r.step, r.level, r.name, r.stat): r.value for r in frame.itertuples()}


def _assert_same_numbers(got: dict, want: dict) -> None:
    assert set(got) == set(want), f"only recorded: {set(got) ^ set(want)}"
    for key, w in want.items():
        g = got[key]
        if math.isnan(w):
            assert math.isnan(g), f"{key}: {g} != NaN"
        else:
            assert math.isclose(g, w, rel_tol=1e-5, abs_tol=1e-7), f"{key}: {g} != {w}"


@pytest.mark.parametrize("case", ["ddp", "fsdp"])
def test_rank0_records_the_global_batch(runs, case):
    want = _values(runs / "reference")
    got = _values(runs / f"{case}-rank0")
    zeroing = {k: v for k, v in want.items() if k[1:] == ("model", "", "grad_not_zeroed")}
    assert zeroing == {(1, "model", "", "grad_not_zeroed"): 0.0, (2, "model", "", "grad_not_zeroed"): 0.0}
    if case == "fsdp":  # a shard of a gradient cannot tell a cleared one: no verdict, not 0
        want = {k: v for k, v in want.items() if k not in zeroing}
    _assert_same_numbers(got, want)
    # the cases the comparison must cover
    stats = {(level, stat) for _, level, _, stat in want}
    assert {("model", "update_ratio"), ("param", "grad_missing"), ("model", "grad_nonfinite")} <= stats
    nonfinite = [v for (step, level, _, stat), v in want.items() if (level, stat) == ("model", "grad_nonfinite")]
    assert max(nonfinite) > 0  # the NaN step counted every NaN element, on both ranks' shards


def test_ddp_without_zero_grad_is_told_on_rank0_with_the_single_process_numbers(runs, tmp_path):
    """Gradients never zeroed under DDP (what rank 0 records: each step's all-reduced gradient
    added to the sum before it) equal the single-process run of the same loop."""
    with pytest.warns(UserWarning, match="not zeroed"):
        dist_workers.reference(tmp_path / "reference", zero=False)
    want = _values(tmp_path / "reference")
    assert {k: v for k, v in want.items() if k[3] == "grad_not_zeroed"} == {
        (1, "model", "", "grad_not_zeroed"): 1.0, (2, "model", "", "grad_not_zeroed"): 1.0}
    _assert_same_numbers(_values(runs / "ddp-forgotten-rank0"), want)
    assert "gradients_not_zeroed" in {f.code for f in gs.diagnose(runs / "ddp-forgotten-rank0")}


@pytest.mark.parametrize("case", ["ddp", "fsdp"])
def test_histograms_are_those_of_the_global_gradient(runs, case):
    for level in ("layer", "model"):
        want = gs.open_run(runs / "reference").histograms(level=level)
        got = gs.open_run(runs / f"{case}-rank0").histograms(level=level)
        assert not want.empty and got.equals(want)
    headroom = {(level, stat) for _, level, _, stat in _values(runs / "reference")}
    assert ("param", "fp8e4m3_underflow") in headroom  # compared number for number above


@pytest.mark.parametrize("case", ["ddp", "fsdp"])
def test_only_rank0_writes_the_store(runs, case):
    assert not (runs / f"{case}-rank1").exists()
    run = gs.open_run(runs / f"{case}-rank0")
    assert run.meta["distributed"]["world_size"] == WORLD
    assert run.meta["distributed"]["mode"] == ("sharded" if case == "fsdp" else "replicated")
    missing = run.frame(stat="grad_missing", level="param")
    assert set(missing.name) == {"unused.weight", "unused.bias"}


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < WORLD or not torch.distributed.is_nccl_available(),
                    reason=f"needs {WORLD} CUDA devices and NCCL")
def test_ddp_over_nccl_records_the_global_batch(tmp_path):
    """DDP on 2 GPUs: rank 0's store equals the single-process run on the CPU, histograms included."""
    _spawn(dist_workers.worker, tmp_path, "nccl")
    dist_workers.reference(tmp_path / "reference")
    _assert_same_numbers(_values(tmp_path / "ddp-nccl-rank0"), _values(tmp_path / "reference"))
    assert not (tmp_path / "ddp-nccl-rank1").exists()
    for level in ("layer", "model"):
        want = gs.open_run(tmp_path / "reference").histograms(level=level)
        assert not want.empty and gs.open_run(tmp_path / "ddp-nccl-rank0").histograms(level=level).equals(want)


def test_fsdp1_is_refused_with_a_pointer_to_fully_shard(runs):
    for rank in range(WORLD):
        lines = (runs / f"fsdp1-rank{rank}.txt").read_text().splitlines()
        assert len(lines) == 2 and all("fully_shard" in line for line in lines)
        assert not (runs / f"fsdp1-rank{rank}").exists()


def test_single_process_is_not_distributed(tmp_path):
    model = nn.Linear(3, 2)
    assert isinstance(resolve("auto", model), Local)
    assert isinstance(resolve(None, model), Local)
    with pytest.raises(RuntimeError, match="process group"):
        resolve("sharded", model)
    with pytest.raises(ValueError, match="distributed must be"):
        resolve("everywhere", model)


def _protocol_methods() -> set[str]:
    return {n for n, v in vars(Writer).items() if not n.startswith("_") and (callable(v) or isinstance(v, property))}


def test_null_writer_accepts_everything(tmp_path):
    writer = NullWriter(tmp_path / "run")
    writer.set_meta(a=1)
    writer.add_series([(1, "layer", "fc", "grad_norm")])
    writer.write_params([])
    writer.write_layers([("fc", 0, "Linear", "layer")])
    writer.write_scalars(0, None, None)
    writer.flush()
    assert not writer.closed
    writer.close(status="finished")
    assert writer.closed and not (tmp_path / "run").exists()


@pytest.mark.parametrize("cls", [StoreWriter, NullWriter])
def test_writers_implement_the_writer_protocol(cls):
    assert _protocol_methods() <= set(dir(cls))


def test_local_sums_of_squares_match_a_loop():
    tensors = [torch.randn(3, 4), torch.randn(7)]
    got = Local().sumsq(tensors)
    want = torch.tensor([float(t.double().pow(2).sum()) for t in tensors])
    assert torch.allclose(got.double(), want.double(), rtol=1e-6)


def test_a_resumed_run_goes_on_at_the_same_step_on_every_rank(tmp_path):
    """Only rank 0 reads the store: the step the run goes on at is broadcast, so every rank's
    schedule records the same calls."""
    _spawn(dist_workers.resume_worker, tmp_path)
    steps = dist_workers.RESUME_STEPS
    for rank in range(WORLD):  # the first part records 0, 2, 4; the resumed one goes on at 5: 6, 8
        assert (tmp_path / f"resume-rank{rank}.txt").read_text() == f"{steps} [0, 2, 4, 6, 8]"
    assert gs.open_run(tmp_path / "run").steps() == [0, 2, 4, 6, 8]
