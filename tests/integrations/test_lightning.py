"""``GradFlowCallback`` in a real ``lightning.pytorch.Trainer`` fit on the CPU."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import gradsight as gs
from tests.instrument.reference import assert_matches, reference

L = pytest.importorskip("lightning.pytorch")
from lightning.pytorch.loggers import CSVLogger  # noqa: E402
from lightning.pytorch.plugins.precision import MixedPrecision  # noqa: E402

from gradsight.integrations.lightning import GradFlowCallback  # noqa: E402

ACCUMULATE = 2
BATCH = 4


class Regressor(L.LightningModule):
    """A small MLP that keeps, at every optimizer step, a slow reference of what the
    callback must have recorded (Lightning calls module hooks after callback hooks)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
        self.window: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.refs: dict[int, dict] = {}
        self.accumulated_norms: dict[int, float] = {}

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.window.append((x, y))
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def on_before_optimizer_step(self, optimizer):
        step = self.trainer.global_step
        self.refs[step] = reference(self)
        # the gradient of the accumulated loss, from scratch: the micro-batches of
        # this step together, each divided by accumulate_grad_batches
        with torch.enable_grad():
            loss = sum(nn.functional.mse_loss(self.net(x.float()), y) for x, y in self.window) / ACCUMULATE
            grads = torch.autograd.grad(loss, list(self.net.parameters()))
        self.accumulated_norms[step] = float(torch.cat([g.reshape(-1) for g in grads]).norm())
        self.window = []

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True).sin()), batch_size=BATCH)


def _fit(tmp_path, callback, **trainer_kwargs):
    module = Regressor()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=3, accumulate_grad_batches=ACCUMULATE,
        logger=CSVLogger(tmp_path / "logs"), enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, log_every_n_steps=1, **trainer_kwargs,
    )
    trainer.fit(module, _loader())
    return module, trainer


def test_records_once_per_optimizer_step_with_accumulated_gradients(tmp_path):
    callback = GradFlowCallback(tmp_path / "run", backend="eager")
    module, trainer = _fit(tmp_path, callback, callbacks=[callback])
    run = gs.open_run(tmp_path / "run")
    assert run.status == "finished"
    assert run.steps() == [0, 1, 2]  # optimizer steps, not the 6 micro-batches
    # Lightning clears the gradients after each optimizer step: judged cleared at each step after the first
    assert run.series("grad_not_zeroed", level="model").iloc[:, 0].to_dict() == {1: 0.0, 2: 0.0}
    frame = run.frame()
    for step, ref in module.refs.items():
        assert_matches(frame, ref, step=step)
        norm = frame[(frame.step == step) & (frame.level == "model") & (frame.stat == "grad_norm")].value.item()
        assert math.isclose(norm, module.accumulated_norms[step], rel_tol=1e-5)
    assert run.config["lightning"]["accumulate_grad_batches"] == ACCUMULATE
    assert {"update_ratio", "grad_norm"} <= set(run.stats("model"))
    assert run.metrics()["loss"].notna().all()


def test_scalars_reach_the_trainers_logger(tmp_path):
    callback = GradFlowCallback(tmp_path / "run", backend="eager", log_levels=["model"], update_ratio=True)
    _, trainer = _fit(tmp_path, callback, callbacks=[callback])
    logged = pd.read_csv(f"{trainer.logger.log_dir}/metrics.csv")
    stored = gs.open_run(tmp_path / "run").frame(level="model")
    for stat in ("grad_norm", "update_ratio"):
        column = logged.dropna(subset=[f"gradsight/model/{stat}"])
        want = stored[stored.stat == stat].set_index("step").value
        got = column.set_index("step")[f"gradsight/model/{stat}"]
        assert list(got.index) == list(want.index) == [0, 1, 2]
        assert all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(got, want))
    assert not any(c.startswith("gradsight/layer/") for c in logged.columns)


def test_16_mixed_gradients_are_unscaled_once(tmp_path):
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    callback = GradFlowCallback(tmp_path / "run", backend="eager")
    module, _ = _fit(tmp_path, callback, callbacks=[callback], plugins=[MixedPrecision("16-mixed", "cpu", scaler)])
    run = gs.open_run(tmp_path / "run")
    frame = run.frame()
    for step, ref in module.refs.items():  # the module saw the unscaled gradients
        assert_matches(frame, ref, step=step)
    scale = frame[(frame.stat == "loss_scale")].value
    assert len(scale) == 3 and (scale == 2.0**12).all()
    assert run.config["lightning"]["precision"] == "16-mixed"


def test_default_run_dir_is_under_the_log_dir(tmp_path):
    callback = GradFlowCallback(backend="eager", log_levels=())
    _, trainer = _fit(tmp_path, callback, callbacks=[callback])
    assert callback.run_dir == tmp_path / "logs" / "lightning_logs" / "version_0" / "gradsight"
    assert gs.open_run(callback.run_dir).steps() == [0, 1, 2]


def test_optimizer_and_scaler_come_from_the_trainer():
    with pytest.raises(TypeError, match="from the trainer"):
        GradFlowCallback(optimizer=object())


def test_watch_options_are_checked_when_the_callback_is_made():
    with pytest.raises(ValueError, match="histograms must be"):
        GradFlowCallback(histograms="often")
    with pytest.raises(TypeError, match="unexpected keyword argument 'histogram'"):
        GradFlowCallback(histogram=2)


def test_update_ratio_at_every_step_although_lightning_steps_with_a_closure(tmp_path):
    """Regression: Lightning calls optimizer.step(closure) and records inside the
    closure, after the optimizer's pre-hooks, so every other step lost its
    update_ratio. With SGD, ||dw|| / ||w|| = lr * ||g|| / ||w||."""
    callback = GradFlowCallback(tmp_path / "run", backend="eager", log_levels=(), update_ratio=True)
    _fit(tmp_path, callback, callbacks=[callback])
    model = gs.open_run(tmp_path / "run").frame(level="model")
    update = model[model.stat == "update_ratio"].set_index("step").value
    ratio = model[model.stat == "grad_weight_ratio"].set_index("step").value
    assert list(update.index) == [0, 1, 2]
    for step in update.index:
        assert math.isclose(update[step], 0.1 * ratio[step], rel_tol=1e-4)


class TwoOptimizers(L.LightningModule):
    """Manual optimization with two optimizers over two nets (a GAN's pattern), noting
    float64 copies of the weights around each optimizer step, keyed by the global step
    the callback records it under."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.automatic_optimization = False
        self.first = nn.Linear(4, 8)
        self.second = nn.Linear(8, 1)
        self.moves: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.second(torch.tanh(self.first(x))), y)
        self.manual_backward(loss)
        for opt in self.optimizers():
            step = self.trainer.global_step
            mine = {n: p for n, p in self.named_parameters() if any(p is q for q in opt.param_groups[0]["params"])}
            before = {n: p.detach().double().clone() for n, p in mine.items()}
            opt.step()
            self.moves[step] = {n: (before[n], p.detach().double().clone()) for n, p in mine.items()}
        for opt in self.optimizers():
            opt.zero_grad()

    def configure_optimizers(self):
        return torch.optim.Adam(self.first.parameters(), lr=1e-2), torch.optim.SGD(self.second.parameters(), lr=0.1)


def test_several_optimizers_of_manual_optimization_are_all_watched(tmp_path):
    """Regression: with several optimizers the callback passed none, so no update_ratio
    was recorded. Each optimizer step is recorded (Lightning counts each in global_step)
    with the update ratios of that optimizer's parameters (float64 reference), and none
    for the other's."""
    module = TwoOptimizers()
    callback = GradFlowCallback(tmp_path / "run", backend="eager", log_levels=(), update_ratio=True)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=4, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
    trainer.fit(module, _loader())
    frame = gs.open_run(tmp_path / "run").frame(stat="update_ratio", level="param")
    assert sorted(set(frame.step)) == sorted(module.moves) == [0, 1, 2, 3]
    for step, moves in module.moves.items():
        got = {r.name: r.value for r in frame[frame.step == step].itertuples()}
        assert set(got) == set(moves), step
        for name, (before, after) in moves.items():
            want = float((after - before).norm() / before.norm())
            assert abs(got[name] - want) <= 1e-6 * want, (step, name, got[name], want)


class AdamRegressor(Regressor):
    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2, eps=1e-3)


def test_noise_scale_and_adam_state_through_the_callback(tmp_path):
    """The micro-batches Lightning accumulates give the noise scale; Adam's state is read after
    Lightning's optimizer.step(closure) (float64 recomputation of the last step's)."""
    from tests.instrument.test_optimizer_state import _reference

    callback = GradFlowCallback(tmp_path / "run", backend="eager", log_levels=(), update_ratio=True,
                                noise_scale=BATCH)
    module = AdamRegressor()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=3, accumulate_grad_batches=ACCUMULATE, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[callback])
    trainer.fit(module, _loader())
    run = gs.open_run(tmp_path / "run")
    assert list(run.series("gns_batch", "model").iloc[:, 0]) == [ACCUMULATE * BATCH] * 3
    names = [n for n, _ in module.named_parameters()]
    want = _reference(trainer.optimizers[0].state_dict(), names)
    frame = run.frame()
    last = frame[(frame.step == 2) & frame.stat.str.startswith("adam_")]
    assert len(last) == (len(names) + 2 + 1) * 4
    for r in last.itertuples():
        assert r.value == pytest.approx(want[(r.level, r.name)][r.stat], rel=1e-5, abs=1e-12), r
