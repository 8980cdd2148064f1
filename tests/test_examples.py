"""The scripts in examples/ run for a few steps, offline, and leave a healthy run: the
training patterns they stand for (a nanoGPT-style loop with gradient accumulation, a disabled
GradScaler, clipping, AdamW and resuming from a checkpoint; an LSTM language model with manual
SGD, clipping and ``torch.save(model)`` every epoch; a DCGAN with two optimizers and two
monitors) stay covered."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

import gradsight as gs
from gradsight.diagnosis import Severity

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SMALL = ["--data", "pystdlib", "--limit", "100000"]


def _example(name: str) -> ModuleType:
    """The script ``examples/<name>.py`` as a module (its ``main(argv)`` trains)."""
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up; torch.load finds the model's class
    spec.loader.exec_module(module)
    return module


def _warnings_or_worse(run_dir: Path) -> list:
    return [f for f in gs.diagnose(run_dir) if f.severity >= Severity.WARNING]


@pytest.mark.parametrize(("name", "data"), [("nanogpt_train", "text:PATH"), ("lstm_lm_train", "text:PATH"),
                                            ("dcgan_train", "fashion-mnist")])
def test_each_example_explains_its_options(name, data, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _example(name).main(["--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    assert "--steps" in usage and "--out" in usage and data in usage


def test_nanogpt_example_records_every_layer_and_resumes_from_its_checkpoint(tmp_path, capsys):
    example = _example("nanogpt_train")
    out = tmp_path / "out"
    args = [*SMALL, "--out", str(out), "--eval-interval", "4", "--batch-size", "4", "--eval-iters", "1"]
    torch.manual_seed(0)
    run_dir = example.main([*args, "--steps", "6"])
    assert run_dir == out / "gradsight" and (out / "ckpt.pt").exists()
    blocks = [f"transformer.h.{i}.{name}" for i in range(2)
              for name in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")]
    with gs.open_run(run_dir) as run:
        # lm_head's weight is wte's (tied): one layer, the embedding, where it is first used
        assert list(run.layers().name) == ["transformer.wte", "transformer.wpe", *blocks, "transformer.ln_f"]
        assert run.steps() == list(range(6)) and run.status == "finished"
        assert run.meta["amp"] is False  # GradScaler(enabled=False) on the CPU is no scaler
        # accumulation over micro-batches, clipping, zero_grad(set_to_none=True) after each step
        assert run.series("grad_not_zeroed", level="model").iloc[:, 0].to_dict() == {s: 0.0 for s in range(1, 6)}
    assert _warnings_or_worse(run_dir) == []

    with pytest.warns(UserWarning, match=r"at step 4 \(resume=4\) removes what it recorded from step 4 to 5: 2"):
        example.main([*args, "--steps", "8", "--init-from", "resume"])
    with gs.open_run(run_dir) as run:
        assert run.steps() == list(range(8)) and run.meta["resumed"][0]["step"] == 4
        assert list(run.series("val_loss", level="metric").index) == [4]
    example.main([*args, "--steps", "3"])  # a rerun from scratch replaces the run
    with gs.open_run(run_dir) as run:
        assert run.steps() == [0, 1, 2] and "resumed" not in run.meta
    capsys.readouterr()


def test_lstm_example_records_the_lstm_and_saves_the_whole_model(tmp_path, capsys):
    example = _example("lstm_lm_train")
    out = tmp_path / "out"
    torch.manual_seed(0)
    run_dir = example.main([*SMALL, "--out", str(out), "--steps", "6", "--epoch-steps", "3", "--bptt", "16"])
    with gs.open_run(run_dir) as run:
        layers = list(run.layers().name)
        lstm = [name for name in layers if name not in ("encoder", "decoder")]
        assert layers[0] == "encoder" and layers[-1] == "decoder"
        assert lstm in (["rnn"], ["rnn.l0", "rnn.l1"])  # the LSTM: one layer, or one per stacked layer
        assert run.steps() == list(range(6)) and run.status == "finished"
        assert list(run.series("val_loss", level="metric").index) == [2, 5]  # logged after each epoch
    assert _warnings_or_worse(run_dir) == []
    saved = torch.load(out / "model.pt", weights_only=False)
    assert isinstance(saved.rnn, torch.nn.LSTM) and not saved.rnn._forward_hooks
    assert "end of training" in capsys.readouterr().out


def test_dcgan_example_records_each_network_with_its_own_steps_gradients(tmp_path, monkeypatch, capsys):
    """Two monitors, one per network: each run holds, at every step, the norm of its own
    network's ``.grad`` at its ``step()`` (the discriminator's: its real and fake passes, not
    the generator's pass through it that comes after), computed here in float64."""
    example = _example("dcgan_train")
    seen: dict[str, list[float]] = {"D": [], "G": []}
    watch = gs.watch

    def watching(model, run_dir, **kwargs):
        monitor = watch(model, run_dir, **kwargs)
        step, name = monitor.step, Path(run_dir).name

        def recorded_step(*args, **kw):
            grads = [p.grad.double() for p in model.parameters() if p.grad is not None]
            seen[name].append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
            return step(*args, **kw)

        monitor.step = recorded_step
        return monitor

    monkeypatch.setattr(example.gs, "watch", watching)
    out = tmp_path / "out"
    runs = example.main(["--data", "mnist5k", "--limit", "256", "--steps", "4", "--batch-size", "16",
                         "--ngf", "8", "--ndf", "8", "--nz", "16", "--out", str(out)])
    assert runs == out / "gradsight" and (out / "samples.png").exists() and (out / "netG.pt").exists()
    for name, first, last in (("D", "main.0", "main.8"), ("G", "main.0", "main.9")):
        with gs.open_run(runs / name) as run:
            assert run.status == "finished" and run.steps() == [0, 1, 2, 3]
            layers = list(run.layers().name)
            assert layers[0] == first and layers[-1] == last
            recorded = run.series("grad_norm", level="model").to_numpy().ravel()
            assert recorded == pytest.approx(seen[name], rel=1e-5)
            # D's gradients still hold the generator's pass through D when D's next step begins:
            # cleared by netD.zero_grad() before D's own passes, which is what counts
            assert run.series("grad_not_zeroed", level="model").iloc[:, 0].to_dict() == {1: 0.0, 2: 0.0, 3: 0.0}
    with gs.open_run(runs / "G") as run:
        assert set(run.metrics().columns) >= {"loss", "D_x", "D_G_z1", "D_G_z2"}
    for name in ("D", "G"):
        assert _warnings_or_worse(runs / name) == []
    assert "Loss_D" in capsys.readouterr().out
