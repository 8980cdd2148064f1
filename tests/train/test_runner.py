"""The training runner: what it records, that it is the bare loop plus monitoring, determinism."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import gradsight as gs
from gradsight.data import batches
from gradsight.train import auto_schedule, build_for_data, evaluate, resolve_device, tasks, train

EPOCH_METRICS = ("epoch", "lr", "train_loss", "train_error", "test_loss", "test_error", "test_accuracy", "epoch_time_s")


def bare_loop(model, data, *, epochs, seed, batch_size=64, lr=1e-3):
    """The lecture's loop written out by hand: Adam, cross-entropy, the same data order.

    Returns per epoch (mean training loss, training error) over the epoch's batches.
    """
    torch.manual_seed(seed)
    order = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    out = []
    for _ in range(epochs):
        loss_sum, correct, seen = 0.0, 0, 0
        for x, y in batches(data.train_x, data.train_y, batch_size, shuffle=True, generator=order):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        out.append((loss_sum / seen, 1 - correct / seen))
    return out


def test_one_epoch_records_epoch_metrics_and_gradient_stats(small_data, tmp_path):
    run_dir = tmp_path / "run"
    result = train("plain", small_data, "lecture", depth=8, epochs=1, seed=0, device="cpu", run_dir=run_dir,
                   every=1, progress=False)
    steps = math.ceil(256 / 64)
    assert result.steps == steps and len(result.epochs) == 1
    assert (result.network, result.depth, result.dataset, result.recipe) == ("plain", 8, "mnist5k", "lecture")
    with gs.open_run(run_dir) as run:
        assert run.status == "finished"
        metrics = run.metrics()
        assert set(EPOCH_METRICS) <= set(metrics.columns)
        row = metrics.dropna(subset=["epoch"])
        assert list(row.index) == [steps - 1]  # logged at the epoch's last step
        last = result.final
        for name in ("train_loss", "train_error", "test_loss", "test_error", "test_accuracy"):
            assert row[name].iloc[0] == pytest.approx(getattr(last, name))
        assert row["epoch"].iloc[0] == 1
        # gradient statistics: every step (every=1), every layer, with the loss
        assert run.steps() == list(range(steps))
        grad = run.series("grad_norm")
        assert list(grad.index) == list(range(steps))
        assert list(grad.columns) == list(run.layers()["name"])
        assert (grad.to_numpy() > 0).all()
        assert metrics["loss"].notna().sum() == steps
        assert "update_ratio" in run.stats("layer")
        meta = run.meta
        assert meta["parameters"] == result.parameters == sum(p.numel() for p in build_for_data("plain", small_data, depth=8).parameters())
        assert meta["wall_time_s"] == pytest.approx(result.wall_time_s)
        assert (meta["dataset"], meta["recipe"], meta["network"], meta["layers"]) == ("mnist5k", "lecture", "plain", 8)
        assert run.config["recipe"]["name"] == "lecture" and run.config["seed"] == 0
        assert (run.config["family"], run.config["depth"]) == ("plain", 8)
        assert (run.config["input_kind"], run.config["input_shape"]) == ("image", [1, 28, 28])


def test_runner_is_the_bare_loop_plus_monitoring(small_data, tmp_path):
    """Same seed, same data order: the runner's numbers and final weights equal a hand-written loop's."""
    model = build_for_data("resnet", small_data, depth=8, seed=3)
    result = train(model, small_data, "lecture", epochs=2, seed=3, device="cpu", run_dir=tmp_path / "run",
                   every=1, progress=False)
    reference = build_for_data("resnet", small_data, depth=8, seed=3)
    expected = bare_loop(reference, small_data, epochs=2, seed=3)
    for epoch, (loss, error) in zip(result.epochs, expected):
        assert epoch.train_loss == pytest.approx(loss, rel=1e-6)
        assert epoch.train_error == pytest.approx(error)
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.equal(p, q)
    # test metrics: the model in eval mode, one batch, by hand
    reference.eval()
    with torch.no_grad():
        logits = reference(small_data.test_x)
    assert result.final.test_loss == pytest.approx(F.cross_entropy(logits, small_data.test_y).item(), rel=1e-5)
    assert result.final.test_error == pytest.approx((logits.argmax(1) != small_data.test_y).float().mean().item())
    assert result.final.test_accuracy == pytest.approx(1 - result.final.test_error)


def test_same_seed_same_numbers_on_cpu(small_data, tmp_path):
    runs = [train("resnet", small_data, "lecture", depth=8, epochs=1, seed=seed, device="cpu",
                  run_dir=tmp_path / f"run{i}", every=1, progress=False)
            for i, seed in enumerate((7, 7, 8))]
    first, again, other = runs
    assert [e.train_loss for e in first.epochs] == [e.train_loss for e in again.epochs]
    assert first.final.test_loss == again.final.test_loss
    assert first.final.train_loss != other.final.train_loss
    with gs.open_run(first.run_dir) as a, gs.open_run(again.run_dir) as b:
        assert a.series("grad_norm").equals(b.series("grad_norm"))


def test_every_model_sees_the_same_data_order(small_data, tmp_path, monkeypatch):
    seen: dict[str, list[list[int]]] = {}
    current = []

    def recording_batches(*args, **kwargs):
        for x, y in batches(*args, **kwargs):
            if kwargs.get("shuffle"):
                current.append(y.tolist())
            yield x, y

    monkeypatch.setattr(tasks, "batches", recording_batches)
    for name, seed in (("plain", 0), ("resnet", 0), ("resnet", 1)):
        current.clear()
        train(name, small_data, "lecture", depth=8, epochs=2, seed=seed, run_dir=tmp_path / f"{name}{seed}",
              progress=False)
        seen[f"{name}{seed}"] = list(current)
    assert len(seen["plain0"]) == 2 * 4
    assert seen["plain0"] == seen["resnet0"]
    assert seen["resnet1"] != seen["resnet0"]


def test_evaluate_restores_training_mode(small_data):
    model = build_for_data("plain", small_data, depth=8)
    model.train()
    loss, error = evaluate(model, small_data.test_x, small_data.test_y, batch_size=50)
    assert model.training and loss > 0 and 0 <= error <= 1


def test_auto_schedule_records_the_start_then_about_100_steps():
    schedule = auto_schedule(5000)
    recorded = [s for s in range(5000) if schedule(s)]
    assert recorded[:10] == list(range(10))
    assert 90 <= len(recorded) - 10 <= 101
    assert all(auto_schedule(50)(s) for s in range(50))


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_model_keywords_need_a_model_name(small_data):
    with pytest.raises(TypeError, match="model name"):
        train(build_for_data("plain", small_data, depth=8), small_data, depth=8, epochs=1, progress=False)


def test_a_vector_model_is_sized_from_its_registration_not_its_name(small_data, monkeypatch):
    """build_model used to pick in_features only for names starting with mlp/resmlp, and gave
    every other model in_channels; a vector model under another name failed with a TypeError."""
    from torch import nn

    from gradsight.models import _registry, register_model

    monkeypatch.setattr(_registry, "_model_entrypoints", dict(_registry._model_entrypoints))

    @register_model(family="linear", depth=1, input_kind="vector", input_shape=(784,))
    def softmax_regression(*, in_features: int = 784, num_classes: int = 10) -> nn.Module:
        """One linear layer on flattened inputs."""
        return nn.Sequential(nn.Flatten(), nn.Linear(in_features, num_classes))

    model = build_for_data("softmax_regression", small_data)
    assert model[1].in_features == 784 and model.model_info.input_shape == (1, 28, 28)
    assert build_for_data("resmlp", small_data, depth=4, width=8).stem.fc.in_features == 784
    assert build_for_data("resnet20", small_data).stem.conv.in_channels == 1


def test_a_model_passed_as_a_module_records_its_registered_family_and_depth(small_data, tmp_path):
    model = build_for_data("resmlp", small_data, depth=4, width=8)
    result = train(model, small_data, "lecture", epochs=1, device="cpu", run_dir=tmp_path / "run", progress=False)
    assert (result.network, result.depth) == ("resmlp", 4)
    with gs.open_run(tmp_path / "run") as run:
        assert (run.config["family"], run.config["depth"], run.config["input_kind"]) == ("resmlp", 4, "vector")
        assert run.config["model"] == "resmlp"


def test_watch_options_pass_through_to_gs_watch(small_data, tmp_path):
    """train(watch=...) hands gs.watch's options through; the runner's own keywords are folded in
    (watch= entries win) and its config gains the user's entries."""
    result = train("plain", small_data, "lecture", depth=8, epochs=1, device="cpu", run_dir=tmp_path / "run",
                   every=2, histograms=3, progress=False,
                   watch={"weights": False, "histograms": 1, "config": {"note": "mine"}})
    with gs.open_run(result.run_dir) as run:
        assert run.meta["weight_stats"] is False and run.meta["histograms_every"] == 1
        assert run.meta["update_ratio_every"] == 1  # the runner's default, unlike gs.watch's 10
        assert run.config["note"] == "mine" and run.config["network"] == "plain"
        assert "weight_norm" not in set(run.frame(level="layer").stat)


@pytest.mark.parametrize("watch, error", [({"every": 3}, TypeError), ({"optimizer": None}, TypeError),
                                          ({"histogram": 1}, TypeError), ({"histograms": "often"}, ValueError)])
def test_watch_options_the_runner_sets_or_gs_watch_does_not_take_are_refused(small_data, tmp_path, watch, error):
    with pytest.raises(error, match=next(iter(watch))):
        train("plain", small_data, depth=8, epochs=1, device="cpu", run_dir=tmp_path / "run", progress=False,
              watch=watch)
    assert not (tmp_path / "run").exists()


def test_build_model_is_a_deprecated_alias_of_build_for_data(small_data):
    with pytest.warns(DeprecationWarning, match="build_for_data"):
        model = gs.train.build_model("plain", small_data, depth=8, seed=1)
    reference = build_for_data("plain", small_data, depth=8, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))


def test_train_result_layers_is_a_deprecated_alias_of_depth(small_data, tmp_path):
    result = train("plain", small_data, depth=8, epochs=1, device="cpu", run_dir=tmp_path / "run", progress=False)
    with pytest.warns(DeprecationWarning, match="TrainResult.depth"):
        assert result.layers == result.depth == 8
    assert result.row()["layers"] == 8  # the results table keeps its column
